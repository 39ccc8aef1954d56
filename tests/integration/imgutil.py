"""Helpers for the image tests: run vireo/qemu-img, make patterned data."""
import os
import pathlib
import random
import subprocess

from conftest import BUILD, VIREO

# VIREO_BUILD=build-asan runs these tests on the sanitizer build (make asan-images).
if os.environ.get("VIREO_BUILD"):
    BUILD = pathlib.Path(os.environ["VIREO_BUILD"]).resolve()
    VIREO = BUILD / "vireo"
BLKIO = BUILD / "tests" / "tools" / "blkio"

# Every (format, create options) pair the interop tests run on. A format
# added to vireo adds its variants here (e.g. ("vpc", "subformat=dynamic")).
VARIANTS = [
    ("raw", ""),
    ("qcow2", ""),
    ("qcow2", "compat=0.10"),
    ("qcow2", "cluster_size=4096"),
    ("qcow2", "cluster_size=512,refcount_bits=8"),
    ("vpc", "subformat=dynamic"),
    ("vpc", "subformat=fixed"),
    ("vmdk", "subformat=monolithicSparse"),
    ("vmdk", "subformat=monolithicFlat"),
    ("vmdk", "subformat=twoGbMaxExtentSparse"),
    ("vmdk", "subformat=streamOptimized"),
]
# Variants that can have a backing file.
BACKING_VARIANTS = [v for v in VARIANTS if v[0] == "qcow2"]
# Formats qemu-img check can verify (raw has nothing to check).
CHECKABLE = {"qcow2", "vmdk"}


def vid(v):
    return v[0] + ("-" + v[1].replace("=", "").replace(",", "-") if v[1] else "")


def run(*args, ok=True, timeout=120):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode >= 0, f"{args} died with signal {-p.returncode}: {p.stderr}"
    if ok:
        assert p.returncode == 0, f"{args} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def vireo(*args, **kw):
    return run(VIREO, "img", *args, **kw)


def qimg(*args, **kw):
    return run("qemu-img", *args, **kw)


def opts(o):
    return ["-o", o] if o else []


def pattern_raw(path, size, seed, density=0.5, chunk=64 * 1024):
    """A sparse raw file whose chunks are random data, zero or repeated bytes."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, chunk):
            r = rnd.random()
            if r > density:
                continue
            f.seek(off + rnd.randrange(0, 512) * (r < density / 4))
            n = min(chunk, size - f.tell())
            if r < density / 2:
                f.write(rnd.randbytes(n))
            else:
                f.write(bytes([rnd.randrange(1, 256)]) * n)
    return path


def qcheck(path, fmt, allow_leaks=False):
    if fmt not in CHECKABLE:
        return
    p = qimg("check", "-f", fmt, path, ok=False)
    allowed = (0, 3) if allow_leaks else (0,)
    assert p.returncode in allowed, f"qemu-img check {path}: {p.returncode}\n{p.stdout}{p.stderr}"


def same(a, b, fa=None, fb=None):
    args = ["compare"] + (["-f", fa] if fa else []) + (["-F", fb] if fb else []) + [a, b]
    p = qimg(*args, ok=False)
    assert p.returncode == 0, f"{a} vs {b}: {p.stdout}{p.stderr}"

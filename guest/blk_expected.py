#!/usr/bin/python3
"""Expected disk content after the probe guest's "blk" scenario (layout in
guest/blk.c). usage: blk_expected.py SEED N CAPACITY_SECTORS OUT.raw
[--discard-reads zero|pattern] [--write-zeroes ok|unsupported]
Writes a raw image to compare with `qemu-img compare` (or cmp) and prints
the expected checksum (CRC-32 of the N requests' data)."""
import argparse
import struct
import zlib

M64 = (1 << 64) - 1
G = 0x9e3779b97f4a7c15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def pattern(seed, sector, count):
    base = (seed * G) & M64
    k0 = sector * 64
    return struct.pack("<%dQ" % (count * 64),
                       *(mix64((base + k0 + i) & M64) for i in range(count * 64)))


def layout(seed, n, capacity):
    """(ranges [(sector, count)], tail) as the guest computes them."""
    tail = (capacity & ~2047) - 4096
    n = max(n, 1)
    if tail // n < 128:
        n = tail // 128
    stride = (tail // n) & ~127
    r, ranges = seed, []
    for i in range(n):
        r = (r + G) & M64
        x = mix64(r)
        length = 1 + (x & 127)
        ranges.append((i * stride + (x >> 32) % (129 - length), length))
    return ranges, tail


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("seed", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("capacity", type=int)
    ap.add_argument("out")
    ap.add_argument("--discard-reads", default="zero")
    ap.add_argument("--write-zeroes", default="ok")
    a = ap.parse_args()
    ranges, tail = layout(a.seed, a.n, a.capacity)
    crc = 0
    with open(a.out, "wb") as f:
        f.truncate(a.capacity * 512)
        for sector, count in ranges:
            data = pattern(a.seed, sector, count)
            crc = zlib.crc32(data, crc)
            f.seek(sector * 512)
            f.write(data)
        if a.discard_reads != "zero":
            f.seek(tail * 512)
            f.write(pattern(a.seed, tail, 2048))
        if a.write_zeroes != "ok":
            f.seek((tail + 2048) * 512)
            f.write(pattern(a.seed, tail + 2048, 2048))
    print("checksum=%08x" % crc)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The probe guest booted directly (probe.elf) and through SeaBIOS (probe.bzimage
# with --firmware: real mode, the linuxboot ROM, the kernel's 16-bit setup),
# process start to exit, RUNS runs each for 1 and 2 vCPUs; medians.
# The firmware needs hardware virtualization: on a host without it (kvm_pvm,
# where vireo refuses --firmware) the benchmark runs in the nested test host.
# usage: bench/firmware-probe.sh [RUNS]   (after make)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
if ! grep -qw -e vmx -e svm /proc/cpuinfo; then
	exec tests/nested/l1-run -t 900 -- bench/firmware-probe.sh "$runs"
fi
exec /usr/bin/python3 - "$runs" <<'PY'
import statistics, subprocess, sys, time
runs = int(sys.argv[1])
for cpus in (1, 2):
    t = {"direct": [], "seabios": []}
    for _ in range(runs):
        for mode in t:
            argv = ["build/vireo", "run", "--cpus", str(cpus), "--memory", "128M",
                    "--cmdline", "scenario=hello"]
            argv += (["--kernel", "build/guest/probe.elf"] if mode == "direct" else
                     ["--kernel", "build/guest/probe.bzimage",
                      "--firmware", "/usr/share/seabios/bios.bin"])
            t0 = time.monotonic()
            r = subprocess.run(argv, capture_output=True, timeout=60)
            assert r.returncode == 0, (mode, r.stderr[-500:])
            t[mode].append(time.monotonic() - t0)
    d, s = statistics.median(t["direct"]), statistics.median(t["seabios"])
    print(f"{cpus} vCPU(s): direct {d:.2f} s, through SeaBIOS {s:.2f} s "
          f"(+{s - d:.2f} s), medians of {runs}")
PY

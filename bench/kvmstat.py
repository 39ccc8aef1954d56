"""KVM's counters from debugfs (kvm/), for the boot benchmarks. KVM sums
them over every VM on the host, so a benchmark reads them while the VM it
measures is the only one."""
STATS = ["exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "insn_emulation",
         "pf_taken"]


def kvm_stats():
    """{counter: value} of the STATS this kernel has."""
    out = {}
    for s in STATS:
        try:
            with open(f"/sys/kernel/debug/kvm/{s}") as f:
                out[s] = int(f.read())
        except OSError:
            pass
    return out

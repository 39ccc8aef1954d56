"""The probe guest's scenarios on vireo, each also on QEMU microvm, the
reference (DESIGN §5): both must report the same facts."""
import os
import time

import pytest

from conftest import (LiveProbe, needs_kvm, needs_qemu, qemu_args, run_qemu, run_vireo,
                      vireo_args, wait_socket)

pytestmark = [needs_kvm, needs_qemu]


def qemu_exit(code):
    return (code << 1) | 1


@pytest.mark.parametrize("cpus,memory", [(1, "256M"), (2, "512M")])
def test_hello_same_on_vireo_and_qemu(cpus, memory):
    ours = run_vireo("scenario=hello", cpus=cpus, memory=memory)
    ref = run_qemu("scenario=hello", cpus=cpus, memory=memory)
    assert ours.returncode == 0, ours.stderr
    assert ref.returncode == 0, ref.stderr
    f, r = ours.facts(), ref.facts()
    assert f["banner"] == "vireo-probe"
    assert int(f["cpus"]) == cpus
    assert int(f["mem_mib"]) == int(memory[:-1])
    for key in ("cpus", "mem_mib", "hw_reduced", "s5"):
        assert f[key] == r[key], key


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_cpus_start_every_ap(cpus):
    for run in (run_vireo("scenario=cpus", cpus=cpus, timeout=300),
                run_qemu("scenario=cpus", cpus=cpus, timeout=300)):
        assert run.returncode == 0, run.stdout + run.stderr
        ids = sorted(int(c["apic_id"]) for c in run.all("cpu_up"))
        assert ids == list(range(cpus)), run.stdout
        assert int(run.facts()["cpus_up"]) == cpus
        assert not run.all("cpu_timeout")


@pytest.mark.parametrize("code", [0, 7, 42])
def test_exit_code_reaches_the_host(code):
    ours = run_vireo(f"scenario=exit={code}")
    ref = run_qemu(f"scenario=exit={code}")
    assert ours.returncode == code
    assert ref.returncode == qemu_exit(code)
    assert ours.facts()["exit"] == ref.facts()["exit"] == str(code)


def test_cpuburn_counts_iterations():
    for run in (run_vireo("scenario=cpuburn=300"), run_qemu("scenario=cpuburn=300")):
        assert run.returncode == 0, run.stderr
        f = run.facts()
        assert f["burn_ms"] == "300"
        # CPL3 code runs natively: far more than one iteration per microsecond.
        assert int(f["iterations"]) > 300


def test_serial_interrupts_like_qemu():
    ours = run_vireo("scenario=serial_irq")
    ref = run_qemu("scenario=serial_irq")
    for run in (ours, ref):
        assert run.returncode == 0, run.stderr
        f = run.facts()
        assert int(f["serial_irqs"]) == int(f["chars"]) + 1
        assert f["other_irqs"] == "0"
    assert ours.facts()["serial_irqs"] == ref.facts()["serial_irqs"]


def test_pci_host_bridge_visible_through_mcfg():
    run = run_vireo("scenario=pci")
    assert run.returncode == 0, run.stderr
    devs = run.all("pci")
    assert {"dev": "00:00.0", "id": "1b36:0008", "class": "060000"} in devs
    assert int(run.facts()["pci_count"]) == len(devs)


def test_unknown_scenario_fails_on_both():
    ours = run_vireo("scenario=nonsense")
    ref = run_qemu("scenario=nonsense")
    assert ours.returncode == 1
    assert ref.returncode == qemu_exit(1)
    assert ours.facts()["error"] == ref.facts()["error"] == "unknown-scenario"


def test_guest_exception_is_reported():
    for run in (run_vireo("scenario=fault=ud"), run_qemu("scenario=fault=ud")):
        assert run.facts()["vector"] == "6"


@pytest.mark.parametrize("vmm", ["vireo", "qemu"])
def test_echo_reads_the_serial_console(vmm):
    """The input direction of COM1: the VMM's stdin (a pipe here) reaches
    the guest's 16550 on both VMMs."""
    guest = LiveProbe(vireo_args("scenario=echo") if vmm == "vireo" else
                      qemu_args("scenario=echo"))
    # Input sent earlier could be lost: the guest's FIFO reset clears it.
    guest.wait_line("PROBE echo ready")
    guest.send("hello world\n")
    assert guest.wait_line("PROBE echo line=") == "PROBE echo line=hello world"
    guest.send("second line\r\n" + "x" * 250 + "\n\tTab\nquit\n")
    run = guest.finish(timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    echoed = [l[len("echo line="):] for l in run.lines if l.startswith("echo line=")]
    assert echoed == ["hello world", "second line", "x" * 200 + " truncated=1", "?Tab", "quit"]


def test_echo_times_out_without_input():
    for run in (run_vireo("scenario=echo=200"), run_qemu("scenario=echo=200")):
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.facts()["echo_timeout"] == "1"


def test_echo_through_the_console_socket():
    """vireo run --console-socket: what a client writes reaches the guest's
    UART, and the echo comes back on the socket (the path of 'vireo vm console')."""
    path = f"/tmp/vireo-con-{os.getpid()}-{time.monotonic_ns()}.sock"
    guest = LiveProbe(vireo_args("scenario=echo=20000", extra=["--console-socket", path]))
    try:
        with wait_socket(path) as s:
            guest.wait_line("PROBE echo ready")
            s.sendall(b"from the socket\nquit\n")
            got = b""
            while b"line=quit" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        assert b"PROBE echo line=from the socket" in got, got
        run = guest.finish(timeout=30)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "echo line=from the socket" in run.lines
    finally:
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.parametrize("source", ["stdin", "socket"])
def test_console_input_larger_than_the_uart_buffer_is_not_lost(source):
    """19 KiB of input, 4 times vireo's 4 KiB receive buffer, sent at once:
    the VMM stops reading its source while the buffer is full and resumes
    as the guest reads (flow control), so every line arrives."""
    lines = [f"{i:05d} " + "abcdefghij" * 5 for i in range(330)]
    data = "".join(l + "\n" for l in lines) + "quit\n"
    assert len(data) > 4 * 4096
    path = f"/tmp/vireo-con-{os.getpid()}-{time.monotonic_ns()}.sock"
    extra = ["--console-socket", path] if source == "socket" else []
    guest = LiveProbe(vireo_args("scenario=echo=20000", extra=extra))
    try:
        guest.wait_line("PROBE echo ready")
        if source == "socket":
            with wait_socket(path) as s:
                s.sendall(data.encode())
                run = guest.finish(timeout=60)
        else:
            guest.send(data)
            run = guest.finish(timeout=60)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    echoed = [l[len("echo line="):] for l in run.lines if l.startswith("echo line=")]
    assert echoed == lines + ["quit"]


@pytest.mark.parametrize("vmm", ["vireo", "qemu"])
def test_guests_see_steal_time_under_contention(vmm):
    """KVM steal time reaches the guest (vireo passes KVM's PV features
    through CPUID): two VMs burning on one host CPU each see about half of
    their wall time stolen. The same on QEMU."""
    import subprocess
    cmd = "scenario=cpuburn=1500"
    args = vireo_args(cmd, memory="64M") if vmm == "vireo" else qemu_args(cmd, memory="64M")
    procs = [subprocess.Popen(["taskset", "-c", "0", *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    for out in outs:
        steal = [l for l in out.splitlines() if l.startswith("PROBE burn_steal_ms=")]
        assert steal, out
        # ~750 ms of 1500 when both share the CPU the whole time; the two
        # start a few ms apart and the host runs other work too, which adds
        # steal (a loaded host gave 1508: the counter is read just after the
        # window). The upper bound catches a wrong unit, not the load.
        assert 400 <= int(steal[0].split("=")[1]) <= 2000, out

"""The ACPI power button (a Generic Event Device, ACPI0013): vireo's control
socket action "powerdown" and QEMU's QMP system_powerdown both reach the
probe guest, which powers off through S5 (DESIGN §5: QEMU is the reference)."""
import time

import pytest

from conftest import (LiveProbe, needs_kvm, needs_qemu, qemu_args, qmp_command, run_qemu,
                      run_vireo, scaled, vireo_args, vireo_control)

pytestmark = [needs_kvm, needs_qemu]


def press_vireo(path):
    assert vireo_control(path, action="powerdown") == {"ok": True, "state": "running"}


def press_qemu(path):
    assert qmp_command(path, "system_powerdown") == {}


def start(vmm, cmdline, path):
    if vmm == "vireo":
        return LiveProbe(vireo_args(cmdline, extra=["--api-socket", path])), press_vireo
    return LiveProbe(qemu_args(cmdline, qmp=path)), press_qemu


@pytest.mark.parametrize("vmm", ["vireo", "qemu"])
def test_power_button_powers_the_guest_off(vmm, sock):
    guest, press = start(vmm, "scenario=wait", sock)
    ready = guest.wait_line("PROBE wait ")
    assert "trigger=edge polarity=high" in ready  # as the GED's _CRS says, on both
    t0 = time.monotonic()
    press(sock)
    run = guest.finish(timeout=10)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "power_button=1" in run.lines
    assert time.monotonic() - t0 < scaled(5)
    # vireo's GED is on GSI 16, QEMU microvm's on GSI 9: the probe reads it.
    assert run.facts()["ged_gsi"] == ("16" if vmm == "vireo" else "9")


@pytest.mark.parametrize("vmm", ["vireo", "qemu"])
def test_cpuburn_stops_at_the_power_button(vmm, sock):
    guest, press = start(vmm, "scenario=cpuburn=100000", sock)
    guest.wait_line("PROBE boot")
    # cpuburn prints nothing when its interrupt is armed, and an edge on a
    # masked IOAPIC pin is lost (on both VMMs): press until it goes off.
    for _ in range(10):
        time.sleep(0.5)
        press(sock)
        if guest.proc.poll() is not None or guest.wait_exit(1):
            break
    run = guest.finish(timeout=10)
    assert run.returncode == 0, run.stdout + run.stderr
    f = run.facts()
    assert f["power_button"] == "1" and int(f["burn_ran_ms"]) < 100000
    assert int(f["iterations"]) > 0


def test_wait_times_out_without_a_button():
    for run in (run_vireo("scenario=wait wait=300"), run_qemu("scenario=wait=300")):
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.facts()["wait_timeout"] == "1"
        assert "power_button=1" not in run.lines


def test_powerdown_is_refused_while_paused(sock):
    guest = LiveProbe(vireo_args("scenario=wait", extra=["--api-socket", sock]))
    guest.wait_line("PROBE wait ")
    assert vireo_control(sock, action="pause")["state"] == "paused"
    r = vireo_control(sock, action="powerdown")
    assert r["ok"] is False and r["code"] == "wrong-state", r
    assert vireo_control(sock, action="info")["power_button_presses"] == 0
    assert vireo_control(sock, action="resume")["state"] == "running"
    press_vireo(sock)
    run = guest.finish(timeout=10)
    assert run.returncode == 0 and "power_button=1" in run.lines, run.stdout + run.stderr


def test_powerdown_takes_no_fields(sock):
    guest = LiveProbe(vireo_args("scenario=wait", extra=["--api-socket", sock]))
    guest.wait_line("PROBE wait ")
    r = vireo_control(sock, action="powerdown", force=True)
    assert r["ok"] is False and r["code"] == "bad-request", r
    assert vireo_control(sock, action="poweroff")["ok"]
    run = guest.finish(timeout=10)
    assert run.returncode == 0 and "power_button=1" not in run.lines

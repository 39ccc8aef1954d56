"""vireo's ACPI tables checked by ACPICA's iasl (Debian acpica-tools), the
compiler and disassembler that firmware and Linux developers use: every table
disassembles without errors, and the DSDT, disassembled and compiled again
without optimizations, gives back exactly vireo's AML."""
import shutil
import subprocess

import pytest

from conftest import BUILD

ACPIDUMP = BUILD / "tests" / "tools" / "acpidump"

pytestmark = pytest.mark.skipif(shutil.which("iasl") is None,
                                reason="skipped: iasl not installed (acpica-tools)")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    out = tmp_path_factory.mktemp("acpi")
    subprocess.run([str(ACPIDUMP), str(out), "2"], check=True, capture_output=True)
    return out


def iasl(*args, cwd):
    p = subprocess.run(["iasl", *args], cwd=cwd, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


@pytest.mark.parametrize("name", ["dsdt", "facp", "apic", "mcfg"])
def test_iasl_disassembles_every_table(tables, name):
    out = iasl("-d", f"{name}.dat", cwd=tables)
    assert "Error" not in out and "Warning" not in out, out
    assert (tables / f"{name}.dsl").exists()


def test_dsdt_declares_ged_and_power_button(tables):
    iasl("-d", "dsdt.dat", cwd=tables)
    dsl = (tables / "dsdt.dsl").read_text()
    assert 'Name (_HID, "ACPI0013"' in dsl
    assert 'EisaId ("PNP0C0C")' in dsl
    assert "Method (_EVT, 1, Serialized)" in dsl
    assert "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive" in dsl
    assert "Notify (\\_SB.PWRB, 0x80)" in dsl


def test_dsdt_round_trips_through_iasl(tables):
    iasl("-d", "dsdt.dat", cwd=tables)
    out = iasl("-oa", "-p", "again", "dsdt.dsl", cwd=tables)
    assert "0 Errors, 0 Warnings" in out, out
    ours = (tables / "dsdt.dat").read_bytes()
    again = (tables / "again.aml").read_bytes()
    # The header's checksum and compiler id differ; the AML body must not.
    assert again[36:] == ours[36:]


@pytest.fixture(scope="module")
def pc_tables(tmp_path_factory):
    out = tmp_path_factory.mktemp("acpi-pc")
    subprocess.run([str(ACPIDUMP), "--pc", str(out), "2"], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("name", ["dsdt", "facp", "apic", "mcfg", "facs"])
def test_iasl_disassembles_every_pc_table(pc_tables, name):
    """The tables of a firmware boot (PM1 blocks, SCI, FACS): iasl checks
    the FADT's legacy and extended blocks against each other."""
    out = iasl("-d", f"{name}.dat", cwd=pc_tables)
    assert "Error" not in out and "Warning" not in out, out


def test_pc_fadt_is_not_hardware_reduced(pc_tables):
    iasl("-d", "facp.dat", cwd=pc_tables)
    dsl = (pc_tables / "facp.dsl").read_text()
    assert "Hardware Reduced (V5) : 0" in dsl
    assert "SCI Interrupt : 0009" in dsl
    assert "PM1A Event Block Address : 00000608" in dsl
    assert "PM1A Control Block Address : 0000060C" in dsl

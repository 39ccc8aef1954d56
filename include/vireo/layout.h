/* The guest-physical address map of an x86-64 vireo VM. One place, so boot
 * code, ACPI tables and devices agree.
 *
 *   0x00000000  RAM (low), with boot structures at the fixed spots below
 *   0x0009fc00  reserved (EBDA) to 0x000a0000
 *   0x000a0000  reserved (legacy VGA/BIOS area); ACPI tables at 0xe0000, and
 *               at the BIOS reset vector 0xffff0 a stub that resets the VM
 *   0x00100000  RAM: kernel, initrd, ... up to MMIO_GAP_START
 *   0xc0000000  PCI 32-bit MMIO window (512 MiB)
 *   0xe0000000  PCI ECAM (bus 0, 1 MiB)
 *   0xfec00000  IOAPIC; 0xfee00000 local APIC
 *   4 GiB       RAM (high), the part that did not fit below the gap
 */
#ifndef VIREO_LAYOUT_H
#define VIREO_LAYOUT_H

#define LAYOUT_BOOT_GDT         0x00000500ULL
#define LAYOUT_PVH_START_INFO   0x00006000ULL
#define LAYOUT_BOOT_PARAMS      0x00007000ULL
#define LAYOUT_PML4             0x00009000ULL /* + PDPT, 4 PDs: 0x9000..0xefff */
#define LAYOUT_CMDLINE          0x00020000ULL
#define LAYOUT_CMDLINE_MAX      0x00010000ULL
#define LAYOUT_EBDA_START       0x0009fc00ULL
#define LAYOUT_ACPI_TABLES      0x000e0000ULL
#define LAYOUT_ACPI_TABLES_END  0x000f0000ULL
#define LAYOUT_RESET_VECTOR     0x000ffff0ULL /* f000:fff0, where a real-mode reset jumps */
#define LAYOUT_HIGH_RAM_START   0x00100000ULL
#define LAYOUT_MMIO_GAP_START   0xc0000000ULL
#define LAYOUT_PCI_MMIO_START   0xc0000000ULL
#define LAYOUT_PCI_MMIO_SIZE    0x20000000ULL
#define LAYOUT_ECAM_BASE        0xe0000000ULL
/* ECAM for bus 0 only: vireo has no bridges, and an MCFG that promises 256
 * buses makes Linux probe every one of them for peer host bridges through
 * ports 0xcf8/0xcfc (pcibios_fixup_peer_bridges: 8192 reads, 16k exits). */
#define LAYOUT_ECAM_SIZE        0x00100000ULL
#define LAYOUT_IOAPIC_BASE      0xfec00000ULL
#define LAYOUT_LAPIC_BASE       0xfee00000ULL
#define LAYOUT_4G               0x100000000ULL

/* Port I/O. */
#define PORT_DEBUG_EXIT         0x00f4 /* test device: guest status -> exit code */
#define PORT_I8042_DATA         0x0060
#define PORT_I8042_CMD          0x0064
#define PORT_RTC_INDEX          0x0070 /* MC146818: index, then data at 0x71 */
#define PORT_COM1               0x03f8
#define PORT_ACPI_SLEEP_CONTROL 0x0600 /* FADT hardware-reduced sleep registers */
#define PORT_ACPI_SLEEP_STATUS  0x0601
#define PORT_ACPI_GED           0x0604 /* GED event selector, 4 bytes (vireo/ged.h) */
#define PORT_ACPI_PM1A_EVT      0x0608 /* firmware boot: PM1 status/enable, 4 bytes, */
#define PORT_ACPI_PM1A_CNT      0x060c /* and PM1 control, 2 bytes (vireo/acpipm.h) */
#define PORT_PCI_CONFIG_ADDRESS 0x0cf8
#define PORT_PCI_CONFIG_DATA    0x0cfc
#define PORT_RESET_CONTROL      0x0cf9 /* PIIX/ICH reset control, a byte inside 0xcf8-0xcff */

#define IRQ_COM1 4
/* The ACPI SCI of a firmware boot (vireo/acpipm.h): level, active high, as
 * the MADT's override for IRQ 9 says (QEMU's pc has the same). */
#define IRQ_SCI  9
/* The GED's edge interrupt: an IOAPIC-only GSI (no 8259 line behind it),
 * so a guest that never masked its PICs cannot see it twice. */
#define IRQ_GED  16
/* PCI INTx: slot S's INTA# is GSI IRQ_PCI_FIRST + S % IRQ_PCI_COUNT, as the
 * DSDT's _PRT says; level-triggered, shared (ORed) by slots 7 apart. IOAPIC
 * pins only: GSIs above 15 have no 8259 line. */
#define IRQ_PCI_FIRST 17
#define IRQ_PCI_COUNT 7

#endif

/* Booting through firmware (src/boot/firmware.c): `vireo run --firmware
 * FILE` with an unmodified PC BIOS image (SeaBIOS bios.bin or
 * bios-256k.bin, qboot's bios-microvm.bin), given what it expects on QEMU:
 *   - the image at the top of the 32-bit address space (read-only), and its
 *     last 128 KiB (all of a smaller one) copied into RAM below 1 MiB, as
 *     the chipset's shadow RAM holds it at reset;
 *   - the vCPU in its reset state (real mode, CS base 0xffff0000, IP 0xfff0:
 *     KVM's state for a new vCPU, so nothing is set);
 *   - the CMOS memory sizes (vireo/rtc.h) and fw_cfg (vireo/fwcfg.h) with
 *     etc/e820, bootorder (the virtio-blk disks in PCI slot order), the
 *     CPU count, no boot menu, and, when a kernel is given, QEMU's kernel,
 *     setup, initrd and command-line items with its linuxboot_dma option
 *     ROM, which loads them the way QEMU -kernel does.
 * and vireo's own ACPI tables (those of a direct boot) through
 * etc/table-loader, which the firmware installs and relocates. */
#ifndef VIREO_FIRMWARE_H
#define VIREO_FIRMWARE_H

#include <stdbool.h>

#include "vireo/boot.h"
#include "vireo/fwcfg.h"
#include "vireo/pci.h"
#include "vireo/vmm.h"

/* QEMU's option ROM that boots a kernel given through fw_cfg (Debian's
 * qemu-system-data). */
#define FIRMWARE_LINUXBOOT_ROM "/usr/share/qemu/linuxboot_dma.bin"

struct firmware;

/* Maps the image, shadows it, creates fw_cfg and fills it (cfg->kernel,
 * initrd, cmdline may be NULL). With debug, what the firmware writes to
 * QEMU's debug console port (0x402: SeaBIOS's log) goes to stderr. Call after the PCI devices exist. Returns
 * 0 or -errno with err_set(); *out is then freed by firmware_destroy(). */
int firmware_load(struct vm *vm, struct pci_bus *pci, const char *path,
		  const struct boot_config *cfg, bool debug, struct firmware **out);
/* Snapshots (vireo/state.h), with the vCPUs stopped. STATE_SEC_FIRMWARE
 * is the ROM image itself (all of the section), so that a restore or a
 * migration needs no file and cannot map another one under a guest that
 * runs this one's shadow copy; then fw_cfg's section (fwcfg_save()).
 * firmware_save: 0 or -EBUSY with err_set(). firmware_restore: as
 * firmware_load, with the ROM from the state, fw_cfg rebuilt from the
 * machine description (kernel: one was booted, so bootorder names it; its
 * own items are not rebuilt) and its selection restored, and the guest's
 * RAM left as the snapshot has it (no shadow copy). */
struct state_writer;
struct state_reader;
int firmware_save(struct firmware *fw, struct state_writer *w);
int firmware_restore(struct vm *vm, struct pci_bus *pci, const struct state_reader *r,
		     bool kernel, bool debug, struct firmware **out);

/* After the vCPUs have stopped. NULL is fine. */
void firmware_destroy(struct firmware *fw);

/* The etc/e820 file's entries (QEMU's layout: le64 address, le64 length,
 * le32 type, packed). Returns the number written. */
#define FIRMWARE_E820_ENTRY 20
unsigned int firmware_e820(const struct vm *vm, uint8_t *out, unsigned int max);

/* The ACPI tables as fw_cfg files etc/acpi/rsdp, etc/acpi/tables and the
 * etc/table-loader script (src/boot/firmware-acpi.c). Builds them in guest
 * RAM at LAYOUT_ACPI_TABLES first: call it before the shadow copy. */
int firmware_add_acpi(struct fwcfg *f, struct vm *vm);

/* QEMU -kernel through fw_cfg (src/boot/firmware-linux.c): a bzImage
 * (boot protocol 2.02 or later, loaded high) split into its real-mode
 * setup, patched as QEMU patches it (loader type, heap, command line and
 * initrd addresses), and its protected-mode part, with the initrd and the
 * command line, and the option ROM that loads them. */
int firmware_add_kernel(struct fwcfg *f, const struct vm *vm, const struct boot_config *cfg);

#endif

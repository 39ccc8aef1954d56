/* ACPI fixed-hardware power management registers (src/hw/acpipm.c), the
 * PC-compatible platform a firmware boot gets (src/boot/acpi.c,
 * ACPI_PLATFORM_PC): a guest that sees them uses its legacy PIC (Linux
 * masks and moves the 8259 a BIOS left unmasked), as on QEMU's pc.
 *
 * I/O ports, little-endian, any width:
 *   PORT_ACPI_PM1A_EVT + 0  PM1 status, 16 bits: write 1 to clear; bit 8
 *                           (PWRBTN_STS) is set by acpipm_power_button()
 *                        2  PM1 enable, 16 bits: read/write
 *   PORT_ACPI_PM1A_CNT + 0  PM1 control, 16 bits: SCI_EN (bit 0) reads 1
 *                           (no SMI_CMD: always in ACPI mode); writing
 *                           SLP_EN (bit 13, reads 0) with SLP_TYP (bits
 *                           10-12) = ACPI_S5_SLP_TYP powers the VM off.
 * The SCI (IRQ_SCI, level, active high) is asserted while status & enable
 * is not 0. No PM timer, no GPE blocks. */
#ifndef VIREO_ACPIPM_H
#define VIREO_ACPIPM_H

#include <stdbool.h>
#include <stdint.h>

#include "vireo/vmm.h"

#define ACPIPM_PWRBTN   (1u << 8)  /* PM1 status/enable: the power button */
#define ACPIPM_SCI_EN   (1u << 0)  /* PM1 control */
#define ACPIPM_SLP_EN   (1u << 13)
#define ACPIPM_SLP_TYP_SHIFT 10
#define ACPIPM_LEN      6          /* the two blocks, adjacent */

struct acpipm;

/* Registers the blocks on vm->pio (vm NULL: model only, for unit tests:
 * no interrupt, no power-off). Returns NULL with err_set(). */
struct acpipm *acpipm_create(struct vm *vm);
void acpipm_destroy(struct acpipm *pm);
/* The port handler; offset 0-3 the event block, 4-5 the control block. */
void acpipm_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
/* Sets PWRBTN_STS (the guest decides what to do). Safe from any thread. */
void acpipm_power_button(struct acpipm *pm);
uint64_t acpipm_power_button_count(const struct acpipm *pm);
/* The SCI's level, as last driven; and whether the guest asked for S5. */
bool acpipm_sci(const struct acpipm *pm);
bool acpipm_s5_requested(const struct acpipm *pm);

/* Snapshots (vireo/state.h), with the vCPUs stopped. STATE_SEC_ACPIPM:
 * u32 status, u32 enable, u32 control (16-bit registers), u64 power-button
 * presses. Restore drives the SCI as the registers say; 0 or -errno with
 * err_set(). */
struct state_writer;
struct state_reader;
void acpipm_save(struct acpipm *pm, struct state_writer *w);
int acpipm_restore(struct acpipm *pm, const struct state_reader *r);

#endif

/* ACPI Generic Event Device (src/hw/ged.c): how a hardware-reduced platform
 * (no SCI, no PM1 event blocks) tells the guest about platform events, as
 * QEMU's microvm and cloud-hypervisor do. The DSDT's Device(GED0)
 * (_HID "ACPI0013", src/boot/acpi.c) has one edge interrupt, IRQ_GED, and an
 * _EVT method that reads the event selector at PORT_ACPI_GED and notifies
 * \_SB.PWRB (PNP0C0C) when GED_EVENT_POWER_BUTTON is set. Linux's evged and
 * button drivers turn that into a power-button press.
 *
 * Selector register (I/O port, 32 bits, little-endian): a read returns the
 * pending event bits and clears them; writes are ignored. */
#ifndef VIREO_GED_H
#define VIREO_GED_H

#include <stdint.h>

#include "vireo/vmm.h"

#define GED_EVENT_POWER_BUTTON (1u << 1) /* the bit QEMU's GED uses too */

struct ged;

/* Registers the selector on vm->pio (vm NULL: model only, for unit tests).
 * Returns NULL with err_set(). */
struct ged *ged_create(struct vm *vm);
void ged_destroy(struct ged *g);
/* Sets the event bits and pulses the GED's edge interrupt. Safe from any
 * thread. An event raised before the guest unmasked the interrupt stays
 * pending in the selector. */
void ged_raise(struct ged *g, uint32_t events);
/* The selector register as the guest reads it (returns and clears). */
uint32_t ged_read_selector(struct ged *g);
/* Events raised so far, per bit 1 (the power button): a device counter. */
uint64_t ged_power_button_count(const struct ged *g);

/* Snapshot state (STATE_SEC_GED); restore: 0 or -errno with err_set(). */
struct state_writer;
struct state_reader;
void ged_save(struct ged *g, struct state_writer *w);
int ged_restore(struct ged *g, const struct state_reader *r);

#endif

/* PCI (src/hw/pci.c): the host bridge at 00:00.0 and bus 0's configuration
 * space, reachable through ports 0xCF8/0xCFC (configuration mechanism #1)
 * and through ECAM at LAYOUT_ECAM_BASE (advertised in the MCFG table).
 * Devices keep their 4 KiB configuration space plus a write mask; BARs are
 * sized the standard way (write all ones, read back the size mask). */
#ifndef VIREO_PCI_H
#define VIREO_PCI_H

#include <pthread.h>
#include <stdint.h>

#include "vireo/layout.h"
#include "vireo/vmm.h"

#define PCI_CONFIG_SIZE 4096
#define PCI_SLOTS 32
#define PCI_BARS 6

struct pci_device {
	uint8_t config[PCI_CONFIG_SIZE];
	uint8_t wmask[PCI_CONFIG_SIZE]; /* bits the guest may change */
	uint64_t bar_size[PCI_BARS];    /* 0: BAR unused */
	const char *name;
	void *opaque;
	struct pci_bus *bus;     /* set by pci_add_device */
	unsigned int slot;
	/* Called after a config write (BAR moved, command changed), with the
	 * bus lock held. Optional. */
	void (*config_written)(struct pci_device *dev, unsigned int offset, unsigned int len);
};

struct pci_bus {
	struct vm *vm;
	pthread_mutex_t lock;
	uint32_t config_address; /* the 0xCF8 latch */
	uint8_t reset_control;   /* port 0xCF9 */
	struct pci_device *slots[PCI_SLOTS];
	struct pci_device host_bridge;
	uint64_t mmio_next;      /* BAR pre-assignment cursor in the 32-bit window */
	/* INTx lines: the slots asserting each one. A leaf lock, taken by
	 * devices with their own lock held. */
	pthread_mutex_t intx_lock;
	uint32_t intx_slots[IRQ_PCI_COUNT];
};

int pci_init(struct pci_bus *bus, struct vm *vm);
/* Puts dev at the first free slot of bus 0; returns the slot or -ENOSPC.
 * A device with an interrupt pin gets its GSI in the Interrupt Line register,
 * as firmware would write it. */
int pci_add_device(struct pci_bus *bus, struct pci_device *dev);
/* Takes dev off its bus (its INTA# deasserted); no-op if it is on none. */
void pci_remove_device(struct pci_device *dev);
/* Fills IDs and class; sets the standard writable bits of the header. */
void pci_device_init(struct pci_device *dev, uint16_t vendor, uint16_t device, uint32_t class_code,
		     const char *name);
/* Declares BAR i as 32-bit memory of `size` bytes (a power of two). */
void pci_set_bar(struct pci_device *dev, unsigned int i, uint64_t size);

/* Takes `size` bytes (a power of two), aligned, from the PCI MMIO window,
 * for a BAR the VMM pre-assigns as firmware would. 0 when the window is full. */
uint64_t pci_alloc_mmio(struct pci_bus *bus, uint64_t size);
/* BAR i's address as the guest programmed it, or 0 when memory decoding is
 * off. Call with the bus lock held (from config_written). */
uint64_t pci_bar_address(const struct pci_device *dev, unsigned int i);

/* The GSI behind a slot's INTA# (the DSDT's _PRT). */
unsigned int pci_intx_gsi(unsigned int slot);
/* Asserts or deasserts dev's INTA# (level-triggered; a line shared by
 * several slots stays asserted while any of them asserts it). The
 * command register's INTx Disable bit holds the pin deasserted. Does
 * nothing before the device is on a bus or when it has no pin. */
void pci_set_intx(struct pci_device *dev, bool level);

/* Configuration access to bus 0, as the two access paths do it; unit tests
 * call these directly. Absent devices read as all ones. */
uint32_t pci_config_read(struct pci_bus *bus, unsigned int devfn, unsigned int offset,
			 unsigned int len);
void pci_config_write(struct pci_bus *bus, unsigned int devfn, unsigned int offset,
		      unsigned int len, uint32_t value);

#endif

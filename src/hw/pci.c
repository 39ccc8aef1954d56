#include <errno.h>
#include <string.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/pci.h"

#define PCI_VENDOR_ID  0x00
#define PCI_COMMAND    0x04
#define PCI_REVISION   0x08
#define PCI_BAR0       0x10
#define PCI_INT_LINE   0x3c
#define PCI_INT_PIN    0x3d
#define PCI_COMMAND_INTX_DISABLE 0x400
#define CF8_ENABLE     0x80000000u

void pci_device_init(struct pci_device *dev, uint16_t vendor, uint16_t device, uint32_t class_code,
		     const char *name)
{
	memset(dev->config, 0, sizeof(dev->config));
	memset(dev->wmask, 0, sizeof(dev->wmask));
	memset(dev->bar_size, 0, sizeof(dev->bar_size));
	bus_put(dev->config + PCI_VENDOR_ID, 2, vendor);
	bus_put(dev->config + 2, 2, device);
	bus_put(dev->config + PCI_REVISION, 4, class_code << 8);
	bus_put(dev->wmask + PCI_COMMAND, 2, 0x0547); /* io, mem, master, parity, serr, intx-disable */
	dev->wmask[PCI_INT_LINE] = 0xff;
	dev->name = name;
}

void pci_set_bar(struct pci_device *dev, unsigned int i, uint64_t size)
{
	if (i >= PCI_BARS || size < 16 || (size & (size - 1)))
		return;
	dev->bar_size[i] = size;
	/* The low 4 bits (type) are read-only; the size's low bits read as 0. */
	bus_put(dev->wmask + PCI_BAR0 + 4 * i, 4, (uint32_t)~(size - 1));
}

uint64_t pci_alloc_mmio(struct pci_bus *bus, uint64_t size)
{
	uint64_t base = (bus->mmio_next + size - 1) & ~(size - 1);

	if (base + size > LAYOUT_PCI_MMIO_START + LAYOUT_PCI_MMIO_SIZE)
		return 0;
	bus->mmio_next = base + size;
	return base;
}

uint64_t pci_bar_address(const struct pci_device *dev, unsigned int i)
{
	if (i >= PCI_BARS || !dev->bar_size[i] || !(dev->config[PCI_COMMAND] & 0x2))
		return 0;
	return (uint32_t)bus_get(dev->config + PCI_BAR0 + 4 * i, 4) & ~0xfULL;
}

static struct pci_device *pci_lookup(struct pci_bus *bus, unsigned int devfn)
{
	/* Function 0 only: vireo's devices are single-function. */
	if ((devfn & 7) != 0 || (devfn >> 3) >= PCI_SLOTS)
		return NULL;
	return bus->slots[devfn >> 3];
}

uint32_t pci_config_read(struct pci_bus *bus, unsigned int devfn, unsigned int offset,
			 unsigned int len)
{
	struct pci_device *dev;
	uint32_t v = 0xffffffffu >> (32 - 8 * len);

	if (offset + len > PCI_CONFIG_SIZE || (offset & (len - 1)))
		return v;
	pthread_mutex_lock(&bus->lock);
	dev = pci_lookup(bus, devfn);
	if (dev)
		v = (uint32_t)bus_get(dev->config + offset, len);
	pthread_mutex_unlock(&bus->lock);
	return v;
}

void pci_config_write(struct pci_bus *bus, unsigned int devfn, unsigned int offset,
		      unsigned int len, uint32_t value)
{
	struct pci_device *dev;

	if (offset + len > PCI_CONFIG_SIZE || (offset & (len - 1)))
		return;
	pthread_mutex_lock(&bus->lock);
	dev = pci_lookup(bus, devfn);
	if (dev) {
		for (unsigned int i = 0; i < len; i++) {
			uint8_t m = dev->wmask[offset + i], b = (uint8_t)(value >> (8 * i));

			dev->config[offset + i] = (uint8_t)((dev->config[offset + i] & ~m) | (b & m));
		}
		if (dev->config_written)
			dev->config_written(dev, offset, len);
	}
	pthread_mutex_unlock(&bus->lock);
}

/* One access from either path; `valid` false (another bus, a bad size)
 * reads as all ones and drops writes. */
static void pci_config_access(struct pci_bus *bus, bool valid, unsigned int devfn,
			      unsigned int reg, uint8_t *data, uint32_t len, bool is_write)
{
	if (!valid) {
		if (!is_write)
			memset(data, 0xff, len);
	} else if (is_write) {
		pci_config_write(bus, devfn, reg, len, (uint32_t)bus_get(data, len));
	} else {
		bus_put(data, len, pci_config_read(bus, devfn, reg, len));
	}
}

/* Mechanism #1: 0xCF8 latches bus/device/function/register; 0xCFC-0xCFF
 * move the data. Only bus 0 exists. */
/* Port 0xcf9, the chipset's reset control register (Intel PIIX/ICH, which
 * QEMU models too): SYS_RST (bit 1) and FULL_RST (bit 3) are kept, writing
 * RST_CPU (bit 2) resets the machine. Linux's reboot=p uses it. */
static void pci_reset_control(struct pci_bus *bus, uint8_t *data, bool is_write)
{
	if (!is_write) {
		data[0] = bus->reset_control;
		return;
	}
	bus->reset_control = data[0] & 0x0a;
	if ((data[0] & 0x04) && bus->vm)
		vm_request_stop(bus->vm, VM_EXIT_REBOOT);
}

static void pci_cf8_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct pci_bus *bus = opaque;
	uint32_t addr = bus->config_address;
	unsigned int reg, devfn;

	if (offset == PORT_RESET_CONTROL - PORT_PCI_CONFIG_ADDRESS && len == 1) {
		pci_reset_control(bus, data, is_write);
		return;
	}
	if (offset < 4) {
		if (len != 4 || offset != 0) {
			if (!is_write)
				memset(data, 0xff, len);
		} else if (is_write) {
			bus->config_address = (uint32_t)bus_get(data, 4);
		} else {
			bus_put(data, 4, addr);
		}
		return;
	}
	reg = (addr & 0xfc) | (unsigned int)(offset - 4) | ((addr >> 16) & 0xf00);
	devfn = (addr >> 8) & 0xff;
	pci_config_access(bus, (addr & CF8_ENABLE) && ((addr >> 16) & 0xff) == 0, devfn, reg,
			  data, len, is_write);
}

static void pci_ecam_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct pci_bus *bus = opaque;
	unsigned int busno = (unsigned int)(offset >> 20), devfn = (offset >> 12) & 0xff;
	unsigned int reg = offset & 0xfff;

	pci_config_access(bus, busno == 0 && len <= 4, devfn, reg, data, len, is_write);
}

int pci_add_device(struct pci_bus *bus, struct pci_device *dev)
{
	int slot = -ENOSPC;

	pthread_mutex_lock(&bus->lock);
	for (int i = 0; i < PCI_SLOTS; i++) {
		if (!bus->slots[i]) {
			bus->slots[i] = dev;
			dev->bus = bus;
			dev->slot = (unsigned int)i;
			if (dev->config[PCI_INT_PIN])
				dev->config[PCI_INT_LINE] = (uint8_t)pci_intx_gsi((unsigned int)i);
			slot = i;
			break;
		}
	}
	pthread_mutex_unlock(&bus->lock);
	return slot;
}

void pci_remove_device(struct pci_device *dev)
{
	struct pci_bus *bus = dev->bus;

	if (!bus)
		return;
	pci_set_intx(dev, false);
	pthread_mutex_lock(&bus->lock);
	if (bus->slots[dev->slot] == dev)
		bus->slots[dev->slot] = NULL;
	dev->bus = NULL;
	pthread_mutex_unlock(&bus->lock);
}

unsigned int pci_intx_gsi(unsigned int slot)
{
	return IRQ_PCI_FIRST + slot % IRQ_PCI_COUNT;
}

void pci_set_intx(struct pci_device *dev, bool level)
{
	struct pci_bus *bus = dev->bus;
	unsigned int line;

	if (!bus || !dev->config[PCI_INT_PIN])
		return;
	if (bus_get(dev->config + PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE)
		level = false;
	line = dev->slot % IRQ_PCI_COUNT;
	pthread_mutex_lock(&bus->intx_lock);
	if (level)
		bus->intx_slots[line] |= 1u << dev->slot;
	else
		bus->intx_slots[line] &= ~(1u << dev->slot);
	/* Under the lock, so that two slots on one line cannot leave it in
	 * the state of whichever ioctl ran last. */
	if (bus->vm)
		vm_set_irq(bus->vm, IRQ_PCI_FIRST + line, bus->intx_slots[line] != 0);
	pthread_mutex_unlock(&bus->intx_lock);
}

int pci_init(struct pci_bus *bus, struct vm *vm)
{
	int ret;

	memset(bus->slots, 0, sizeof(bus->slots));
	memset(bus->intx_slots, 0, sizeof(bus->intx_slots));
	pthread_mutex_init(&bus->intx_lock, NULL);
	bus->vm = vm;
	bus->config_address = 0;
	bus->reset_control = 0;
	bus->mmio_next = LAYOUT_PCI_MMIO_START;
	pthread_mutex_init(&bus->lock, NULL);
	/* Host bridge: Red Hat's generic PCIe host bridge id, class 06/00/00. */
	pci_device_init(&bus->host_bridge, 0x1b36, 0x0008, 0x060000, "host-bridge");
	pci_add_device(bus, &bus->host_bridge);
	if (!vm)
		return 0;
	ret = bus_register(&vm->pio, PORT_PCI_CONFIG_ADDRESS, 8, pci_cf8_io, bus, "pci-cf8");
	if (!ret)
		ret = bus_register(&vm->mmio, LAYOUT_ECAM_BASE, LAYOUT_ECAM_SIZE, pci_ecam_io, bus,
				   "pci-ecam");
	return ret ? err_set(ret, "cannot register the PCI host bridge") : 0;
}

/* Scenario "pci": enumerate the first bus of the MCFG's ECAM window. */
#include "probe.h"

static uint32_t ecam_read32(uint32_t bus, uint32_t dev, uint32_t fn, uint32_t off)
{
	uintptr_t a = (uintptr_t)(acpi.ecam_base + (bus << 20 | dev << 15 | fn << 12 | off));

	return *(volatile uint32_t *)a;
}

void scn_pci(void)
{
	uint32_t bus = acpi.bus_start, count = 0;

	if (!acpi.ecam_base) {
		probe_printf("PROBE pci_error=no-mcfg\n");
		probe_printf("PROBE pci_count=0\n");
		return;
	}
	for (uint32_t dev = 0; dev < 32; dev++) {
		for (uint32_t fn = 0; fn < 8; fn++) {
			uint32_t id = ecam_read32(bus, dev, fn, 0);

			if ((id & 0xffff) == 0xffff) {
				if (fn == 0)
					break;
				continue;
			}
			uint32_t class = ecam_read32(bus, dev, fn, 8) >> 8;
			uint32_t hdr = ecam_read32(bus, dev, fn, 0xc) >> 16 & 0xff;

			probe_printf("PROBE pci dev=%02x:%02x.%u id=%04x:%04x class=%06x\n",
				     bus, dev, fn, id & 0xffff, id >> 16, class);
			count++;
			if (fn == 0 && !(hdr & 0x80))
				break;			/* single-function device */
		}
	}
	probe_printf("PROBE pci_count=%u\n", count);
}

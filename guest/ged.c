/* The ACPI power button of a hardware-reduced platform: a Generic Event
 * Device (ACPI0013) whose interrupt acpi.c found in the DSDT. The probe has
 * no AML interpreter, so it neither runs _EVT nor reads the event selector:
 * the GED's interrupt alone means "power button" (the only event vireo and
 * QEMU microvm signal through it).
 *
 * CPL3 cannot set IF here (cpu.c), so the interrupt is taken inside
 * SYS_WAIT_IRQ; code that spins at CPL3 instead (cpuburn) sees it pending
 * in the local APIC's IRR. */
#include "probe.h"
#include "virtio.h"		/* parse_u64 */

#define MSR_X2APIC_IRR0	0x820		/* IRR bits 0-31; +1 per 32 vectors */
#define WAIT_SLICE_NS	100000000ull	/* SYS_WAIT_IRQ bound: 100 ms */

static volatile uint32_t ged_irqs;

static void ged_irq(void)
{
	ged_irqs++;
}

/* Routes the GED's GSI to this CPU, as its descriptor says (edge/level,
 * high/low). Returns -1 without a GED, IOAPIC or x2APIC. */
int ged_arm(void)
{
	uint32_t mode = 0;

	if (acpi.ged_gsi < 0 || !acpi.ioapic_base || x2apic_enable())
		return -1;
	if (acpi.ged_flags & AML_IRQ_ACTIVE_LOW)
		mode |= IOAPIC_ACTIVE_LOW;
	if (!(acpi.ged_flags & AML_IRQ_EDGE))
		mode |= IOAPIC_LEVEL;
	outb(0x21, 0xff);		/* mask both 8259s: an ISA GSI must come */
	outb(0xa1, 0xff);		/* through the IOAPIC only */
	irq_register(VEC_GED, ged_irq);
	ioapic_route((uint32_t)acpi.ged_gsi, VEC_GED, x2apic_id(), mode);
	return 0;
}

/* Taken, or pending in the IRR (a CPL0 round trip: call it sparingly). */
bool ged_pressed(void)
{
	if (ged_irqs)
		return true;
	return rdmsr(MSR_X2APIC_IRR0 + VEC_GED / 32) & (1u << (VEC_GED % 32));
}

/* Scenario "wait[=MS]": idle until the power button (or MS ms; default
 * forever), then power off. */
void scn_wait(const char *arg)
{
	uint64_t ms = parse_u64(arg, 0), end = clock_ns() + ms * 1000000;

	if (ged_arm()) {
		probe_printf("PROBE wait_error=no-ged\n");
		probe_exit(1);
	}
	probe_printf("PROBE wait ged_gsi=%d trigger=%s polarity=%s\n", acpi.ged_gsi,
		     acpi.ged_flags & AML_IRQ_EDGE ? "edge" : "level",
		     acpi.ged_flags & AML_IRQ_ACTIVE_LOW ? "low" : "high");
	while (!ged_irqs) {
		uint64_t now = clock_ns(), slice = WAIT_SLICE_NS;

		if (ms && now >= end) {
			probe_printf("PROBE wait_timeout=1\n");
			return;
		}
		if (ms && end - now < slice)
			slice = end - now;
		/* APIC timer ticks are ns: KVM's APIC bus runs at 1 GHz. */
		sys_call(SYS_WAIT_IRQ, slice, 0);
	}
	probe_printf("PROBE power_button=1\n");
}

/* x2APIC and AP bring-up. APs are started one at a time (they share the
 * trampoline and ap_boot_index) with INIT / SIPI / SIPI through the ICR
 * MSR; each reaches CPL3 in ap_main, reports, and halts. */
#include "probe.h"

#define MSR_APIC_BASE	0x1b
#define MSR_X2APIC_ID	0x802
#define MSR_X2APIC_SVR	0x80f
#define MSR_X2APIC_ICR	0x830
#define ICR_INIT	0x4500		/* INIT, level assert */
#define ICR_SIPI	0x4600		/* start-up, level assert */

static volatile uint32_t ap_started;
static volatile uint32_t cpus_up;

/* Switches this CPU's local APIC to x2APIC mode and software-enables it. */
int x2apic_enable(void)
{
	uint32_t r[4];
	uint64_t base;

	cpuid(1, 0, r);
	if (!(r[2] & (1u << 21)))
		return -1;
	base = rdmsr(MSR_APIC_BASE);
	if ((base & 0xc00) != 0xc00)
		wrmsr(MSR_APIC_BASE, base | 0xc00);	/* EN | EXTD */
	wrmsr(MSR_X2APIC_SVR, 0x100 | VEC_SPURIOUS);	/* software enable */
	return 0;
}

uint32_t x2apic_id(void)
{
	return (uint32_t)rdmsr(MSR_X2APIC_ID);
}

__attribute__((noreturn)) void ap_main(uint32_t cpu)
{
	(void)cpu;
	__atomic_store_n(&ap_started, 1, __ATOMIC_RELEASE);
	if (x2apic_enable())
		probe_printf("PROBE error=no-x2apic\n");
	else
		probe_printf("PROBE cpu_up apic_id=%u\n", x2apic_id());
	__atomic_fetch_add(&cpus_up, 1, __ATOMIC_RELEASE);
	halt_forever();
}

static bool wait_flag(volatile uint32_t *flag, uint32_t want, uint64_t ms)
{
	uint64_t end = clock_ns() + ms * 1000000;

	while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != want) {
		if (clock_ns() > end)
			return false;
		cpu_relax();
	}
	return true;
}

static bool start_ap(uint32_t apic_id, uint32_t index)
{
	uint64_t dest = (uint64_t)apic_id << 32;

	ap_boot_index = index;
	__atomic_store_n(&ap_started, 0, __ATOMIC_RELEASE);
	wrmsr(MSR_X2APIC_ICR, dest | ICR_INIT);
	clock_delay_us(10000);
	for (int i = 0; i < 2; i++) {
		wrmsr(MSR_X2APIC_ICR, dest | ICR_SIPI | (AP_TRAMP_PADDR >> 12));
		/* The AP's way to CPL3 is emulated; with 8 vCPUs on 2 host
		 * cores it can take a while. A second SIPI is ignored by an
		 * AP that already runs. */
		if (wait_flag(&ap_started, 1, i ? 5000 : 300))
			return true;
	}
	return false;
}

/* Starts every enabled CPU of the MADT; returns how many report, BSP included. */
int smp_start_aps(void)
{
	uint32_t bsp = x2apic_id(), index = 1, expected = 1;
	int n = acpi.ncpus < MAX_CPUS ? acpi.ncpus : MAX_CPUS;

	probe_memcpy((void *)AP_TRAMP_PADDR, ap_tramp_start,
		     (size_t)(ap_tramp_end - ap_tramp_start));
	cpus_up = 1;
	for (int i = 0; i < n; i++) {
		if (acpi.apic_ids[i] == bsp)
			continue;
		if (index >= MAX_CPUS)
			break;
		/* A late AP must not share a stack with the next one. */
		if (start_ap(acpi.apic_ids[i], index++))
			expected++;
		else
			probe_printf("PROBE cpu_timeout apic_id=%u\n", acpi.apic_ids[i]);
	}
	wait_flag(&cpus_up, expected, 5000);
	return (int)__atomic_load_n(&cpus_up, __ATOMIC_ACQUIRE);
}

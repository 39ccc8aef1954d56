/* Time source: kvmclock when the hypervisor offers it (read from CPL3, no
 * exits), else the TSC with a frequency from CPUID. Only the BSP reads it. */
#include "probe.h"

#define MSR_KVM_SYSTEM_TIME_NEW	0x4b564d01
#define MSR_KVM_STEAL_TIME	0x4b564d03
#define KVM_FEATURE_CLOCKSOURCE2	(1u << 3)
#define KVM_FEATURE_STEAL_TIME	(1u << 5)

/* pvclock_vcpu_time_info (Linux arch/x86/include/asm/pvclock-abi.h) */
struct pvclock {
	uint32_t version, pad0;
	uint64_t tsc_timestamp, system_time;
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags, pad[2];
} __attribute__((packed, aligned(64)));

/* kvm_steal_time (Linux arch/x86/include/uapi/asm/kvm_para.h), 64 bytes */
struct steal_time {
	uint64_t steal;
	uint32_t version, flags;
	uint8_t preempted, pad[47];
} __attribute__((packed, aligned(64)));

static struct pvclock pvclock;
static struct steal_time steal_area;
static bool use_steal;
static bool use_kvmclock;
static uint64_t tsc_hz;

static uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

/* Highest hypervisor leaf if it is KVM ("KVMKVMKVM\0\0\0"), else 0. */
static uint32_t kvm_max_leaf(void)
{
	uint32_t r[4];

	cpuid(1, 0, r);
	if (!(r[2] & (1u << 31)))	/* no hypervisor bit */
		return 0;
	cpuid(0x40000000, 0, r);
	if (r[1] != 0x4b4d564b || r[2] != 0x564b4d56 || r[3] != 0x4d)
		return 0;
	return r[0] < 0x40000001 ? 0x40000001 : r[0];
}

static uint64_t tsc_frequency(uint32_t kvm_max)
{
	uint32_t r[4];

	cpuid(0, 0, r);
	if (r[0] >= 0x15) {
		cpuid(0x15, 0, r);	/* TSC/crystal ratio ebx/eax, crystal ecx Hz */
		if (r[0] && r[1] && r[2])
			return (uint64_t)r[2] * r[1] / r[0];
	}
	cpuid(0, 0, r);
	if (r[0] >= 0x16) {
		cpuid(0x16, 0, r);	/* base MHz */
		if (r[0])
			return (uint64_t)r[0] * 1000000;
	}
	if (kvm_max >= 0x40000010) {
		cpuid(0x40000010, 0, r);	/* TSC kHz (VMware/QEMU leaf) */
		if (r[0])
			return (uint64_t)r[0] * 1000;
	}
	return 0;
}

/* Last resort: count TSC ticks over 10 M ticks of the x2APIC timer, which
 * KVM's in-kernel local APIC runs at 1 GHz. */
static uint64_t tsc_calibrate_apic(void)
{
	uint64_t c0, c1, t0, t1;

	if (x2apic_enable())
		return 0;
	wrmsr(0x83e, 0xb);			/* divide by 1 */
	wrmsr(0x832, 1u << 16 | VEC_TIMER);	/* masked, one-shot */
	wrmsr(0x838, 0xffffffff);
	c0 = rdmsr(0x839);
	t0 = rdtsc();
	for (int i = 0; i < 1000000; i++) {
		c1 = rdmsr(0x839);
		t1 = rdtsc();
		if (c0 - c1 >= 10000000)
			break;
	}
	wrmsr(0x838, 0);
	if (c0 <= c1)
		return 0;
	return (t1 - t0) * 1000000000 / (c0 - c1);
}

/* Returns the clock source name for the report. allow_kvmclock false
 * tests the TSC paths on a host that has kvmclock. */
const char *clock_init(bool allow_kvmclock)
{
	uint32_t r[4], kvm_max = kvm_max_leaf();

	if (kvm_max && allow_kvmclock) {
		cpuid(0x40000001, 0, r);
		if (r[0] & KVM_FEATURE_CLOCKSOURCE2) {
			wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uintptr_t)&pvclock | 1);
			if (__atomic_load_n(&pvclock.version, __ATOMIC_ACQUIRE)) {
				use_kvmclock = true;
				return "kvmclock";
			}
		}
	}
	tsc_hz = tsc_frequency(kvm_max);
	if (tsc_hz)
		return "tsc";
	tsc_hz = tsc_calibrate_apic();
	if (tsc_hz)
		return "tsc-apic";
	tsc_hz = 1000000000;		/* a guess, reported as such */
	return "tsc-guess";
}

static uint64_t kvmclock_ns(void)
{
	uint32_t v;
	uint64_t ns;

	do {
		v = __atomic_load_n(&pvclock.version, __ATOMIC_ACQUIRE);
		uint64_t delta = rdtsc() - pvclock.tsc_timestamp;

		if (pvclock.tsc_shift < 0)
			delta >>= -pvclock.tsc_shift;
		else
			delta <<= pvclock.tsc_shift;
		ns = pvclock.system_time +
		     (uint64_t)(((unsigned __int128)delta * pvclock.tsc_to_system_mul) >> 32);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
	} while ((v & 1) || v != __atomic_load_n(&pvclock.version, __ATOMIC_ACQUIRE));
	return ns;
}

uint64_t clock_ns(void)
{
	if (use_kvmclock)
		return kvmclock_ns();
	uint64_t t = rdtsc();	/* split to avoid a 128-bit division */

	return t / tsc_hz * 1000000000 + t % tsc_hz * 1000000000 / tsc_hz;
}

void clock_delay_us(uint64_t us)
{
	uint64_t end = clock_ns() + us * 1000;

	while (clock_ns() < end)
		cpu_relax();
}

/* Steal time: how long this vCPU was runnable on the host but waiting for
 * a host CPU, which KVM keeps in steal_area once the guest enables it
 * (only the BSP does here). False if the hypervisor does not offer it. */
bool steal_init(void)
{
	uint32_t r[4];

	if (use_steal)
		return true;
	if (!kvm_max_leaf())
		return false;
	cpuid(0x40000001, 0, r);
	if (!(r[0] & KVM_FEATURE_STEAL_TIME))
		return false;
	wrmsr(MSR_KVM_STEAL_TIME, (uintptr_t)&steal_area | 1);
	use_steal = true;
	return true;
}

uint64_t steal_ns(void)
{
	uint32_t v;
	uint64_t ns;

	if (!use_steal)
		return 0;
	do {	/* an odd version: KVM is updating it */
		v = __atomic_load_n(&steal_area.version, __ATOMIC_ACQUIRE);
		ns = steal_area.steal;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
	} while ((v & 1) || v != __atomic_load_n(&steal_area.version, __ATOMIC_ACQUIRE));
	return ns;
}

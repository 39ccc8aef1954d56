/* Guest CPUID: KVM's supported list, plus the hypervisor bit, x2APIC, the
 * vCPU's APIC id and a flat topology (one socket, N cores, 1 thread each).
 * On a host without hardware virtualization, features the CPL0 emulator
 * cannot execute are hidden (DESIGN §5). */
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <sys/ioctl.h>

#include "vireo/log.h"
#include "vireo/vmm.h"

#define CPUID_MAX_ENTRIES 256

/* Leaf 1 ECX */
#define F1_ECX_CX16       (1u << 13)
#define F1_ECX_X2APIC     (1u << 21)
#define F1_ECX_TSC_DEADLINE (1u << 24)
#define F1_ECX_XSAVE      (1u << 26)
#define F1_ECX_OSXSAVE    (1u << 27)
#define F1_ECX_AVX        (1u << 28)
#define F1_ECX_HYPERVISOR (1u << 31)
/* Leaf 7.0 EBX: AVX2, AVX-512 family; ECX/EDX AVX-512 and AMX bits all need XSAVE. */
#define F7_EBX_AVX_MASK   ((1u << 5) | (1u << 16) | (1u << 17) | (1u << 21) | \
			   (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))

static unsigned int bits_for(unsigned int count)
{
	unsigned int bits = 0;

	while ((1u << bits) < count)
		bits++;
	return bits;
}

static void cpuid_topology(struct kvm_cpuid_entry2 *e, unsigned int id, unsigned int ncpus)
{
	unsigned int level = e->index;

	e->edx = id;
	if (level == 0) {          /* SMT: one thread per core */
		e->eax = 0;
		e->ebx = 1;
		e->ecx = (1u << 8) | level;
	} else if (level == 1) {   /* cores */
		e->eax = bits_for(ncpus);
		e->ebx = ncpus;
		e->ecx = (2u << 8) | level;
	} else {
		e->eax = e->ebx = 0;
		e->ecx = level;
	}
}

static void cpuid_fix_entry(struct kvm_cpuid_entry2 *e, const struct vm *vm, unsigned int id,
			    bool tsc_deadline)
{
	switch (e->function) {
	case 1:
		e->ebx = (e->ebx & 0x0000ffffu) | (id << 24) | (vm->ncpus_hint << 16);
		e->edx |= 1u << 28; /* HTT: the logical count in EBX is valid */
		e->ecx |= F1_ECX_HYPERVISOR | F1_ECX_X2APIC;
		/* The in-kernel LAPIC emulates the TSC-deadline timer, but KVM
		 * leaves it out of KVM_GET_SUPPORTED_CPUID (it needs the in-kernel
		 * irqchip, which we always create): as QEMU does, say so. Without
		 * it Linux calibrates the LAPIC timer against the PIT's ticks,
		 * and on a loaded host disables it ("APIC timer disabled due to
		 * verification failure"). */
		if (tsc_deadline)
			e->ecx |= F1_ECX_TSC_DEADLINE;
		if (!vm->hw_virt)
			e->ecx &= ~(F1_ECX_CX16 | F1_ECX_XSAVE | F1_ECX_OSXSAVE | F1_ECX_AVX);
		break;
	case 7:
		if (!vm->hw_virt && e->index == 0) {
			e->ebx &= ~F7_EBX_AVX_MASK;
			e->ecx = 0;
			e->edx = 0;
		}
		break;
	case 0xb:
	case 0x1f:
		cpuid_topology(e, id, vm->ncpus_hint);
		break;
	case 0xd:
		if (!vm->hw_virt)
			e->eax = e->ebx = e->ecx = e->edx = 0;
		break;
	}
}

int cpuid_setup(struct vm *vm, struct vcpu *vcpu)
{
	struct kvm_cpuid2 *cpuid;
	bool tsc_deadline;
	int ret = 0;

	cpuid = calloc(1, sizeof(*cpuid) + CPUID_MAX_ENTRIES * sizeof(cpuid->entries[0]));
	if (!cpuid)
		return err_set(-ENOMEM, "out of memory");
	cpuid->nent = CPUID_MAX_ENTRIES;
	if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
		ret = err_set(-errno, "KVM_GET_SUPPORTED_CPUID: %m");
		goto out;
	}
	tsc_deadline = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0;
	for (unsigned int i = 0; i < cpuid->nent; i++)
		cpuid_fix_entry(&cpuid->entries[i], vm, vcpu->id, tsc_deadline);
	if (ioctl(vcpu->fd, KVM_SET_CPUID2, cpuid) < 0)
		ret = err_set(-errno, "vCPU %u: KVM_SET_CPUID2: %m", vcpu->id);
out:
	free(cpuid);
	return ret;
}

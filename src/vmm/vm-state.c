/* Save and restore of the VM's in-kernel devices and of every vCPU:
 *   STATE_SEC_IRQCHIP: three blobs, struct kvm_irqchip of the PIC master,
 *                      the PIC slave and the IOAPIC;
 *   STATE_SEC_PIT:     one blob, struct kvm_pit_state2;
 *   STATE_SEC_CLOCK:   u64 kvmclock (ns), u32 KVM's flags when taken;
 *   STATE_SEC_VCPU:    per vCPU (src/vmm/vcpu-state.c).
 * The VM must be paused (or not started). Restore reads each part whole
 * before it sets it in KVM; it restores into a fresh VM, which the caller
 * discards on any error (the file was checked whole before). */
#include <errno.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vireo/log.h"
#include "vireo/state.h"
#include "vireo/vmm.h"

#define NCHIPS 3 /* KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE, _IOAPIC */

struct vm_image {
	struct kvm_irqchip chips[NCHIPS];
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
};

static int vm_get(struct vm *vm, unsigned long req, const char *name, void *buf)
{
	if (ioctl(vm->vm_fd, req, buf) < 0)
		return err_set(-errno, "%s: %m", name);
	return 0;
}

static int vm_save_kvm(struct vm *vm, struct state_writer *w, struct vm_image *im)
{
	int ret = 0;

	state_begin(w, STATE_SEC_IRQCHIP, 0, STATE_SECTION_CRITICAL);
	for (unsigned int i = 0; i < NCHIPS && !ret; i++) {
		im->chips[i].chip_id = i;
		ret = vm_get(vm, KVM_GET_IRQCHIP, "KVM_GET_IRQCHIP", &im->chips[i]);
		state_put_blob(w, &im->chips[i], sizeof(im->chips[i]));
	}
	state_end(w);
	if (!ret)
		ret = vm_get(vm, KVM_GET_PIT2, "KVM_GET_PIT2", &im->pit);
	state_begin(w, STATE_SEC_PIT, 0, STATE_SECTION_CRITICAL);
	state_put_blob(w, &im->pit, sizeof(im->pit));
	state_end(w);
	/* The guest's time when it was paused (vm_pause), else now. */
	if (!ret && vm->pause_clock_valid)
		im->clock = vm->pause_clock;
	else if (!ret)
		ret = vm_get(vm, KVM_GET_CLOCK, "KVM_GET_CLOCK", &im->clock);
	state_begin(w, STATE_SEC_CLOCK, 0, STATE_SECTION_CRITICAL);
	state_put_u64(w, im->clock.clock);
	state_put_u32(w, im->clock.flags);
	state_end(w);
	return ret;
}

int vm_save_state(struct vm *vm, struct state_writer *w)
{
	struct vm_image im;
	int ret;

	memset(&im, 0, sizeof(im));
	ret = vm_save_kvm(vm, w, &im);
	for (unsigned int i = 0; i < vm->ncpus && !ret; i++)
		ret = vcpu_save(&vm->vcpus[i], w);
	return ret;
}

static int vm_parse(const struct state_reader *r, struct vm_image *im)
{
	struct state_cursor c;
	int ret = state_section(r, STATE_SEC_IRQCHIP, 0, &c);

	for (unsigned int i = 0; i < NCHIPS && !ret; i++)
		state_get_blob(&c, &im->chips[i], sizeof(im->chips[i]));
	if (!ret)
		ret = state_done(&c);
	for (unsigned int i = 0; i < NCHIPS && !ret; i++)
		if (im->chips[i].chip_id != i)
			ret = err_set(-EINVAL, "state file: irqchip %u has id %u", i,
				      im->chips[i].chip_id);
	if (!ret && !(ret = state_section(r, STATE_SEC_PIT, 0, &c))) {
		state_get_blob(&c, &im->pit, sizeof(im->pit));
		ret = state_done(&c);
	}
	if (!ret && !(ret = state_section(r, STATE_SEC_CLOCK, 0, &c))) {
		im->clock.clock = state_get_u64(&c);
		state_get_u32(&c); /* the flags are the source host's */
		ret = state_done(&c);
	}
	return ret;
}

int vm_restore_state(struct vm *vm, const struct state_reader *r)
{
	struct vm_image im;
	int ret;

	memset(&im, 0, sizeof(im));
	ret = vm_parse(r, &im);
	for (unsigned int i = 0; i < vm->ncpus && !ret; i++)
		if (!state_has_section(r, STATE_SEC_VCPU, i))
			ret = err_set(-EINVAL, "state file has no vcpu %u section", i);
	if (ret)
		return ret;
	/* The guest's clock goes on from where it stood: no jump for the
	 * time the snapshot spent on disk (as QEMU without KVM_CLOCK_REALTIME). */
	ret = vm_get(vm, KVM_SET_PIT2, "KVM_SET_PIT2", &im.pit);
	if (!ret)
		ret = vm_get(vm, KVM_SET_CLOCK, "KVM_SET_CLOCK", &im.clock);
	for (unsigned int i = 0; i < NCHIPS && !ret; i++)
		ret = vm_get(vm, KVM_SET_IRQCHIP, "KVM_SET_IRQCHIP", &im.chips[i]);
	/* Started paused (vm_start), the VM stays at this instant until resumed. */
	vm->pause_clock = im.clock;
	vm->pause_clock_valid = vm->clock_on_resume = true;
	for (unsigned int i = 0; i < vm->ncpus && !ret; i++)
		ret = vcpu_restore(&vm->vcpus[i], r);
	return ret;
}

/* Save and restore of a vCPU's KVM state (STATE_SEC_VCPU, one section per
 * vCPU). Called on a VM whose vCPUs are parked (vm_pause) or not yet
 * running, from the event-loop or main thread: KVM serialises vCPU ioctls
 * with KVM_RUN itself.
 *
 * Payload, in order (each KVM structure a length-prefixed blob, so a
 * size change between builds is caught rather than misread):
 *   mp_state, regs, sregs, u8 fpu kind (1 XSAVE, 0 legacy FPU) + blob,
 *   xcrs (empty blob without KVM_CAP_XCRS), debugregs, lapic, vcpu_events,
 *   u32 n + n × (u32 index, u64 value) MSRs.
 * Restore writes them back in the order KVM needs (QEMU's and
 * Firecracker's): sregs before MSRs (EFER, APIC base), the LAPIC before
 * the TSC deadline MSR, pending events last. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vireo/log.h"
#include "vireo/state.h"
#include "vireo/vmm.h"

#define FPU_LEGACY 0
#define FPU_XSAVE 1
#define XSAVE_MAX (64u << 10)
#define MSR_MAX 256

struct msr_buf {
	struct kvm_msrs hdr;
	struct kvm_msr_entry e[MSR_MAX];
};

/* The XSAVE area's size: KVM_CAP_XSAVE2 says it when it exceeds 4 KiB. */
static size_t xsave_size(struct vm *vm)
{
	int n = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);

	if (n > (int)sizeof(struct kvm_xsave) && (size_t)n <= XSAVE_MAX)
		return (size_t)n;
	return sizeof(struct kvm_xsave);
}

static int vcpu_get(struct vcpu *v, unsigned long req, const char *name, void *buf)
{
	if (ioctl(v->fd, req, buf) < 0)
		return err_set(-errno, "vCPU %u: %s: %m", v->id, name);
	return 0;
}

static int vcpu_set(struct vcpu *v, unsigned long req, const char *name, const void *buf)
{
	if (ioctl(v->fd, req, buf) < 0)
		return err_set(-errno, "vCPU %u: %s: %m", v->id, name);
	return 0;
}

/* The MSRs KVM saves for migration (KVM_GET_MSR_INDEX_LIST), less any this
 * vCPU cannot read (KVM_GET_MSRS stops at the first failing entry). */
static int vcpu_msr_list(struct vcpu *v, struct msr_buf *m)
{
	struct { struct kvm_msr_list hdr; uint32_t idx[MSR_MAX]; } list = {
		.hdr.nmsrs = MSR_MAX };
	int got;

	if (ioctl(v->vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &list) < 0)
		return err_set(-errno, "KVM_GET_MSR_INDEX_LIST: %m");
	memset(m, 0, sizeof(*m));
	for (uint32_t i = 0; i < list.hdr.nmsrs; i++)
		m->e[i].index = list.idx[i];
	m->hdr.nmsrs = list.hdr.nmsrs;
	while ((got = ioctl(v->fd, KVM_GET_MSRS, m)) >= 0 && (uint32_t)got < m->hdr.nmsrs) {
		log_debug("vCPU %u: MSR 0x%x not readable: not saved", v->id, m->e[got].index);
		memmove(&m->e[got], &m->e[got + 1],
			(m->hdr.nmsrs - (uint32_t)got - 1) * sizeof(m->e[0]));
		m->hdr.nmsrs--;
	}
	return got < 0 ? err_set(-errno, "vCPU %u: KVM_GET_MSRS: %m", v->id) : 0;
}

static int save_fpu(struct vcpu *v, struct state_writer *w)
{
	size_t size = xsave_size(v->vm);
	unsigned long req = size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE;
	struct kvm_fpu fpu;
	void *buf;
	int ret;

	if (ioctl(v->vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) <= 0) {
		ret = vcpu_get(v, KVM_GET_FPU, "KVM_GET_FPU", &fpu);
		state_put_u8(w, FPU_LEGACY);
		state_put_blob(w, &fpu, sizeof(fpu));
		return ret;
	}
	buf = calloc(1, size);
	if (!buf)
		return err_set(-ENOMEM, "out of memory");
	ret = vcpu_get(v, req, "KVM_GET_XSAVE", buf);
	state_put_u8(w, FPU_XSAVE);
	state_put_blob(w, buf, size);
	free(buf);
	return ret;
}

/* The small fixed-size structures, in payload order. */
struct vcpu_regs {
	struct kvm_mp_state mp;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
};

struct vcpu_late {
	struct kvm_xcrs xcrs;
	struct kvm_debugregs dregs;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
};

static int save_late(struct vcpu *v, struct state_writer *w, struct vcpu_late *l)
{
	bool xcrs = ioctl(v->vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
	int ret = xcrs ? vcpu_get(v, KVM_GET_XCRS, "KVM_GET_XCRS", &l->xcrs) : 0;

	if (!ret)
		ret = vcpu_get(v, KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", &l->dregs);
	if (!ret)
		ret = vcpu_get(v, KVM_GET_LAPIC, "KVM_GET_LAPIC", &l->lapic);
	if (!ret)
		ret = vcpu_get(v, KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", &l->events);
	state_put_blob(w, &l->xcrs, xcrs ? sizeof(l->xcrs) : 0);
	state_put_blob(w, &l->dregs, sizeof(l->dregs));
	state_put_blob(w, &l->lapic, sizeof(l->lapic));
	state_put_blob(w, &l->events, sizeof(l->events));
	return ret;
}

int vcpu_save(struct vcpu *v, struct state_writer *w)
{
	struct vcpu_regs r;
	struct vcpu_late l;
	struct msr_buf *m = calloc(1, sizeof(*m));
	int ret;

	if (!m)
		return err_set(-ENOMEM, "out of memory");
	state_begin(w, STATE_SEC_VCPU, v->id, STATE_SECTION_CRITICAL);
	ret = vcpu_get(v, KVM_GET_MP_STATE, "KVM_GET_MP_STATE", &r.mp);
	if (!ret)
		ret = vcpu_get(v, KVM_GET_REGS, "KVM_GET_REGS", &r.regs);
	if (!ret)
		ret = vcpu_get(v, KVM_GET_SREGS, "KVM_GET_SREGS", &r.sregs);
	state_put_blob(w, &r.mp, sizeof(r.mp));
	state_put_blob(w, &r.regs, sizeof(r.regs));
	state_put_blob(w, &r.sregs, sizeof(r.sregs));
	if (!ret)
		ret = save_fpu(v, w);
	if (!ret)
		ret = save_late(v, w, &l);
	if (!ret)
		ret = vcpu_msr_list(v, m);
	state_put_u32(w, m->hdr.nmsrs);
	for (uint32_t i = 0; i < m->hdr.nmsrs; i++) {
		state_put_u32(w, m->e[i].index);
		state_put_u64(w, m->e[i].data);
	}
	state_end(w);
	free(m);
	return ret;
}

/* A vCPU section read whole before any of it goes to KVM. */
struct vcpu_image {
	struct vcpu_regs g;
	uint8_t fpu_kind;
	size_t fpu_len;
	uint8_t fpu[XSAVE_MAX];
	bool xcrs;
	struct vcpu_late l;
	struct msr_buf m;
};

static int vcpu_parse(struct vcpu *v, struct state_cursor *c, struct vcpu_image *im)
{
	uint32_t n;

	state_get_blob(c, &im->g.mp, sizeof(im->g.mp));
	state_get_blob(c, &im->g.regs, sizeof(im->g.regs));
	state_get_blob(c, &im->g.sregs, sizeof(im->g.sregs));
	im->fpu_kind = state_get_u8(c);
	im->fpu_len = state_get_blob_max(c, im->fpu, sizeof(im->fpu));
	im->xcrs = state_get_blob_max(c, &im->l.xcrs, sizeof(im->l.xcrs)) == sizeof(im->l.xcrs);
	state_get_blob(c, &im->l.dregs, sizeof(im->l.dregs));
	state_get_blob(c, &im->l.lapic, sizeof(im->l.lapic));
	state_get_blob(c, &im->l.events, sizeof(im->l.events));
	n = state_get_u32(c);
	if (n > MSR_MAX)
		return err_set(-EINVAL, "vCPU %u: %u MSRs in the state file (at most %d)", v->id, n,
			       MSR_MAX);
	for (uint32_t i = 0; i < n; i++) {
		im->m.e[i].index = state_get_u32(c);
		im->m.e[i].data = state_get_u64(c);
	}
	im->m.hdr.nmsrs = n;
	if (state_done(c))
		return -EINVAL;
	if (im->fpu_kind == FPU_LEGACY ? im->fpu_len != sizeof(struct kvm_fpu) :
	    im->fpu_kind != FPU_XSAVE || im->fpu_len < sizeof(struct kvm_xsave) ||
	    im->fpu_len > xsave_size(v->vm))
		return err_set(-EINVAL, "vCPU %u: the FPU state (%zu bytes) does not fit this host",
			       v->id, im->fpu_len);
	return 0;
}

static int restore_msrs(struct vcpu *v, struct msr_buf *m)
{
	int ret = ioctl(v->fd, KVM_SET_MSRS, m);

	if (ret < 0)
		return err_set(-errno, "vCPU %u: KVM_SET_MSRS: %m", v->id);
	if ((uint32_t)ret < m->hdr.nmsrs)
		return err_set(-EINVAL, "vCPU %u: this host's KVM refuses MSR 0x%x", v->id,
			       m->e[ret].index);
	return 0;
}

/* KVM_SET_XSAVE takes the larger area too (KVM_CAP_XSAVE2). */
static int vcpu_apply(struct vcpu *v, struct vcpu_image *im)
{
	int ret = vcpu_set(v, KVM_SET_MP_STATE, "KVM_SET_MP_STATE", &im->g.mp);

	if (!ret)
		ret = vcpu_set(v, KVM_SET_REGS, "KVM_SET_REGS", &im->g.regs);
	if (!ret)
		ret = vcpu_set(v, KVM_SET_SREGS, "KVM_SET_SREGS", &im->g.sregs);
	if (!ret && im->fpu_kind == FPU_LEGACY)
		ret = vcpu_set(v, KVM_SET_FPU, "KVM_SET_FPU", im->fpu);
	else if (!ret)
		ret = vcpu_set(v, KVM_SET_XSAVE, "KVM_SET_XSAVE", im->fpu);
	if (!ret && im->xcrs)
		ret = vcpu_set(v, KVM_SET_XCRS, "KVM_SET_XCRS", &im->l.xcrs);
	if (!ret)
		ret = vcpu_set(v, KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", &im->l.dregs);
	if (!ret)
		ret = vcpu_set(v, KVM_SET_LAPIC, "KVM_SET_LAPIC", &im->l.lapic);
	if (!ret)
		ret = restore_msrs(v, &im->m);
	if (!ret)
		ret = vcpu_set(v, KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", &im->l.events);
	return ret;
}

int vcpu_restore(struct vcpu *v, const struct state_reader *r)
{
	struct state_cursor c;
	struct vcpu_image *im;
	int ret = state_section(r, STATE_SEC_VCPU, v->id, &c);

	if (ret)
		return ret;
	im = calloc(1, sizeof(*im));
	if (!im)
		return err_set(-ENOMEM, "out of memory");
	ret = vcpu_parse(v, &c, im);
	if (!ret)
		ret = vcpu_apply(v, im);
	free(im);
	return ret;
}

/* vCPU threads: KVM_RUN in a loop and one switch over the exit reason
 * (DESIGN §3.5). Port and MMIO exits go to the range tables in struct bus. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/migrate.h"
#include "vireo/sandbox.h"
#include "vireo/vmm.h"

/* MSRs a Linux guest expects to find initialised (as Firecracker and
 * kvmtool set them). */
static int vcpu_init_msrs(struct vcpu *vcpu)
{
	static const struct { uint32_t index; uint64_t value; } msrs[] = {
		{ 0x174, 0 },                 /* IA32_SYSENTER_CS */
		{ 0x175, 0 },                 /* IA32_SYSENTER_ESP */
		{ 0x176, 0 },                 /* IA32_SYSENTER_EIP */
		{ 0x10, 0 },                  /* IA32_TSC */
		{ 0x1a0, 1 },                 /* IA32_MISC_ENABLE: fast strings */
		{ 0x2ff, (1 << 11) | 6 },     /* MTRRdefType: enabled, write-back */
	};
	enum { N = sizeof(msrs) / sizeof(msrs[0]) };
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry entries[N];
	} req = { .hdr.nmsrs = N };
	int ret;

	for (unsigned int i = 0; i < N; i++) {
		req.entries[i].index = msrs[i].index;
		req.entries[i].data = msrs[i].value;
	}
	ret = ioctl(vcpu->fd, KVM_SET_MSRS, &req);
	if (ret < 0)
		return err_set(-errno, "vCPU %u: KVM_SET_MSRS: %m", vcpu->id);
	if (ret != N)
		log_debug("vCPU %u: KVM accepted %d of %d initial MSRs", vcpu->id, ret, N);
	return 0;
}

int vcpu_init(struct vm *vm, struct vcpu *vcpu, unsigned int id)
{
	int ret;

	vcpu->vm = vm;
	vcpu->id = id;
	vcpu->schedstat_fd = -1;
	vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)id);
	if (vcpu->fd < 0)
		return err_set(-errno, "cannot create vCPU %u: %m", id);
	vcpu->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
	if (vcpu->run == MAP_FAILED) {
		ret = err_set(-errno, "cannot map vCPU %u's run area: %m", id);
		close(vcpu->fd);
		return ret;
	}
	ret = cpuid_setup(vm, vcpu);
	if (ret)
		goto unmap;
	ret = vcpu_init_msrs(vcpu);
	if (ret)
		goto unmap;
	return 0;
unmap:
	munmap(vcpu->run, vm->run_size);
	close(vcpu->fd);
	return ret;
}

static void vcpu_handle_io(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool is_write = run->io.direction == KVM_EXIT_IO_OUT;

	/* String I/O (rep outsb) arrives as count back-to-back accesses. */
	for (uint32_t i = 0; i < run->io.count; i++) {
		bus_access(&vcpu->vm->pio, run->io.port, data, run->io.size, is_write);
		data += run->io.size;
	}
}

static void vcpu_handle_mmio(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;

	if (run->mmio.len > 8)
		return;
	bus_access(&vcpu->vm->mmio, run->mmio.phys_addr, run->mmio.data, run->mmio.len,
		   run->mmio.is_write);
}

static bool vcpu_crashed(struct vcpu *vcpu, const char *why)
{
	fprintf(stderr, "vireo: guest crashed: vCPU %u: %s\n", vcpu->id, why);
	vcpu_dump_registers(vcpu);
	vm_request_stop_why(vcpu->vm, VM_EXIT_GUEST_CRASH, "vCPU %u: %s", vcpu->id, why);
	return false;
}

static bool vcpu_handle_system_event(struct vcpu *vcpu)
{
	switch (vcpu->run->system_event.type) {
	case KVM_SYSTEM_EVENT_SHUTDOWN:
		vm_request_stop(vcpu->vm, VM_EXIT_POWEROFF);
		return false;
	case KVM_SYSTEM_EVENT_RESET:
		vm_request_stop(vcpu->vm, VM_EXIT_REBOOT);
		return false;
	default:
		return vcpu_crashed(vcpu, "unexpected system event");
	}
}

bool vcpu_handle_exit(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	char why[96];

	vcpu->exits++;
	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		vcpu_handle_io(vcpu);
		return true;
	case KVM_EXIT_MMIO:
		vcpu_handle_mmio(vcpu);
		return true;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_HLT:
		return vcpu_crashed(vcpu, "halted with no in-kernel irqchip to wake it");
	case KVM_EXIT_SHUTDOWN:
		/* A triple fault resets a PC (and QEMU): Linux's reboot=t relies
		 * on it. The registers help when a guest crashes this way. */
		fprintf(stderr, "vireo: vCPU %u: triple fault: the machine resets\n", vcpu->id);
		vcpu_dump_registers(vcpu);
		vm_request_stop_why(vcpu->vm, VM_EXIT_REBOOT, "vCPU %u: triple fault", vcpu->id);
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		return vcpu_handle_system_event(vcpu);
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(why, sizeof(why), "VM entry failed (hardware reason 0x%llx)",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		return vcpu_crashed(vcpu, why);
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(why, sizeof(why), "KVM internal error %u%s", run->internal.suberror,
			 run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ?
			 " (instruction emulation failed)" : "");
		return vcpu_crashed(vcpu, why);
	default:
		snprintf(why, sizeof(why), "unhandled exit reason %u", run->exit_reason);
		return vcpu_crashed(vcpu, why);
	}
}

/* vireo run --vcpu-cgroup: the daemon caps the vCPU threads apart from the
 * VMM's own (control, I/O) threads. Each vCPU thread enters that cgroup
 * itself, so no thread ever runs outside it, even after a restart. */
static void vcpu_enter_cgroup(struct vcpu *vcpu)
{
	char tid[16];
	int n = snprintf(tid, sizeof(tid), "%d", vcpu->tid);

	/* One descriptor, opened before the VMM dropped its privileges; the
	 * kernel checks the opener's credentials, and each write moves one
	 * thread. */
	if (write(vcpu->vm->vcpu_cgroup_fd, tid, (size_t)n) != n)
		log_warn("vCPU %u: cannot enter cgroup %s: %s", vcpu->id, vcpu->vm->vcpu_cgroup,
			 strerror(errno));
}

/* Before the sandbox: what the thread needs from the host is opened, then
 * it waits for vm_start(). False: the VM stopped before it started. */
static bool vcpu_wait_start(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	bool go;
	int ret;

	/* A file, not the /proc/self/task directory: a directory descriptor
	 * would lead out of the jail (openat "../.."). */
	vcpu->schedstat_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
	ret = sandbox_restrict_thread();
	if (ret) {
		fprintf(stderr, "vireo: vCPU %u: %s\n", vcpu->id, err_get());
		vm_request_stop(vm, VM_EXIT_VMM_ERROR);
	}
	pthread_mutex_lock(&vm->stop_lock);
	vm->vcpus_ready++;
	pthread_cond_broadcast(&vm->state_cond);
	while (vm->state == VM_STATE_CREATED && !vm->stop_requested)
		pthread_cond_wait(&vm->state_cond, &vm->stop_lock);
	go = !vm->stop_requested;
	pthread_mutex_unlock(&vm->stop_lock);
	return go;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	char name[16];

	snprintf(name, sizeof(name), "vcpu%u", vcpu->id);
	pthread_setname_np(pthread_self(), name);
	__atomic_store_n(&vcpu->tid, (int)gettid(), __ATOMIC_RELEASE);
	if (vcpu->vm->vcpu_cgroup_fd >= 0)
		vcpu_enter_cgroup(vcpu);
	if (!vcpu_wait_start(vcpu))
		return NULL;
	for (;;) {
		if (ioctl(vcpu->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				/* Kicked: stop, or pause (vcpu_park). */
				if (__atomic_load_n(&vcpu->run->immediate_exit, __ATOMIC_SEQ_CST) &&
				    vcpu_park(vcpu))
					break;
				vcpu_throttle(vcpu);
				continue;
			}
			int err = errno;

			fprintf(stderr, "vireo: vCPU %u: KVM_RUN: %s\n", vcpu->id, strerror(err));
			vm_request_stop_why(vcpu->vm, VM_EXIT_VMM_ERROR, "vCPU %u: KVM_RUN: %s",
					    vcpu->id, strerror(err));
			break;
		}
		if (!vcpu_handle_exit(vcpu))
			break;
	}
	return NULL;
}

int vm_start_vcpus(struct vm *vm)
{
	int ready = vm_memory_ready(vm);

	if (ready)
		return ready;
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		int ret = pthread_create(&vm->vcpus[i].thread, NULL, vcpu_thread, &vm->vcpus[i]);

		if (ret) {
			vm_request_stop(vm, VM_EXIT_VMM_ERROR);
			return err_set(-ret, "cannot start vCPU thread %u: %s", i, strerror(ret));
		}
		/* Release: a vCPU already running may read .thread in vm_request_stop(). */
		__atomic_store_n(&vm->vcpus[i].thread_started, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_lock(&vm->stop_lock);
	while (vm->vcpus_ready < vm->ncpus && !vm->stop_requested)
		pthread_cond_wait(&vm->state_cond, &vm->stop_lock);
	ready = vm->stop_requested ? err_set(-ESHUTDOWN, "the VM stopped while starting") : 0;
	pthread_mutex_unlock(&vm->stop_lock);
	return ready;
}

int vm_start(struct vm *vm)
{
	int ret = vm->ncpus && !vm->vcpus[0].thread_started ? vm_start_vcpus(vm) : 0;

	if (ret)
		return ret;
	pthread_mutex_lock(&vm->stop_lock);
	if (vm->state == VM_STATE_CREATED && vm->start_paused) {
		/* Each vCPU leaves its first KVM_RUN at once and parks. */
		vm->pause_requested = true;
		for (unsigned int i = 0; i < vm->ncpus; i++)
			__atomic_store_n(&vm->vcpus[i].run->immediate_exit, 1, __ATOMIC_SEQ_CST);
		vm->state = VM_STATE_PAUSED;
	} else if (vm->state == VM_STATE_CREATED) {
		vm->state = VM_STATE_RUNNING;
		vm->pause_clock_valid = vm->clock_on_resume = false;
	}
	pthread_cond_broadcast(&vm->state_cond);
	pthread_mutex_unlock(&vm->stop_lock);
	return 0;
}

void vcpu_dump_registers(struct vcpu *vcpu)
{
	struct kvm_regs r;
	struct kvm_sregs s;

	if (ioctl(vcpu->fd, KVM_GET_REGS, &r) < 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &s) < 0) {
		fprintf(stderr, "  (registers unavailable: %s)\n", strerror(errno));
		return;
	}
	fprintf(stderr,
		"  rip=%016llx rsp=%016llx rflags=%016llx\n"
		"  rax=%016llx rbx=%016llx rcx=%016llx rdx=%016llx\n"
		"  rsi=%016llx rdi=%016llx rbp=%016llx\n"
		"  r8=%016llx  r9=%016llx  r10=%016llx r11=%016llx\n"
		"  r12=%016llx r13=%016llx r14=%016llx r15=%016llx\n"
		"  cr0=%016llx cr2=%016llx cr3=%016llx cr4=%016llx efer=%016llx\n"
		"  cs=%04x (base %llx dpl %u l %u) ss=%04x ds=%04x\n",
		r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp,
		r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
		s.cr0, s.cr2, s.cr3, s.cr4, s.efer,
		s.cs.selector, s.cs.base, s.cs.dpl, s.cs.l, s.ss.selector, s.ds.selector);
}

/* The VM state machine (DESIGN §3.5):
 *
 *   created --vm_start--> running --vm_pause--> paused --vm_resume--> running
 *   any state --vm_request_stop--> stopped (final)
 *
 * Pause sets every vCPU's kvm_run.immediate_exit and kicks its thread with
 * SIGUSR1, so KVM_RUN returns EINTR at once; the thread then parks in
 * vcpu_park() on state_cond until resume or stop. vm_pause() returns once
 * every vCPU thread is parked, so a paused VM runs no guest code. All of
 * this state is guarded by vm->stop_lock. */
#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "vireo/log.h"
#include "vireo/vmm.h"

/* How long vm_pause() waits for the vCPUs to park: a kicked vCPU leaves
 * KVM_RUN within microseconds, unless it is stuck in a device handler. */
#define PAUSE_TIMEOUT_MS 2000

const char *vm_state_name(enum vm_state state)
{
	switch (state) {
	case VM_STATE_CREATED: return "created";
	case VM_STATE_RUNNING: return "running";
	case VM_STATE_PAUSED: return "paused";
	case VM_STATE_STOPPED: return "stopped";
	}
	return "unknown";
}

enum vm_state vm_get_state(struct vm *vm)
{
	enum vm_state s;

	pthread_mutex_lock(&vm->stop_lock);
	s = vm->state;
	pthread_mutex_unlock(&vm->stop_lock);
	return s;
}

static unsigned int vm_threads_started(const struct vm *vm)
{
	unsigned int n = 0;

	for (unsigned int i = 0; i < vm->ncpus; i++)
		n += vm->vcpus[i].thread_started;
	return n;
}

static void vm_kick_all(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
		if (v->thread_started)
			pthread_kill(v->thread, SIGUSR1);
	}
}

static int vm_wait_parked(struct vm *vm, unsigned int want)
{
	struct timespec deadline;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += PAUSE_TIMEOUT_MS / 1000;
	deadline.tv_nsec += (PAUSE_TIMEOUT_MS % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	while (vm->parked < want && !vm->stop_requested && ret != ETIMEDOUT)
		ret = pthread_cond_timedwait(&vm->state_cond, &vm->stop_lock, &deadline);
	if (vm->stop_requested)
		return err_set(-ESHUTDOWN, "the VM stopped while pausing");
	if (vm->parked < want)
		return err_set(-ETIMEDOUT, "only %u of %u vCPUs paused within %d ms",
			       vm->parked, want, PAUSE_TIMEOUT_MS);
	return 0;
}

int vm_pause(struct vm *vm)
{
	unsigned int want = vm_threads_started(vm);
	int ret;

	pthread_mutex_lock(&vm->stop_lock);
	if (vm->state != VM_STATE_RUNNING) {
		ret = err_set(-EBUSY, "cannot pause: the VM is %s", vm_state_name(vm->state));
		goto out;
	}
	vm->pause_requested = true;
	vm_kick_all(vm);
	ret = vm_wait_parked(vm, want);
	if (ret == 0) {
		vm->state = VM_STATE_PAUSED;
		/* kvmclock goes on while paused: a snapshot taken later records
		 * the guest's time at this instant, not the host's at saving. */
		vm->pause_clock_valid = ioctl(vm->vm_fd, KVM_GET_CLOCK, &vm->pause_clock) == 0;
	} else if (!vm->stop_requested) {
		/* Give up: release the vCPUs that did park. */
		vm->pause_requested = false;
		pthread_cond_broadcast(&vm->state_cond);
	}
out:
	pthread_mutex_unlock(&vm->stop_lock);
	return ret;
}

int vm_resume(struct vm *vm)
{
	int ret = 0;

	pthread_mutex_lock(&vm->stop_lock);
	if (vm->state != VM_STATE_PAUSED) {
		ret = err_set(-EBUSY, "cannot resume: the VM is %s", vm_state_name(vm->state));
	} else {
		/* A restored VM that started paused goes on from its snapshot's
		 * instant, however long it waited. */
		if (vm->clock_on_resume && ioctl(vm->vm_fd, KVM_SET_CLOCK, &vm->pause_clock) < 0)
			log_warn("KVM_SET_CLOCK: %s", strerror(errno));
		vm->pause_requested = false;
		vm->pause_clock_valid = vm->clock_on_resume = false;
		vm->state = VM_STATE_RUNNING;
		pthread_cond_broadcast(&vm->state_cond);
	}
	pthread_mutex_unlock(&vm->stop_lock);
	return ret;
}

bool vcpu_park(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	bool stop;

	pthread_mutex_lock(&vm->stop_lock);
	if (vm->pause_requested && !vm->stop_requested) {
		vm->parked++;
		pthread_cond_broadcast(&vm->state_cond);
		while (vm->pause_requested && !vm->stop_requested)
			pthread_cond_wait(&vm->state_cond, &vm->stop_lock);
		vm->parked--;
	}
	stop = vm->stop_requested;
	/* Cleared under the lock, so a new pause cannot slip in between. */
	if (!stop)
		__atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&vm->stop_lock);
	return stop;
}

/* KVM VM lifecycle: /dev/kvm, the VM with its in-kernel irqchip and PIT,
 * guest memory slots, vCPUs, and the stop protocol. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/vmm.h"

/* KVM without hardware virtualization underneath (DESIGN §5): the CPU has
 * neither vmx nor svm, yet /dev/kvm works. */
static bool host_has_hw_virt(void)
{
	char line[4096];
	bool found = false;
	FILE *f = fopen("/proc/cpuinfo", "r");

	if (!f)
		return true;
	while (!found && fgets(line, sizeof(line), f))
		if (!strncmp(line, "flags", 5))
			found = strstr(line, " vmx") || strstr(line, " svm");
	fclose(f);
	return found;
}

static int kvm_open(struct vm *vm)
{
	int version, max;

	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0)
		return err_set(-errno, "cannot open /dev/kvm: %m%s",
			       errno == ENOENT ? " (is the kvm module loaded?)" :
			       errno == EACCES ? " (add yourself to the kvm group)" : "");
	version = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION)
		return err_set(-ENOTSUP, "unsupported KVM API version %d", version);
	max = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
	if (max <= 0)
		max = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
	vm->max_cpus = max > 0 ? (unsigned int)max : 4;
	/* The MADT lists CPUs with 8-bit APIC ids (0xff is broadcast). */
	if (vm->max_cpus > 255)
		vm->max_cpus = 255;
	vm->run_size = (size_t)ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	vm->hw_virt = host_has_hw_virt();
	return 0;
}

static int vm_setup_platform(struct vm *vm)
{
	/* The flag has KVM serve port 0x61 too (PIT channel 2's gate and
	 * output): firmware calibrates its TSC timer by polling it (SeaBIOS
	 * loops forever without it), and so does Linux's quick PIT calibration. */
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	uint64_t identity_map = 0xfeffc000;

	/* Intel VMX needs these three pages for real-mode emulation; other
	 * backends ignore or refuse them, which is harmless. */
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfeffd000UL) < 0)
		log_debug("KVM_SET_TSS_ADDR: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &identity_map) < 0)
		log_debug("KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return err_set(-errno, "cannot create the in-kernel irqchip: %m");
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
		return err_set(-errno, "cannot create the in-kernel PIT: %m");
	return irq_routing_init(vm);
}

static int vm_map_memory(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->mem.nregions; i++) {
		const struct mem_region *r = &vm->mem.regions[i];
		struct kvm_userspace_memory_region slot = {
			.slot = i,
			.guest_phys_addr = r->gpa,
			.memory_size = r->size,
			.userspace_addr = (uint64_t)(uintptr_t)(vm->mem.host + r->offset),
		};

		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0) {
			int err = errno;

			/* Runs on a helper thread: err_set() is per thread. */
			snprintf(vm->map_error, sizeof(vm->map_error),
				 "cannot map guest memory slot %u: %s", i, strerror(err));
			return -err;
		}
	}
	return 0;
}

/* Installing a memory slot waits for an SRCU grace period in the kernel
 * (several ms here); doing it on a helper thread overlaps that wait with
 * vCPU creation and kernel loading, which only touch the host mapping. */
static void *vm_map_memory_thread(void *arg)
{
	struct vm *vm = arg;

	vm->map_result = vm_map_memory(vm);
	return NULL;
}

static int vm_map_memory_wait(struct vm *vm)
{
	if (vm->map_thread_started) {
		pthread_join(vm->map_thread, NULL);
		vm->map_thread_started = false;
	}
	return vm->map_result;
}

static int vm_check_config(const struct vm *vm, const struct vm_config *cfg)
{
	if (cfg->ncpus == 0 || cfg->ncpus > vm->max_cpus)
		return err_set(-EINVAL, "--cpus must be between 1 and %u (the limit of KVM and the MADT on this host)",
			       vm->max_cpus);
	if (cfg->mem_size < (16ULL << 20))
		return err_set(-EINVAL, "--memory must be at least 16M");
	if (cfg->mem_size & 0xfff)
		return err_set(-EINVAL, "--memory must be a multiple of 4K");
	return 0;
}

static void vcpu_kick_handler(int sig)
{
	(void)sig; /* only interrupts KVM_RUN */
}

int vm_create(struct vm *vm, const struct vm_config *cfg)
{
	struct sigaction kick = { .sa_handler = vcpu_kick_handler };
	int ret;

	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = vm->vm_fd = vm->stop_fd = vm->mem.fd = vm->vcpu_cgroup_fd = -1;
	if (cfg->mem_from_file)
		vm->mem.fd = cfg->mem_fd; /* ours from here, closed by vm_destroy() */
	pthread_mutex_init(&vm->stop_lock, NULL);
	pthread_cond_init(&vm->state_cond, NULL);
	bus_init(&vm->pio);
	bus_init(&vm->mmio);
	ret = kvm_open(vm);
	if (ret)
		return ret;
	ret = vm_check_config(vm, cfg);
	if (ret)
		return ret;
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		return err_set(-errno, "cannot create a KVM VM: %m");
	vm->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->stop_fd < 0)
		return err_set(-errno, "eventfd: %m");
	sigaction(SIGUSR1, &kick, NULL);
	ret = cfg->mem_is_memfd ? guest_memory_init_memfd(&vm->mem, cfg->mem_size, cfg->mem_fd) :
	      cfg->mem_from_file ? guest_memory_init_file(&vm->mem, cfg->mem_size, cfg->mem_fd) :
	      guest_memory_init(&vm->mem, cfg->mem_size, cfg->hugepages);
	if (ret)
		return ret;
	ret = pthread_create(&vm->map_thread, NULL, vm_map_memory_thread, vm);
	if (ret)
		return err_set(-ret, "cannot start a thread: %s", strerror(ret));
	vm->map_thread_started = true;
	ret = vm_setup_platform(vm);
	if (ret)
		return ret;
	vm->ncpus_hint = cfg->ncpus;
	vm->vcpus = calloc(cfg->ncpus, sizeof(*vm->vcpus));
	if (!vm->vcpus)
		return err_set(-ENOMEM, "out of memory");
	for (unsigned int i = 0; i < cfg->ncpus; i++) {
		ret = vcpu_init(vm, &vm->vcpus[i], i);
		if (ret)
			return ret;
		vm->ncpus++;
	}
	return 0;
}

static void vm_stop(struct vm *vm, int status, const char *reason)
{
	uint64_t one = 1;

	pthread_mutex_lock(&vm->stop_lock);
	if (!vm->stop_requested) {
		vm->stop_requested = true;
		vm->exit_status = status;
		snprintf(vm->exit_reason, sizeof(vm->exit_reason), "%s", reason);
	}
	vm->state = VM_STATE_STOPPED;
	pthread_cond_broadcast(&vm->state_cond); /* wakes parked vCPUs */
	pthread_mutex_unlock(&vm->stop_lock);
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&v->thread_started, __ATOMIC_ACQUIRE) &&
		    !pthread_equal(v->thread, pthread_self()))
			pthread_kill(v->thread, SIGUSR1);
	}
	if (write(vm->stop_fd, &one, sizeof(one)) < 0)
		log_debug("stop eventfd: %s", strerror(errno));
}

void vm_request_stop(struct vm *vm, int status)
{
	vm_stop(vm, status, "");
}

void vm_request_stop_why(struct vm *vm, int status, const char *fmt, ...)
{
	char reason[sizeof(vm->exit_reason)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	vm_stop(vm, status, reason);
}

void vm_join(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		if (vm->vcpus[i].thread_started) {
			pthread_join(vm->vcpus[i].thread, NULL);
			vm->vcpus[i].thread_started = false;
		}
	}
}

void vm_destroy(struct vm *vm)
{
	vm_map_memory_wait(vm);
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		munmap(vm->vcpus[i].run, vm->run_size);
		close(vm->vcpus[i].fd);
		if (vm->vcpus[i].schedstat_fd >= 0)
			close(vm->vcpus[i].schedstat_fd);
	}
	free(vm->vcpus);
	free(vm->routes);
	guest_memory_free(&vm->mem);
	bus_destroy(&vm->pio);
	bus_destroy(&vm->mmio);
	if (vm->stop_fd >= 0)
		close(vm->stop_fd);
	if (vm->vcpu_cgroup_fd >= 0)
		close(vm->vcpu_cgroup_fd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
}

int vm_memory_ready(struct vm *vm)
{
	int ret = vm_map_memory_wait(vm);

	return ret ? err_set(ret, "%s", vm->map_error) : 0;
}

int vm_set_irq(struct vm *vm, unsigned int irq, bool level)
{
	struct kvm_irq_level line = { .irq = irq, .level = level ? 1 : 0 };

	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &line) < 0)
		return -errno;
	return 0;
}

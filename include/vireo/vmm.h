/* The VM and its vCPUs (src/vmm/): KVM VM, guest memory, CPUID, the vCPU
 * threads and their exit dispatch, and the stop protocol. */
#ifndef VIREO_VMM_H
#define VIREO_VMM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vireo/bus.h"

struct kvm_irq_routing_entry;
struct state_writer;
struct state_reader;

/* Exit statuses of `vireo run` (documented in docs/run.md). */
enum vm_exit_status {
	VM_EXIT_POWEROFF = 0,
	VM_EXIT_VMM_ERROR = 1,
	VM_EXIT_GUEST_CRASH = 2,
	VM_EXIT_REBOOT = 3,
};
/* The last line `vireo run --reboot=exit` prints to stderr after a guest
 * reboot: a supervisor that cannot see the exit status reads it. */
#define VM_REBOOT_LINE "vireo: guest rebooted"

struct mem_region {
	uint64_t gpa;
	uint64_t size;
	uint64_t offset; /* into the memfd */
};

/* Guest RAM: one memfd, so that snapshot and migration can map or share it;
 * or, restored from a snapshot, its memory file mapped privately. */
struct guest_memory {
	int fd;          /* the memfd (or memory file) behind guest RAM */
	bool from_file;  /* a snapshot's memory file, MAP_PRIVATE */
	uint8_t *host;
	uint64_t size;
	struct mem_region regions[2];
	unsigned int nregions;
	/* The VMM's own writes into guest RAM while dirty pages are logged
	 * (include/vireo/dirty.h): a bit per page, set by dirty_mark(). */
	uint64_t *vmm_dirty;
	bool vmm_tracking;
};

struct vm;

/* The VM's run state (DESIGN §3.5), changed only through vm_start(),
 * vm_pause(), vm_resume() and vm_request_stop(); see src/vmm/pause.c. */
enum vm_state { VM_STATE_CREATED, VM_STATE_RUNNING, VM_STATE_PAUSED, VM_STATE_STOPPED };

struct vcpu {
	struct vm *vm;
	unsigned int id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool thread_started;
	int tid;              /* host thread id, once the thread runs (0 before) */
	int schedstat_fd;     /* its /proc/.../schedstat, opened by the thread
			       * before the sandbox; -1 none */
	uint64_t exits;
};

struct vm_config {
	unsigned int ncpus;
	uint64_t mem_size;
	bool hugepages;
	bool mem_from_file; /* restore: guest RAM is mem_fd (taken), mapped privately */
	bool mem_is_memfd;  /* with mem_from_file: mem_fd is a memfd, mapped shared */
	int mem_fd;
};

struct vm {
	int kvm_fd;
	int vm_fd;
	int stop_fd;          /* eventfd: written when the VM must stop */
	size_t run_size;
	bool hw_virt;         /* false on a host KVM that emulates CPL0 (DESIGN §5) */
	bool firmware;        /* booted through firmware (--firmware), whose
			       * drivers poll: virtio kicks wait (src/virtio/pci.c) */
	unsigned int ncpus;
	unsigned int max_cpus;
	unsigned int ncpus_hint; /* vCPUs the VM will have, for CPUID topology */
	struct guest_memory mem;
	bool dirty_logging;   /* KVM_MEM_LOG_DIRTY_PAGES on the memory slots
			       * (dirty.c; read by the control socket's info) */
	struct vcpu *vcpus;
	struct bus pio;
	struct bus mmio;
	int exit_status;      /* valid once stop_requested */
	char exit_reason[200]; /* why, in the VMM's words ("" if the status says it all) */
	bool stop_requested;
	pthread_mutex_t stop_lock; /* also guards state, pause_requested, parked */
	pthread_cond_t state_cond; /* signalled when parked or the state changes */
	enum vm_state state;
	bool start_paused;    /* vm_start() goes to paused, not running */
	bool pause_requested;
	struct kvm_clock_data pause_clock; /* kvmclock when vm_pause() parked all */
	bool pause_clock_valid;
	bool clock_on_resume; /* restored and started paused: vm_resume() sets
			       * kvmclock to pause_clock, hiding the paused time */
	unsigned int parked;  /* vCPU threads waiting in vcpu_park() */
	unsigned int vcpus_ready; /* vCPU threads waiting for vm_start() */
	const char *vcpu_cgroup; /* file each vCPU thread writes its tid to, or NULL */
	int vcpu_cgroup_fd;      /* that file, opened before the sandbox; -1 none */
	pthread_t map_thread;  /* installs the memory slots (vm_create) */
	bool map_thread_started;
	int map_result;
	char map_error[256];
	pthread_mutex_t irq_lock;  /* the GSI routing table (src/vmm/irq.c) */
	struct kvm_irq_routing_entry *routes;
	unsigned int nroutes;
	uint32_t next_msi_gsi;
	unsigned int throttle_pct; /* live migration's auto-converge: % of each
				    * slice the vCPUs sleep (vcpu_throttle) */
};

#define VM_MAX_ROUTES 1024

int vm_create(struct vm *vm, const struct vm_config *cfg);
void vm_destroy(struct vm *vm);
/* Waits until guest memory is installed in KVM (vm_create starts that in
 * the background). vm_start() calls it; returns 0 or -errno. */
int vm_memory_ready(struct vm *vm);
/* Starts a thread per vCPU and returns once each has opened what it needs
 * from the host (its schedstat file) and waits for vm_start(): call it
 * before the sandbox. */
int vm_start_vcpus(struct vm *vm);
/* Lets the vCPUs run the guest (starting their threads first if
 * vm_start_vcpus() was not called); the BSP's registers must already be set.
 * With start_paused set, the VM goes to paused instead (vm_resume runs it). */
int vm_start(struct vm *vm);
/* Asks every vCPU to leave KVM_RUN and the event loop to end; the first
 * status given wins. Safe from any thread. */
void vm_request_stop(struct vm *vm, int status);
/* The same with the reason the VMM reports in its status file (never
 * guest output: the guest cannot forge it). */
void vm_request_stop_why(struct vm *vm, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Kicks every vCPU out of KVM_RUN and waits until all are parked: legal
 * only when running (-EBUSY otherwise, with err_set() detail). */
int vm_pause(struct vm *vm);
/* Lets parked vCPUs run again: legal only when paused. */
int vm_resume(struct vm *vm);
enum vm_state vm_get_state(struct vm *vm);
const char *vm_state_name(enum vm_state state);
/* Called by a vCPU thread that KVM_RUN left because immediate_exit was set:
 * parks it while the VM is paused. Returns true if the vCPU must stop. */
bool vcpu_park(struct vcpu *vcpu);
/* Joins the vCPU threads after a stop. */
void vm_join(struct vm *vm);
/* Drives an IRQ line of the in-kernel PIC/IOAPIC (ISA numbering). */
int vm_set_irq(struct vm *vm, unsigned int irq, bool level);

/* GSI routing (src/vmm/irq.c). irq_msi_route() adds an MSI route (gsi < 0)
 * or changes route `gsi`; returns the GSI or -errno. irq_irqfd() binds an
 * eventfd to a GSI: a write to it raises the interrupt inside KVM. */
int irq_routing_init(struct vm *vm);
int irq_msi_route(struct vm *vm, int gsi, uint64_t address, uint32_t data);
int irq_irqfd(struct vm *vm, int fd, uint32_t gsi, bool assign);

/* Host pointer for guest range [gpa, gpa+len), or NULL if any part of it is
 * not RAM. Every guest-supplied address goes through this (DESIGN §3.8). */
void *guest_ptr(const struct guest_memory *mem, uint64_t gpa, uint64_t len);
int guest_memory_init(struct guest_memory *mem, uint64_t size, bool hugepages);
/* Guest RAM's file, sized: on a huge-page tmpfs of its own (memory.c), or
 * a memfd; with hugepages, a hugetlbfs memfd. -errno with err_set(). */
int guest_memory_create_fd(uint64_t size, bool hugepages);
/* Guest RAM from a snapshot's memory file (fd taken, exactly size bytes),
 * mapped privately: pages load on first touch, guest writes stay in memory. */
int guest_memory_init_file(struct guest_memory *mem, uint64_t size, int fd);
/* Guest RAM that is already a memfd of exactly size bytes (fd taken), as a
 * live migration receives it: mapped shared, like guest_memory_init's. */
int guest_memory_init_memfd(struct guest_memory *mem, uint64_t size, int fd);
/* Writes guest RAM to fd (a regular file, truncated to the RAM size) with
 * zero and never-touched pages left as holes; *written: bytes written. */
int guest_memory_save(const struct guest_memory *mem, int fd, uint64_t *written);
/* The next extent at or after off (page aligned) that may hold data:
 * [*start, *end); the rest of a memfd's holes were never touched and read
 * as zeroes (a restored guest's private mapping has none: all of it is one
 * extent). 0, -ENXIO past the last one, or -errno with err_set(). */
int guest_memory_next_data(const struct guest_memory *mem, uint64_t off, uint64_t *start,
			   uint64_t *end);
void guest_memory_free(struct guest_memory *mem);
/* Gives len bytes of guest RAM at host (page aligned) back to the host: the
 * guest reads zeros there afterwards. Returns 0 or -errno. */
int guest_memory_discard(const struct guest_memory *mem, void *host, uint64_t len);

/* CPUID for vCPU `id` from KVM's supported list (src/vmm/cpuid.c). */
int cpuid_setup(struct vm *vm, struct vcpu *vcpu);

/* One vCPU exit, dispatched (src/vmm/vcpu.c). Returns false when the vCPU
 * must stop running. Exposed so that tests can feed fake exits. */
bool vcpu_handle_exit(struct vcpu *vcpu);
void vcpu_dump_registers(struct vcpu *vcpu);
int vcpu_init(struct vm *vm, struct vcpu *vcpu, unsigned int id);

/* Snapshot state (include/vireo/state.h) of the in-kernel irqchip, PIT and
 * kvmclock and of every vCPU (src/vmm/vm-state.c, vcpu-state.c). Save:
 * the VM paused; restore: into a VM built the same and not yet started.
 * 0 or -errno with err_set(). */
int vm_save_state(struct vm *vm, struct state_writer *w);
int vm_restore_state(struct vm *vm, const struct state_reader *r);
int vcpu_save(struct vcpu *vcpu, struct state_writer *w);
int vcpu_restore(struct vcpu *vcpu, const struct state_reader *r);

#endif

/* The host manager (src/mgr/): VM definitions, the VM table, one supervised
 * VMM process per VM in its own cgroup, and the state directory.
 *
 * State directory layout (all JSON written to a temp file, fsynced and
 * renamed, so a crash never leaves a half-written definition):
 *   DIR/instance          random id; names this daemon's cgroups
 *   DIR/daemon.lock       flock()ed by the daemon: one daemon per state dir
 *   DIR/vms/NAME.json     definition (struct vm_def), as POSTed/PATCHed
 *   DIR/run/NAME.json     runtime record: pid, its start time, state, reason
 *   DIR/run/NAME.sock     the VMM's control socket (include/vireo/control.h)
 *   DIR/run/NAME.grants   the ACL entries given to the VMM's uid (storage.c)
 *   DIR/images/           the storage directory when --storage names none
 *   DIR/run/NAME.lock     OFD-locked by the VM's VMM for its whole life
 *   DIR/logs/NAME.log     the VMM's stdout and stderr (serial console too);
 *   DIR/logs/NAME.log.1   its previous generation, past --log-max
 *   DIR/snapshots/NAME/SNAP/  a VM snapshot: meta.json, and with memory the
 *                         VMM's state and memory files (snapshot.c)
 *   DIR/snapshots/NAME/current.json  the snapshot the VM descends from
 *
 * Threading: HTTP requests are served by one thread per connection, beside
 * the supervisor (reaper) thread and the info thread. Two locks:
 *   mgr->lock  the table lock: the VM list and every field of every VM.
 *              Held only for work that does not wait on another process:
 *              it is dropped around each VMM round trip and each wait for
 *              a VMM to start or end (DESIGN §3.14).
 *   vm->lock   the VM's operation lock, taken before mgr->lock: an
 *              operation (start, stop, patch, ...) holds it from start to
 *              end, so operations on one VM are serialised while the others
 *              and every read (listing, metrics) go on. The supervisor only
 *              trylocks it and skips a VM that is busy.
 * A VM's fields change with both locks held and are read under either one.
 * vm->refs keeps a VM allocated while a thread uses it with mgr->lock
 * dropped; a deleted VM is unlinked at once and freed with its last
 * reference. Listing and metrics read vm->info, the VMM's last `info`
 * reply, refreshed in the background with a short deadline. */
#ifndef VIREO_MGR_H
#define VIREO_MGR_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "vireo/firewall.h"
#include "vireo/net.h"

struct json_object;

#define MGR_NAME_MAX 64
#define MGR_MAX_DISKS 8
#define MGR_MAX_NICS 4
#define MGR_MAX_VCPUS 64
#define MGR_MAX_BODY 65536           /* largest request body accepted */
#define MGR_MEM_OVERHEAD (64ULL << 20) /* cgroup memory limit = guest RAM + this */

/* ---- definitions (src/mgr/def.c) ---- */

struct mgr_disk {
	char *path;
	char *format;                /* NULL: probe */
	bool readonly;
	uint64_t bps, iops;          /* 0: unlimited */
	int cache;                   /* enum block_cache; 0: writeback */
	/* The I/O policy (iopolicy.c): share under contention (1..10000,
	 * default 100) and what it always leaves the disk (0: nothing). */
	unsigned int weight;
	uint64_t floor_bps, floor_iops;
	int aio;                     /* enum block_aio; 0: io_uring */
	unsigned int queues;         /* virtqueues; 0: one per vCPU (the VMM's default) */
};

/* A vNIC's port on a vlan_aware network: an access port (vlan: untagged
 * in the guest, that VLAN on the bridge), or a trunk (the tagged VLANs, and
 * native_vlan for untagged frames, 0: dropped). Neither: VLAN 1. */
struct nic_vlans {
	unsigned int vlan;
	bool is_trunk;
	struct vlan_set trunk;
	unsigned int native_vlan;
};

struct mgr_nic {
	char *tap;                   /* NULL: the kernel names it (or, with a
				      * network, mgr_nic_tap() does) */
	char *network;               /* NULL: none; else a bridge port there */
	char *mac;                   /* NULL: random */
	unsigned int mtu;            /* 0: 1500 */
	uint64_t rx_bps, tx_bps;     /* 0: unlimited */
	unsigned int weight;         /* the I/O policy's, as a disk's */
	uint64_t floor_bps;          /* each direction */
	struct nic_vlans vlans;
	struct fw_conf fw;           /* "firewall", "ips", "anti_spoof" (nicfw.c) */
};

struct vm_def {
	char name[MGR_NAME_MAX + 1];
	unsigned int cpus;
	uint64_t memory;             /* bytes */
	char *kernel;                /* NULL: the firmware boots the disks */
	char *firmware;              /* NULL: the kernel is loaded directly */
	char *initrd;                /* NULL: none */
	char *cmdline;               /* may be NULL */
	struct mgr_disk disks[MGR_MAX_DISKS];
	unsigned int ndisks;
	struct mgr_nic nics[MGR_MAX_NICS];
	unsigned int nnics;
	unsigned int cpu_weight;     /* 1..10000, relative share; default 100 */
	unsigned int cpu_max;        /* cap in % of one host CPU; 0: none */
	char *cpu_pin[MGR_MAX_VCPUS]; /* host CPU list per vCPU; npin == 1: all */
	unsigned int npin;
	bool balloon;                /* a virtio-balloon device */
	uint64_t balloon_target;     /* bytes the guest should give back */
	uint64_t memory_min;         /* the automatic policy leaves the guest at
				      * least this much; 0: a quarter of memory */
};

/* Names: 1..64 of [A-Za-z0-9_.-], not starting with '.' or '-'. */
bool vm_name_valid(const char *name);
/* Validates a whole definition (POST /vms, or a file in the state dir).
 * 0, or -EINVAL with err_set() detail naming the field. */
int vm_def_from_json(struct json_object *obj, struct vm_def *def);
struct json_object *vm_def_to_json(const struct vm_def *def);
void vm_def_free(struct vm_def *def);
/* What a new definition must also meet to be able to start on this host
 * (checked at create, not when loading the state dir): a name that is no
 * cgroup file and whose control socket path fits under state_dir, unicast
 * MACs, no more memory than the host has, pins on online CPUs. */
int vm_def_check_new(const struct vm_def *def, const char *state_dir);
/* Pins name only online host CPUs. */
int vm_pins_check_host(char *const *pin, unsigned int npin);
/* A deep copy of a definition (0 or -errno). */
int vm_def_copy(const struct vm_def *src, struct vm_def *dst);

/* One entry of a PATCH's disk_limits or nic_limits (nic: index is a vNIC,
 * bps/iops are rx_bps/tx_bps). */
struct vm_patch_limit {
	bool nic;
	unsigned int disk;
	bool has_bps, has_iops;
	uint64_t bps, iops;
	/* the I/O policy's share (a vNIC has no floor_iops) */
	bool has_weight, has_floor_bps, has_floor_iops;
	unsigned int weight;
	uint64_t floor_bps, floor_iops;
};

/* A PATCH: what to change; has_* say which fields were given. */
struct vm_patch {
	bool has_weight, has_max, has_pin, has_balloon, has_memory_min;
	uint64_t balloon_target, memory_min;
	unsigned int cpu_weight, cpu_max;
	char *cpu_pin[MGR_MAX_VCPUS];
	unsigned int npin;
	unsigned int nlimits;
	/* disk_limits, then nic_limits */
	struct vm_patch_limit limits[MGR_MAX_DISKS + MGR_MAX_NICS];
	unsigned int nvlans;         /* nic_vlans: replace a vNIC's VLANs */
	struct {
		unsigned int nic;
		struct nic_vlans v;
	} vlans[MGR_MAX_NICS];
};
/* Validates a PATCH body against `def` (disk indices, pin counts). */
int vm_patch_from_json(struct json_object *obj, const struct vm_def *def, struct vm_patch *p);
/* Applies a validated patch to the definition (takes the pin strings). */
void vm_patch_apply(struct vm_def *def, struct vm_patch *p);
void vm_patch_free(struct vm_patch *p);

/* ---- the I/O policy's state per device (src/mgr/iopolicy.c) ----
 * Slots: disk i is io[i], vNIC i's receive side io[MGR_MAX_DISKS + 2i],
 * its transmit side the next one. Dimension 0 is bytes/s, 1 ops/s (disks). */
#define MGR_IO_DEVS (MGR_MAX_DISKS + 2 * MGR_MAX_NICS)
#define IO_UNBOUNDED UINT64_MAX      /* a demand: all it can get */
struct io_dev {
	bool seen;                   /* counters below are from the last round */
	uint64_t bytes, ops, throttled_ns; /* the VMM's counters then */
	uint64_t used[2];            /* rate in the last interval */
	uint64_t demand[2];          /* estimate; IO_UNBOUNDED */
	uint64_t limit[2];           /* what the policy set; 0: not managed */
};

/* ---- cgroups (src/mgr/cgroup.c): v2, or v1 with cpu/cpuacct/memory ---- */

enum cgroup_mode { CGROUP_NONE, CGROUP_V1, CGROUP_V2 };

struct cgroups {
	enum cgroup_mode mode;
	char reason[400];            /* why NONE, for info and the log */
	char v2[PATH_MAX];           /* v2: base directory of our VM cgroups */
	char cpu[PATH_MAX];          /* v1: base directories, "" if absent */
	char cpuacct[PATH_MAX];
	char memory[PATH_MAX];
};

/* Finds the hierarchies (/proc/self/mountinfo, /proc/self/cgroup) and
 * creates the base "vireo-ID" under this process's own cgroups. `want`:
 * CGROUP_NONE for auto. Never fails: mode NONE says why in reason. */
void cgroup_init(struct cgroups *cg, const char *id, const char *want);
const char *cgroup_mode_name(enum cgroup_mode mode);
/* Creates (or reuses) the VM's cgroup and sets its limits. */
int cgroup_vm_create(const struct cgroups *cg, const char *name);
int cgroup_vm_set_cpu(const struct cgroups *cg, const char *name, unsigned int weight,
		      unsigned int max_pct);
int cgroup_vm_set_memory(const struct cgroups *cg, const char *name, uint64_t bytes);
/* The file a vCPU thread writes its tid to, to enter NAME/vcpus (the
 * cgroup that carries cpu_max); -ENOENT if there is none. */
int cgroup_vm_vcpu_file(const struct cgroups *cg, const char *name, char *buf, size_t size);
int cgroup_vm_attach(const struct cgroups *cg, const char *name, pid_t pid);
/* CPU time of everything in the VM's cgroup, ns; 0 if unknown. */
uint64_t cgroup_vm_cpu_ns(const struct cgroups *cg, const char *name);
/* Time the VM's vCPUs were held back by cpu_max, ns; 0 if unknown. */
uint64_t cgroup_vm_throttled_ns(const struct cgroups *cg, const char *name);
void cgroup_vm_remove(const struct cgroups *cg, const char *name);
/* Removes the base directories if no VM cgroup is left in them. */
void cgroup_cleanup(const struct cgroups *cg);

/* ---- the manager (src/mgr/mgr.c, supervise.c, store.c) ---- */

/* STOPPING: the power button was pressed for a graceful stop; the VMM is
 * killed if the guest has not powered off by stop_deadline_ms. */
/* INCOMING: a VMM waits for a live migration stream (migrate.c); it counts
 * as active (it holds the VM's lock), and becomes RUNNING only once the VMM
 * says the guest runs here. */
enum mgr_state { MGR_STOPPED, MGR_RUNNING, MGR_PAUSED, MGR_CRASHED, MGR_STOPPING,
		 MGR_INCOMING, MGR_NSTATES };

struct mgr_vm {
	struct vm_def def;
	enum mgr_state state;
	char reason[256];            /* why stopped or crashed */
	pid_t pid;                   /* VMM, when running or paused */
	unsigned long long starttime; /* of pid, from /proc: guards pid reuse */
	bool child;                  /* our child (else adopted after a restart) */
	bool stopping;               /* a stop we asked for: not a crash */
	char warning[200];           /* of the last start (overcommit), or "" */
	uint64_t stop_deadline_ms;   /* STOPPING: wall-clock ms of the forced stop */
	uint64_t next_press_ms;      /* STOPPING: when the button is pressed again */
	unsigned int stop_timeout_s; /* STOPPING: the grace period asked for */
	bool restart_pending;        /* the guest rebooted: start a fresh VMM */
	unsigned int vmm_uid;        /* the VMM's user (and group) id; 0: not dropped */
	uint64_t policy_fresh;       /* balloon stats_updates from which the
				      * guest's figures reflect our last target */
	struct io_dev io[MGR_IO_DEVS]; /* the I/O policy's view (iopolicy.c) */
	pid_t io_pid;                /* the VMM those counters are from */
	uint64_t io_ms;              /* when they were read (monotonic ms) */
	pthread_mutex_t lock;        /* the operation lock (above) */
	unsigned int refs;           /* the list's, plus each user without mgr->lock */
	bool deleted;                /* unlinked: operations waiting for it give up */
	bool starting;               /* a VMM is being started: counts as active for
				      * uids and commitment */
	const char *restore_dir;     /* the next start restores this snapshot
				      * (vireo run --restore); NULL: boots */
	bool restore_paused;         /* ... and leaves it paused (--paused) */
	const char *incoming_uri;    /* the next start waits for a migration
				      * there (run --incoming); NULL: boots */
	const char *incoming_token;  /* ... and this token file proves it */
	int incoming_fd;             /* ... and the VMM inherits this socket
				      * (uri "fd:N"); -1: none */
	bool incoming_copy;          /* ... and the disks come with it, into
				      * the definition's images (--incoming-disk) */
	char migrating_to[128];      /* an outgoing migration runs; "": none */
	unsigned int exports;        /* exports of its snapshots under way */
	struct json_object *info;    /* the VMM's last info reply, or NULL */
	uint64_t info_ms;            /* CLOCK_MONOTONIC ms of that reply */
	struct mgr_vm *next;
};

struct mgr {
	pthread_mutex_t lock;
	char state_dir[PATH_MAX];
	char exe[PATH_MAX];          /* the vireo binary, for `vireo run` */
	struct cgroups cg;
	unsigned int overcommit;     /* max vCPUs per host CPU, running VMs */
	unsigned int overcommit_warn; /* past this per host CPU: warn; 0 = never */
	bool mem_auto;               /* --memory-policy=auto */
	bool io_auto;                /* --io-policy=auto */
	unsigned int io_interval_ms; /* how often it runs */
	/* Host budgets (0: that resource is not managed): disk bytes/s and
	 * ops/s, vNIC bytes/s (each direction); and whether the floors asked
	 * for more than one of them in the last round. */
	uint64_t io_budget_bps, io_budget_iops, net_budget_bps;
	bool io_over[3];
	unsigned int mem_interval_ms; /* how often the policy runs */
	uint64_t mem_reserve;        /* host MemAvailable the policy keeps */
	uint64_t log_max;            /* rotate a VM's log past this; 0 = never */
	unsigned int vmm_uid_base;   /* VMMs run as base+k, one uid each; 0: as we do */
#define MGR_VMM_UID_BASE 100000
	char *storage[16];           /* where disks may be (resolved); see storage.c */
	unsigned int nstorage;
	unsigned int request_timeout_s; /* an API request must be in whole within
				      * this; 0: MGR_REQUEST_TIMEOUT_S */
#define MGR_REQUEST_TIMEOUT_S 10
	/* --migration-address HOST[:PORT]: an incoming VM without "listen"
	 * waits at HOST, on a free port from PORT up (MGR_MIGRATION_PORTS of
	 * them, taken in turn from after the last one given) or, PORT 0, on
	 * one the kernel picks. "": "listen" is required. */
	char migration_host[16];
	unsigned int migration_port, migration_next;
#define MGR_MIGRATION_PORTS 64
	unsigned int mem_low_pct;    /* guest free below this %: under pressure */
	unsigned int mem_high_pct;   /* guest free above this %: idle */
	struct mgr_vm *vms;
	struct mgr_net *nets;        /* networks.c */
	pthread_t info_thread;       /* refreshes vm->info (mgr_info_start) */
	bool info_running, info_quit;
	pthread_cond_t info_cond;
};

const char *mgr_state_name(enum mgr_state s);
/* Has a VMM: running, paused, stopping or incoming. */
bool mgr_vm_active(const struct mgr_vm *vm);
/* Opens (creating) the state dir, loads the definitions, re-adopts the
 * VMMs that are still running. */
int mgr_open(struct mgr *m, const char *state_dir, const char *cgroup_mode);
void mgr_close(struct mgr *m);
struct mgr_vm *mgr_find(struct mgr *m, const char *name);
/* For an operation on VM `name`: called under m->lock, returns with the
 * VM's operation lock and m->lock held (m->lock is dropped while waiting
 * for the VM's lock), or NULL if there is no such VM (any more). */
struct mgr_vm *mgr_acquire(struct mgr *m, const char *name);
/* Ends an operation (under m->lock, which stays held). */
void mgr_release(struct mgr *m, struct mgr_vm *vm);
/* A reference on vm for use with m->lock dropped; both under m->lock. */
void mgr_ref(struct mgr_vm *vm);
void mgr_unref(struct mgr *m, struct mgr_vm *vm);
/* vCPUs on the most committed host CPU (*cpu) with the active VMs and
 * `vm` (may be NULL); a vCPU allowed on k CPUs counts 1/k on each. */
double mgr_commitment(struct mgr *m, const struct mgr_vm *vm, long *cpu);
/* Reaps exited VMMs and notices dead adopted ones; under m->lock. */
void mgr_check(struct mgr *m);

/* Error classes, mapped to HTTP statuses by the API. */
enum mgr_err { MGR_OK, MGR_E_BAD, MGR_E_NOT_FOUND, MGR_E_CONFLICT, MGR_E_FAILED };

/* ---- networks (src/mgr/networks.c): a Linux bridge "vb-NAME" each ----
 * DIR/networks/NAME.json holds {"name", "vlan_aware", "uplink"?, "vlans"?}; at start
 * every network's bridge is re-created, or adopted if it exists. All under
 * m->lock. */
#define MGR_NET_NAME_MAX 12          /* "vb-" + name fits IFNAMSIZ */
struct mgr_net {
	char name[MGR_NET_NAME_MAX + 1];
	char bridge[16];
	char uplink[16];             /* "": none */
	bool vlan_aware;
	struct vlan_set vlans;       /* the uplink carries these tagged */
	uint64_t budget_bps;         /* its vNICs' budget, each direction; 0: none */
	uint64_t alloc[2];           /* the I/O policy's last round: what its vNICs
				      * may receive and transmit together (0: none) */
	struct mgr_net *next;
};
int mgr_net_load(struct mgr *m);
void mgr_net_free_all(struct mgr *m);
struct mgr_net *mgr_net_find(struct mgr *m, const char *name);
enum mgr_err mgr_net_create(struct mgr *m, struct json_object *body, struct json_object **out);
enum mgr_err mgr_net_delete(struct mgr *m, const char *name);
/* {"budget_bps": N}: a new budget for the network's vNICs, persisted (the
 * other fields are fixed at create). */
enum mgr_err mgr_net_patch(struct mgr *m, const char *name, struct json_object *body,
			   struct json_object **out);
struct json_object *mgr_net_json(const struct mgr_net *n);
struct json_object *mgr_net_list_json(struct mgr *m);
/* Every vNIC's network exists (at VM create): 0 or -EINVAL naming the field. */
int mgr_net_check_def(struct mgr *m, const struct vm_def *def);
/* The tap name of vNIC i: its "tap", or for a vNIC on a network without
 * one a name made from the daemon's instance id and the VM's name ("vt" +
 * hash + "." + i), so the daemon knows which link to make a port, and two
 * daemons on one host (their VMs may share names) never take each other's
 * taps. "" if the kernel picks. */
void mgr_nic_tap(const struct vm_def *def, unsigned int i, char out[16]);
/* Sets the instance id that tap names are made from (mgr_open(): one daemon
 * per process; the id persists in its state dir, so names survive restarts). */
void mgr_net_set_instance(const char *instance_id);
/* Before the VMM starts: creates the taps of the vNICs on networks
 * (persistent, owned by uid, which the VMM runs as) as ports of their
 * bridges, up; all or none. mgr_net_detach() deletes them when the VMM has
 * ended. */
int mgr_net_attach(struct mgr *m, const struct vm_def *def, unsigned int uid);
void mgr_net_detach(struct mgr *m, const struct vm_def *def);
/* Sets vNIC i's port VLANs (a running VM's tap on a vlan_aware network;
 * else nothing to do). */
int mgr_net_set_vlans(struct mgr *m, const struct vm_def *def, unsigned int i);
/* After a daemon restart re-created a bridge: a running VM's taps join it
 * again, and their firewall rules are put in force again. */
void mgr_net_reattach(struct mgr *m, const struct vm_def *def);
/* The MAC of vNIC i: its "mac", or for a vNIC on a network without one a
 * stable one made from the VM's name (52:54:00 + hash), so that the
 * anti-spoofing rules know it. "" if the VMM picks. */
void mgr_nic_mac(const struct vm_def *def, unsigned int i, char out[18]);

/* ---- per-vNIC firewall (src/mgr/fwdef.c: JSON; nicfw.c: applying it with
 * src/net/firewall.c) ---- */
/* A nic's "firewall", "ips" and "anti_spoof" (on_network: it has a
 * "network"; the others are refused without one): 0 or -EINVAL naming the
 * field. The caller frees c with nicfw_free() either way. */
int nicfw_from_json(struct json_object *nic, bool on_network, struct fw_conf *c);
void nicfw_to_json(const struct fw_conf *c, struct json_object *nic);
void nicfw_free(struct fw_conf *c);
/* The body of POST /vms/NAME/firewall {"nic", "firewall"?, "ips"?,
 * "anti_spoof"?} against def: the vNIC's index and its new c (which the
 * caller frees either way). */
int nicfw_update_from_json(struct json_object *body, const struct vm_def *def,
			   unsigned int *index, struct fw_conf *c);
/* The rules of every vNIC of def on a network, in one transaction, once
 * their taps exist (mgr_net_attach); removed with mgr_fw_remove(). */
int mgr_fw_apply(const struct vm_def *def);
void mgr_fw_remove(const struct vm_def *def);
/* [{"nic", "tap", "counters": {"spoof-mac": {"packets", "bytes"}, "rule 0": ...}}] */
struct json_object *mgr_fw_counters(const struct vm_def *def);
/* POST /vms/NAME/firewall {"nic", "firewall"?, "ips"?, "anti_spoof"?}:
 * replaces the vNIC's firewall in the definition and, on a running VM, in
 * the kernel, atomically; vm acquired. */
enum mgr_err mgr_fw_update(struct mgr *m, struct mgr_vm *vm, struct json_object *body);

/* Each returns MGR_OK or an error class with err_set() detail. */
enum mgr_err mgr_create(struct mgr *m, struct vm_def *def); /* takes def */
/* vm acquired (mgr_acquire); on MGR_OK it is unlinked, still to be released. */
enum mgr_err mgr_delete(struct mgr *m, struct mgr_vm *vm);
enum mgr_err mgr_start(struct mgr *m, struct mgr_vm *vm);
/* Graceful: presses the power button and returns with the VM STOPPING;
 * mgr_check() kills it after timeout_s. force: powers off at once. */
#define MGR_STOP_TIMEOUT_S 30
#define MGR_STOP_TIMEOUT_MAX_S 3600
enum mgr_err mgr_stop(struct mgr *m, struct mgr_vm *vm, bool force, unsigned int timeout_s);
enum mgr_err mgr_pause(struct mgr *m, struct mgr_vm *vm, bool pause);
enum mgr_err mgr_reboot(struct mgr *m, struct mgr_vm *vm);
/* Starts the VMM with `vireo run --restore dir` instead of a boot; paused:
 * the VM stays paused until resumed. */
enum mgr_err mgr_start_restore(struct mgr *m, struct mgr_vm *vm, const char *dir, bool paused);
/* Starts the VMM with `vireo run --incoming uri --incoming-token-file
 * token_file`; returns once it is spawned, the VM INCOMING (migrate.c).
 * lfd >= 0: a bound socket the VMM inherits (uri "fd:LFD"); -1: none. */
enum mgr_err mgr_start_incoming(struct mgr *m, struct mgr_vm *vm, const char *uri, int lfd,
				const char *token_file);
/* A control request with a deadline of timeout_ms, passing nfds
 * descriptors with it (vmm_request_fds); the reply's "code" picks the error
 * class; *reply (if not NULL) gets a successful reply. */
enum mgr_err mgr_control(struct mgr *m, struct mgr_vm *vm, const char *req, int timeout_ms,
			 const int *fds, unsigned int nfds, struct json_object **reply);
enum mgr_err mgr_patch(struct mgr *m, struct mgr_vm *vm, struct vm_patch *p);
/* GET /vms/NAME: definition, state, and with `live` the VMM's counters
 * from vm->info (stale: "vmm_info_age_ms" says how old). */
struct json_object *mgr_vm_json(struct mgr *m, struct mgr_vm *vm, bool live);
/* Asks the VMM for `info` within timeout_ms and caches it in vm->info;
 * under m->lock, which is dropped meanwhile (vm referenced). 0 or -errno. */
#define MGR_INFO_TIMEOUT_MS 500
/* A starting VMM is given this long to answer and run its vCPUs (a restore
 * maps its memory file first), or to listen for an incoming migration,
 * before its start counts as failed. libvirt waits 30 s for QEMU's monitor:
 * on a busy host 5 s was seen to pass (a rollback, and an incoming VMM,
 * under nested test hosts' load), and a VMM that dies is noticed at once. */
#define MGR_START_TIMEOUT_MS 30000
int mgr_refresh_info(struct mgr *m, struct mgr_vm *vm, int timeout_ms);
/* The background refresher of every active VM's info (each second). */
int mgr_info_start(struct mgr *m);
void mgr_info_stop(struct mgr *m);
/* Prometheus text exposition from the cached infos; the caller frees. */
char *mgr_metrics(struct mgr *m);

/* ---- VM snapshots (src/mgr/snapshot.c, docs/api.md); each under m->lock
 * and the VM's operation lock ---- */
#define MGR_MAX_SNAPSHOTS 32         /* per VM */
/* POST /vms/NAME/snapshots {"name", "memory"}: *out is the new snapshot. */
enum mgr_err mgr_snap_create(struct mgr *m, struct mgr_vm *vm, struct json_object *body,
			     struct json_object **out);
/* GET /vms/NAME/snapshots: {"snapshots": [...], "current"}. */
enum mgr_err mgr_snap_list(struct mgr *m, struct mgr_vm *vm, struct json_object **out);
enum mgr_err mgr_snap_rollback(struct mgr *m, struct mgr_vm *vm, const char *snap);
enum mgr_err mgr_snap_delete(struct mgr *m, struct mgr_vm *vm, const char *snap);
/* POST /vms/NAME/snapshots/SNAP/export {"dir"|"file"} (src/mgr/export.c):
 * the snapshot, its chain, the definition and the disks into a new
 * directory, or one tar archive, in a storage directory; *out says what
 * was written. Called with the VM's operation lock, which it drops while
 * it copies (the VM goes on running): vm->exports counts the exports
 * under way meanwhile. */
enum mgr_err mgr_snap_export(struct mgr *m, struct mgr_vm *vm, const char *snap,
			     struct json_object *body, struct json_object **out);
/* -EBUSY (err_set) while an export of vm runs: what would remove what
 * it reads (a rollback, deleting a snapshot or the VM) is refused. */
int mgr_export_busy(const struct mgr_vm *vm);
/* POST /vms/NAME/import {"dir"|"file"}: a new, stopped VM NAME (NULL:
 * the exported VM's name) from an export directory or archive,
 * its current snapshot the exported one; nothing is left of a refused
 * one. Under m->lock (dropped while copying). *out: the VM. */
enum mgr_err mgr_import(struct mgr *m, const char *name, struct json_object *body,
			struct json_object **out);
/* At start-up, once the storage directories are known: removes what an
 * import interrupted by the daemon's death left. */
void mgr_import_recover(struct mgr *m);
/* A deleted VM's snapshot files (its images keep their internal snapshots). */
void mgr_snap_remove_all(struct mgr *m, const char *name);

/* ---- live migration (src/mgr/migrate.c, docs/api.md "Live migration") ---- */
/* POST /vms/NAME/incoming {"definition", "listen", "token"?, "timeout_s"?,
 * "copy_storage"?}
 * on the destination: creates the VM and starts its VMM with --incoming;
 * returns once the VMM listens (*out: the VM, "listen", "token"). A
 * background thread then holds the VM's operation lock until the VMM
 * reports the guest running here (state INCOMING -> RUNNING), or deletes
 * the VM if it fails or the deadline passes. Under m->lock only. */
enum mgr_err mgr_migrate_incoming(struct mgr *m, const char *name, struct json_object *body,
				  struct json_object **out);
/* POST /vms/NAME/migrate {"uri", "token", "max_downtime_ms"?, "bandwidth"?,
 * "timeout_s"?, "copy_storage"?} on the source, vm acquired: drives the VMM's migration to
 * its end. MGR_OK: the VM runs there, stopped here ("migrated to URI");
 * else it still runs here. */
enum mgr_err mgr_migrate(struct mgr *m, struct mgr_vm *vm, struct json_object *body,
			 struct json_object **out);
/* POST /vms/NAME/migrate-cancel, without the operation lock (the migrate
 * request holds it); under m->lock. */
enum mgr_err mgr_migrate_cancel(struct mgr *m, struct mgr_vm *vm);

/* ---- automatic memory policy (src/mgr/policy.c) ---- */
/* One round, under m->lock: reads each running ballooned VM's guest
 * statistics and moves memory from idle guests (free above mem_high_pct of
 * total) to guests under pressure (free below mem_low_pct, balloon
 * inflated), then from the host
 * while its MemAvailable stays above mem_reserve; below the reserve it
 * inflates idle guests' balloons. */
void mgr_policy_run(struct mgr *m);

/* ---- automatic I/O policy (src/mgr/iopolicy.c, docs/api.md) ---- */
/* One device's claim on a budget: the pure allocation's input and output. */
struct io_share {
	uint64_t demand;             /* estimated rate wanted; IO_UNBOUNDED */
	unsigned int weight;         /* 0 counts as 1 */
	uint64_t floor;              /* always granted (scaled if the floors
				      * sum above the budget) */
	uint64_t cap;                /* never exceeded; 0: none */
	uint64_t limit;              /* out: >= 1 (0 would mean unlimited) */
};
/* Weighted max-min fair shares of `budget`: every share gets its floor;
 * the rest goes by weight to those whose demand is not met yet; what no
 * demand wants is spread by weight on top (work-conserving), caps always
 * hold. Floors summing above the budget are scaled down in proportion
 * and the rest get the minimum: returns true then. Not reentrant (static
 * scratch space): the supervisor thread's. */
bool io_allocate(struct io_share *s, unsigned int n, uint64_t budget);
/* The same in two levels (networks with their own budget): share i belongs
 * to group group[i] (0 to ng-1; -1: none), whose shares together never get
 * more than gbudget[g]. With a host `budget` each group first competes in
 * it as one share (its shares' weights, floors and capped demands summed),
 * then divides what it got (io_allocate() at both levels); without (0), a
 * group divides its own budget and an ungrouped share gets limit 0 (not
 * managed). galloc[g]: what group g got (0: no shares). True if any
 * level's floors asked for more than its budget. Not reentrant. */
bool io_allocate_groups(struct io_share *s, const int *group, unsigned int n,
			const uint64_t *gbudget, uint64_t *galloc, unsigned int ng, uint64_t budget);
/* The demand of one dimension from a round's figures: unbounded if the
 * device used most of its limit or was held back a tenth of the interval
 * (throttled_ns: the caller passes 0 for a disk's bucket that was not the
 * one holding it back), else what it used plus headroom. `first`: no
 * previous figures. */
uint64_t io_demand(bool first, uint64_t used, uint64_t limit, uint64_t throttled_ns,
		   uint64_t interval_ns, uint64_t budget);
/* One round, under m->lock: reads every running VM's counters, allocates
 * each budget and sets the changed limits through the control sockets. */
void mgr_iopolicy_run(struct mgr *m);
/* The limit to put in force when a running VM's fixed limit (`cap`, 0:
 * none) of slot `dev`, dimension `k` changes: the policy's limit within
 * the new cap while it manages that dimension (so the budget holds until
 * its next round), else the cap. Under m->lock. */
uint64_t mgr_iopolicy_bound(const struct mgr *m, const struct mgr_vm *vm, unsigned int dev,
			    int k, uint64_t cap);
/* The policy's view of a VM's devices (GET /vms/NAME), NULL when off. */
struct json_object *mgr_iopolicy_json(struct mgr *m, const struct mgr_vm *vm);
void mgr_iopolicy_metrics(struct mgr *m, FILE *f);

/* ---- store (src/mgr/store.c) ---- */
/* Replaces path's content with data, crash-safe (a file beside it, synced,
 * renamed over path); a link planted at either name is not written through. */
int store_write_file(const char *path, const char *data, size_t len);
int store_write_json(const char *path, struct json_object *obj);
struct json_object *store_read_json(const char *path);
int store_save_def(struct mgr *m, const struct vm_def *def);
int store_save_run(struct mgr *m, const struct mgr_vm *vm);
/* Past m->log_max bytes, the VM's log moves to NAME.log.1 (copy-truncate). */
void store_rotate_log(struct mgr *m, const char *name);
void store_remove(struct mgr *m, const char *name);
/* Takes the VM's lock (DIR/run/NAME.lock) into *fd; -EBUSY while a VMM of
 * the VM (or its child not yet exec'd) holds it. */
int store_lock_vm(struct mgr *m, const char *name, int *fd);
/* Whether a VMM of the VM holds its lock: it lives, whatever the run
 * record says. */
bool store_vm_locked(struct mgr *m, const char *name);
int store_path(const struct mgr *m, char *buf, size_t size, const char *sub,
	       const char *name, const char *ext);

/* ---- VMM processes (src/mgr/supervise.c); all under m->lock and the
 * VM's operation lock; the waits for a VMM drop m->lock ---- */
/* Sends one request line to a control socket; returns the reply object or
 * NULL with err_set(). The whole round trip (connect, send, reply) has a
 * deadline: VMM_REQUEST_TIMEOUT_MS, or timeout_ms. Lock-free: callers drop
 * m->lock around it. */
#define VMM_REQUEST_TIMEOUT_MS 2000
struct json_object *vmm_request(const char *sock, const char *request);
struct json_object *vmm_request_ms(const char *sock, const char *request, int timeout_ms);
/* The same, passing nfds (at most 4) descriptors with the request
 * (SCM_RIGHTS): files the sandboxed VMM cannot open itself. */
struct json_object *vmm_request_fds(const char *sock, const char *request, int timeout_ms,
				    const int *fds, unsigned int nfds);
/* Starts the VMM of vm in its cgroup and waits until its socket answers.
 * The run record (pid, "running") is saved before the VMM is let go; on
 * failure *untouched says that nothing was started nor changed (the VM's
 * lock is held: -EBUSY; the record could not be saved). */
int vmm_start(struct mgr *m, struct mgr_vm *vm, const char *sock, bool *untouched);
/* Takes pid (a live VMM found by its socket) as vm's VMM. */
void vmm_adopt_pid(struct mgr_vm *vm, pid_t pid);
int vmm_apply_pins(const char *sock, const struct vm_def *def);
/* Whether vm->pid is still the VMM we started (pid and start time). */
bool vmm_alive(const struct mgr_vm *vm);
/* Has the VMM ended? If so, records why (state, reason) and returns true. */
bool vmm_reap(struct mgr *m, struct mgr_vm *vm);
void vmm_exited(struct mgr *m, struct mgr_vm *vm, int status, bool known);
/* Gives back what a VM's VMM held on the host once it ended (or is taken
 * for ended): its cgroup, its storage grants, its taps and firewall rules. */
void vmm_release(struct mgr *m, struct mgr_vm *vm);
/* The final migration figures the VMM pid wrote into its status file at
 * exit (a reference), or NULL. */
struct json_object *vmm_status_migration(struct mgr *m, const struct mgr_vm *vm, pid_t pid);
int vmm_wait_exit(struct mgr *m, struct mgr_vm *vm, int timeout_ms);
/* SIGKILL, then waits; the VM ends "stopped". */
int vmm_kill(struct mgr *m, struct mgr_vm *vm);

/* ---- storage (src/mgr/storage.c) ---- */
/* Every disk of def and its whole backing chain must resolve inside
 * m->storage: 0, or -EPERM with err_set() naming the offending path. Other
 * problems (a missing file) are left for the VMM to report. */
int storage_check(struct mgr *m, const struct vm_def *def);
/* Gives uid access to exactly def's disks and their chains (read-write for
 * the top layer of a writable disk, read for the rest, search on the
 * directories below the storage directory) until storage_revoke(). */
int storage_grant(struct mgr *m, const struct vm_def *def, unsigned int uid);
/* Takes back what storage_grant() gave for VM `name`; idempotent. */
void storage_revoke(struct mgr *m, const char *name);

/* ---- HTTP API (src/mgr/api.c) ---- */
struct api;
struct api *api_start(struct mgr *m, const char *socket_path);
void api_stop(struct api *api);

#endif

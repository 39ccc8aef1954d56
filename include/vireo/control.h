/* The per-VM control socket (src/vmm/control*.c), `vireo run --api-socket`.
 *
 * A Unix stream socket served on the VMM's event loop. Wire format: each
 * request is one JSON object on one line ('\n'-terminated, at most
 * CONTROL_MAX_LINE bytes); each gets one JSON object on one line back; a
 * connection may carry any number of requests. docs/api.md is the reference.
 *
 * Control plane apart from data plane (DESIGN §3.6): control_parse() turns a
 * request into a typed struct control_action, validating every field;
 * control_apply() applies it on the event loop, checking that the VM is in a
 * state where that action is legal. */
#ifndef VIREO_CONTROL_H
#define VIREO_CONTROL_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vireo/loop.h"

#define CONTROL_MAX_LINE 65536
#define CONTROL_MAX_CLIENTS 16
/* A client that sends nothing for this long loses its connection when a
 * new one needs a slot; with every slot busy, the least recently active
 * one does. */
#define CONTROL_IDLE_MS 10000
/* Largest bps/iops limit accepted (2^50, ~1 PB/s): far below where json-c
 * saturates out-of-range integers to INT64_MAX. */
#define CONTROL_MAX_RATE (1ULL << 50)

struct vm;
struct virtio_blk;
struct virtio_balloon;
struct virtio_net;
struct ged;
struct acpipm;
struct rtc;
struct serial;
struct machine_config;
struct json_object;
struct migration;
struct snapshot_base;

enum control_kind {
	CONTROL_INFO,       /* any state */
	CONTROL_PAUSE,      /* running */
	CONTROL_RESUME,     /* paused */
	CONTROL_POWEROFF,   /* created, running, paused */
	CONTROL_REBOOT,     /* running, paused: as a guest reboot (run --reboot=...) */
	CONTROL_SET_LIMITS, /* running, paused */
	CONTROL_PIN,        /* running, paused */
	CONTROL_BALLOON,    /* running, paused */
	CONTROL_POWERDOWN,  /* running: presses the ACPI power button */
	CONTROL_SNAPSHOT,   /* paused: saves the whole VM into a directory, and/or
			     * takes the disks' internal snapshots */
	CONTROL_DISK_SNAPSHOT_DELETE, /* running, paused: drops the disks' internal
				       * snapshot `name` */
	CONTROL_MIGRATE,    /* running, paused: live migration to `uri` */
	CONTROL_MIGRATE_CANCEL, /* running, paused: stops it, the VM stays */
};

#define CONTROL_MAX_PATH 4096
#define CONTROL_SNAP_NAME_MAX 64

struct control_action {
	enum control_kind kind;
	bool nic;               /* SET_LIMITS: a vNIC, not a disk */
	unsigned int disk;      /* SET_LIMITS: disk or vNIC index */
	uint64_t bps, iops;     /* SET_LIMITS: 0 = unlimited; for a vNIC rx_bps, tx_bps */
	bool has_bps, has_iops; /* SET_LIMITS: absent fields keep their value */
	unsigned int vcpu;      /* PIN */
	cpu_set_t cpus;         /* PIN: host CPUs, not empty */
	uint64_t target;        /* BALLOON: bytes the guest should give back */
	char dir[CONTROL_MAX_PATH]; /* SNAPSHOT: an absolute path; "": no memory */
	bool fds;               /* SNAPSHOT: into the two descriptors passed with the
				 * request (memory, state) instead of dir */
	int fd[2];              /* their numbers, owned by the socket: -1 if none */
	bool disks;             /* SNAPSHOT: internal snapshots of the writable disks */
	char name[CONTROL_SNAP_NAME_MAX + 1]; /* SNAPSHOT with disks, DISK_SNAPSHOT_DELETE */
	bool incremental;       /* SNAPSHOT: only the pages dirtied since the base */
	char parent[CONTROL_MAX_PATH]; /* SNAPSHOT incremental: the parent's directory
					* as the new one records it; "": the base's */
	uint64_t parent_id;     /* SNAPSHOT incremental: the base must be this; 0: any */
	bool track_dirty;       /* SNAPSHOT: keep dirty logging on for a later
				 * incremental snapshot (snapshot_target) */
	char uri[256];          /* MIGRATE: "tcp:HOST:PORT", or "fd": the connected
				 * TCP socket passed with the request (fd[0]) */
	char token[256];        /* MIGRATE: "" if none */
	uint64_t max_downtime_ms; /* MIGRATE: 0: the default; bandwidth in bps */
	bool copy_storage;      /* MIGRATE: the disks go too (non-shared storage) */
};

/* What the control socket acts on; owned by the caller, outlives it. */
struct virtio_dev;

struct control_target {
	struct vm *vm;
	struct virtio_blk *const *disks;
	const char *const *disk_paths;
	unsigned int ndisks;
	struct virtio_net *const *nics;
	unsigned int nnics;
	struct virtio_balloon *balloon; /* NULL: none */
	struct ged *ged;                /* the power button; NULL: none */
	struct acpipm *pm;              /* the power button if not NULL (a PC:
					 * firmware boot), instead of ged's */
	struct rtc *rtc;                /* saved in snapshots; NULL: none */
	struct firmware *fw;            /* --firmware: saved in snapshots */
	struct serial *serial;          /* the console; NULL: none */
	uint64_t balloon_target;        /* its target (control_apply updates it) */
	const struct machine_config *machine; /* for snapshots; NULL: none taken */
	struct virtio_dev *const *virtio; /* every virtio device, for snapshots */
	unsigned int nvirtio;
	struct migration *migration;    /* live migration; NULL: none */
	struct snapshot_base *snap_base; /* incremental snapshots; NULL: none */
	bool no_connect;                /* jailed: a migration's stream must be passed
					 * (uri "fd"), the VMM cannot connect */
};

/* Error classes in replies ("code"), which the daemon maps to HTTP statuses. */
#define CONTROL_E_BAD_REQUEST "bad-request"
#define CONTROL_E_WRONG_STATE "wrong-state"
#define CONTROL_E_NOT_FOUND   "not-found"
#define CONTROL_E_FAILED      "failed"

/* Parses one request. Returns 0, or -EINVAL with err_set() detail for
 * malformed JSON, a missing or unknown action, unknown fields or bad values. */
int control_parse(const char *text, size_t len, struct control_action *out);
/* Parses a host CPU list like "0-3,6" into a set. 0 or -EINVAL. */
int control_parse_cpulist(const char *text, cpu_set_t *out);

/* The internal snapshot `name` of every writable disk of t (src/vmm/
 * control-disks.c), for a paused VM: created in all (a disk that cannot
 * take one, e.g. raw, or has one by that name: -ENOTSUP / -EEXIST, and the
 * ones made are dropped again), or with `del` dropped where present. Each
 * under the image's lock, so no request of the disk's I/O threads runs
 * meanwhile. 0 or -errno with err_set(). */
int control_disks_snapshot(const struct control_target *t, const char *name, bool del);

/* Applies an action; returns the reply object (the caller puts it). */
struct json_object *control_apply(struct control_target *t, const struct control_action *a);
/* The reply for a request that failed to parse or apply. */
struct json_object *control_error(const char *code, const char *message);

struct control;
/* Binds `path` (an existing socket file is replaced) and serves it on
 * `loop`. Returns NULL with err_set() detail. */
struct control *control_create(struct loop *loop, const char *path,
			       const struct control_target *target);
/* Closes every connection and removes the socket file. NULL is fine. */
void control_destroy(struct control *ctl);

#endif

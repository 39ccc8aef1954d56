/* The save/restore state format (src/state/, DESIGN §3.9-3.10): one file
 * that holds a whole machine's device state (guest RAM lives in a file of
 * its own, see state_memory_save()).
 *
 * Layout, every integer little-endian:
 *
 *   file header, STATE_HEADER_SIZE (48) bytes:
 *     0  magic "VIREOSTA"          8  u32 format version (STATE_VERSION)
 *    12  u32 header size (48)     16  u32 vCPUs      20  u32 flags (0)
 *    24  u64 guest RAM bytes      32  u64 creation time (Unix seconds)
 *    40  u32 reserved (0)         44  u32 CRC-32 of bytes 0..43
 *   then sections, each a STATE_SECTION_HEADER_SIZE (24) byte header:
 *     0  u32 type   4  u32 id (vCPU index, device index)   8  u32 flags
 *    12  u32 CRC-32 of the payload   16  u32 payload length
 *    20  u32 CRC-32 of bytes 0..19
 *   and its payload; the last section is STATE_SEC_END (length 0), and
 *   nothing may follow it.
 *
 * Every byte is under a CRC (zlib's CRC-32, which catches every single
 * burst of up to 32 bits), so truncation, a flipped byte, a wrong version
 * and a section this build does not know but must not skip
 * (STATE_SECTION_CRITICAL) are all refused by state_reader_open() before
 * any state is handed out: a restore never applies half a file.
 *
 * Payloads are built with state_put_*() and read with state_get_*(). KVM's
 * own structures (struct kvm_regs ...) are stored as their x86 byte image
 * (x86 is little-endian), length-prefixed (state_put_blob) so that a size
 * change is caught. */
#ifndef VIREO_STATE_H
#define VIREO_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STATE_MAGIC "VIREOSTA"
#define STATE_VERSION 1
#define STATE_HEADER_SIZE 48
#define STATE_SECTION_HEADER_SIZE 24
#define STATE_MAX_SECTION (16u << 20)   /* payload bytes */
#define STATE_MAX_FILE (256u << 20)
#define STATE_MAX_SECTIONS 4096 /* known ones; 255 vCPUs and the devices fit */

/* A section this build does not know is skipped, unless it has this flag. */
#define STATE_SECTION_CRITICAL 1u

enum state_section_type {
	STATE_SEC_END = 0,
	STATE_SEC_MACHINE = 1,  /* how to build the machine (src/vmm/machine.c) */
	STATE_SEC_VCPU = 2,     /* id: vCPU index */
	STATE_SEC_IRQCHIP = 3,  /* PIC master, PIC slave, IOAPIC */
	STATE_SEC_PIT = 4,
	STATE_SEC_CLOCK = 5,    /* kvmclock (KVM_GET_CLOCK) */
	STATE_SEC_SERIAL = 6,
	STATE_SEC_GED = 7,
	STATE_SEC_MEMORY = 8,   /* the memory file: its size and layout */
	STATE_SEC_RTC = 9,      /* CMOS RTC: NVRAM and the guest's clock offset */
	/* virtio devices (src/virtio/pci.c: PCI config, transport, then the
	 * model's own state); id: the device's index among those of its kind */
	STATE_SEC_VIRTIO_BLK = 10,
	STATE_SEC_VIRTIO_NET = 11,
	STATE_SEC_VIRTIO_RNG = 12,
	STATE_SEC_VIRTIO_BALLOON = 13,
	STATE_SEC_SNAPID = 14,  /* the snapshot's own id (src/state/snapshot-inc.c) */
	STATE_SEC_DIFF = 15,    /* incremental: parent and dirty pages (critical) */
	/* A VM booted through --firmware (src/boot/firmware.c) */
	STATE_SEC_FIRMWARE = 16, /* the ROM image itself */
	STATE_SEC_FWCFG = 17,    /* fw_cfg's selection and DMA address register */
	STATE_SEC_ACPIPM = 18,   /* the PM1 registers (src/hw/acpipm.c) */
	STATE_SEC_COUNT,        /* types below this are known */
};

/* The machine summary of the file header. */
struct state_header {
	uint32_t version;
	uint32_t ncpus;
	uint64_t mem_size;
	uint64_t created;
};

/* ---- writing ---- */

struct state_writer;

/* A writer that collects the whole file in memory. NULL if out of memory. */
struct state_writer *state_writer_new(const struct state_header *h);
void state_writer_free(struct state_writer *w);
/* Starts a section; every section ends with state_end(). */
void state_begin(struct state_writer *w, uint32_t type, uint32_t id, uint32_t flags);
void state_put_u8(struct state_writer *w, uint8_t v);
void state_put_u32(struct state_writer *w, uint32_t v);
void state_put_u64(struct state_writer *w, uint64_t v);
void state_put_bytes(struct state_writer *w, const void *p, size_t n);
/* u32 length, then the bytes. */
void state_put_blob(struct state_writer *w, const void *p, size_t n);
void state_end(struct state_writer *w);
/* Ends the file (STATE_SEC_END) and returns it: 0, or -errno with
 * err_set() if anything put so far failed (out of memory, a section too
 * large, begin/end unbalanced). The buffer belongs to the writer. */
int state_writer_finish(struct state_writer *w, const uint8_t **buf, size_t *len);

/* ---- reading ---- */

struct state_reader;

/* Checks a whole file image (header, every section, the end marker) and
 * keeps a copy; 0, or -EINVAL/-ENOMEM with one err_set() line. */
int state_reader_open(const void *buf, size_t len, struct state_reader **out);
/* The same, from a file descriptor (read whole, at most STATE_MAX_FILE). */
int state_reader_open_fd(int fd, struct state_reader **out);
void state_reader_free(struct state_reader *r);
const struct state_header *state_reader_header(const struct state_reader *r);

/* A position in one section's payload. A read past its end sets `bad` and
 * returns zeros; state_done() reports it. */
struct state_cursor {
	const uint8_t *p;
	size_t len, pos;
	uint32_t type, id;
	bool bad;
};

/* Puts every section of r this build knows into w as it is, but those of
 * type skip (to be written anew). */
void state_copy_sections(const struct state_reader *r, struct state_writer *w, uint32_t skip);
/* Finds section (type, id): 0, or -ENOENT with err_set(). */
int state_section(const struct state_reader *r, uint32_t type, uint32_t id,
		  struct state_cursor *c);
bool state_has_section(const struct state_reader *r, uint32_t type, uint32_t id);
uint8_t state_get_u8(struct state_cursor *c);
uint32_t state_get_u32(struct state_cursor *c);
uint64_t state_get_u64(struct state_cursor *c);
void state_get_bytes(struct state_cursor *c, void *p, size_t n);
/* A blob of exactly n bytes (its length prefix must say n). */
void state_get_blob(struct state_cursor *c, void *p, size_t n);
/* A blob of at most max bytes; returns its length. */
size_t state_get_blob_max(struct state_cursor *c, void *p, size_t max);
/* 0 if the section was read whole and without error, else -EINVAL with
 * err_set() naming it. */
int state_done(struct state_cursor *c);
const char *state_section_name(uint32_t type);

/* ---- whole-VM snapshots (src/state/snapshot.c) ----
 *
 * A snapshot is a directory with two files: "state" (this format: machine,
 * vCPUs, in-kernel devices, serial, GED, the memory layout) and "memory"
 * (guest RAM at its memfd offsets, zero pages as holes). Both are written
 * under temporary names and renamed into place, "state" last: a directory
 * with a "state" file holds a complete snapshot. */

struct vm;
struct serial;
struct ged;
struct rtc;
struct machine_config;
struct virtio_dev;

struct firmware;
struct acpipm;

struct snapshot_target {
	struct vm *vm;
	struct serial *serial;
	struct ged *ged;
	struct rtc *rtc;        /* NULL: not saved (a snapshot without it keeps
				 * the fresh RTC: host time, sizes of this VM) */
	/* --firmware: the ROM and fw_cfg, and the PM1 blocks (NULL otherwise;
	 * a restore builds the firmware before snapshot_restore(): see
	 * firmware_restore()). */
	struct firmware *fw;
	struct acpipm *pm;
	const struct machine_config *machine;
	/* The virtio devices, in the order the machine description creates
	 * them (disks, rng, vNICs, balloon). */
	struct virtio_dev *const *virtio;
	unsigned int nvirtio;
	/* Incremental snapshots; NULL: this VMM takes none (and the
	 * snapshot_save*() functions only write full ones). */
	struct snapshot_base *base;
	bool incremental;       /* save only the pages dirtied since base */
	const char *parent;     /* incremental: the parent's directory as recorded
				 * in the new snapshot (relative: to the new
				 * snapshot's directory); NULL: base->dir */
	uint64_t parent_id;     /* incremental: if not 0, base->id must be this */
	/* Keep (or start) dirty logging after this snapshot or restore, so
	 * that the next snapshot can be incremental to it; false: logging
	 * stops (no write faults, huge mappings again) and the next snapshot
	 * must be full. */
	bool track_dirty;
};

struct snapshot_stats {
	uint64_t state_bytes, memory_bytes; /* memory: bytes written (not holes) */
	uint64_t id;            /* the new snapshot's id */
	uint64_t dirty_pages;   /* incremental: pages in its memory file */
};

/* ---- incremental snapshots (src/state/snapshot-inc.c) ----
 *
 * Every snapshot has a random nonzero 64-bit id (STATE_SEC_SNAPID). An
 * incremental one also has a STATE_SEC_DIFF section (critical: a build
 * without it refuses the file):
 *   u64 parent id, blob the parent's directory (relative: to this
 *   snapshot's directory), u64 pages in the memory file, blob the bitmap
 *   (include/vireo/dirty.h's, over the whole of guest RAM)
 * and its memory file holds only those pages, packed in bitmap order (page
 * k of the file is the k-th set bit; zero pages as holes). A restore opens
 * the chain up to its full snapshot (at most SNAPSHOT_MAX_CHAIN deep,
 * checking each parent's id), maps the full one's memory file and writes
 * the increments' pages over it, oldest first.
 *
 * The VMM's base: the snapshot its memory last equalled (the last one it
 * took or the one it was restored from), with KVM dirty logging on from
 * that instant: the guest's writes (KVM's log) and the VMM's own writes
 * into guest RAM (the virtio devices', dirty_mark()). Only if that
 * snapshot or restore asked for it (snapshot_target.track_dirty): logging
 * costs a write fault per page and 4 KiB mappings for as long as it runs,
 * so without the request it stops and there is no base (an incremental
 * snapshot is then refused, never silently full). */
#define SNAPSHOT_MAX_CHAIN 64

struct snapshot_base {
	uint64_t id;            /* 0: none, the next snapshot must be full */
	char dir[4096];         /* where it is; "": unknown (written to fds) */
	uint64_t *bits;         /* pages dirtied since, as collected so far */
	uint64_t words;
	bool disabled;          /* a migration took over the dirty log: no base
				 * again in this process */
	uint64_t untracked;     /* id of the last snapshot taken or restored
				 * without track_dirty (0: none), for the
				 * refusal of an increment to it */
};

/* 0 if incremental snapshots are possible for t's VM, else -ENOTSUP with
 * err_set() saying why. */
int snapshot_incremental_supported(const struct snapshot_target *t);
/* With t->track_dirty: makes snapshot `id` (in dir, NULL: unknown) the
 * base and starts dirty logging, if t's VM can have one; otherwise (or
 * without track_dirty) drops the base and stops the logging it ran. */
void snapshot_base_set(const struct snapshot_target *t, uint64_t id, const char *dir);
/* No base any more (e.g. a migration takes over the dirty log). */
void snapshot_base_drop(struct snapshot_base *b);
void snapshot_base_free(struct snapshot_base *b);

/* Stops the virtio devices serving requests once those in flight have
 * finished (virtio_quiesce), for a snapshot of the disks at the same
 * instant as the state; nests. 0 or -errno with err_set(). */
int snapshot_quiesce(const struct snapshot_target *t);
void snapshot_unquiesce(const struct snapshot_target *t);
/* Saves a paused VM into dir (created if missing, 0700). 0 or -errno
 * with err_set(). */
int snapshot_save(const char *dir, const struct snapshot_target *t,
		  struct snapshot_stats *stats);
/* The same into two files the caller opened (a sandboxed VMM cannot open
 * any: the daemon passes them), truncated and written, then synced; the
 * caller names them. 0 or -errno with err_set(). */
int snapshot_save_fds(int mem_fd, int state_fd, const struct snapshot_target *t,
		      struct snapshot_stats *stats);

/* The state file's bytes for a paused VM (what snapshot_save() writes
 * as "state"), for a migration stream: *buf belongs to *w (free it with
 * state_writer_free). 0 or -errno with err_set(). */
int snapshot_state_build(const struct snapshot_target *t, struct state_writer **w,
			 const uint8_t **buf, size_t *len);

struct snapshot;
/* A snapshot from a state file's bytes and a memory file (mem_fd, taken
 * even on failure), as a migration brings them. 0 or -errno. */
int snapshot_open_buffer(const void *state, size_t len, int mem_fd, struct snapshot **out,
			 struct machine_config *m);
/* Opens dir's snapshot, checks its state file whole and its memory file's
 * size, and reads the machine to build. 0 or -errno with err_set(). */
int snapshot_open(const char *dir, struct snapshot **out, struct machine_config *m);
/* Rewrites dir's state file with disk i at paths[i] (n: the machine's
 * disk count), for a snapshot moved to another host. 0 or -errno with
 * err_set(). */
int snapshot_set_disk_paths(const char *dir, const char *const *paths, unsigned int n);
/* The memory file's descriptor, handed over (for vm_config.mem_fd). */
int snapshot_take_memory_fd(struct snapshot *s);
/* The snapshot's state file, checked (for firmware_restore()). */
const struct state_reader *snapshot_state(const struct snapshot *s);
/* Restores the device state into a VM built from the machine (its RAM
 * from the memory file), before its vCPUs run. */
int snapshot_restore(struct snapshot *s, const struct snapshot_target *t);
void snapshot_close(struct snapshot *s);

#endif

/* The block layer (DESIGN §3.3, §3.4): a lower file layer, a registry of
 * image formats (ops tables probed by score), open images with their backing
 * chains, and the block device API that virtio-blk sits on.
 *
 *   blockdev (counters, read-only flag, iovecs)        <- virtio-blk, vireo img
 *     struct image (one layer: format + its state)     <- image_*()
 *       struct image_format ops (raw, qcow2, vhd, vmdk)
 *       struct bfile (lower file layer)                <- every format's I/O
 *       struct image *backing (next layer, same shape)
 *
 * Errors: every function returns 0 or -errno (or NULL) and leaves the detail,
 * naming the file and the problem, in err_set() (vireo/log.h).
 *
 * Adding a format: write src/block/<fmt>*.c defining one
 * `const struct image_format <fmt>_format`, declare it in the list at the end
 * of this header and add one line to the table in src/block/registry.c. */
#ifndef VIREO_BLOCK_H
#define VIREO_BLOCK_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define BLOCK_SECTOR_SIZE 512u
#define BLOCK_MAX_CHAIN   64	/* deepest backing chain we follow */
#define BLOCK_PATH_MAX    4096

/* ------------------------------------------------------------------------
 * Lower file layer. Formats never touch a bare fd: they call bfile_*(), so
 * that a backing chain, an in-memory test backend or an error-injecting
 * wrapper can sit underneath any format.
 * ---------------------------------------------------------------------- */

struct bfile;

/* A file backend. All callbacks are required except punch (default:
 * -EOPNOTSUPP, callers then write zeroes if they must) and close.
 * pread: reads up to len bytes at off; returns bytes read (0 at end of file)
 *   or -errno. The layer loops and zero-fills past the end of file.
 * pwrite: writes up to len bytes; returns bytes written or -errno; the file
 *   grows as needed.
 * flush: makes every completed write durable (fdatasync).
 * length: current length in bytes, or -errno.
 * truncate: sets the length. */
struct bfile_ops {
	const char *name;
	ssize_t (*pread)(struct bfile *f, void *buf, size_t len, uint64_t off);
	ssize_t (*pwrite)(struct bfile *f, const void *buf, size_t len, uint64_t off);
	int (*flush)(struct bfile *f);
	int64_t (*length)(struct bfile *f);
	int (*truncate)(struct bfile *f, uint64_t len);
	int (*punch)(struct bfile *f, uint64_t off, uint64_t len);
	void (*close)(struct bfile *f);
};

struct block_policy;

struct bfile {
	const struct bfile_ops *ops;
	char *path;		/* as given; used in error messages and for siblings */
	bool readonly;
	bool force_share;	/* opened without image locks (-U) */
	bool no_flush;		/* cache=unsafe: flush does nothing */
	unsigned int direct_align; /* O_DIRECT: buffer/offset/length alignment; 0: none */
	int fd;			/* posix backend only; -1 otherwise */
	/* Where the files this one names (backing files, extents, parents)
	 * may be: they are opened under the same policy. NULL: anywhere. */
	const struct block_policy *policy;
	int depth;		/* 0: the top image (and its extents); 1: its backing file... */
	void *priv;		/* backend state */
	/* Error injection (tests): after this many more successful writes,
	 * every write fails with -EIO. Negative: disabled. */
	int64_t fail_writes_after;
};

enum bfile_flags {
	BFILE_RDONLY = 0,
	BFILE_RDWR   = 1 << 0,
	BFILE_CREATE = 1 << 1,	/* create or truncate to 0 */
	BFILE_DIRECT = 1 << 2,	/* O_DIRECT where the backend supports it */
	BFILE_FORCE_SHARE = 1 << 3, /* no image locks (qemu-img -U) */
	BFILE_DSYNC  = 1 << 4,	/* O_DSYNC: every write durable (cache=writethrough) */
	BFILE_NO_FLUSH = 1 << 5, /* flush is a no-op (cache=unsafe) */
};

/* Opens a host file (pread/pwrite backend; io_uring later).
 *
 * Image locking, compatible with QEMU's (block/file-posix.c): every open
 * takes OFD read locks on single bytes, 100+i for each permission bit i it
 * holds (0 consistent read, 1 write, 2 write-unchanged, 3 resize) and 200+i
 * for each it does not let others hold, then fails with -EBUSY ("image is in
 * use by another process: PATH") if another open file holds a permission it
 * refuses, or refuses one it wants. A writable open holds read, write and
 * resize and shares neither write nor resize; a read-only open holds read
 * and shares neither either: one writer, or any number of readers, as with
 * QEMU and qemu-img. The locks belong to the open file description: they
 * conflict between two opens in one process, a forked child shares them,
 * and they go with the last descriptor. BFILE_FORCE_SHARE takes none (and
 * files opened relative to such a file take none either). BFILE_CREATE
 * locks before it truncates. */
int bfile_open(const char *path, int flags, struct bfile **out);
/* The same under a storage policy (NULL: none): see block_policy_open(). */
int bfile_open_policy(const char *path, int flags, const struct block_policy *p,
		      int depth, struct bfile **out);
/* Opens a file named relative to the directory of `base` (backing files,
 * VMDK extents, VHD parents); absolute names are used as they are. The file
 * is opened under base's policy, at base's depth. */
int bfile_open_relative(const struct bfile *base, const char *name, int flags,
			struct bfile **out);
/* Resolves `name` relative to `base`'s directory into out[BLOCK_PATH_MAX]. */
int bfile_resolve(const char *base, const char *name, char *out);
/* An in-memory file (tests, fuzzers). `data` is copied; may be NULL. */
int bfile_mem_open(const char *name, const void *data, size_t len, bool readonly,
		   struct bfile **out);
/* The current contents of a memory file (for tests). */
const uint8_t *bfile_mem_data(struct bfile *f, size_t *len);
void bfile_close(struct bfile *f);

/* Exact-length I/O: 0 or -errno. Reads past end of file give zeroes. */
int bfile_pread(struct bfile *f, void *buf, size_t len, uint64_t off);
int bfile_pwrite(struct bfile *f, const void *buf, size_t len, uint64_t off);
int bfile_pwrite_zeroes(struct bfile *f, uint64_t off, uint64_t len);
int bfile_flush(struct bfile *f);
/* Drops the image locks (locked false) or takes them again as the open
 * did (true; -EBUSY if another process holds them meanwhile): a live
 * migration hands a shared image to the destination this way. Files
 * opened without locks are left alone. 0 or -errno with err_set(). */
int bfile_set_locked(struct bfile *f, bool locked);
int64_t bfile_length(struct bfile *f);
int bfile_truncate(struct bfile *f, uint64_t len);
/* Deallocates a range (raw discard); -EOPNOTSUPP if the backend can't. */
int bfile_punch(struct bfile *f, uint64_t off, uint64_t len);

/* ------------------------------------------------------------------------
 * Storage policy (src/block/policy.c; DESIGN §3.15, docs/images.md): where
 * the files of an image chain may live and with whose rights they are
 * opened. `vireo run --storage`, `vireo daemon --storage` and `vireo img
 * --backing-confine` are this one mechanism.
 *
 * Every file of a chain (the image, its backing files, VMDK extents and
 * parents, VHD parents) is resolved with symlinks followed and must lie in
 * one of `dirs` (or, with own_dir, in the top image's directory); it is
 * then opened beneath that directory (openat2 RESOLVE_BENEATH, so a symlink
 * swapped in after the check cannot lead out), without blocking, and must
 * be a regular file or a block device. A refusal is -EPERM with err_set()
 * naming the offending path.
 * ---------------------------------------------------------------------- */

#define BLOCK_POLICY_MAX_DIRS 16

struct block_policy {
	const char *const *dirs;	/* absolute and symlink-free (block_storage_dir) */
	unsigned int ndirs;
	bool own_dir;			/* the top image's directory is allowed too */
	/* Open with this filesystem uid/gid (setfsuid/setfsgid on the calling
	 * thread, around the open only): the files are opened with that
	 * user's rights, never root's. */
	bool as_user;
	uid_t uid;
	gid_t gid;
	/* Called for every file opened under the policy, with its resolved
	 * path and its depth in the chain (0: the top image and its extents). */
	void (*seen)(void *ctx, const char *real, int depth);
	void *ctx;
};

/* Resolves a storage directory given by the operator (it must exist and be
 * a directory) into a heap string for block_policy.dirs. */
int block_storage_dir(const char *dir, char **out);
/* Opens path with open(2) flags `oflags` under policy p; stores the fd. */
int block_policy_open(const struct block_policy *p, const char *path, int oflags, int depth,
		      int *fd);
/* The policy `vireo img` applies to every image it opens (NULL: none). */
void image_set_default_policy(const struct block_policy *p);

/* ------------------------------------------------------------------------
 * Image formats.
 * ---------------------------------------------------------------------- */

struct image;
struct image_format;

/* Options of `vireo img create` (-o k=v,...), after parsing. */
struct image_create_opts {
	uint64_t size;			/* virtual size in bytes */
	const char *backing;		/* backing file name as recorded, or NULL */
	const char *backing_fmt;	/* its format; probed and recorded if NULL */
	uint32_t cluster_size;		/* 0: format default */
	const char *compat;		/* qcow2 "0.10" / "1.1"; NULL: default */
	const char *subformat;		/* vhd: fixed|dynamic; vmdk: monolithicSparse|... */
	int refcount_bits;		/* qcow2; 0: default 16 */
	const char *compression_type;	/* qcow2 "zlib" | "zstd"; NULL: zlib */
	bool lazy_refcounts;
	/* Unknown -o keys a format accepts, "key=value" each (NULL-terminated). */
	const char *const *extra;
};

/* Allocation status of a range (image_format.block_status, `img map`). */
enum block_status {
	BLOCK_DATA      = 1 << 0,	/* reads return data from this layer */
	BLOCK_ZERO      = 1 << 1,	/* reads return zeroes */
	BLOCK_ALLOCATED = 1 << 2,	/* decided by this layer, not a backing file */
	BLOCK_OFFSET    = 1 << 3,	/* *host_off is valid (raw offset in the file) */
	BLOCK_COMPRESSED = 1 << 4,
};

/* Result of image_format.check (same counters as qemu-img check). */
struct image_check {
	uint64_t corruptions;		/* found and still present */
	uint64_t leaks;			/* found and still present */
	uint64_t corruptions_fixed;
	uint64_t leaks_fixed;
	uint64_t check_errors;		/* I/O errors while checking */
	uint64_t allocated_clusters;
	uint64_t total_clusters;
	uint64_t fragmented_clusters;
	uint64_t compressed_clusters;
	uint64_t image_end_offset;
	/* Messages, one per problem, as qemu-img prints them. Owned by the
	 * caller of image_check(); free with image_check_free(). */
	char **messages;
	size_t nr_messages;
};

enum image_check_fix {
	IMAGE_FIX_LEAKS  = 1 << 0,
	IMAGE_FIX_ERRORS = 1 << 1,
};

/* One internal snapshot (qcow2). */
struct image_snapshot {
	char id[32];
	char name[256];
	uint64_t vm_state_size;
	uint64_t disk_size;
	uint32_t date_sec, date_nsec;
	uint64_t vm_clock_nsec;
	uint64_t icount;		/* UINT64_MAX: not recorded */
};

/* Format-specific facts for `img info`: a small list of typed key/values. */
enum image_info_type { INFO_STR, INFO_INT, INFO_BOOL };
struct image_info_item {
	char key[32];
	enum image_info_type type;
	char str[256];
	int64_t num;			/* INT, and BOOL as 0/1 */
};
#define IMAGE_INFO_MAX 16
struct image_info {
	uint64_t cluster_size;		/* 0: not applicable */
	bool dirty;
	size_t nr_items;
	struct image_info_item items[IMAGE_INFO_MAX];
};
void image_info_add_str(struct image_info *info, const char *key, const char *val);
void image_info_add_int(struct image_info *info, const char *key, int64_t val);
void image_info_add_bool(struct image_info *info, const char *key, bool val);

/* An image format. The core serializes calls per image (image->lock), so a
 * callback never runs concurrently with another on the same image. Offsets
 * and lengths passed to read/write/discard lie within the virtual size (the
 * core checks); they need not be aligned. Callbacks marked (optional) may be
 * NULL; the core's default is given.
 *
 * Every callback validates what it reads from the file (DESIGN §3.8-3.9):
 * bad sizes, offsets past the end, pointers into metadata are -EINVAL (or
 * -EIO for a corrupt table) with err_set() naming the file and the problem,
 * never a crash and never a write to the image. */
struct image_format {
	const char *name;		/* as in -f / -O: "raw", "qcow2", "vpc", "vmdk" */

	/* probe (optional; NULL: never auto-detected): a score 0..100 for how
	 * sure the format is that `buf` (the first `len` bytes of the file, at
	 * least 512 when the file is that big) is one of its images. 100 means
	 * a magic number matched. Pure function of the bytes and the name. */
	int (*probe)(const uint8_t *buf, size_t len, const char *filename);

	/* open: img->file is open (read-only unless img->writable). Parse and
	 * validate metadata, store state in img->opaque, set img->size, and
	 * img->backing_name / backing_fmt if the image has a backing file (the
	 * core opens the chain afterwards). If the image has extra files
	 * (extents, parents), open them with bfile_open_relative(img->file,..). */
	int (*open)(struct image *img);
	/* close: write back caches (already flushed by the core when writable),
	 * free img->opaque and any extra files. Must not fail. */
	void (*close)(struct image *img);

	/* read: fill buf with guest-visible data; for ranges this layer doesn't
	 * allocate, call image_read_backing() (zeroes when there is no backing
	 * file or beyond its end). */
	int (*read)(struct image *img, uint64_t off, void *buf, size_t len);
	/* write (optional; NULL: read-only format -> -EROFS). Allocates as needed.
	 * Ordering: data before the table that points at it, tables before their
	 * parent tables, refcounts before the use they count, so that a process
	 * killed between any two file writes leaves at most leaked space. */
	int (*write)(struct image *img, uint64_t off, const void *buf, size_t len);
	/* concurrent: read and write are called WITHOUT img->lock, from several
	 * threads at once; they take it themselves around metadata and may run
	 * their data I/O outside it (qcow2). Every other callback is called
	 * under img->lock as usual. */
	bool concurrent;
	/* write_compressed (optional; NULL: `convert -c` refuses the format):
	 * store one cluster compressed. off is aligned to info.cluster_size and
	 * len is one cluster (shorter only at the end of the image); the cluster
	 * is unallocated in this layer. Data that doesn't shrink is stored as a
	 * normal cluster. Unlike the other callbacks it is called WITHOUT
	 * img->lock, from several threads at once, so that clusters compress in
	 * parallel: it compresses first, then takes img->lock for the rest. */
	int (*write_compressed)(struct image *img, uint64_t off, const void *buf, size_t len);
	/* flush (optional; default: bfile_flush of img->file): write back
	 * metadata caches, then make everything durable. */
	int (*flush)(struct image *img);
	/* discard (optional; default: success, no-op): the range's contents may
	 * become zeroes or the backing file's data (for formats that can't mark
	 * zeroes). Advisory: never an error for unaligned parts. */
	int (*discard)(struct image *img, uint64_t off, uint64_t len);
	/* write_zeroes (optional; default: write() of a zero buffer). After it,
	 * the range reads as zeroes even with a backing file. */
	int (*write_zeroes)(struct image *img, uint64_t off, uint64_t len);
	/* block_status (optional; default: the whole range is DATA|ALLOCATED):
	 * status of [off, off+len) in this layer; stores in *pnum (>0) how many
	 * bytes from off share the returned status and in *host_off the offset
	 * in img->file when BLOCK_OFFSET is set. Returns flags or -errno. */
	int (*block_status)(struct image *img, uint64_t off, uint64_t len,
			    uint64_t *pnum, uint64_t *host_off);

	/* create: file is an empty writable file at `path`; write a new image of
	 * opts->size (and create any extra files next to path). The core has
	 * checked that the backing file opens when one is given. */
	int (*create)(struct bfile *file, const char *path,
		      const struct image_create_opts *opts);
	/* check (optional; NULL: `img check` exits 63 "not supported"): verify
	 * metadata consistency, fill *res; with fix flags, repair. Called on an
	 * image opened writable when fix != 0, read-only otherwise. */
	int (*check)(struct image *img, struct image_check *res, int fix);
	/* resize (optional; NULL: -ENOTSUP): change the virtual size. Shrinking
	 * may be refused with -ENOTSUP. */
	int (*resize)(struct image *img, uint64_t new_size);
	/* info (optional): format-specific facts for `img info`. */
	void (*info)(struct image *img, struct image_info *info);
	/* set_backing (optional; NULL: -ENOTSUP): record a new backing file name
	 * and format (NULL name: none) in the header (`img rebase`). */
	int (*set_backing)(struct image *img, const char *name, const char *fmt);
	/* make_empty (optional): drop all of this layer's data so every read
	 * goes to the backing file (`img commit`). */
	int (*make_empty)(struct image *img);

	/* Internal snapshots (all optional; NULL: -ENOTSUP). list allocates an
	 * array the caller frees. */
	int (*snapshot_create)(struct image *img, const char *name);
	int (*snapshot_list)(struct image *img, struct image_snapshot **out, size_t *n);
	int (*snapshot_apply)(struct image *img, const char *name_or_id);
	int (*snapshot_delete)(struct image *img, const char *name_or_id);
	/* snapshot_load: on an image opened read-only, reads show internal
	 * snapshot name_or_id from now on (its tables and virtual size), as
	 * QEMU's bdrv_snapshot_load_tmp (`qemu-img convert -l`). Writes
	 * nothing: a snapshot's tables and clusters stay as they are while it
	 * exists (a writer copies them on write), so this view can be read
	 * without the image lock while a VMM writes the image. */
	int (*snapshot_load)(struct image *img, const char *name_or_id);
};

/* One open layer of a chain. */
struct image {
	const struct image_format *fmt;
	struct bfile *file;
	char *filename;			/* as opened (relative names resolved) */
	bool writable;
	uint64_t size;			/* virtual size, set by fmt->open */
	void *opaque;			/* format state */
	struct image *backing;		/* NULL: none (reads as zeroes) */
	char backing_name[BLOCK_PATH_MAX];	/* as recorded in the header */
	char backing_fmt[32];		/* as recorded; "" if not */
	bool broken;			/* metadata found corrupt while running */
	pthread_mutex_t lock;
	struct block_policy *own_policy; /* top layer: the per-chain copy (own_dir) */
	char *own_dir;
};

enum image_open_flags {
	IMAGE_RDWR        = 1 << 0,
	IMAGE_NO_BACKING  = 1 << 1,	/* don't open the backing chain */
	IMAGE_ALLOW_PROBE_RAW_RW = 1 << 2, /* -f raw explicitly given */
	IMAGE_DIRECT      = 1 << 3,	/* O_DIRECT on this layer (cache=none) */
	IMAGE_FORCE_SHARE = 1 << 4,	/* no image locks, whole chain (-U) */
	IMAGE_DSYNC       = 1 << 5,	/* O_DSYNC on this layer */
	IMAGE_NO_FLUSH    = 1 << 6,	/* flushes ignored on this layer */
};

/* Host cache modes, QEMU's meanings: writeback = page cache, flushes
 * honoured; none = O_DIRECT, flushes honoured; writethrough = O_DSYNC;
 * directsync = O_DIRECT | O_DSYNC; unsafe = page cache, flushes ignored. */
enum block_cache {
	BLOCK_CACHE_WRITEBACK = 0,	/* the default (docs/run.md) */
	BLOCK_CACHE_NONE,
	BLOCK_CACHE_WRITETHROUGH,
	BLOCK_CACHE_DIRECTSYNC,
	BLOCK_CACHE_UNSAFE,
};
/* The mode named `name`, or -EINVAL. */
int block_cache_parse(const char *name);
const char *block_cache_name(enum block_cache mode);
/* IMAGE_* flags of a mode. */
int block_cache_image_flags(enum block_cache mode);
/* Whether the guest sees a volatile write cache (VIRTIO_BLK_F_FLUSH): not
 * when every write is already durable (O_DSYNC). */
bool block_cache_volatile(enum block_cache mode);

/* How a disk's requests run (docs/run.md): io_uring = reads, writes and
 * flushes of raw images on host files go to an io_uring, the rest to I/O
 * worker threads; threads = everything on worker threads. */
enum block_aio {
	BLOCK_AIO_IO_URING = 0,		/* the default */
	BLOCK_AIO_THREADS,
};
/* The mode named `name`, or -EINVAL. */
int block_aio_parse(const char *name);
const char *block_aio_name(enum block_aio mode);

/* Registry. */
const struct image_format *image_format_find(const char *name);
/* Best-scoring format for the file's first bytes; raw if none claims it.
 * *score is the winning score (0 for the raw fallback). */
const struct image_format *image_format_probe(struct bfile *f, int *score);
/* Calls fn for each registered format, in table order. */
void image_format_foreach(void (*fn)(const struct image_format *fmt, void *ctx),
			  void *ctx);

/* Opens `path` with format `fmt` (NULL: probe). A probed raw image is opened
 * read-only: writing requires fmt == "raw" given explicitly (DESIGN §3.4).
 * Opens the backing chain read-only, refusing loops and chains deeper than
 * BLOCK_MAX_CHAIN. */
int image_open(const char *path, const char *fmt, int flags, struct image **out);
/* Same, under a storage policy (NULL: the default policy, if any). A VMDK's
 * parent must be a VMDK image (-EPERM otherwise), with or without one. */
int image_open_policy(const char *path, const char *fmt, int flags,
		      const struct block_policy *p, struct image **out);
/* Same, over an already open file (tests, fuzzers); takes ownership of
 * file even on failure. The chain is not opened if the file has no path. */
int image_open_file(struct bfile *file, const char *fmt, int flags,
		    struct image **out);
/* Flushes (if writable) and closes img and its backing chain. */
void image_close(struct image *img);
/* Creates `path` (truncating it) as a new image of format `fmt`. */
int image_create(const char *path, const char *fmt, const struct image_create_opts *opts);

/* Guest-visible I/O. Bounds are checked against img->size: -EINVAL past
 * the end. Thread-safe (image->lock). */
int image_read(struct image *img, uint64_t off, void *buf, size_t len);
int image_write(struct image *img, uint64_t off, const void *buf, size_t len);
int image_write_zeroes(struct image *img, uint64_t off, uint64_t len);
int image_write_compressed(struct image *img, uint64_t off, const void *buf, size_t len);
int image_discard(struct image *img, uint64_t off, uint64_t len);
int image_flush(struct image *img);
/* fmt->snapshot_load on the top layer of a read-only image: -EROFS on a
 * writable one, -ENOTSUP for a format without internal snapshots. */
int image_snapshot_load(struct image *img, const char *name);
/* bfile_set_locked() on every layer of the chain (not VMDK extents). */
int image_set_locked(struct image *img, bool locked);
int image_block_status(struct image *img, uint64_t off, uint64_t len,
		       uint64_t *pnum, uint64_t *host_off);
int image_resize(struct image *img, uint64_t new_size);
int image_check(struct image *img, struct image_check *res, int fix);
void image_check_free(struct image_check *res);
/* Appends a message to res (formats call this from check). */
void image_check_msg(struct image_check *res, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void image_get_info(struct image *img, struct image_info *info);

/* For formats: marks img broken, logs (rate-limited) and records the error
 * "PATH: FORMAT image is corrupt: MSG"; returns -EIO. */
int image_vcorrupt(struct image *img, const char *path, const char *format, const char *fmt,
		   va_list ap) __attribute__((format(printf, 4, 0)));

/* For formats: reads the backing file's data for [off, off+len) of this
 * layer, or zeroes where there is no backing data. */
int image_read_backing(struct image *img, uint64_t off, void *buf, size_t len);

/* ------------------------------------------------------------------------
 * Block device: what virtio-blk uses. One image chain plus the device's
 * read-only flag and counters. Thread-safe; requests are synchronous
 * (callers run them on I/O worker threads).
 * ---------------------------------------------------------------------- */

struct blockdev_opts {
	const char *path;
	const char *format;		/* NULL: probe (raw then read-only) */
	bool readonly;
	const struct block_policy *policy;	/* NULL: none */
	enum block_cache cache;
};

struct blockdev_stats {
	uint64_t rd_ops, wr_ops, flush_ops, discard_ops;
	uint64_t rd_bytes, wr_bytes;
	uint64_t errors;
};

struct blockdev;

int blockdev_open(const struct blockdev_opts *opts, struct blockdev **out);
void blockdev_close(struct blockdev *bd);
uint64_t blockdev_size(const struct blockdev *bd);
bool blockdev_readonly(const struct blockdev *bd);
struct image *blockdev_image(struct blockdev *bd);
/* Scatter-gather I/O at a byte offset; -EROFS for writes to a read-only
 * device, -EINVAL past the end. */
int blockdev_readv(struct blockdev *bd, uint64_t off, const struct iovec *iov, int iovcnt);
int blockdev_writev(struct blockdev *bd, uint64_t off, const struct iovec *iov, int iovcnt);
int blockdev_flush(struct blockdev *bd);
int blockdev_discard(struct blockdev *bd, uint64_t off, uint64_t len);
int blockdev_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len);
void blockdev_get_stats(struct blockdev *bd, struct blockdev_stats *out);
/* The host file of a raw image (posix backend), which a caller may read and
 * write itself at the guest's offsets (e.g. through io_uring), without the
 * image lock, when it honours f->direct_align; NULL for any other image. */
struct bfile *blockdev_raw_file(struct blockdev *bd);

/* Asynchronous requests, for a device model that must not block its event
 * loop: blockdev_start_workers() starts I/O threads; blockdev_submit() queues
 * a request, and done() runs on a worker thread when it has completed (the
 * device then signals its guest, e.g. through an irqfd). Requests run
 * concurrently and may complete in any order; a FLUSH covers every write
 * that completed before it was submitted. Without workers, submit runs the
 * request inline. blockdev_close() drains the queue first. */
enum blockdev_op {
	BLOCKDEV_READ, BLOCKDEV_WRITE, BLOCKDEV_FLUSH, BLOCKDEV_DISCARD, BLOCKDEV_WRITE_ZEROES,
	BLOCKDEV_CALL,			/* runs req->call(req) on a worker */
};

struct blockdev_req {
	enum blockdev_op op;
	uint64_t off;
	uint64_t len;			/* DISCARD, WRITE_ZEROES */
	const struct iovec *iov;	/* READ, WRITE */
	int iovcnt;
	int (*call)(struct blockdev_req *req);	/* CALL */
	void (*done)(struct blockdev_req *req, int ret);
	void *opaque;			/* the caller's */
	struct blockdev_req *next;	/* the queue's */
};

int blockdev_start_workers(struct blockdev *bd, int nr);
/* Counts a read, write or flush the caller ran itself (on
 * blockdev_raw_file()). */
void blockdev_account(struct blockdev *bd, enum blockdev_op op, uint64_t bytes, int ret);
void blockdev_submit(struct blockdev *bd, struct blockdev_req *req);

/* Dirty tracking (live migration with copied storage, src/vmm/migrate-disk.c):
 * which grains of the disk were written since the last look, one bit per
 * BLOCKDEV_DIRTY_GRAIN bytes, bit (n % 64) of word n / 64. Every write,
 * discard and write-zeroes marks its range AFTER it has reached the image
 * (blockdev_writev/discard/write_zeroes do it; a caller that writes
 * blockdev_raw_file() itself calls blockdev_dirty_mark): a collect that
 * sees the mark then reads the new data, and a copy read before the write
 * landed is sent again. blockdev_dirty_start allocates the bitmap once (kept
 * until blockdev_close, so a writer that saw tracking on never touches freed
 * memory), clears it and turns marking on: 0 or -ENOMEM. blockdev_dirty_collect
 * ORs the marks into bits (blockdev_dirty_words() words) and clears them,
 * atomically per word. */
#define BLOCKDEV_DIRTY_GRAIN 65536u
int blockdev_dirty_start(struct blockdev *bd);
void blockdev_dirty_stop(struct blockdev *bd);
uint64_t blockdev_dirty_words(const struct blockdev *bd);
void blockdev_dirty_mark(struct blockdev *bd, uint64_t off, uint64_t len);
void blockdev_dirty_collect(struct blockdev *bd, uint64_t *bits);

/* The formats (src/block/<name>*.c). */
extern const struct image_format raw_format;
extern const struct image_format qcow2_format;
extern const struct image_format vpc_format;	/* VHD, src/block/vhd*.c */
extern const struct image_format vmdk_format;	/* src/block/vmdk*.c */

#endif

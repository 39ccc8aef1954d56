/* qcow2 internals, shared by qcow2*.c only.
 *
 * On-disk layout (all integers big-endian; see docs/images.md):
 *   header (cluster 0): magic "QFI\xfb", version 2|3, backing name location,
 *     cluster_bits, virtual size, L1 and refcount table locations, snapshot
 *     table location; v3 adds feature bits, refcount_order, header_length,
 *     compression type, then header extensions (type, length, padded data).
 *   L1 table -> L2 tables (one cluster each) -> data clusters.
 *   refcount table -> refcount blocks (one cluster each) -> 2^refcount_order
 *     bit counters, one per host cluster.
 *   snapshot table: entries each naming a frozen copy of the L1 table.
 * Tables are cached in memory in their on-disk (big-endian) form. The L2 and
 * refcount block caches are write-back, with the ordering rules of
 * qcow2-cluster.c: refcount increments reach the file before any L2, L1 or
 * header write that could point at the clusters they count; refcount
 * decrements are written only after the L2 tables that dropped the
 * reference. */
#ifndef VIREO_QCOW2_H
#define VIREO_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "endian.h"
#include "vireo/block.h"

#define QCOW2_MAGIC 0x514649fbu

#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       (1ull << 0)
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull
#define QCOW2_L1_RESERVED      0x7f000000000001ffull
#define QCOW2_L2_RESERVED      0x3f000000000001feull
#define QCOW2_RT_RESERVED      0x00000000000001ffull

#define QCOW2_INCOMPAT_DIRTY      (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT    (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE  (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2      (1ull << 4)
#define QCOW2_INCOMPAT_SUPPORTED  (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | \
				   QCOW2_INCOMPAT_COMPRESSION)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

#define QCOW2_EXT_END          0x00000000u
#define QCOW2_EXT_BACKING_FMT  0xe2792acau
#define QCOW2_EXT_FEATURES     0x6803f857u

#define QCOW2_COMPRESS_ZLIB 0
#define QCOW2_COMPRESS_ZSTD 1

#define QCOW2_MAX_L1_BYTES   (32u << 20)	/* as QEMU: bounds what we allocate */
#define QCOW2_MAX_RT_BYTES   (8u << 20)
#define QCOW2_MAX_SNAPSHOTS  65536
#define QCOW2_V3_HEADER_LEN  112

/* The fixed header (v2: first 72 bytes; v3: 104, 112 with compression_type),
 * host-endian after qcow2_header_read(). */
struct qcow2_header {
	uint32_t magic, version;
	uint64_t backing_file_offset;
	uint32_t backing_file_size, cluster_bits;
	uint64_t size;
	uint32_t crypt_method, l1_size;
	uint64_t l1_table_offset, refcount_table_offset;
	uint32_t refcount_table_clusters, nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompatible_features, compatible_features, autoclear_features;
	uint32_t refcount_order, header_length;
	uint8_t compression_type;
};

/* An unknown header extension, kept to be written back unchanged. */
struct qcow2_ext {
	uint32_t type, len;
	uint8_t *data;
};

struct qcow2_snapshot {
	uint64_t l1_table_offset;
	uint32_t l1_size;
	char *id, *name;
	uint32_t date_sec, date_nsec;
	uint64_t vm_clock_nsec;
	uint64_t vm_state_size, disk_size, icount;
	uint32_t extra_size;	/* as found; we write 24 */
};

struct qcow2_cache_entry {
	uint64_t offset;	/* 0: empty */
	uint64_t lru;
	uint8_t *data;
	uint32_t dirty_lo, dirty_hi;	/* bytes not yet written; hi == 0: clean */
};

struct qcow2_cache {
	int nr;
	uint64_t tick;
	size_t size;		/* bytes per entry (one cluster) */
	struct qcow2_cache_entry *e;
};

/* Open-addressing set of cluster indices (+1; 0 empty). */
struct qcow2_mset {
	uint64_t *slots;
	size_t cap, n, used;
};

struct qcow2 {
	struct image *img;
	struct bfile *file;
	struct qcow2_header h;
	uint32_t cluster_bits, cluster_size;
	uint64_t l2_entries;		/* entries per L2 table */
	uint64_t *l1;			/* host-endian copy of the active L1 */
	uint32_t l1_size;
	uint64_t *rt;			/* host-endian refcount table */
	uint64_t rt_size;		/* entries */
	uint32_t refcount_bits;
	uint64_t rb_entries;		/* counters per refcount block */
	uint64_t free_hint;		/* no free cluster below this index */
	uint64_t file_end;		/* bytes: end of the highest cluster in use */
	uint64_t cpack;			/* byte offset for the next compressed data; 0: none */
	struct qcow2_cache l2_cache, rb_cache;
	struct qcow2_snapshot *snaps;
	uint32_t nr_snaps;
	uint64_t snap_bytes;		/* size of the snapshot table on disk */
	struct qcow2_ext *exts;
	size_t nr_exts;
	uint8_t *cbuf;			/* last decompressed cluster */
	uint64_t cbuf_l2e;		/* its L2 entry; 0: none */
	struct qcow2_mset meta;		/* clusters holding tables (qcow2-meta.c) */
	int csize_shift;		/* compressed L2 entry: sector count position */
	uint64_t csize_mask;
	/* Concurrent requests (qcow2-cluster.c, "concurrency"): data I/O that
	 * runs outside img->lock on clusters mapped under it. */
	bool concurrent;		/* a host file: its pread/pwrite are thread-safe */
	pthread_mutex_t io_lock;	/* guards io_inflight */
	pthread_cond_t io_cond;
	unsigned int io_inflight;	/* reads/in-place writes of mapped clusters */
	pthread_cond_t alloc_cond;	/* with img->lock: an allocation finished */
	struct qcow2_alloc *allocs;	/* allocating writes in flight */
	unsigned int excl_waiting;	/* exclusive operations waiting for allocs */
};

/* An allocating write whose data I/O runs outside img->lock: guest
 * clusters [first, first+n) have new host clusters with their refcount
 * counted but no L2 entry yet. A second write to them waits for it. */
struct qcow2_alloc {
	uint64_t first, n;
	struct qcow2_alloc *next;
};

/* Test hook: called outside img->lock after an allocating write took its
 * clusters, before it writes its data. */
extern void (*qcow2_alloc_hook)(struct image *img, uint64_t off);

/* Endianness helpers for table entries. */

/* qcow2.c */
int qcow2_header_write(struct qcow2 *s);
int qcow2_corrupt(struct qcow2 *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int qcow2_check_offset(struct qcow2 *s, uint64_t off, const char *what);
int qcow2_l1_write_entry(struct qcow2 *s, uint32_t idx);
int qcow2_grow_l1(struct qcow2 *s, uint64_t min_size);

/* qcow2-cluster.c: guest cluster mapping. */
enum qcow2_ctype { QCOW2_UNALLOC, QCOW2_ZERO_PLAIN, QCOW2_ZERO_ALLOC, QCOW2_NORMAL,
		   QCOW2_COMPRESSED };
int qcow2_cache_init(struct qcow2_cache *c, int nr, size_t size);
void qcow2_cache_free(struct qcow2_cache *c);
int qcow2_cache_get(struct qcow2 *s, struct qcow2_cache *c, uint64_t off, uint8_t **data);
void qcow2_cache_drop(struct qcow2_cache *c, uint64_t off);
/* Marks bytes [lo, hi) of the cached table at off as changed. */
void qcow2_cache_dirty(struct qcow2_cache *c, uint64_t off, uint32_t lo, uint32_t hi);
/* Writes back dirty refcount blocks; then (flush_all) dirty L2 tables. */
int qcow2_flush_refcounts(struct qcow2 *s);
int qcow2_flush_caches(struct qcow2 *s);
enum qcow2_ctype qcow2_ctype(struct qcow2 *s, uint64_t l2e);
int qcow2_get_extent(struct qcow2 *s, uint64_t off, uint64_t len, enum qcow2_ctype *type,
		     uint64_t *host, uint64_t *bytes, uint64_t *l2e);
/* read/write: take img->lock themselves (image_format.concurrent); the
 * _locked forms run under it and keep it (internal callers). */
int qcow2_read(struct image *img, uint64_t off, void *buf, size_t len);
int qcow2_write(struct image *img, uint64_t off, const void *buf, size_t len);
int qcow2_read_locked(struct image *img, uint64_t off, void *buf, size_t len);
int qcow2_write_locked(struct image *img, uint64_t off, const void *buf, size_t len);
/* Under img->lock, before an operation that needs the image to itself
 * (snapshots, discard, zeroes, resize, check): waits for the allocating
 * writes and the data I/O in flight. */
void qcow2_quiesce(struct qcow2 *s);
/* Waits for the reads and in-place writes in flight (before a cluster is
 * freed: it could be reused under them). */
void qcow2_drain_io(struct qcow2 *s);
int qcow2_write_compressed(struct image *img, uint64_t off, const void *buf, size_t len);
int qcow2_discard(struct image *img, uint64_t off, uint64_t len);
int qcow2_write_zeroes(struct image *img, uint64_t off, uint64_t len);
int qcow2_block_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       uint64_t *host_off);
int qcow2_make_empty(struct image *img);
void qcow2_compressed_range(struct qcow2 *s, uint64_t l2e, uint64_t *off, uint64_t *size);
/* Frees what one L2 entry references (refcount -1 on its cluster(s)). */
int qcow2_free_l2e(struct qcow2 *s, uint64_t l2e);

/* qcow2-refcount.c */
int qcow2_refcount_open(struct qcow2 *s);
int qcow2_get_refcount(struct qcow2 *s, uint64_t cluster, uint64_t *rc);
int qcow2_update_refcount(struct qcow2 *s, uint64_t offset, uint64_t len, int64_t delta);
/* Allocates n contiguous clusters with refcount 1; returns the byte offset. */
int64_t qcow2_alloc_clusters(struct qcow2 *s, uint64_t n);
int qcow2_free_clusters(struct qcow2 *s, uint64_t offset, uint64_t len);
int qcow2_install_refcount_table(struct qcow2 *s, uint64_t *rt, uint64_t entries,
				 uint64_t rt_off);
uint64_t qcow2_rc_get(const uint8_t *block, uint64_t idx, uint32_t bits);
void qcow2_rc_set(uint8_t *block, uint64_t idx, uint32_t bits, uint64_t v);

/* qcow2-check.c */
int qcow2_check(struct image *img, struct image_check *res, int fix);
/* Sets or clears OFLAG_COPIED in the active tables to match refcounts. */
int qcow2_fix_copied(struct qcow2 *s, uint64_t *fixed);

/* qcow2-meta.c: overlap checks */
int qcow2_meta_init(struct qcow2 *s);
int qcow2_meta_add(struct qcow2 *s, uint64_t off);
void qcow2_meta_del(struct qcow2 *s, uint64_t cluster);
bool qcow2_meta_has(struct qcow2 *s, uint64_t cluster);
void qcow2_meta_free(struct qcow2 *s);
bool qcow2_is_metadata(struct qcow2 *s, uint64_t cluster);
int qcow2_check_data_write(struct qcow2 *s, uint64_t host, uint64_t len);

/* qcow2-snapshot.c */
int qcow2_snapshots_read(struct qcow2 *s);
void qcow2_snapshots_free(struct qcow2 *s);
int qcow2_snapshot_create(struct image *img, const char *name);
int qcow2_snapshot_list(struct image *img, struct image_snapshot **out, size_t *n);
int qcow2_snapshot_apply(struct image *img, const char *name);
int qcow2_snapshot_delete(struct image *img, const char *name);
int qcow2_snapshot_load(struct image *img, const char *name);
/* refcount += delta on everything an L1 table references (L2s and data). */
int qcow2_tree_refcount(struct qcow2 *s, const uint64_t *l1, uint32_t l1_size, int64_t delta);

#endif

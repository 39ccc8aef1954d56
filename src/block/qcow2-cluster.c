/* qcow2 guest cluster mapping: the L2 cache, lookups, reads, allocating
 * writes with copy-on-write, compressed clusters, zero clusters, discard.
 *
 * Write ordering (crash safety, DESIGN §3.4): a new cluster's refcount is
 * counted first (qcow2_alloc_clusters), then its contents are written, then
 * the L2 entry points at it, and only then is the cluster it replaced
 * released. L2 tables and refcount blocks are cached write-back; a dirty L2
 * table is written only after every dirty refcount block, an L1 entry or a
 * header field only after the refcount blocks too, and a refcount decrement
 * only after every dirty L2 table. So whatever subset of writes reached the
 * file when the process dies, no table points at a cluster whose refcount
 * doesn't count it: at worst clusters leak. New L2 tables are written before
 * the L1 entry pointing at them.
 *
 * Concurrency (after QEMU's qcow2 and its in-flight allocations): img->lock
 * guards the metadata (L1, L2 and refcount caches, the metadata set), and
 * qcow2_read/qcow2_write take it themselves (image_format.concurrent).
 * A read of a NORMAL cluster, or an in-place write of a NORMAL|COPIED one,
 * maps its extent under the lock, copies the host offset (no pointer into
 * the L2 cache survives the unlock), counts itself in io_inflight and runs
 * its pread/pwrite without the lock. Freeing a cluster (a refcount
 * decrement) first waits for io_inflight to drop to 0, so a host cluster is
 * never reused under a running read or write. An allocating write over
 * clusters that read as zeroes takes its clusters (refcounts counted) under
 * the lock, records itself in s->allocs, writes its data without the lock,
 * then retakes it to point the L2 entries: data still before the L2 entry
 * that points at it, and the refcount before both. A write that meets an
 * allocation in flight on one of its clusters waits for it (alloc_cond).
 * The rest (copy-on-write over data or a backing file, compressed clusters,
 * discard, write-zeroes, snapshots, resize, check) runs wholly under the
 * lock after qcow2_quiesce(): serialized, as before. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2.h"
#include "vireo/log.h"

#define WRITE_CHUNK (4u << 20)	/* most bytes one allocating write handles */

/* ---- concurrency ---- */

void (*qcow2_alloc_hook)(struct image *img, uint64_t off);

static void io_get(struct qcow2 *s)
{
	pthread_mutex_lock(&s->io_lock);
	s->io_inflight++;
	pthread_mutex_unlock(&s->io_lock);
}

static void io_put(struct qcow2 *s)
{
	pthread_mutex_lock(&s->io_lock);
	if (!--s->io_inflight)
		pthread_cond_broadcast(&s->io_cond);
	pthread_mutex_unlock(&s->io_lock);
}

/* Under img->lock: no new I/O can be mapped, and the I/O in flight needs
 * only io_lock to finish. */
void qcow2_drain_io(struct qcow2 *s)
{
	if (!s->concurrent)
		return;
	pthread_mutex_lock(&s->io_lock);
	while (s->io_inflight)
		pthread_cond_wait(&s->io_cond, &s->io_lock);
	pthread_mutex_unlock(&s->io_lock);
}

void qcow2_quiesce(struct qcow2 *s)
{
	if (!s->concurrent)
		return;
	s->excl_waiting++;	/* no new allocation starts meanwhile */
	while (s->allocs)
		pthread_cond_wait(&s->alloc_cond, &s->img->lock);
	if (!--s->excl_waiting)	/* writers held in wait_allocs() */
		pthread_cond_broadcast(&s->alloc_cond);
	qcow2_drain_io(s);
}

static bool alloc_overlaps(struct qcow2 *s, uint64_t off, uint64_t len)
{
	uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;

	for (struct qcow2_alloc *a = s->allocs; a; a = a->next)
		if (first < a->first + a->n && a->first <= last)
			return true;
	return false;
}

/* Under img->lock: a write to [off, off+len) waits for the allocations in
 * flight on its clusters (the second of two writes allocating one cluster
 * must see the first's L2 entry, not allocate again), and for an exclusive
 * operation that is waiting. */
static void wait_allocs(struct qcow2 *s, uint64_t off, uint64_t len)
{
	while (s->excl_waiting || alloc_overlaps(s, off, len))
		pthread_cond_wait(&s->alloc_cond, &s->img->lock);
}

static void alloc_done(struct qcow2 *s, struct qcow2_alloc *a)
{
	struct qcow2_alloc **pp = &s->allocs;

	while (*pp != a)
		pp = &(*pp)->next;
	*pp = a->next;
	pthread_cond_broadcast(&s->alloc_cond);
}

/* Under O_DIRECT, a write that is not aligned to the file's block goes
 * through a read-modify-write of whole blocks (and may truncate the file
 * back to its length, file.c): it runs alone, under the lock, with nothing
 * else in flight. Clusters are at least a block (qcow2_open), so the guest
 * offset's alignment is the host offset's. */
static bool direct_aligned(struct qcow2 *s, uint64_t off, const void *buf, uint64_t len)
{
	uint64_t a = s->file->direct_align;

	return !a || !((off | len | (uintptr_t)buf) & (a - 1));
}

/* Data I/O on a mapped host range: without img->lock when unlock. */
static int mapped_io(struct qcow2 *s, bool unlock, uint64_t host, void *buf, uint64_t n,
		     bool wr)
{
	int ret;

	if (!unlock)
		return wr ? bfile_pwrite(s->file, buf, n, host) : bfile_pread(s->file, buf, n, host);
	io_get(s);
	pthread_mutex_unlock(&s->img->lock);
	ret = wr ? bfile_pwrite(s->file, buf, n, host) : bfile_pread(s->file, buf, n, host);
	io_put(s);
	pthread_mutex_lock(&s->img->lock);
	return ret;
}

/* ---- metadata cache (write-through, LRU) ---- */

int qcow2_cache_init(struct qcow2_cache *c, int nr, size_t size)
{
	c->e = calloc((size_t)nr, sizeof(*c->e));
	if (!c->e)
		return err_set(-ENOMEM, "out of memory");
	c->nr = nr;
	c->size = size;
	return 0;
}

void qcow2_cache_free(struct qcow2_cache *c)
{
	for (int i = 0; c->e && i < c->nr; i++)
		free(c->e[i].data);
	free(c->e);
	c->e = NULL;
}

static int writeback(struct qcow2 *s, struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
	int ret;

	if (e->dirty_hi <= e->dirty_lo)
		return 0;
	if (c == &s->l2_cache && (ret = qcow2_flush_refcounts(s)))
		return ret;
	ret = bfile_pwrite(s->file, e->data + e->dirty_lo, e->dirty_hi - e->dirty_lo,
			   e->offset + e->dirty_lo);
	if (!ret)
		e->dirty_lo = e->dirty_hi = 0;
	return ret;
}

static int cache_flush(struct qcow2 *s, struct qcow2_cache *c)
{
	for (int i = 0; i < c->nr; i++) {
		int ret = c->e[i].offset ? writeback(s, c, &c->e[i]) : 0;

		if (ret)
			return ret;
	}
	return 0;
}

int qcow2_flush_refcounts(struct qcow2 *s)
{
	return cache_flush(s, &s->rb_cache);
}

int qcow2_flush_caches(struct qcow2 *s)
{
	return qcow2_flush_refcounts(s) ?: cache_flush(s, &s->l2_cache);
}

void qcow2_cache_dirty(struct qcow2_cache *c, uint64_t off, uint32_t lo, uint32_t hi)
{
	for (int i = 0; i < c->nr; i++) {
		struct qcow2_cache_entry *e = &c->e[i];

		if (e->offset != off)
			continue;
		if (e->dirty_hi <= e->dirty_lo) {
			e->dirty_lo = lo;
			e->dirty_hi = hi;
		} else {
			e->dirty_lo = lo < e->dirty_lo ? lo : e->dirty_lo;
			e->dirty_hi = hi > e->dirty_hi ? hi : e->dirty_hi;
		}
		return;
	}
}

int qcow2_cache_get(struct qcow2 *s, struct qcow2_cache *c, uint64_t off, uint8_t **data)
{
	struct qcow2_cache_entry *victim = &c->e[0];
	int ret;

	if (!off)
		return err_set(-EIO, "%s: metadata cache: table at offset 0", s->file->path);
	for (int i = 0; i < c->nr; i++) {
		if (c->e[i].offset == off) {
			c->e[i].lru = ++c->tick;
			*data = c->e[i].data;
			return 0;
		}
		if (c->e[i].lru < victim->lru)
			victim = &c->e[i];
	}
	if (!victim->data && !(victim->data = malloc(c->size)))
		return err_set(-ENOMEM, "out of memory");
	if (victim->offset && (ret = writeback(s, c, victim)))
		return ret;
	victim->offset = 0;
	ret = bfile_pread(s->file, victim->data, c->size, off);
	if (ret)
		return ret;
	victim->offset = off;
	victim->lru = ++c->tick;
	*data = victim->data;
	return 0;
}

void qcow2_cache_drop(struct qcow2_cache *c, uint64_t off)
{
	for (int i = 0; i < c->nr; i++)
		if (c->e[i].offset == off) {	/* freed: its contents don't matter */
			c->e[i].offset = 0;
			c->e[i].lru = 0;
			c->e[i].dirty_lo = c->e[i].dirty_hi = 0;
		}
}

/* ---- lookups ---- */

enum qcow2_ctype qcow2_ctype(struct qcow2 *s, uint64_t l2e)
{
	if (l2e & QCOW2_OFLAG_COMPRESSED)
		return QCOW2_COMPRESSED;
	if ((l2e & QCOW2_OFLAG_ZERO) && s->h.version >= 3)
		return (l2e & QCOW2_OFFSET_MASK) ? QCOW2_ZERO_ALLOC : QCOW2_ZERO_PLAIN;
	return (l2e & QCOW2_OFFSET_MASK) ? QCOW2_NORMAL : QCOW2_UNALLOC;
}

void qcow2_compressed_range(struct qcow2 *s, uint64_t l2e, uint64_t *off, uint64_t *size)
{
	uint64_t coff = l2e & ((1ull << s->csize_shift) - 1);
	uint64_t nb = ((l2e >> s->csize_shift) & s->csize_mask) + 1;

	*off = coff;
	*size = nb * 512 - (coff & 511);
}

static int validate_l2e(struct qcow2 *s, uint64_t l2e)
{
	enum qcow2_ctype t = qcow2_ctype(s, l2e);
	uint64_t off, size;

	if (t == QCOW2_COMPRESSED) {
		qcow2_compressed_range(s, l2e, &off, &size);
		if (off + size > s->file_end || off < s->cluster_size)
			return qcow2_corrupt(s, "compressed cluster at %#llx is outside the file",
					     (unsigned long long)off);
		return 0;
	}
	if ((l2e & QCOW2_L2_RESERVED) || (s->h.version < 3 && (l2e & QCOW2_OFLAG_ZERO)))
		return qcow2_corrupt(s, "L2 entry %#llx has reserved bits set",
				     (unsigned long long)l2e);
	if (t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC)
		return qcow2_check_offset(s, l2e & QCOW2_OFFSET_MASK, "data cluster");
	return 0;
}

/* The L2 table for guest offset off, or 0 if none is allocated. */
static int l2_lookup(struct qcow2 *s, uint64_t off, uint64_t *l2_off)
{
	uint64_t l1_idx = off >> (s->cluster_bits * 2 - 3), l1e;

	*l2_off = 0;
	if (l1_idx >= s->l1_size)
		return 0;
	l1e = s->l1[l1_idx];
	if (l1e & QCOW2_L1_RESERVED)
		return qcow2_corrupt(s, "L1 entry %llu has reserved bits set",
				     (unsigned long long)l1_idx);
	*l2_off = l1e & QCOW2_OFFSET_MASK;
	return *l2_off ? qcow2_check_offset(s, *l2_off, "L2 table") : 0;
}

static bool extends(struct qcow2 *s, enum qcow2_ctype t, uint64_t e0, uint64_t e, uint64_t i)
{
	uint64_t flags = ~QCOW2_OFFSET_MASK;

	if (qcow2_ctype(s, e) != t || t == QCOW2_COMPRESSED)
		return false;
	if (t == QCOW2_UNALLOC || t == QCOW2_ZERO_PLAIN)
		return true;
	return (e & flags) == (e0 & flags) &&
	       (e & QCOW2_OFFSET_MASK) == (e0 & QCOW2_OFFSET_MASK) + i * s->cluster_size;
}

/* Maps [off, off+len) up to the end of one L2 table (or, unallocated, over
 * all following empty L1 entries): type, host offset of off (NORMAL,
 * ZERO_ALLOC), bytes that share both, and the L2 entry of off. */
int qcow2_get_extent(struct qcow2 *s, uint64_t off, uint64_t len, enum qcow2_ctype *type,
		     uint64_t *host, uint64_t *bytes, uint64_t *l2e)
{
	uint64_t in_cluster = off & (s->cluster_size - 1);
	uint64_t idx = (off >> s->cluster_bits) & (s->l2_entries - 1);
	uint64_t max = (s->l2_entries - idx) * s->cluster_size - in_cluster;
	uint64_t l2_off, e0, n = 1;
	uint8_t *t;
	int ret;

	*host = 0;
	ret = l2_lookup(s, off, &l2_off);
	if (ret)
		return ret;
	if (!l2_off) {	/* runs on over the following empty L1 entries */
		uint64_t i = (off >> (s->cluster_bits * 2 - 3)) + 1, span = max;

		while (span < len && i < s->l1_size && !(s->l1[i] & QCOW2_OFFSET_MASK)) {
			span += s->l2_entries * s->cluster_size;
			i++;
		}
		*type = QCOW2_UNALLOC;
		*l2e = 0;
		*bytes = i >= s->l1_size || span > len ? len : span;
		return 0;
	}
	if (len > max)
		len = max;
	ret = qcow2_cache_get(s, &s->l2_cache, l2_off, &t);
	if (ret)
		return ret;
	*l2e = e0 = be64(t + idx * 8);
	ret = validate_l2e(s, e0);
	if (ret)
		return ret;
	*type = qcow2_ctype(s, e0);
	while (n * s->cluster_size - in_cluster < len &&
	       extends(s, *type, e0, be64(t + (idx + n) * 8), n))
		n++;
	*bytes = n * s->cluster_size - in_cluster < len ? n * s->cluster_size - in_cluster : len;
	if (*type == QCOW2_NORMAL || *type == QCOW2_ZERO_ALLOC)
		*host = (e0 & QCOW2_OFFSET_MASK) + in_cluster;
	return 0;
}

/* ---- compressed clusters ---- */

static int inflate_cluster(struct qcow2 *s, uint8_t *in, size_t in_len)
{
	z_stream z = { .next_in = in, .avail_in = (uInt)in_len, .next_out = s->cbuf,
		       .avail_out = s->cluster_size };
	int ret;

	if (inflateInit2(&z, -12) != Z_OK)
		return err_set(-ENOMEM, "zlib: out of memory");
	ret = inflate(&z, Z_FINISH);
	inflateEnd(&z);
	if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0)
		return 0;
	return qcow2_corrupt(s, "compressed cluster does not inflate");
}

static int unzstd_cluster(struct qcow2 *s, uint8_t *in, size_t in_len)
{
	ZSTD_DCtx *d = ZSTD_createDCtx();
	ZSTD_inBuffer ib = { in, in_len, 0 };
	ZSTD_outBuffer ob = { s->cbuf, s->cluster_size, 0 };
	size_t r = 1;

	if (!d)
		return err_set(-ENOMEM, "zstd: out of memory");
	while (ob.pos < ob.size && ib.pos < ib.size) {
		r = ZSTD_decompressStream(d, &ob, &ib);
		if (ZSTD_isError(r))
			break;
	}
	ZSTD_freeDCtx(d);
	if (ob.pos == ob.size && !ZSTD_isError(r))
		return 0;
	return qcow2_corrupt(s, "compressed cluster does not decompress (zstd)");
}

static int read_compressed(struct qcow2 *s, uint64_t l2e)
{
	uint64_t coff, csize;
	uint8_t *in;
	int ret;

	if (s->cbuf_l2e == l2e)
		return 0;
	qcow2_compressed_range(s, l2e, &coff, &csize);
	in = malloc(csize);
	if (!in)
		return err_set(-ENOMEM, "out of memory");
	s->cbuf_l2e = 0;
	ret = bfile_pread(s->file, in, csize, coff);
	if (!ret)
		ret = s->h.compression_type == QCOW2_COMPRESS_ZSTD ? unzstd_cluster(s, in, csize)
								   : inflate_cluster(s, in, csize);
	free(in);
	if (!ret)
		s->cbuf_l2e = l2e;
	return ret;
}

/* ---- reads ---- */

static int read_extent(struct qcow2 *s, enum qcow2_ctype t, uint64_t off, uint64_t host,
		       uint64_t l2e, uint8_t *buf, size_t n)
{
	int ret;

	switch (t) {
	case QCOW2_UNALLOC:
		return image_read_backing(s->img, off, buf, n);
	case QCOW2_ZERO_PLAIN:
	case QCOW2_ZERO_ALLOC:
		memset(buf, 0, n);
		return 0;
	case QCOW2_NORMAL:
		return bfile_pread(s->file, buf, n, host);
	case QCOW2_COMPRESSED:
		ret = read_compressed(s, l2e);
		if (!ret)
			memcpy(buf, s->cbuf + (off & (s->cluster_size - 1)), n);
		return ret;
	}
	return -EINVAL;
}

static int read_chunks(struct image *img, uint64_t off, uint8_t *p, size_t len, bool unlock)
{
	struct qcow2 *s = img->opaque;

	while (len) {
		enum qcow2_ctype t;
		uint64_t host, n, l2e;
		int ret = qcow2_get_extent(s, off, len, &t, &host, &n, &l2e);

		if (!ret && t == QCOW2_NORMAL)
			ret = mapped_io(s, unlock, host, p, n, false);
		else if (!ret)
			ret = read_extent(s, t, off, host, l2e, p, n);
		if (ret)
			return ret;
		off += n;
		p += n;
		len -= n;
	}
	return 0;
}

int qcow2_read_locked(struct image *img, uint64_t off, void *buf, size_t len)
{
	return read_chunks(img, off, buf, len, false);
}

int qcow2_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	struct qcow2 *s = img->opaque;
	int ret;

	pthread_mutex_lock(&img->lock);
	ret = read_chunks(img, off, buf, len, s->concurrent);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

/* ---- L2 tables for writing ---- */

static int l2_put(struct qcow2 *s, uint64_t l2_off, uint64_t idx, const uint64_t *v, uint64_t n)
{
	uint8_t *t;
	int ret = qcow2_cache_get(s, &s->l2_cache, l2_off, &t);

	if (ret)
		return ret;
	for (uint64_t i = 0; i < n; i++)
		put_be64(t + (idx + i) * 8, v[i]);
	qcow2_cache_dirty(&s->l2_cache, l2_off, (uint32_t)(idx * 8), (uint32_t)((idx + n) * 8));
	return 0;
}

/* The L2 table covering guest offset off, private to the active L1 (refcount
 * 1): allocated if missing, copied if shared with a snapshot. */
static int l2_for_write(struct qcow2 *s, uint64_t off, uint64_t *l2_off)
{
	uint64_t l1_idx = off >> (s->cluster_bits * 2 - 3), old;
	uint8_t *t, *copy;
	int64_t new_off;
	int ret = l2_lookup(s, off, &old);

	if (ret)
		return ret;
	if (old && (s->l1[l1_idx] & QCOW2_OFLAG_COPIED)) {
		*l2_off = old;
		return 0;
	}
	if (l1_idx >= s->l1_size && (ret = qcow2_grow_l1(s, l1_idx + 1)))
		return ret;
	copy = calloc(1, s->cluster_size);
	if (!copy)
		return err_set(-ENOMEM, "out of memory");
	ret = old ? qcow2_cache_get(s, &s->l2_cache, old, &t) : 0;
	if (!ret && old)
		memcpy(copy, t, s->cluster_size);
	new_off = ret ? ret : qcow2_alloc_clusters(s, 1);
	ret = new_off < 0 ? (int)new_off : bfile_pwrite(s->file, copy, s->cluster_size,
							(uint64_t)new_off);
	free(copy);
	if (ret)
		return ret;
	ret = qcow2_meta_add(s, (uint64_t)new_off);
	if (ret)
		return ret;
	s->l1[l1_idx] = (uint64_t)new_off | QCOW2_OFLAG_COPIED;
	ret = qcow2_l1_write_entry(s, (uint32_t)l1_idx);
	if (!ret && old)
		ret = qcow2_free_clusters(s, old, s->cluster_size);
	*l2_off = (uint64_t)new_off;
	return ret;
}

int qcow2_free_l2e(struct qcow2 *s, uint64_t l2e)
{
	uint64_t off, size;

	switch (qcow2_ctype(s, l2e)) {
	case QCOW2_NORMAL:
	case QCOW2_ZERO_ALLOC:
		return qcow2_free_clusters(s, l2e & QCOW2_OFFSET_MASK, s->cluster_size);
	case QCOW2_COMPRESSED:
		qcow2_compressed_range(s, l2e, &off, &size);
		return qcow2_free_clusters(s, off & ~511ull, (size + (off & 511) + 511) & ~511ull);
	default:
		return 0;
	}
}

/* ---- allocating writes ---- */

/* Old contents of the guest cluster at coff (clipped at the virtual end). */
static int read_old_cluster(struct qcow2 *s, uint64_t coff, uint8_t *buf)
{
	uint64_t n = s->img->size - coff < s->cluster_size ? s->img->size - coff : s->cluster_size;

	memset(buf + n, 0, s->cluster_size - n);
	return qcow2_read_locked(s->img, coff, buf, n);
}

/* Whether the clusters being replaced read as zeroes (no backing file). */
static bool fresh_zero_cow(struct qcow2 *s, const uint64_t *old, uint64_t k)
{
	if (s->img->backing)
		return false;
	for (uint64_t i = 0; i < k; i++) {
		enum qcow2_ctype t = qcow2_ctype(s, old[i]);

		if (t != QCOW2_UNALLOC && t != QCOW2_ZERO_PLAIN)
			return false;
	}
	return true;
}

/* Points k L2 entries from idx at contiguous clusters from host, in one write. */
static int point_l2(struct qcow2 *s, uint64_t l2_off, uint64_t idx, uint64_t host, uint64_t k)
{
	uint8_t *t;
	int ret = qcow2_cache_get(s, &s->l2_cache, l2_off, &t);

	if (ret)
		return ret;
	for (uint64_t i = 0; i < k; i++)
		put_be64(t + (idx + i) * 8, (host + i * s->cluster_size) | QCOW2_OFLAG_COPIED);
	qcow2_cache_dirty(&s->l2_cache, l2_off, (uint32_t)(idx * 8), (uint32_t)((idx + k) * 8));
	return 0;
}

/* The data of a fresh allocation: the guest's bytes, and zeroes around
 * them when the clusters are reused space (not past the end of the file). */
static int fresh_data(struct qcow2 *s, uint64_t host, bool reused, uint64_t head,
		      const uint8_t *buf, uint64_t len, uint64_t k)
{
	uint64_t cs = s->cluster_size;
	int ret = 0;

	if (reused && head)
		ret = bfile_pwrite_zeroes(s->file, host, head);
	if (!ret && reused && (head + len) < k * cs)
		ret = bfile_pwrite_zeroes(s->file, host + head + len, k * cs - head - len);
	return ret ? ret : bfile_pwrite(s->file, buf, len, host + head);
}

/* Allocating write over clusters that read as zeroes: when the new clusters
 * lie past the end of the file, their unwritten head and tail read as zeroes
 * already, so only the guest's bytes are written (no zero-filling COW).
 * With unlock, the data is written without img->lock (see the top). */
static int cow_write_fresh(struct qcow2 *s, uint64_t l2_off, uint64_t idx, uint64_t off,
			   const uint8_t *buf, uint64_t len, uint64_t k, bool unlock)
{
	uint64_t cs = s->cluster_size, first = off & ~(cs - 1), head = off - first;
	int64_t eof = bfile_length(s->file), host;
	struct qcow2_alloc a = { .first = first >> s->cluster_bits, .n = k };
	bool reused;
	int ret;

	if (eof < 0)
		return (int)eof;
	host = qcow2_alloc_clusters(s, k);
	if (host < 0)
		return (int)host;
	reused = (uint64_t)host < (uint64_t)eof;
	if (!unlock) {
		ret = fresh_data(s, (uint64_t)host, reused, head, buf, len, k);
		return ret ? ret : point_l2(s, l2_off, idx, (uint64_t)host, k);
	}
	a.next = s->allocs;
	s->allocs = &a;
	pthread_mutex_unlock(&s->img->lock);
	if (qcow2_alloc_hook)
		qcow2_alloc_hook(s->img, off);
	ret = fresh_data(s, (uint64_t)host, reused, head, buf, len, k);
	pthread_mutex_lock(&s->img->lock);
	alloc_done(s, &a);
	/* exclusive operations waited for us: the L2 table did not move */
	return ret ? ret : point_l2(s, l2_off, idx, (uint64_t)host, k);
}

/* Writes [off, off+len), all within one L2 table, to newly allocated
 * clusters: fill a bounce buffer with the old head and tail, write it, point
 * the L2 entries at it, free what they pointed at before. */
static int cow_write(struct qcow2 *s, uint64_t off, const uint8_t *buf, uint64_t len,
		     bool unlock)
{
	uint64_t cs = s->cluster_size, first = off & ~(cs - 1);
	uint64_t k = (off + len - first + cs - 1) / cs, idx = (first / cs) & (s->l2_entries - 1);
	uint64_t l2_off, old[WRITE_CHUNK / 512];
	uint8_t *bounce = NULL, *t;
	int64_t host;
	int ret = l2_for_write(s, off, &l2_off);

	if (!ret)
		ret = qcow2_cache_get(s, &s->l2_cache, l2_off, &t);
	if (ret)
		return ret;
	for (uint64_t i = 0; i < k; i++)
		old[i] = be64(t + (idx + i) * 8);
	if (fresh_zero_cow(s, old, k))
		return cow_write_fresh(s, l2_off, idx, off, buf, len, k, unlock);
	bounce = malloc(k * cs);
	if (!bounce)
		return err_set(-ENOMEM, "out of memory");
	if (off != first)
		ret = read_old_cluster(s, first, bounce);
	if (!ret && ((off + len) & (cs - 1)) && (k > 1 || off == first))
		ret = read_old_cluster(s, first + (k - 1) * cs, bounce + (k - 1) * cs);
	memcpy(bounce + (off - first), buf, len);
	host = ret ? ret : qcow2_alloc_clusters(s, k);
	ret = host < 0 ? (int)host : bfile_pwrite(s->file, bounce, k * cs, (uint64_t)host);
	free(bounce);
	if (!ret)
		ret = point_l2(s, l2_off, idx, (uint64_t)host, k);
	for (uint64_t i = 0; !ret && i < k; i++)
		ret = qcow2_free_l2e(s, old[i]);
	return ret;
}

static int write_chunks(struct image *img, uint64_t off, const void *buf, size_t len,
			bool unlock)
{
	struct qcow2 *s = img->opaque;
	const uint8_t *p = buf;
	uint64_t chunk = WRITE_CHUNK < s->cluster_size * 8ull ? s->cluster_size * 8ull : WRITE_CHUNK;

	if (chunk / s->cluster_size > WRITE_CHUNK / 512)
		chunk = (WRITE_CHUNK / 512) * (uint64_t)s->cluster_size;
	while (len) {
		enum qcow2_ctype t;
		uint64_t host, n, l2e, want = len;
		int ret;

		uint64_t l2_span = s->l2_entries * s->cluster_size;
		uint64_t l2_end = l2_span - (off & (l2_span - 1));	/* cow_write: one table */

		if (want > chunk - (off & (s->cluster_size - 1)))
			want = chunk - (off & (s->cluster_size - 1));
		if (want > l2_end)
			want = l2_end;
		bool alone = unlock && !direct_aligned(s, off, p, want);

		if (alone)	/* its read-modify-write must not race other writes */
			qcow2_quiesce(s);
		else if (unlock)
			wait_allocs(s, off, want);
		ret = qcow2_get_extent(s, off, want, &t, &host, &n, &l2e);
		if (ret)
			return ret;
		if (t == QCOW2_NORMAL && (l2e & QCOW2_OFLAG_COPIED))
			ret = qcow2_check_data_write(s, host, n) ?:
			      mapped_io(s, unlock && !alone, host, (void *)p, n, true);
		else
			ret = cow_write(s, off, p, n, unlock && !alone);
		if (ret)
			return ret;
		s->cbuf_l2e = 0;
		off += n;
		p += n;
		len -= n;
	}
	return 0;
}

int qcow2_write_locked(struct image *img, uint64_t off, const void *buf, size_t len)
{
	return write_chunks(img, off, buf, len, false);
}

int qcow2_write(struct image *img, uint64_t off, const void *buf, size_t len)
{
	struct qcow2 *s = img->opaque;
	int ret;

	pthread_mutex_lock(&img->lock);
	ret = write_chunks(img, off, buf, len, s->concurrent);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

/* ---- compressed writes (convert -c) ---- */

static size_t compress_cluster(struct qcow2 *s, const uint8_t *in, uint8_t *out, size_t max)
{
	if (s->h.compression_type == QCOW2_COMPRESS_ZSTD) {
		size_t r = ZSTD_compress(out, max, in, s->cluster_size, 3);

		return ZSTD_isError(r) ? 0 : r;
	}
	z_stream z = { .next_in = (uint8_t *)in, .avail_in = s->cluster_size, .next_out = out,
		       .avail_out = (uInt)max };
	size_t n = 0;

	if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
		return 0;
	if (deflate(&z, Z_FINISH) == Z_STREAM_END)
		n = max - z.avail_out;
	deflateEnd(&z);
	return n;
}

/* Byte offset for n compressed bytes: packed after the previous compressed
 * cluster when they fit in its host cluster (refcount +1), else new clusters. */
static int64_t compressed_alloc(struct qcow2 *s, uint64_t n)
{
	uint64_t cs = s->cluster_size, at = s->cpack;
	int64_t off;
	int ret;

	if (at && (at & (cs - 1)) + n <= cs) {
		ret = qcow2_update_refcount(s, at & ~(cs - 1), cs, 1);
		if (ret)
			return ret;
		s->cpack = ((at + n) & (cs - 1)) ? at + n : 0;
		return (int64_t)at;
	}
	off = qcow2_alloc_clusters(s, (n + cs - 1) / cs);
	if (off >= 0)
		s->cpack = (((uint64_t)off + n) & (cs - 1)) ? (uint64_t)off + n : 0;
	return off;
}

/* Under img->lock: place clen compressed bytes and point the L2 entry. */
static int store_compressed(struct qcow2 *s, uint64_t off, const uint8_t *out, size_t clen)
{
	uint64_t l2_off, l2e, nb;
	int64_t coff;
	int ret = l2_for_write(s, off, &l2_off);

	coff = ret ? ret : compressed_alloc(s, clen);
	ret = coff < 0 ? (int)coff : bfile_pwrite(s->file, out, clen, (uint64_t)coff);
	if (ret)
		return ret;
	nb = (((uint64_t)coff + clen - 1) >> 9) - ((uint64_t)coff >> 9);
	l2e = (uint64_t)coff | (nb << s->csize_shift) | QCOW2_OFLAG_COMPRESSED;
	return l2_put(s, l2_off, (off >> s->cluster_bits) & (s->l2_entries - 1), &l2e, 1);
}

/* Called without img->lock (see block.h): compression runs in parallel. */
int qcow2_write_compressed(struct image *img, uint64_t off, const void *buf, size_t len)
{
	struct qcow2 *s = img->opaque;
	uint64_t cs = s->cluster_size;
	uint8_t *in = calloc(2, cs), *out;
	size_t clen;
	int ret;

	if (!in)
		return err_set(-ENOMEM, "out of memory");
	if ((off & (cs - 1)) || len > cs) {
		free(in);
		return err_set(-EINVAL, "%s: compressed write not one aligned cluster", s->file->path);
	}
	out = in + cs;
	memcpy(in, buf, len);
	clen = compress_cluster(s, in, out, cs - 512);
	pthread_mutex_lock(&img->lock);
	qcow2_quiesce(s);
	ret = clen ? store_compressed(s, off, out, clen) : qcow2_write_locked(img, off, buf, len);
	pthread_mutex_unlock(&img->lock);
	free(in);
	return ret;
}

/* ---- discard, zeroes, status ---- */

/* Sets the L2 entry of each whole cluster in [off, off+len) to `value` (0 or
 * OFLAG_ZERO), releasing what they pointed at. Partial clusters: skipped. */
static int set_clusters(struct qcow2 *s, uint64_t off, uint64_t len, uint64_t value)
{
	uint64_t cs = s->cluster_size, c = (off + cs - 1) & ~(cs - 1);
	uint64_t end = (off + len == s->img->size) ? off + len : (off + len) & ~(cs - 1);

	for (; c < end; c += cs) {
		uint64_t l2_off, idx = (c >> s->cluster_bits) & (s->l2_entries - 1), e;
		uint8_t *t;
		int ret = l2_lookup(s, c, &l2_off);

		if (!ret && !l2_off && !value)
			continue;	/* already unallocated */
		if (!ret)
			ret = l2_for_write(s, c, &l2_off);
		if (!ret)
			ret = qcow2_cache_get(s, &s->l2_cache, l2_off, &t);
		if (ret)
			return ret;
		e = be64(t + idx * 8);
		if (e == value)
			continue;
		ret = l2_put(s, l2_off, idx, &value, 1);
		if (!ret)
			ret = qcow2_free_l2e(s, e);
		if (ret)
			return ret;
	}
	s->cbuf_l2e = 0;
	return 0;
}

int qcow2_discard(struct image *img, uint64_t off, uint64_t len)
{
	qcow2_quiesce(img->opaque);
	return set_clusters(img->opaque, off, len, 0);
}

int qcow2_make_empty(struct image *img)
{
	qcow2_quiesce(img->opaque);
	return set_clusters(img->opaque, 0, img->size, 0);
}

static int write_zero_buf(struct image *img, uint64_t off, uint64_t len)
{
	static const uint8_t zero[65536];

	while (len) {
		size_t n = len < sizeof(zero) ? (size_t)len : sizeof(zero);
		int ret = qcow2_write_locked(img, off, zero, n);

		if (ret)
			return ret;
		off += n;
		len -= n;
	}
	return 0;
}

int qcow2_write_zeroes(struct image *img, uint64_t off, uint64_t len)
{
	struct qcow2 *s = img->opaque;
	uint64_t cs = s->cluster_size, head, tail, end = off + len;
	int ret;

	qcow2_quiesce(s);
	if (s->h.version < 3 && img->backing)
		return write_zero_buf(img, off, len);
	head = ((off + cs - 1) & ~(cs - 1)) - off;
	if (head > len)
		head = len;
	tail = end == img->size ? 0 : end & (cs - 1);
	if (head + tail >= len)
		return write_zero_buf(img, off, len);
	ret = write_zero_buf(img, off, head);
	if (!ret)
		ret = set_clusters(s, off + head, len - head - tail,
				   img->backing ? QCOW2_OFLAG_ZERO : 0);
	if (!ret)
		ret = write_zero_buf(img, end - tail, tail);
	return ret;
}

int qcow2_block_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       uint64_t *host_off)
{
	struct qcow2 *s = img->opaque;
	enum qcow2_ctype t;
	uint64_t l2e;
	int ret = qcow2_get_extent(s, off, len, &t, host_off, pnum, &l2e);

	if (ret)
		return ret;
	switch (t) {
	case QCOW2_UNALLOC:
		return 0;
	case QCOW2_ZERO_PLAIN:
		return BLOCK_ZERO | BLOCK_ALLOCATED;
	case QCOW2_ZERO_ALLOC:
		return BLOCK_ZERO | BLOCK_ALLOCATED | BLOCK_OFFSET;
	case QCOW2_NORMAL:
		return BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET;
	case QCOW2_COMPRESSED:
		return BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_COMPRESSED;
	}
	return -EINVAL;
}

/* qcow2 refcounts: one counter per host cluster, in refcount blocks listed by
 * the refcount table. Allocation finds free clusters (refcount 0) from a
 * hint upwards; new refcount blocks are written before the table entry that
 * points at them; a bigger table is written in full before the header
 * switches to it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "vireo/log.h"

#define RT_OFFSET_MASK 0xfffffffffffffe00ull

uint64_t qcow2_rc_get(const uint8_t *block, uint64_t idx, uint32_t bits)
{
	uint64_t v = 0;

	if (bits < 8)
		return (block[idx * bits / 8] >> (idx * bits % 8)) & ((1u << bits) - 1);
	for (uint32_t i = 0; i < bits / 8; i++)
		v = v << 8 | block[idx * (bits / 8) + i];
	return v;
}

void qcow2_rc_set(uint8_t *block, uint64_t idx, uint32_t bits, uint64_t v)
{
	if (bits < 8) {
		unsigned shift = (unsigned)(idx * bits % 8), mask = ((1u << bits) - 1) << shift;
		uint8_t *b = &block[idx * bits / 8];

		*b = (uint8_t)((*b & ~mask) | ((v << shift) & mask));
		return;
	}
	for (int i = (int)(bits / 8) - 1; i >= 0; i--, v >>= 8)
		block[idx * (bits / 8) + (uint32_t)i] = (uint8_t)v;
}

int qcow2_refcount_open(struct qcow2 *s)
{
	uint64_t bytes = (uint64_t)s->h.refcount_table_clusters * s->cluster_size;
	uint8_t *raw = malloc(bytes);
	int ret;

	s->rt_size = bytes / 8;
	s->rt = calloc(s->rt_size, 8);
	if (!raw || !s->rt) {
		free(raw);
		return err_set(-ENOMEM, "out of memory");
	}
	ret = bfile_pread(s->file, raw, bytes, s->h.refcount_table_offset);
	for (uint64_t i = 0; !ret && i < s->rt_size; i++)
		s->rt[i] = be64(raw + i * 8);
	free(raw);
	return ret;
}

/* The refcount block for table index i (0 if none), validated. */
static int rb_offset(struct qcow2 *s, uint64_t i, uint64_t *off)
{
	*off = i < s->rt_size ? s->rt[i] & RT_OFFSET_MASK : 0;
	if (!*off)
		return 0;
	if (s->rt[i] & ~RT_OFFSET_MASK)
		return qcow2_corrupt(s, "refcount table entry %llu has reserved bits set",
				     (unsigned long long)i);
	return qcow2_check_offset(s, *off, "refcount block");
}

int qcow2_get_refcount(struct qcow2 *s, uint64_t cluster, uint64_t *rc)
{
	uint64_t off;
	uint8_t *b;
	int ret = rb_offset(s, cluster / s->rb_entries, &off);

	*rc = 0;
	if (ret || !off)
		return ret;
	ret = qcow2_cache_get(s, &s->rb_cache, off, &b);
	if (!ret)
		*rc = qcow2_rc_get(b, cluster % s->rb_entries, s->refcount_bits);
	return ret;
}

/* n free clusters in a row at or above the hint (clusters past the end of
 * the file are free). Advances the hint and the file end past them. */
static int find_free(struct qcow2 *s, uint64_t n, uint64_t *first)
{
	uint64_t c = s->free_hint, run = 0, end = s->file_end / s->cluster_size;

	while (run < n) {
		uint64_t rc = 0;
		int ret = c < end ? qcow2_get_refcount(s, c, &rc) : 0;

		if (!ret && !rc && c < end && qcow2_is_metadata(s, c))
			ret = qcow2_corrupt(s, "metadata cluster %llu has refcount 0",
					    (unsigned long long)c);
		if (ret)
			return ret;
		run = rc ? 0 : run + 1;
		c++;
	}
	*first = c - n;
	s->free_hint = c;
	if (c * s->cluster_size > s->file_end)
		s->file_end = c * s->cluster_size;
	return 0;
}

static int write_rt_header(struct qcow2 *s, uint64_t off, uint32_t clusters)
{
	uint8_t b[12];

	put_be64(b, off);
	b[8] = (uint8_t)(clusters >> 24);
	b[9] = (uint8_t)(clusters >> 16);
	b[10] = (uint8_t)(clusters >> 8);
	b[11] = (uint8_t)clusters;
	return bfile_pwrite(s->file, b, 12, 48);
}

/* Writes a new refcount table (its blocks are written already), switches the
 * header to it and adopts it in memory (takes rt). For grow_table() and the
 * rebuild of check -r. */
int qcow2_install_refcount_table(struct qcow2 *s, uint64_t *rt, uint64_t entries,
				 uint64_t rt_off)
{
	uint64_t bytes = entries * 8;
	uint8_t *raw = calloc(1, bytes);
	int ret = qcow2_flush_refcounts(s);

	if (!raw || ret) {
		free(raw);
		return ret ? ret : err_set(-ENOMEM, "out of memory");
	}
	for (uint64_t i = 0; i < entries; i++)
		put_be64(raw + i * 8, rt[i]);
	ret = bfile_pwrite(s->file, raw, bytes, rt_off);
	free(raw);
	if (!ret)
		ret = bfile_flush(s->file);
	if (!ret)
		ret = write_rt_header(s, rt_off, (uint32_t)(bytes / s->cluster_size));
	if (!ret)
		ret = bfile_flush(s->file);
	if (ret)
		return ret;
	free(s->rt);
	s->rt = rt;
	s->rt_size = entries;
	s->h.refcount_table_offset = rt_off;
	s->h.refcount_table_clusters = (uint32_t)(bytes / s->cluster_size);
	return 0;
}

/* A bigger refcount table with at least min entries, placed at the end of
 * the file together with the refcount blocks that describe the new clusters. */
static int grow_table(struct qcow2 *s, uint64_t min)
{
	uint64_t cs = s->cluster_size, per = cs / 8, E = s->file_end / cs, T = 0, B = 0, want;
	uint64_t entries, old_off = s->h.refcount_table_offset, old_bytes = s->rt_size * 8, j = 0;
	uint64_t *rt;
	uint8_t *blk;
	int ret = 0;

	if (min > QCOW2_MAX_RT_BYTES / 8)	/* before sizing anything by it */
		return err_set(-EFBIG, "%s: refcount table would exceed %u bytes", s->file->path,
			       QCOW2_MAX_RT_BYTES);
	want = min > s->rt_size * 2 ? min : s->rt_size * 2;
	if (want > QCOW2_MAX_RT_BYTES / 8)
		want = QCOW2_MAX_RT_BYTES / 8;
	for (int it = 0; it < 16; it++) {
		uint64_t last = (E + B + T) / s->rb_entries, nb = 0;

		for (uint64_t i = E / s->rb_entries; i <= last; i++)
			nb += i >= s->rt_size || !s->rt[i];
		want = want > last + 1 ? want : last + 1;
		B = nb;
		T = (want + per - 1) / per;
	}
	entries = T * per;
	if (entries * 8 > QCOW2_MAX_RT_BYTES)
		return err_set(-EFBIG, "%s: refcount table would exceed %u bytes", s->file->path,
			       QCOW2_MAX_RT_BYTES);
	rt = calloc(entries, 8);
	blk = calloc(1, cs);
	if (!rt || !blk) {
		free(rt);
		free(blk);
		return err_set(-ENOMEM, "out of memory");
	}
	memcpy(rt, s->rt, s->rt_size * 8);
	for (uint64_t i = E / s->rb_entries; !ret && i <= (E + B + T - 1) / s->rb_entries; i++) {
		uint64_t lo = i * s->rb_entries, hi = lo + s->rb_entries;

		lo = lo > E ? lo : E;
		hi = hi < E + B + T ? hi : E + B + T;
		if (rt[i]) {	/* existing block: count the new clusters in it */
			ret = qcow2_update_refcount(s, lo * cs, (hi - lo) * cs, 1);
			continue;
		}
		memset(blk, 0, cs);
		for (uint64_t c = lo; c < hi; c++)
			qcow2_rc_set(blk, c % s->rb_entries, s->refcount_bits, 1);
		rt[i] = (E + j++) * cs;
		ret = bfile_pwrite(s->file, blk, cs, rt[i]);
		if (!ret)
			ret = qcow2_meta_add(s, rt[i]);
	}
	free(blk);
	if (!ret)
		ret = qcow2_install_refcount_table(s, rt, entries, (E + B) * cs);
	if (ret) {
		free(rt);
		return ret;
	}
	if ((E + B + T) * cs > s->file_end)
		s->file_end = (E + B + T) * cs;
	return qcow2_free_clusters(s, old_off, old_bytes);
}

/* A new, zeroed refcount block for table index i. */
static int alloc_block(struct qcow2 *s, uint64_t i)
{
	uint64_t cs = s->cluster_size, c;
	uint8_t *blk;
	int ret;

	if (i >= s->rt_size && (ret = grow_table(s, i + 1)))
		return ret;
	if (s->rt[i])
		return 0;	/* grow_table() made it */
	ret = find_free(s, 1, &c);
	if (ret)
		return ret;
	blk = calloc(1, cs);
	if (!blk)
		return err_set(-ENOMEM, "out of memory");
	if (c / s->rb_entries == i)
		qcow2_rc_set(blk, c % s->rb_entries, s->refcount_bits, 1);
	else
		ret = qcow2_update_refcount(s, c * cs, cs, 1);
	if (!ret)
		ret = bfile_pwrite(s->file, blk, cs, c * cs);
	free(blk);
	if (!ret)
		ret = qcow2_flush_refcounts(s);	/* the block's own count, if elsewhere */
	if (!ret) {
		uint8_t b[8];

		put_be64(b, c * cs);
		ret = bfile_pwrite(s->file, b, 8, s->h.refcount_table_offset + i * 8);
	}
	if (!ret)
		s->rt[i] = c * cs;
	return ret ? ret : qcow2_meta_add(s, c * cs);
}

static void cluster_freed(struct qcow2 *s, uint64_t c)
{
	uint64_t off = c * s->cluster_size;

	qcow2_cache_drop(&s->l2_cache, off);
	qcow2_cache_drop(&s->rb_cache, off);
	qcow2_meta_del(s, c);
	if (s->cpack >= off && s->cpack < off + s->cluster_size)
		s->cpack = 0;
	if (c < s->free_hint)
		s->free_hint = c;
}

/* Adds delta to the refcount of each cluster of [c, c+n) that lies in one
 * refcount block, writing the changed bytes of the block at once. */
static int update_block(struct qcow2 *s, uint64_t c, uint64_t n, int64_t delta)
{
	uint64_t i = c / s->rb_entries, off, first = c % s->rb_entries;
	uint64_t max = s->refcount_bits == 64 ? UINT64_MAX : (1ull << s->refcount_bits) - 1;
	uint64_t lo, hi;
	uint8_t *b;
	int ret = rb_offset(s, i, &off);

	if (!ret && !off) {
		if (delta < 0)
			return qcow2_corrupt(s, "freeing cluster %llu without a refcount block",
					     (unsigned long long)c);
		ret = alloc_block(s, i);
		if (!ret)
			ret = rb_offset(s, i, &off);
	}
	if (!ret && delta < 0)
		ret = qcow2_flush_caches(s);	/* the dropped references first */
	if (!ret)
		ret = qcow2_cache_get(s, &s->rb_cache, off, &b);
	if (ret)
		return ret;
	for (uint64_t k = first; k < first + n; k++) {
		uint64_t v = qcow2_rc_get(b, k, s->refcount_bits);

		if (delta < 0 && v < (uint64_t)-delta)
			return qcow2_corrupt(s, "refcount of cluster %llu would drop below 0",
					     (unsigned long long)(i * s->rb_entries + k));
		if (delta > 0 && max - v < (uint64_t)delta)	/* a limit, not corruption */
			return err_set(-ERANGE, "%s: refcount of cluster %llu would exceed %u bits "
				       "(use a larger refcount_bits)", s->file->path,
				       (unsigned long long)(i * s->rb_entries + k), s->refcount_bits);
		qcow2_rc_set(b, k, s->refcount_bits, v + (uint64_t)delta);
		if (v + (uint64_t)delta == 0)
			cluster_freed(s, i * s->rb_entries + k);
	}
	lo = first * s->refcount_bits / 8;
	hi = ((first + n) * s->refcount_bits + 7) / 8;
	qcow2_cache_dirty(&s->rb_cache, off, (uint32_t)lo, (uint32_t)hi);
	return 0;
}

int qcow2_update_refcount(struct qcow2 *s, uint64_t offset, uint64_t len, int64_t delta)
{
	uint64_t c = offset / s->cluster_size;
	uint64_t end = (offset + len + s->cluster_size - 1) / s->cluster_size;

	if (delta < 0)
		qcow2_drain_io(s);	/* a freed cluster may be reused at once */
	while (c < end) {
		uint64_t n = s->rb_entries - c % s->rb_entries;
		int ret;

		if (n > end - c)
			n = end - c;
		ret = update_block(s, c, n, delta);
		if (ret)
			return ret;
		c += n;
	}
	return 0;
}

int64_t qcow2_alloc_clusters(struct qcow2 *s, uint64_t n)
{
	uint64_t c;
	int ret = find_free(s, n, &c);

	if (!ret)
		ret = qcow2_update_refcount(s, c * s->cluster_size, n * s->cluster_size, 1);
	return ret ? ret : (int64_t)(c * s->cluster_size);
}

int qcow2_free_clusters(struct qcow2 *s, uint64_t offset, uint64_t len)
{
	return qcow2_update_refcount(s, offset, len, -1);
}

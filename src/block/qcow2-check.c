/* qcow2 consistency check and repair. The check counts the references to
 * every host cluster by walking all metadata (header, L1/L2 tables of the
 * active image and of each snapshot, snapshot table, refcount structures)
 * and compares with the stored refcounts: more stored than found is a leak,
 * fewer is corruption. Repair rebuilds the refcount structures from the
 * counted references at the end of the file, then switches the header to
 * them (the old ones become free space), and fixes OFLAG_COPIED. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "vireo/log.h"

#define RT_OFFSET_MASK 0xfffffffffffffe00ull

struct checker {
	struct qcow2 *s;
	struct image_check *res;
	int fix;
	uint32_t *ref;		/* counted references per cluster */
	uint64_t n;		/* clusters in the file */
	uint8_t *l2;		/* scratch L2 table */
};

static void inc(struct checker *ck, uint64_t off, uint64_t len, const char *what)
{
	uint64_t cs = ck->s->cluster_size, c = off / cs, end = (off + len + cs - 1) / cs;

	for (; c < end; c++) {
		if (c >= ck->n) {
			image_check_msg(ck->res, "ERROR %s at %#llx is beyond the end of the file",
					what, (unsigned long long)(c * cs));
			ck->res->corruptions++;
			return;
		}
		ck->ref[c]++;
	}
}

static bool bad_offset(struct checker *ck, uint64_t off)
{
	return (off & (ck->s->cluster_size - 1)) || off < ck->s->cluster_size ||
	       off >= ck->n * ck->s->cluster_size;
}

/* One L2 entry; returns true if it is invalid and should be cleared. */
static bool walk_l2e(struct checker *ck, uint64_t e, bool active, uint64_t *prev)
{
	struct qcow2 *s = ck->s;
	uint64_t host = e & QCOW2_OFFSET_MASK, off, size;

	switch (qcow2_ctype(s, e)) {
	case QCOW2_COMPRESSED:
		qcow2_compressed_range(s, e, &off, &size);
		if (off + size > ck->n * s->cluster_size || off < s->cluster_size)
			goto bad;
		inc(ck, off & ~511ull, (size + (off & 511) + 511) & ~511ull, "compressed cluster");
		ck->res->compressed_clusters += active;
		ck->res->allocated_clusters += active;
		return false;
	case QCOW2_NORMAL:
	case QCOW2_ZERO_ALLOC:
		if (bad_offset(ck, host) || (e & QCOW2_L2_RESERVED))
			goto bad;
		inc(ck, host, s->cluster_size, "data cluster");
		if (active) {
			ck->res->allocated_clusters++;
			ck->res->fragmented_clusters += *prev && host != *prev + s->cluster_size;
			*prev = host;
		}
		return false;
	default:
		if (e & QCOW2_L2_RESERVED)
			goto bad;
		return false;
	}
bad:
	image_check_msg(ck->res, "ERROR invalid L2 entry %#llx", (unsigned long long)e);
	ck->res->corruptions++;
	return true;
}

static int walk_l2(struct checker *ck, uint64_t l2_off, bool active, uint64_t *prev)
{
	struct qcow2 *s = ck->s;
	int ret = bfile_pread(s->file, ck->l2, s->cluster_size, l2_off);

	if (ret) {
		ck->res->check_errors++;
		return 0;
	}
	for (uint64_t j = 0; j < s->l2_entries; j++) {
		uint8_t zero[8] = { 0 };

		if (!walk_l2e(ck, be64(ck->l2 + j * 8), active, prev) ||
		    !(ck->fix & IMAGE_FIX_ERRORS))
			continue;
		ret = bfile_pwrite(s->file, zero, 8, l2_off + j * 8);
		if (ret)
			return ret;
		qcow2_cache_drop(&s->l2_cache, l2_off);
		ck->res->corruptions--;
		ck->res->corruptions_fixed++;
	}
	return 0;
}

static int walk_l1(struct checker *ck, uint64_t *l1, uint32_t size, bool active)
{
	struct qcow2 *s = ck->s;
	uint64_t prev = 0;

	for (uint32_t i = 0; i < size; i++) {
		uint64_t off = l1[i] & QCOW2_OFFSET_MASK;
		int ret;

		if (!l1[i])
			continue;
		if (bad_offset(ck, off) || (l1[i] & QCOW2_L1_RESERVED)) {
			image_check_msg(ck->res, "ERROR invalid L1 entry %u: %#llx", i,
					(unsigned long long)l1[i]);
			ck->res->corruptions++;
			if (active && (ck->fix & IMAGE_FIX_ERRORS)) {
				l1[i] = 0;
				ret = qcow2_l1_write_entry(s, i);
				if (ret)
					return ret;
				ck->res->corruptions--;
				ck->res->corruptions_fixed++;
			}
			continue;
		}
		inc(ck, off, s->cluster_size, "L2 table");
		ret = walk_l2(ck, off, active, &prev);
		if (ret)
			return ret;
	}
	return 0;
}

static int walk_snapshots(struct checker *ck)
{
	struct qcow2 *s = ck->s;

	if (s->nr_snaps)
		inc(ck, s->h.snapshots_offset, s->snap_bytes, "snapshot table");
	for (uint32_t i = 0; i < s->nr_snaps; i++) {
		uint64_t *l1 = calloc(s->snaps[i].l1_size + 1ul, 8);
		uint8_t *raw = malloc(s->snaps[i].l1_size * 8ul + 8);
		int ret = l1 && raw ? bfile_pread(s->file, raw, s->snaps[i].l1_size * 8ul,
						  s->snaps[i].l1_table_offset) : -ENOMEM;

		for (uint32_t k = 0; !ret && k < s->snaps[i].l1_size; k++)
			l1[k] = be64(raw + k * 8ul);
		if (!ret) {
			inc(ck, s->snaps[i].l1_table_offset, s->snaps[i].l1_size * 8ull,
			    "snapshot L1 table");
			ret = walk_l1(ck, l1, s->snaps[i].l1_size, false);
		}
		free(l1);
		free(raw);
		if (ret)
			return ret;
	}
	return 0;
}

/* The refcount structures themselves; invalid table entries count as
 * corruption and their blocks are ignored. */
static void walk_refcounts(struct checker *ck, bool *bad)
{
	struct qcow2 *s = ck->s;

	inc(ck, s->h.refcount_table_offset, s->rt_size * 8, "refcount table");
	for (uint64_t i = 0; i < s->rt_size; i++) {
		uint64_t off = s->rt[i] & RT_OFFSET_MASK;

		if (!s->rt[i])
			continue;
		if (bad_offset(ck, off) || (s->rt[i] & ~RT_OFFSET_MASK)) {
			image_check_msg(ck->res, "ERROR refcount block %llu is not cluster aligned "
					"or outside the file; refcount table entry corrupted",
					(unsigned long long)i);
			ck->res->corruptions++;
			bad[i] = true;
			continue;
		}
		inc(ck, off, s->cluster_size, "refcount block");
	}
}

static uint64_t disk_rc(struct checker *ck, const bool *bad, uint64_t c)
{
	struct qcow2 *s = ck->s;
	uint64_t i = c / s->rb_entries, off;
	uint8_t *b;

	if (i >= s->rt_size || bad[i] || !(off = s->rt[i] & RT_OFFSET_MASK))
		return 0;
	if (qcow2_cache_get(s, &s->rb_cache, off, &b)) {
		ck->res->check_errors++;
		return 0;
	}
	return qcow2_rc_get(b, c % s->rb_entries, s->refcount_bits);
}

static void compare(struct checker *ck, const bool *bad)
{
	struct qcow2 *s = ck->s;
	uint64_t limit = s->rt_size * s->rb_entries;

	for (uint64_t c = 0; c < limit; c++) {
		uint64_t found = c < ck->n ? ck->ref[c] : 0, rc;

		if (c >= ck->n && (c % s->rb_entries == 0) &&
		    (c / s->rb_entries >= s->rt_size || !s->rt[c / s->rb_entries])) {
			c += s->rb_entries - 1;	/* no block: nothing stored */
			continue;
		}
		rc = disk_rc(ck, bad, c);
		if (rc == found)
			continue;
		image_check_msg(ck->res, "%s cluster %llu refcount=%llu reference=%llu",
				rc > found ? "Leaked" : "ERROR", (unsigned long long)c,
				(unsigned long long)rc, (unsigned long long)found);
		if (rc > found)
			ck->res->leaks++;
		else
			ck->res->corruptions++;
	}
}

/* OFLAG_COPIED must be set exactly on active entries whose refcount is 1. */
static void check_copied(struct checker *ck)
{
	struct qcow2 *s = ck->s;

	for (uint32_t i = 0; i < s->l1_size; i++) {
		uint64_t off = s->l1[i] & QCOW2_OFFSET_MASK;

		if (!off || bad_offset(ck, off))
			continue;
		if (!!(s->l1[i] & QCOW2_OFLAG_COPIED) != (ck->ref[off / s->cluster_size] == 1)) {
			image_check_msg(ck->res, "ERROR OFLAG_COPIED L2 cluster: l1_index=%u "
					"l1_entry=%#llx refcount=%u", i, (unsigned long long)s->l1[i],
					ck->ref[off / s->cluster_size]);
			ck->res->corruptions++;
		}
		if (bfile_pread(s->file, ck->l2, s->cluster_size, off))
			continue;
		for (uint64_t j = 0; j < s->l2_entries; j++) {
			uint64_t e = be64(ck->l2 + j * 8), h = e & QCOW2_OFFSET_MASK;
			enum qcow2_ctype t = qcow2_ctype(s, e);

			if ((t != QCOW2_NORMAL && t != QCOW2_ZERO_ALLOC) || bad_offset(ck, h))
				continue;
			if (!!(e & QCOW2_OFLAG_COPIED) != (ck->ref[h / s->cluster_size] == 1)) {
				image_check_msg(ck->res, "ERROR OFLAG_COPIED data cluster: "
						"l2_entry=%#llx refcount=%u", (unsigned long long)e,
						ck->ref[h / s->cluster_size]);
				ck->res->corruptions++;
			}
		}
	}
}

/* Refcount block i of a rebuild: counted references below n, and 1 for the
 * new structures themselves in [first_new, end_new). */
static void rebuild_block(struct checker *ck, const uint32_t *ref, uint64_t i, uint8_t *blk,
			  uint64_t first_new, uint64_t end_new)
{
	struct qcow2 *s = ck->s;

	memset(blk, 0, s->cluster_size);
	for (uint64_t k = 0; k < s->rb_entries; k++) {
		uint64_t c = i * s->rb_entries + k;
		uint64_t v = c < ck->n ? ref[c] : (c >= first_new && c < end_new);

		qcow2_rc_set(blk, k, s->refcount_bits, v);
	}
}

/* New refcount structures for ref[0..n), placed after the end of the file:
 * B blocks covering every cluster up to the new end, then the T-cluster
 * table; then the header switches to them. */
static int rebuild(struct checker *ck, const uint32_t *ref)
{
	struct qcow2 *s = ck->s;
	uint64_t cs = s->cluster_size, E = s->file_end / cs, B = 1, T = 1, entries;
	uint64_t *rt;
	uint8_t *blk;
	int ret = 0;

	for (int it = 0; it < 16; it++) {
		B = (E + B + T + s->rb_entries - 1) / s->rb_entries;
		T = (B * 8 + cs - 1) / cs;
	}
	entries = T * cs / 8;
	if (entries * 8 > QCOW2_MAX_RT_BYTES)
		return err_set(-EFBIG, "%s: refcount table too large", s->file->path);
	rt = calloc(entries, 8);
	blk = malloc(cs);
	for (uint64_t i = 0; rt && blk && !ret && i < B; i++) {
		rebuild_block(ck, ref, i, blk, E, E + B + T);
		rt[i] = (E + i) * cs;
		ret = bfile_pwrite(s->file, blk, cs, rt[i]);
	}
	if (!rt || !blk)
		ret = err_set(-ENOMEM, "out of memory");
	free(blk);
	if (!ret)
		ret = qcow2_install_refcount_table(s, rt, entries, (E + B) * cs);
	if (ret) {
		free(rt);
		return ret;
	}
	s->file_end = (E + B + T) * cs;
	s->free_hint = 0;
	s->cpack = 0;
	for (int i = 0; i < s->rb_cache.nr; i++)
		s->rb_cache.e[i].offset = 0;	/* clean: flushed when the check began */
	ret = qcow2_meta_init(s);
	return ret ? ret : bfile_flush(s->file);
}

int qcow2_fix_copied(struct qcow2 *s, uint64_t *fixed)
{
	*fixed = 0;
	for (uint32_t i = 0; i < s->l1_size; i++) {
		uint64_t off = s->l1[i] & QCOW2_OFFSET_MASK, rc, want;
		uint8_t *t;
		int ret;

		if (!off)
			continue;
		ret = qcow2_get_refcount(s, off / s->cluster_size, &rc);
		want = rc == 1 ? QCOW2_OFLAG_COPIED : 0;
		if (!ret && (s->l1[i] & QCOW2_OFLAG_COPIED) != want) {
			s->l1[i] = (s->l1[i] & ~QCOW2_OFLAG_COPIED) | want;
			ret = qcow2_l1_write_entry(s, i);
			++*fixed;
		}
		if (!ret)
			ret = qcow2_cache_get(s, &s->l2_cache, off, &t);
		for (uint64_t j = 0; !ret && j < s->l2_entries; j++) {
			uint64_t e = be64(t + j * 8);
			enum qcow2_ctype ty = qcow2_ctype(s, e);

			if (ty != QCOW2_NORMAL && ty != QCOW2_ZERO_ALLOC)
				continue;
			ret = qcow2_get_refcount(s, (e & QCOW2_OFFSET_MASK) / s->cluster_size, &rc);
			want = rc == 1 ? QCOW2_OFLAG_COPIED : 0;
			if (ret || (e & QCOW2_OFLAG_COPIED) == want)
				continue;
			put_be64(t + j * 8, (e & ~QCOW2_OFLAG_COPIED) | want);
			ret = bfile_pwrite(s->file, t + j * 8, 8, off + j * 8);
			++*fixed;
		}
		if (ret)
			return ret;
	}
	return 0;
}

static int check_once(struct qcow2 *s, struct image_check *res, int fix, uint32_t **base)
{
	struct checker ck = { .s = s, .res = res, .fix = fix, .n = s->file_end / s->cluster_size };
	bool *bad = calloc(s->rt_size + 1, sizeof(bool));
	int ret;

	ck.ref = calloc(ck.n + 1, sizeof(uint32_t));
	ck.l2 = malloc(s->cluster_size);
	*base = calloc(ck.n + 1, sizeof(uint32_t));
	if (!bad || !ck.ref || !ck.l2 || !*base) {
		ret = err_set(-ENOMEM, "%s: out of memory for the check", s->file->path);
		goto out;
	}
	inc(&ck, 0, s->cluster_size, "header");
	inc(&ck, s->h.l1_table_offset, s->l1_size * 8ull, "L1 table");
	ret = walk_l1(&ck, s->l1, s->l1_size, true);
	if (!ret)
		ret = walk_snapshots(&ck);
	if (ret)
		goto out;
	memcpy(*base, ck.ref, ck.n * sizeof(uint32_t));
	walk_refcounts(&ck, bad);
	compare(&ck, bad);
	check_copied(&ck);
	res->total_clusters = (s->h.size + s->cluster_size - 1) / s->cluster_size;
	res->image_end_offset = s->file_end;
out:
	free(bad);
	free(ck.ref);
	free(ck.l2);
	return ret;
}

static int repair(struct qcow2 *s, const struct image_check *before, int fix, uint32_t *base)
{
	uint64_t fixed;
	int ret = 0;

	if ((before->corruptions && (fix & IMAGE_FIX_ERRORS)) ||
	    (before->leaks && (fix & IMAGE_FIX_LEAKS) && !before->corruptions))
		ret = rebuild(&(struct checker){ .s = s, .n = s->file_end / s->cluster_size }, base);
	if (!ret && (fix & IMAGE_FIX_ERRORS))
		ret = qcow2_fix_copied(s, &fixed);
	return ret;
}

/* After a repair that left no corruption, the image may be written again. */
static int clear_corrupt(struct qcow2 *s, const struct image_check *res, int fix)
{
	if (!(fix & IMAGE_FIX_ERRORS) || res->corruptions)
		return 0;
	s->img->broken = false;
	if (!(s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT))
		return 0;
	s->h.incompatible_features &= ~QCOW2_INCOMPAT_CORRUPT;
	return qcow2_header_write(s);
}

int qcow2_check(struct image *img, struct image_check *res, int fix)
{
	struct qcow2 *s = img->opaque;
	struct image_check after;
	uint32_t *base = NULL;
	int ret = qcow2_flush_caches(s);	/* the check reads the file */

	if (ret)
		return ret;
	ret = check_once(s, res, fix, &base);

	if (ret || !fix || (!res->corruptions && !res->leaks)) {
		free(base);
		return ret ? ret : clear_corrupt(s, res, fix);
	}
	ret = repair(s, res, fix, base);
	free(base);
	if (!ret)
		ret = qcow2_meta_init(s);	/* repair may have dropped tables */
	if (ret)
		return ret;
	memset(&after, 0, sizeof(after));
	ret = check_once(s, &after, 0, &base);
	free(base);
	if (ret) {
		image_check_free(&after);
		return ret;
	}
	res->corruptions_fixed += res->corruptions > after.corruptions ?
				  res->corruptions - after.corruptions : 0;
	res->leaks_fixed += res->leaks > after.leaks ? res->leaks - after.leaks : 0;
	res->corruptions = after.corruptions;
	res->leaks = after.leaks;
	res->allocated_clusters = after.allocated_clusters;
	res->fragmented_clusters = after.fragmented_clusters;
	res->compressed_clusters = after.compressed_clusters;
	res->image_end_offset = after.image_end_offset;
	image_check_free(&after);
	return clear_corrupt(s, res, fix);
}

/* qcow2 internal snapshots: the snapshot table, and create/list/apply/delete.
 *
 * Snapshot table entry (big-endian, each padded to 8 bytes):
 *   u64 l1_table_offset, u32 l1_size, u16 id_len, u16 name_len,
 *   u32 date_sec, u32 date_nsec, u64 vm_clock_nsec, u32 vm_state_size,
 *   u32 extra_len, extra (u64 vm_state_size_large, u64 disk_size,
 *   u64 icount), id, name.
 * A snapshot owns a copy of the L1 table and one reference on every L2
 * table and data cluster it reaches. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qcow2.h"
#include "vireo/log.h"

void qcow2_snapshots_free(struct qcow2 *s)
{
	for (uint32_t i = 0; i < s->nr_snaps; i++) {
		free(s->snaps[i].id);
		free(s->snaps[i].name);
	}
	free(s->snaps);
	s->snaps = NULL;
	s->nr_snaps = 0;
}

static char *read_str(struct qcow2 *s, uint64_t off, uint32_t len)
{
	char *p = malloc(len + 1);

	if (!p || bfile_pread(s->file, p, len, off)) {
		free(p);
		return NULL;
	}
	p[len] = '\0';
	return p;
}

static int read_one(struct qcow2 *s, struct qcow2_snapshot *sn, uint64_t *off)
{
	uint8_t h[40], extra[24] = { 0 };
	uint32_t id_len, name_len;
	uint64_t cs = s->cluster_size;

	if (*off >= s->file_end)
		return err_set(-EINVAL, "%s: snapshot table runs past the end of the file",
			       s->file->path);
	if (bfile_pread(s->file, h, sizeof(h), *off))
		return -EIO;
	sn->l1_table_offset = be64(h);
	sn->l1_size = be32(h + 8);
	id_len = (uint32_t)h[12] << 8 | h[13];
	name_len = (uint32_t)h[14] << 8 | h[15];
	sn->date_sec = be32(h + 16);
	sn->date_nsec = be32(h + 20);
	sn->vm_clock_nsec = be64(h + 24);
	sn->vm_state_size = be32(h + 32);
	sn->extra_size = be32(h + 36);
	if (sn->extra_size > 1024 || (sn->l1_table_offset & (cs - 1)) ||
	    (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES ||
	    sn->l1_table_offset + sn->l1_size * 8ull > s->file_end)
		return err_set(-EINVAL, "%s: invalid snapshot table entry", s->file->path);
	if (bfile_pread(s->file, extra, sn->extra_size < 24 ? sn->extra_size : 24, *off + 40))
		return -EIO;
	sn->disk_size = sn->extra_size >= 16 ? be64(extra + 8) : s->h.size;
	if (sn->extra_size >= 8)
		sn->vm_state_size = be64(extra);
	sn->icount = sn->extra_size >= 24 ? be64(extra + 16) : UINT64_MAX;
	*off += 40 + sn->extra_size;
	sn->id = read_str(s, *off, id_len);
	sn->name = read_str(s, *off + id_len, name_len);
	if (!sn->id || !sn->name)
		return err_set(-EIO, "%s: cannot read snapshot names", s->file->path);
	*off += id_len + name_len;
	*off = (*off + 7) & ~7ull;
	return 0;
}

int qcow2_snapshots_read(struct qcow2 *s)
{
	uint64_t off = s->h.snapshots_offset;
	int ret;

	if (!s->h.nb_snapshots)
		return 0;
	s->snaps = calloc(s->h.nb_snapshots, sizeof(*s->snaps));
	if (!s->snaps)
		return err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
		s->nr_snaps = i + 1;
		ret = read_one(s, &s->snaps[i], &off);
		if (ret)
			return ret;
	}
	s->snap_bytes = off - s->h.snapshots_offset;
	return 0;
}

static uint64_t table_bytes(struct qcow2 *s)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < s->nr_snaps; i++)
		n += (40 + 24 + strlen(s->snaps[i].id) + strlen(s->snaps[i].name) + 7) & ~7ull;
	return n;
}

static void encode_one(const struct qcow2_snapshot *sn, uint8_t *p)
{
	size_t id_len = strlen(sn->id), name_len = strlen(sn->name);

	put_be64(p, sn->l1_table_offset);
	put_be32(p + 8, sn->l1_size);
	p[12] = (uint8_t)(id_len >> 8);
	p[13] = (uint8_t)id_len;
	p[14] = (uint8_t)(name_len >> 8);
	p[15] = (uint8_t)name_len;
	put_be32(p + 16, sn->date_sec);
	put_be32(p + 20, sn->date_nsec);
	put_be64(p + 24, sn->vm_clock_nsec);
	put_be32(p + 32, sn->vm_state_size > UINT32_MAX ? 0 : (uint32_t)sn->vm_state_size);
	put_be32(p + 36, 24);
	put_be64(p + 40, sn->vm_state_size);
	put_be64(p + 48, sn->disk_size);
	put_be64(p + 56, sn->icount);
	memcpy(p + 64, sn->id, id_len);
	memcpy(p + 64 + id_len, sn->name, name_len);
}

/* Writes the in-memory table to new clusters, switches the header to it,
 * frees the old table. */
static int write_table(struct qcow2 *s, uint64_t old_off, uint64_t old_bytes)
{
	uint64_t bytes = table_bytes(s), pos = 0, cs = s->cluster_size;
	uint8_t *buf = calloc(1, bytes + 8), hdr[12];
	int64_t off = 0;
	int ret = 0;

	if (!buf)
		return err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < s->nr_snaps; i++) {
		encode_one(&s->snaps[i], buf + pos);
		pos += (64 + strlen(s->snaps[i].id) + strlen(s->snaps[i].name) + 7) & ~7ull;
	}
	if (bytes) {
		off = qcow2_alloc_clusters(s, (bytes + cs - 1) / cs);
		ret = off < 0 ? (int)off : bfile_pwrite(s->file, buf, bytes, (uint64_t)off);
	}
	free(buf);
	if (!ret)
		ret = qcow2_flush_caches(s);
	if (!ret)
		ret = bfile_flush(s->file);
	if (ret)
		return ret;
	put_be32(hdr, s->nr_snaps);
	put_be64(hdr + 4, (uint64_t)off);
	ret = bfile_pwrite(s->file, hdr, 12, 60);
	if (ret)
		return ret;
	s->h.nb_snapshots = s->nr_snaps;
	s->h.snapshots_offset = (uint64_t)off;
	s->snap_bytes = bytes;
	return old_bytes ? qcow2_free_clusters(s, old_off, old_bytes) : 0;
}

static int read_l1_copy(struct qcow2 *s, uint64_t off, uint32_t n, uint64_t **out)
{
	uint8_t *raw = malloc(n * 8ul + 8);
	uint64_t *l1 = calloc(n + 1ul, 8);
	int ret = raw && l1 ? bfile_pread(s->file, raw, n * 8ul, off) : -ENOMEM;

	for (uint32_t i = 0; !ret && i < n; i++)
		l1[i] = be64(raw + i * 8ul);
	free(raw);
	if (ret) {
		free(l1);
		return ret == -ENOMEM ? err_set(ret, "out of memory") : ret;
	}
	*out = l1;
	return 0;
}

int qcow2_tree_refcount(struct qcow2 *s, const uint64_t *l1, uint32_t l1_size, int64_t delta)
{
	uint8_t *copy = malloc(s->cluster_size), *t;
	int ret = copy ? 0 : err_set(-ENOMEM, "out of memory");

	for (uint32_t i = 0; !ret && i < l1_size; i++) {
		uint64_t l2_off = l1[i] & QCOW2_OFFSET_MASK;

		if (!l2_off)
			continue;
		ret = qcow2_check_offset(s, l2_off, "L2 table");
		if (!ret)
			ret = qcow2_cache_get(s, &s->l2_cache, l2_off, &t);
		if (ret)
			break;
		memcpy(copy, t, s->cluster_size);
		ret = qcow2_update_refcount(s, l2_off, s->cluster_size, delta);
		for (uint64_t j = 0; !ret && j < s->l2_entries; j++) {
			uint64_t e = be64(copy + j * 8), off, size;

			switch (qcow2_ctype(s, e)) {
			case QCOW2_NORMAL:
			case QCOW2_ZERO_ALLOC:
				ret = qcow2_update_refcount(s, e & QCOW2_OFFSET_MASK, s->cluster_size,
							    delta);
				break;
			case QCOW2_COMPRESSED:
				qcow2_compressed_range(s, e, &off, &size);
				ret = qcow2_update_refcount(s, off & ~511ull,
							    (size + (off & 511) + 511) & ~511ull, delta);
				break;
			default:
				break;
			}
		}
	}
	free(copy);
	return ret;
}

static int find(struct qcow2 *s, const char *name)
{
	for (uint32_t i = 0; i < s->nr_snaps; i++)
		if (!strcmp(s->snaps[i].name, name))
			return (int)i;
	for (uint32_t i = 0; i < s->nr_snaps; i++)
		if (!strcmp(s->snaps[i].id, name))
			return (int)i;
	return -1;
}

static char *next_id(struct qcow2 *s)
{
	unsigned long max = 0;
	char buf[24];

	for (uint32_t i = 0; i < s->nr_snaps; i++) {
		unsigned long v = strtoul(s->snaps[i].id, NULL, 10);

		max = v > max ? v : max;
	}
	snprintf(buf, sizeof(buf), "%lu", max + 1);
	return strdup(buf);
}

int qcow2_snapshot_create(struct image *img, const char *name)
{
	struct qcow2 *s = img->opaque;
	uint64_t old_off = s->h.snapshots_offset, old_bytes = s->snap_bytes, fixed;
	struct qcow2_snapshot sn = { 0 }, *arr;
	struct timespec now;
	int64_t l1_off;
	int ret;

	qcow2_quiesce(s);	/* the image as of now: no write half done */
	if (find(s, name) >= 0 || strlen(name) > 65535)
		return err_set(-EEXIST, "%s: snapshot '%s' already exists or bad name",
			       s->file->path, name);
	if (s->nr_snaps >= QCOW2_MAX_SNAPSHOTS)
		return err_set(-ENOSPC, "%s: too many snapshots", s->file->path);
	ret = qcow2_tree_refcount(s, s->l1, s->l1_size, 1);
	if (!ret)
		ret = qcow2_fix_copied(s, &fixed);
	l1_off = ret ? ret : qcow2_alloc_clusters(s, (s->l1_size * 8ull + s->cluster_size - 1) /
						      s->cluster_size);
	if (l1_off < 0)
		return (int)l1_off;
	ret = bfile_pwrite_zeroes(s->file, (uint64_t)l1_off, s->l1_size * 8ull);
	for (uint32_t i = 0; !ret && i < s->l1_size; i++) {
		uint8_t b[8];

		put_be64(b, s->l1[i]);
		ret = bfile_pwrite(s->file, b, 8, (uint64_t)l1_off + i * 8ull);
	}
	if (ret)
		return ret;
	clock_gettime(CLOCK_REALTIME, &now);
	sn = (struct qcow2_snapshot){ .l1_table_offset = (uint64_t)l1_off, .l1_size = s->l1_size,
		.id = next_id(s), .name = strdup(name), .date_sec = (uint32_t)now.tv_sec,
		.date_nsec = (uint32_t)now.tv_nsec, .disk_size = s->h.size, .icount = UINT64_MAX,
		.extra_size = 24 };
	arr = realloc(s->snaps, (s->nr_snaps + 1) * sizeof(*arr));
	if (!arr || !sn.id || !sn.name) {
		free(sn.id);
		free(sn.name);
		return err_set(-ENOMEM, "out of memory");
	}
	s->snaps = arr;
	s->snaps[s->nr_snaps++] = sn;
	for (uint64_t o = 0; !ret && o < sn.l1_size * 8ull; o += s->cluster_size)
		ret = qcow2_meta_add(s, sn.l1_table_offset + o);
	return ret ? ret : write_table(s, old_off, old_bytes);
}

int qcow2_snapshot_list(struct image *img, struct image_snapshot **out, size_t *n)
{
	struct qcow2 *s = img->opaque;
	struct image_snapshot *v = calloc(s->nr_snaps + 1, sizeof(*v));

	if (!v)
		return err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < s->nr_snaps; i++) {
		struct qcow2_snapshot *sn = &s->snaps[i];

		snprintf(v[i].id, sizeof(v[i].id), "%s", sn->id);
		snprintf(v[i].name, sizeof(v[i].name), "%s", sn->name);
		v[i].vm_state_size = sn->vm_state_size;
		v[i].disk_size = sn->disk_size;
		v[i].date_sec = sn->date_sec;
		v[i].date_nsec = sn->date_nsec;
		v[i].vm_clock_nsec = sn->vm_clock_nsec;
		v[i].icount = sn->icount;
	}
	*out = v;
	*n = s->nr_snaps;
	return 0;
}

static int write_active_l1(struct qcow2 *s)
{
	uint8_t *raw = calloc(s->l1_size + 1ul, 8);
	int ret;

	if (!raw)
		return err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < s->l1_size; i++)
		put_be64(raw + i * 8ul, s->l1[i]);
	ret = bfile_pwrite(s->file, raw, s->l1_size * 8ul, s->h.l1_table_offset);
	free(raw);
	return ret;
}

int qcow2_snapshot_apply(struct image *img, const char *name)
{
	struct qcow2 *s = img->opaque;
	int i = find(s, name);
	uint64_t *sl1, *old, fixed;
	uint8_t b[8];
	int ret;

	qcow2_quiesce(s);
	if (i < 0)
		return err_set(-ENOENT, "%s: no snapshot '%s'", s->file->path, name);
	if (s->snaps[i].l1_size > s->l1_size && (ret = qcow2_grow_l1(s, s->snaps[i].l1_size)))
		return ret;
	ret = read_l1_copy(s, s->snaps[i].l1_table_offset, s->snaps[i].l1_size, &sl1);
	if (ret)
		return ret;
	ret = qcow2_tree_refcount(s, sl1, s->snaps[i].l1_size, 1);
	old = ret ? NULL : malloc(s->l1_size * 8ul + 8);
	if (!ret && !old)
		ret = err_set(-ENOMEM, "out of memory");
	if (!ret) {
		memcpy(old, s->l1, s->l1_size * 8ul);
		memset(s->l1, 0, s->l1_size * 8ul);
		for (uint32_t k = 0; k < s->snaps[i].l1_size; k++)
			s->l1[k] = sl1[k] & ~QCOW2_OFLAG_COPIED;
		ret = qcow2_flush_caches(s) ?: write_active_l1(s);
	}
	if (!ret)
		ret = qcow2_tree_refcount(s, old, s->l1_size, -1);
	free(sl1);
	free(old);
	if (!ret && s->snaps[i].disk_size != s->h.size) {
		put_be64(b, s->snaps[i].disk_size);
		ret = bfile_pwrite(s->file, b, 8, 24);
		s->h.size = img->size = s->snaps[i].disk_size;
	}
	s->cbuf_l2e = 0;
	if (!ret)
		ret = qcow2_meta_init(s);	/* the snapshot's L2 tables are active now */
	return ret ? ret : qcow2_fix_copied(s, &fixed);
}

int qcow2_snapshot_delete(struct image *img, const char *name)
{
	struct qcow2 *s = img->opaque;
	uint64_t old_off = s->h.snapshots_offset, old_bytes = s->snap_bytes, *l1, fixed;
	int i = find(s, name);
	struct qcow2_snapshot sn;
	int ret;

	qcow2_quiesce(s);
	if (i < 0)
		return err_set(-ENOENT, "%s: no snapshot '%s'", s->file->path, name);
	sn = s->snaps[i];
	ret = read_l1_copy(s, sn.l1_table_offset, sn.l1_size, &l1);
	if (ret)
		return ret;
	memmove(&s->snaps[i], &s->snaps[i + 1], (s->nr_snaps - (uint32_t)i - 1) * sizeof(sn));
	s->nr_snaps--;
	ret = write_table(s, old_off, old_bytes);
	if (!ret)
		ret = qcow2_tree_refcount(s, l1, sn.l1_size, -1);
	if (!ret && sn.l1_size)
		ret = qcow2_free_clusters(s, sn.l1_table_offset, sn.l1_size * 8ull);
	free(l1);
	free(sn.id);
	free(sn.name);
	return ret ? ret : qcow2_fix_copied(s, &fixed);
}

/* Read-only: the snapshot's L1 becomes the active one in memory only.
 * Its L2 tables are read through the cache like any other (a fresh open:
 * the cache holds none of another tree's tables). */
int qcow2_snapshot_load(struct image *img, const char *name)
{
	struct qcow2 *s = img->opaque;
	int i = find(s, name);
	uint64_t *sl1;
	int ret;

	if (i < 0)
		return err_set(-ENOENT, "%s: no snapshot '%s'", s->file->path, name);
	ret = read_l1_copy(s, s->snaps[i].l1_table_offset, s->snaps[i].l1_size, &sl1);
	if (ret)
		return ret;
	free(s->l1);
	s->l1 = sl1;
	s->l1_size = s->snaps[i].l1_size;
	s->h.size = img->size = s->snaps[i].disk_size;
	s->cbuf_l2e = 0;
	return 0;
}

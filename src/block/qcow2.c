/* qcow2: header, open/close, create, info, resize, backing file (see
 * qcow2.h for the layout; clusters in qcow2-cluster.c, refcounts in
 * qcow2-refcount.c, check in qcow2-check.c, snapshots in qcow2-snapshot.c). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "vireo/log.h"

int qcow2_corrupt(struct qcow2 *s, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = image_vcorrupt(s->img, s->file->path, "qcow2", fmt, ap);
	va_end(ap);
	return ret;
}

/* A table or data offset must be cluster-aligned and inside the file. */
int qcow2_check_offset(struct qcow2 *s, uint64_t off, const char *what)
{
	if (off & (s->cluster_size - 1))
		return qcow2_corrupt(s, "%s offset %#llx is not cluster-aligned", what,
				     (unsigned long long)off);
	if (off < s->cluster_size || off >= s->file_end)
		return qcow2_corrupt(s, "%s offset %#llx is outside the file", what,
				     (unsigned long long)off);
	return 0;
}

static int probe(const uint8_t *buf, size_t len, const char *filename)
{
	(void)filename;
	return len >= 8 && be32(buf) == QCOW2_MAGIC && (be32(buf + 4) == 2 || be32(buf + 4) == 3)
		? 100 : 0;
}

/* ---- the one header read/write pair (DESIGN §3.9) ---- */

static void header_decode(struct qcow2_header *h, const uint8_t *b)
{
	h->magic = be32(b);
	h->version = be32(b + 4);
	h->backing_file_offset = be64(b + 8);
	h->backing_file_size = be32(b + 16);
	h->cluster_bits = be32(b + 20);
	h->size = be64(b + 24);
	h->crypt_method = be32(b + 32);
	h->l1_size = be32(b + 36);
	h->l1_table_offset = be64(b + 40);
	h->refcount_table_offset = be64(b + 48);
	h->refcount_table_clusters = be32(b + 56);
	h->nb_snapshots = be32(b + 60);
	h->snapshots_offset = be64(b + 64);
	if (h->version < 3) {
		h->refcount_order = 4;
		h->header_length = 72;
		return;
	}
	h->incompatible_features = be64(b + 72);
	h->compatible_features = be64(b + 80);
	h->autoclear_features = be64(b + 88);
	h->refcount_order = be32(b + 96);
	h->header_length = be32(b + 100);
	h->compression_type = h->header_length > 104 ? b[104] : 0;
}

static void header_encode(const struct qcow2_header *h, uint8_t *b)
{
	put_be32(b, h->magic);
	put_be32(b + 4, h->version);
	put_be64(b + 8, h->backing_file_offset);
	put_be32(b + 16, h->backing_file_size);
	put_be32(b + 20, h->cluster_bits);
	put_be64(b + 24, h->size);
	put_be32(b + 32, h->crypt_method);
	put_be32(b + 36, h->l1_size);
	put_be64(b + 40, h->l1_table_offset);
	put_be64(b + 48, h->refcount_table_offset);
	put_be32(b + 56, h->refcount_table_clusters);
	put_be32(b + 60, h->nb_snapshots);
	put_be64(b + 64, h->snapshots_offset);
	if (h->version < 3)
		return;
	put_be64(b + 72, h->incompatible_features);
	put_be64(b + 80, h->compatible_features);
	put_be64(b + 88, h->autoclear_features);
	put_be32(b + 96, h->refcount_order);
	put_be32(b + 100, h->header_length);
	if (h->header_length > 104)
		b[104] = h->compression_type;
}

static int header_validate(struct qcow2 *s, int64_t file_len)
{
	const struct qcow2_header *h = &s->h;
	const char *path = s->file->path;
	uint64_t cs, need_l1;

	if (h->magic != QCOW2_MAGIC)
		return err_set(-EINVAL, "%s: not a qcow2 image (bad magic)", path);
	if (h->version != 2 && h->version != 3)
		return err_set(-ENOTSUP, "%s: unsupported qcow2 version %u", path, h->version);
	if (h->cluster_bits < 9 || h->cluster_bits > 21)
		return err_set(-EINVAL, "%s: invalid cluster size 2^%u", path, h->cluster_bits);
	cs = 1ull << h->cluster_bits;
	if (file_len < (h->version == 2 ? 72 : 104))
		return err_set(-EINVAL, "%s: truncated qcow2 header", path);
	if (h->version == 3 && (h->header_length < 104 || h->header_length > cs ||
				(h->header_length & 7)))
		return err_set(-EINVAL, "%s: invalid header length %u", path, h->header_length);
	if (h->crypt_method)
		return err_set(-ENOTSUP, "%s: encrypted qcow2 images are not supported", path);
	if (h->incompatible_features & ~QCOW2_INCOMPAT_SUPPORTED)
		return err_set(-ENOTSUP, "%s: unsupported qcow2 incompatible features %#llx", path,
			       (unsigned long long)(h->incompatible_features &
						    ~QCOW2_INCOMPAT_SUPPORTED));
	if (h->compression_type > QCOW2_COMPRESS_ZSTD ||
	    !!h->compression_type != !!(h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION))
		return err_set(-EINVAL, "%s: invalid compression type %u", path, h->compression_type);
	if (h->refcount_order > 6)
		return err_set(-EINVAL, "%s: invalid refcount order %u", path, h->refcount_order);
	if (h->size > (1ull << 61))
		return err_set(-EINVAL, "%s: virtual size %llu too large", path,
			       (unsigned long long)h->size);
	need_l1 = (h->size + (cs * (cs / 8)) - 1) / (cs * (cs / 8));
	if ((uint64_t)h->l1_size * 8 > QCOW2_MAX_L1_BYTES || h->l1_size < need_l1)
		return err_set(-EINVAL, "%s: L1 table size %u invalid for virtual size %llu", path,
			       h->l1_size, (unsigned long long)h->size);
	if (h->l1_size && ((h->l1_table_offset & (cs - 1)) || !h->l1_table_offset ||
			   h->l1_table_offset > (uint64_t)file_len ||
			   (uint64_t)h->l1_size * 8 > (uint64_t)file_len - h->l1_table_offset))
		return err_set(-EINVAL, "%s: L1 table offset %#llx invalid", path,
			       (unsigned long long)h->l1_table_offset);
	if (!h->refcount_table_clusters || (h->refcount_table_offset & (cs - 1)) ||
	    !h->refcount_table_offset ||
	    (uint64_t)h->refcount_table_clusters * cs > QCOW2_MAX_RT_BYTES ||
	    h->refcount_table_offset > (uint64_t)file_len ||
	    (uint64_t)h->refcount_table_clusters * cs > (uint64_t)file_len - h->refcount_table_offset)
		return err_set(-EINVAL, "%s: refcount table location invalid", path);
	if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS ||
	    (h->nb_snapshots && ((h->snapshots_offset & (cs - 1)) || !h->snapshots_offset ||
				 h->snapshots_offset >= (uint64_t)file_len)))
		return err_set(-EINVAL, "%s: snapshot table location invalid", path);
	if (h->backing_file_offset && (h->backing_file_size > 1023 ||
				       h->backing_file_offset > cs - h->backing_file_size))
		return err_set(-EINVAL, "%s: backing file name location invalid", path);
	return 0;
}

static int ext_keep(struct qcow2 *s, uint32_t type, uint32_t len, const uint8_t *data)
{
	struct qcow2_ext *e = realloc(s->exts, (s->nr_exts + 1) * sizeof(*e));

	if (!e)
		return err_set(-ENOMEM, "out of memory");
	s->exts = e;
	e = &e[s->nr_exts];
	e->data = malloc(len ? len : 1);
	if (!e->data)
		return err_set(-ENOMEM, "out of memory");
	memcpy(e->data, data, len);
	e->type = type;
	e->len = len;
	s->nr_exts++;
	return 0;
}

/* Header extensions follow the fixed header up to the end of cluster 0 (or
 * up to the backing file name when it is stored there). */
static int exts_parse(struct qcow2 *s, const uint8_t *c0)
{
	uint64_t off = s->h.header_length, end = s->cluster_size;

	if (s->h.backing_file_offset > off && s->h.backing_file_offset < end)
		end = s->h.backing_file_offset;
	while (off + 8 <= end) {
		uint32_t type = be32(c0 + off), len = be32(c0 + off + 4);

		off += 8;
		if (type == QCOW2_EXT_END)
			return 0;
		if (len > end - off)
			return err_set(-EINVAL, "%s: header extension %#x overruns the header",
				       s->file->path, type);
		if (type == QCOW2_EXT_BACKING_FMT) {
			if (len >= sizeof(s->img->backing_fmt))
				return err_set(-EINVAL, "%s: backing format name too long",
					       s->file->path);
			memcpy(s->img->backing_fmt, c0 + off, len);
			s->img->backing_fmt[len] = '\0';
		} else if (ext_keep(s, type, len, c0 + off)) {
			return -ENOMEM;
		}
		off += (len + 7) & ~7ull;
	}
	return 0;
}

/* Writes cluster 0: the fixed header, extensions, then the backing name. */
int qcow2_header_write(struct qcow2 *s)
{
	uint8_t *c0 = calloc(1, s->cluster_size);
	const char *bname = s->img->backing_name, *bfmt = s->img->backing_fmt;
	uint64_t off;
	int ret;

	if (!c0)
		return err_set(-ENOMEM, "out of memory");
	off = s->h.header_length;
	if (bname[0] && bfmt[0]) {
		put_be32(c0 + off, QCOW2_EXT_BACKING_FMT);
		put_be32(c0 + off + 4, (uint32_t)strlen(bfmt));
		memcpy(c0 + off + 8, bfmt, strlen(bfmt));
		off += 8 + ((strlen(bfmt) + 7) & ~7ul);
	}
	for (size_t i = 0; i < s->nr_exts; i++) {
		if (off + 8 + s->exts[i].len + 8 + 1024 > s->cluster_size)
			break;	/* drop what no longer fits rather than fail */
		put_be32(c0 + off, s->exts[i].type);
		put_be32(c0 + off + 4, s->exts[i].len);
		memcpy(c0 + off + 8, s->exts[i].data, s->exts[i].len);
		off += 8 + ((s->exts[i].len + 7) & ~7ull);
	}
	off += 8;	/* end-of-extensions marker: zeroes */
	s->h.backing_file_offset = bname[0] ? off : 0;
	s->h.backing_file_size = (uint32_t)strlen(bname);
	if (off + s->h.backing_file_size > s->cluster_size || s->h.backing_file_size > 1023) {
		free(c0);
		return err_set(-ENOSPC, "%s: backing file name does not fit in the header",
			       s->file->path);
	}
	memcpy(c0 + off, bname, s->h.backing_file_size);
	header_encode(&s->h, c0);
	ret = bfile_pwrite(s->file, c0, off + s->h.backing_file_size, 0);
	free(c0);
	return ret;
}

/* ---- open / close ---- */

static int read_l1(struct qcow2 *s)
{
	uint8_t *raw;
	int ret;

	s->l1_size = s->h.l1_size;
	s->l1 = calloc(s->l1_size ? s->l1_size : 1, 8);
	raw = malloc(s->l1_size * 8ul + 1);
	if (!s->l1 || !raw) {
		free(raw);
		return err_set(-ENOMEM, "out of memory");
	}
	ret = bfile_pread(s->file, raw, s->l1_size * 8ul, s->h.l1_table_offset);
	for (uint32_t i = 0; !ret && i < s->l1_size; i++)
		s->l1[i] = be64(raw + i * 8ul);
	free(raw);
	return ret;
}

static void qcow2_free_state(struct qcow2 *s)
{
	if (!s)
		return;
	qcow2_snapshots_free(s);
	qcow2_meta_free(s);
	pthread_cond_destroy(&s->alloc_cond);
	pthread_cond_destroy(&s->io_cond);
	pthread_mutex_destroy(&s->io_lock);
	qcow2_cache_free(&s->l2_cache);
	qcow2_cache_free(&s->rb_cache);
	for (size_t i = 0; i < s->nr_exts; i++)
		free(s->exts[i].data);
	free(s->exts);
	free(s->l1);
	free(s->rt);
	free(s->cbuf);
	free(s);
}

static int open_backing_name(struct qcow2 *s, const uint8_t *c0)
{
	if (!s->h.backing_file_offset)
		return 0;
	memcpy(s->img->backing_name, c0 + s->h.backing_file_offset, s->h.backing_file_size);
	s->img->backing_name[s->h.backing_file_size] = '\0';
	if (strlen(s->img->backing_name) != s->h.backing_file_size)
		return err_set(-EINVAL, "%s: backing file name contains a NUL byte", s->file->path);
	return 0;
}

static int open_caches(struct qcow2 *s)
{
	/* Enough L2 tables to map the whole disk, within 32 MiB of cache. */
	uint64_t want = s->l1_size + 1, cap = (32u << 20) / s->cluster_size;
	int nr = (int)(want < 16 ? 16 : want > cap ? cap : want);
	int ret;

	ret = qcow2_cache_init(&s->l2_cache, nr, s->cluster_size);
	if (!ret)
		ret = qcow2_cache_init(&s->rb_cache, 16, s->cluster_size);
	s->cbuf = malloc(s->cluster_size);
	if (!ret && !s->cbuf)
		ret = err_set(-ENOMEM, "out of memory");
	return ret;
}

static int open_state(struct qcow2 *s, int64_t file_len)
{
	uint8_t *c0;
	int ret;

	s->cluster_bits = s->h.cluster_bits;
	s->cluster_size = 1u << s->cluster_bits;
	s->l2_entries = s->cluster_size / 8;
	s->refcount_bits = 1u << s->h.refcount_order;
	s->rb_entries = (uint64_t)s->cluster_size * 8 / s->refcount_bits;
	s->csize_shift = 62 - (int)(s->cluster_bits - 8);
	s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
	s->file_end = ((uint64_t)file_len + s->cluster_size - 1) & ~(uint64_t)(s->cluster_size - 1);
	c0 = malloc(s->cluster_size);
	if (!c0)
		return err_set(-ENOMEM, "out of memory");
	ret = bfile_pread(s->file, c0, s->cluster_size, 0);
	if (!ret)
		ret = exts_parse(s, c0);
	if (!ret)
		ret = open_backing_name(s, c0);
	free(c0);
	if (!ret)
		ret = read_l1(s);
	if (!ret)
		ret = qcow2_refcount_open(s);
	if (!ret)
		ret = qcow2_snapshots_read(s);
	if (!ret)
		ret = open_caches(s);
	if (!ret)
		ret = qcow2_meta_init(s);
	return ret;
}

/* Opening writable: clear autoclear bits we don't maintain; rebuild the
 * refcounts of an image left dirty (lazy refcounts). */
static int open_writable(struct qcow2 *s)
{
	struct image_check res = { 0 };
	int ret;

	if (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		s->img->broken = true;	/* readable; writes wait for check -r all */
	if (s->h.version >= 3 && s->h.autoclear_features) {
		s->h.autoclear_features = 0;
		ret = qcow2_header_write(s);
		if (ret)
			return ret;
	}
	if (!(s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY))
		return 0;
	ret = qcow2_check(s->img, &res, IMAGE_FIX_LEAKS | IMAGE_FIX_ERRORS);
	image_check_free(&res);
	if (ret)
		return ret;
	s->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
	return qcow2_header_write(s);
}

static int qcow2_open(struct image *img)
{
	struct qcow2 *s = calloc(1, sizeof(*s));
	uint8_t hbuf[QCOW2_V3_HEADER_LEN];
	int64_t file_len;
	int ret;

	if (!s)
		return err_set(-ENOMEM, "out of memory");
	s->img = img;
	s->file = img->file;
	/* Only a host file's pread/pwrite are safe from several threads; with
	 * O_DIRECT, a cluster smaller than a block would share its block (and
	 * its read-modify-writes) with neighbours. */
	s->concurrent = s->file->fd >= 0;
	pthread_mutex_init(&s->io_lock, NULL);
	pthread_cond_init(&s->io_cond, NULL);
	pthread_cond_init(&s->alloc_cond, NULL);
	img->opaque = s;
	file_len = bfile_length(s->file);
	ret = file_len < 0 ? (int)file_len : bfile_pread(s->file, hbuf, sizeof(hbuf), 0);
	if (!ret) {
		header_decode(&s->h, hbuf);
		ret = header_validate(s, file_len);
	}
	if (!ret)
		ret = open_state(s, file_len);
	if (!ret && s->file->direct_align > s->cluster_size)
		s->concurrent = false;
	if (!ret && img->writable)
		ret = open_writable(s);
	if (ret) {
		qcow2_free_state(s);
		img->opaque = NULL;
		return ret;
	}
	img->size = s->h.size;
	return 0;
}

static void qcow2_close(struct image *img)
{
	qcow2_free_state(img->opaque);
	img->opaque = NULL;
}

/* img check on a disk in use: the image to itself for the walk. */
static int qcow2_check_excl(struct image *img, struct image_check *res, int fix)
{
	qcow2_quiesce(img->opaque);
	return qcow2_check(img, res, fix);
}

static int qcow2_flush(struct image *img)
{
	return qcow2_flush_caches(img->opaque) ?: bfile_flush(img->file);
}

/* ---- L1 table ---- */

int qcow2_l1_write_entry(struct qcow2 *s, uint32_t idx)
{
	uint8_t b[8];
	int ret = qcow2_flush_refcounts(s);

	if (ret)
		return ret;
	put_be64(b, s->l1[idx]);
	return bfile_pwrite(s->file, b, 8, s->h.l1_table_offset + idx * 8ull);
}

static int write_table(struct qcow2 *s, const uint64_t *t, uint64_t n, uint64_t off)
{
	uint8_t *raw = calloc(1, n * 8 + 8);
	int ret;

	if (!raw)
		return err_set(-ENOMEM, "out of memory");
	for (uint64_t i = 0; i < n; i++)
		put_be64(raw + i * 8, t[i]);
	ret = bfile_pwrite(s->file, raw, n * 8, off);
	free(raw);
	return ret;
}

/* Moves the L1 table to a bigger one: new table, then the header, then the
 * old table is freed (a crash leaks one or the other, never loses data). */
int qcow2_grow_l1(struct qcow2 *s, uint64_t min_size)
{
	uint64_t bytes = (min_size * 8 + s->cluster_size - 1) & ~(uint64_t)(s->cluster_size - 1);
	uint64_t old_off = s->h.l1_table_offset, old_bytes = s->l1_size * 8ull;
	uint64_t *l1;
	uint8_t b[12];
	int64_t off;
	int ret;

	if (min_size * 8 > QCOW2_MAX_L1_BYTES)
		return err_set(-EFBIG, "%s: L1 table would exceed %u bytes", s->file->path,
			       QCOW2_MAX_L1_BYTES);
	l1 = calloc(min_size, 8);
	if (!l1)
		return err_set(-ENOMEM, "out of memory");
	memcpy(l1, s->l1, s->l1_size * 8ul);
	off = qcow2_alloc_clusters(s, bytes / s->cluster_size);
	ret = off < 0 ? (int)off : bfile_pwrite_zeroes(s->file, (uint64_t)off, bytes);
	if (!ret)
		ret = write_table(s, l1, min_size, (uint64_t)off);
	if (!ret)
		ret = qcow2_flush_caches(s);
	if (!ret)
		ret = bfile_flush(s->file);
	if (ret) {
		free(l1);
		return ret;
	}
	put_be32(b, (uint32_t)min_size);
	put_be64(b + 4, (uint64_t)off);
	ret = bfile_pwrite(s->file, b, 12, 36);
	if (ret) {
		free(l1);
		return ret;
	}
	free(s->l1);
	s->l1 = l1;
	s->l1_size = s->h.l1_size = (uint32_t)min_size;
	s->h.l1_table_offset = (uint64_t)off;
	return old_bytes ? qcow2_free_clusters(s, old_off, old_bytes) : 0;
}

/* ---- create ---- */

struct create_layout {
	uint64_t cs, rt_clusters, rb_clusters, l1_clusters, l1_size;
};

static void create_layout(struct create_layout *L, uint64_t size, unsigned cbits,
			  unsigned rbits)
{
	uint64_t rb_entries = (L->cs = 1ull << cbits) * 8 / rbits, total;

	L->l1_size = (size + L->cs * (L->cs / 8) - 1) / (L->cs * (L->cs / 8));
	L->l1_clusters = (L->l1_size * 8 + L->cs - 1) / L->cs;
	L->rt_clusters = 1;
	L->rb_clusters = 1;
	for (int i = 0; i < 8; i++) {
		total = 1 + L->rt_clusters + L->rb_clusters + L->l1_clusters;
		L->rb_clusters = (total + rb_entries - 1) / rb_entries;
		L->rt_clusters = (L->rb_clusters * 8 + L->cs - 1) / L->cs;
	}
}

static int create_check_opts(struct bfile *file, const struct image_create_opts *o,
			     unsigned *cbits, unsigned *rorder, int *version)
{
	uint32_t cs = o->cluster_size ? o->cluster_size : 65536;
	int rbits = o->refcount_bits ? o->refcount_bits : 16;

	if (o->subformat || (o->extra && o->extra[0]))
		return err_set(-EINVAL, "%s: qcow2 has no option '%s'", file->path,
			       o->subformat ? "subformat" : o->extra[0]);
	*version = (o->compat && !strcmp(o->compat, "0.10")) ? 2 : 3;
	if (o->compat && strcmp(o->compat, "0.10") && strcmp(o->compat, "1.1") &&
	    strcmp(o->compat, "v2") && strcmp(o->compat, "v3"))
		return err_set(-EINVAL, "%s: invalid compat '%s' (0.10 or 1.1)", file->path, o->compat);
	if (!strcmp(o->compat ? o->compat : "", "v2"))
		*version = 2;
	if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
		return err_set(-EINVAL, "%s: cluster size must be a power of two between 512 "
			       "and 2M", file->path);
	if (rbits < 1 || rbits > 64 || (rbits & (rbits - 1)) || (*version == 2 && rbits != 16))
		return err_set(-EINVAL, "%s: invalid refcount_bits %d", file->path, rbits);
	if (o->compression_type && strcmp(o->compression_type, "zlib") &&
	    strcmp(o->compression_type, "zstd"))
		return err_set(-EINVAL, "%s: compression type must be zlib or zstd", file->path);
	if (*version == 2 && (o->lazy_refcounts || (o->compression_type &&
						    strcmp(o->compression_type, "zlib"))))
		return err_set(-EINVAL, "%s: compat=0.10 supports neither lazy refcounts nor zstd",
			       file->path);
	*cbits = (unsigned)__builtin_ctz(cs);
	*rorder = (unsigned)__builtin_ctz((unsigned)rbits);
	return 0;
}

static int create_tables(struct qcow2 *s, const struct create_layout *L)
{
	uint64_t n = 1 + L->rt_clusters + L->rb_clusters + L->l1_clusters;
	uint8_t *buf = calloc(L->rt_clusters + L->rb_clusters, L->cs);
	int ret;

	if (!buf)
		return err_set(-ENOMEM, "out of memory");
	for (uint64_t i = 0; i < L->rb_clusters; i++)
		put_be64(buf + i * 8, (1 + L->rt_clusters + i) * L->cs);
	for (uint64_t i = 0; i < n; i++)
		qcow2_rc_set(buf + L->rt_clusters * L->cs, i, s->refcount_bits, 1);
	ret = bfile_pwrite(s->file, buf, (L->rt_clusters + L->rb_clusters) * L->cs, L->cs);
	free(buf);
	if (!ret)
		ret = bfile_truncate(s->file, n * L->cs);
	return ret;
}

static int qcow2_create(struct bfile *file, const char *path, const struct image_create_opts *o)
{
	struct image img = { .file = file, .writable = true };
	struct qcow2 s = { .img = &img, .file = file };
	struct create_layout L;
	unsigned cbits = 16, rorder = 4;
	int version = 3, ret;

	(void)path;
	ret = create_check_opts(file, o, &cbits, &rorder, &version);
	if (ret)
		return ret;
	create_layout(&L, o->size, cbits, 1u << rorder);
	if (L.l1_size * 8 > QCOW2_MAX_L1_BYTES)
		return err_set(-EFBIG, "%s: virtual size too large for this cluster size", path);
	s.cluster_size = (uint32_t)L.cs;
	s.refcount_bits = 1u << rorder;
	s.h = (struct qcow2_header){
		.magic = QCOW2_MAGIC, .version = (uint32_t)version, .cluster_bits = cbits,
		.size = o->size, .l1_size = (uint32_t)L.l1_size,
		.l1_table_offset = (1 + L.rt_clusters + L.rb_clusters) * L.cs,
		.refcount_table_offset = L.cs, .refcount_table_clusters = (uint32_t)L.rt_clusters,
		.refcount_order = rorder, .header_length = version == 3 ? QCOW2_V3_HEADER_LEN : 72,
	};
	if (o->lazy_refcounts)
		s.h.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
	if (o->compression_type && !strcmp(o->compression_type, "zstd")) {
		s.h.compression_type = QCOW2_COMPRESS_ZSTD;
		s.h.incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
	}
	if (o->backing)
		snprintf(img.backing_name, sizeof(img.backing_name), "%s", o->backing);
	if (o->backing && o->backing_fmt)
		snprintf(img.backing_fmt, sizeof(img.backing_fmt), "%s", o->backing_fmt);
	ret = create_tables(&s, &L);
	return ret ? ret : qcow2_header_write(&s);
}

/* ---- info, resize, backing ---- */

static void qcow2_info(struct image *img, struct image_info *info)
{
	struct qcow2 *s = img->opaque;

	info->cluster_size = s->cluster_size;
	info->dirty = (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) != 0;
	image_info_add_str(info, "compat", s->h.version == 2 ? "0.10" : "1.1");
	if (s->h.version >= 3) {
		image_info_add_str(info, "compression-type",
				   s->h.compression_type == QCOW2_COMPRESS_ZSTD ? "zstd" : "zlib");
		image_info_add_bool(info, "lazy-refcounts",
				    s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS);
	}
	image_info_add_int(info, "refcount-bits", s->refcount_bits);
	image_info_add_bool(info, "corrupt",
			    s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT);
	if (s->h.version >= 3)
		image_info_add_bool(info, "extended-l2", false);
}

static int qcow2_resize(struct image *img, uint64_t new_size)
{
	struct qcow2 *s = img->opaque;
	uint64_t per_l2 = s->l2_entries * s->cluster_size;
	uint64_t need = (new_size + per_l2 - 1) / per_l2;
	uint8_t b[8];
	int ret;

	qcow2_quiesce(s);
	if (new_size < s->h.size)
		return err_set(-ENOTSUP, "%s: shrinking qcow2 images is not supported",
			       s->file->path);
	if (new_size > (1ull << 61))
		return err_set(-EFBIG, "%s: size too large", s->file->path);
	if (need > s->l1_size) {
		ret = qcow2_grow_l1(s, need);
		if (ret)
			return ret;
	}
	put_be64(b, new_size);
	ret = bfile_pwrite(s->file, b, 8, 24);
	if (ret)
		return ret;
	s->h.size = img->size = new_size;
	return 0;
}

static int qcow2_set_backing(struct image *img, const char *name, const char *fmt)
{
	struct qcow2 *s = img->opaque;

	qcow2_quiesce(s);
	if (name && strlen(name) > 1023)
		return err_set(-ENAMETOOLONG, "%s: backing file name too long", s->file->path);
	if (fmt && strlen(fmt) >= sizeof(img->backing_fmt))
		return err_set(-EINVAL, "%s: backing format name too long", s->file->path);
	snprintf(img->backing_name, sizeof(img->backing_name), "%s", name ? name : "");
	snprintf(img->backing_fmt, sizeof(img->backing_fmt), "%s", name && fmt ? fmt : "");
	return qcow2_header_write(s);
}

const struct image_format qcow2_format = {
	.name = "qcow2",
	.probe = probe,
	.open = qcow2_open,
	.close = qcow2_close,
	.read = qcow2_read,
	.write = qcow2_write,
	.concurrent = true,
	.write_compressed = qcow2_write_compressed,
	.flush = qcow2_flush,
	.discard = qcow2_discard,
	.write_zeroes = qcow2_write_zeroes,
	.block_status = qcow2_block_status,
	.create = qcow2_create,
	.check = qcow2_check_excl,
	.resize = qcow2_resize,
	.info = qcow2_info,
	.set_backing = qcow2_set_backing,
	.make_empty = qcow2_make_empty,
	.snapshot_create = qcow2_snapshot_create,
	.snapshot_list = qcow2_snapshot_list,
	.snapshot_apply = qcow2_snapshot_apply,
	.snapshot_delete = qcow2_snapshot_delete,
	.snapshot_load = qcow2_snapshot_load,
};

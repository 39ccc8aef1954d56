/* VMDK: the text descriptor, extents, open/close, I/O dispatch to extents,
 * create (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
 * streamOptimized), info, check. Sparse extents are in vmdk-sparse.c. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <zlib.h>

#include "vmdk.h"
#include "vireo/log.h"

int vmdk_corrupt(struct vmdk *s, struct vmdk_extent *e, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = image_vcorrupt(s->img, e->file->path, "VMDK", fmt, ap);
	va_end(ap);
	return ret;
}

static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
	static const char sig[] = "# Disk DescriptorFile";

	(void)filename;
	if (len >= 4 && !memcmp(buf, "KDMV", 4))
		return 100;
	if (len >= sizeof(sig) - 1 && !memcmp(buf, sig, sizeof(sig) - 1))
		return 100;
	return 0;
}

/* ---- the descriptor ---- */

static char *trim(char *p)
{
	char *e;

	while (*p == ' ' || *p == '\t')
		p++;
	e = p + strlen(p);
	while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return p;
}

static char *unquote(char *v)
{
	size_t n = strlen(v);

	if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
		v[n - 1] = '\0';
		return v + 1;
	}
	return v;
}

/* A descriptor line for an error message: at most 80 bytes, printable. */
static const char *shown(const char *line, char out[81])
{
	size_t i;

	for (i = 0; i < 80 && line[i]; i++)
		out[i] = line[i] >= 0x20 && line[i] < 0x7f ? line[i] : '?';
	out[i] = '\0';
	return out;
}

/* One extent line: ACCESS SECTORS TYPE "NAME" [OFFSET]. */
static int parse_extent(struct vmdk *s, char *line, const char *path)
{
	char access[16], type[16], name[256], tmp[81];
	unsigned long long sectors, offset = 0;
	struct vmdk_extent *e;
	int n = 0;

	if (sscanf(line, "%15s %llu %15s \"%255[^\"]\"%n", access, &sectors, type, name, &n) < 4 ||
	    !n)
		return err_set(-EINVAL, "%s: bad VMDK extent line '%s'", path, shown(line, tmp));
	if (line[n] && sscanf(line + n, "%llu", &offset) != 1)
		return err_set(-EINVAL, "%s: bad VMDK extent offset in '%s'", path, shown(line, tmp));
	if (!sectors || sectors > (1ull << 40) || offset > (1ull << 40))
		return err_set(-EINVAL, "%s: VMDK extent size or offset invalid in '%s'", path, shown(line, tmp));
	if (s->nr_ext >= VMDK_MAX_EXTENTS)
		return err_set(-EINVAL, "%s: more than %d VMDK extents", path, VMDK_MAX_EXTENTS);
	e = realloc(s->ext, (s->nr_ext + 1) * sizeof(*e));
	if (!e)
		return err_set(-ENOMEM, "out of memory");
	s->ext = e;
	e = &s->ext[s->nr_ext];
	memset(e, 0, sizeof(*e));
	if (!strcmp(type, "FLAT") || !strcmp(type, "VMFS"))
		e->type = VMDK_EXT_FLAT;
	else if (!strcmp(type, "SPARSE"))
		e->type = VMDK_EXT_SPARSE;
	else if (!strcmp(type, "ZERO"))
		e->type = VMDK_EXT_ZERO;
	else
		return err_set(-ENOTSUP, "%s: unsupported VMDK extent type %s", path, type);
	e->start = s->nr_ext ? s->ext[s->nr_ext - 1].start + s->ext[s->nr_ext - 1].len : 0;
	e->len = sectors * 512;
	e->flat_off = offset * 512;
	snprintf(e->name, sizeof(e->name), "%s", name);
	s->nr_ext++;
	if (e->start + e->len > (1ull << 50))
		return err_set(-EINVAL, "%s: VMDK extents too large in all", path);
	return 0;
}

static void parse_key(struct vmdk *s, char *key, char *val)
{
	if (!strcmp(key, "createType"))
		snprintf(s->create_type, sizeof(s->create_type), "%s", val);
	else if (!strcmp(key, "CID"))
		s->cid = (uint32_t)strtoul(val, NULL, 16);
	else if (!strcmp(key, "parentCID"))
		s->parent_cid = (uint32_t)strtoul(val, NULL, 16);
	else if (!strcmp(key, "parentFileNameHint"))
		snprintf(s->img->backing_name, sizeof(s->img->backing_name), "%s", val);
}

static int desc_parse(struct vmdk *s, char *text, bool extents, const char *path)
{
	char *save = NULL;

	s->parent_cid = UINT32_MAX;
	for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		char *eq, *p = trim(l), tmp[81];
		int ret;

		if (!*p || *p == '#')
			continue;
		if (!strncmp(p, "RW ", 3) || !strncmp(p, "RDONLY ", 7) ||
		    !strncmp(p, "NOACCESS ", 9)) {
			ret = extents ? parse_extent(s, p, path) : 0;
			if (ret)
				return ret;
			continue;
		}
		eq = strchr(p, '=');
		if (!eq)
			return err_set(-EINVAL, "%s: bad VMDK descriptor line '%s'", path, shown(p, tmp));
		*eq = '\0';
		parse_key(s, trim(p), unquote(trim(eq + 1)));
	}
	if (!s->create_type[0])
		return err_set(-EINVAL, "%s: VMDK descriptor has no createType", path);
	return 0;
}

static int read_text(struct bfile *f, uint64_t off, uint64_t len, char **out)
{
	char *t = malloc(len + 1);
	int ret;

	if (!t)
		return err_set(-ENOMEM, "out of memory");
	ret = bfile_pread(f, t, len, off);
	if (ret) {
		free(t);
		return ret;
	}
	t[len] = '\0';
	*out = t;
	return 0;
}

/* ---- open / close ---- */

static void vmdk_free_state(struct vmdk *s)
{
	if (!s)
		return;
	for (int i = 0; i < s->nr_ext; i++) {
		if (s->ext[i].type == VMDK_EXT_SPARSE)
			vmdk_sparse_close(&s->ext[i]);
		if (s->ext[i].own_file)
			bfile_close(s->ext[i].file);
	}
	free(s->ext);
	free(s);
}

static int open_extent(struct vmdk *s, struct vmdk_extent *e)
{
	struct image *img = s->img;
	int ret;

	if (e->type == VMDK_EXT_ZERO)
		return 0;
	if (!e->file) {
		if (img->file->fd < 0)	/* memory files (fuzzers) name no host files */
			return err_set(-ENOTSUP, "%s: VMDK extent files need a host file",
				       img->file->path);
		ret = bfile_open_relative(img->file, e->name, img->writable ? BFILE_RDWR : BFILE_RDONLY,
					  &e->file);
		if (ret)
			return err_set(ret, "%s: VMDK extent: %s", img->file->path, err_get());
		e->own_file = true;
	}
	if (e->type != VMDK_EXT_SPARSE)
		return 0;
	ret = vmdk_sparse_open(s, e, img->writable);
	if (!ret && e->h.capacity * 512 < e->len)
		ret = err_set(-EINVAL, "%s: VMDK extent capacity %llu sectors smaller than the "
			      "descriptor says", e->file->path, (unsigned long long)e->h.capacity);
	return ret && e->own_file ? err_set(ret, "%s: VMDK extent: %s", img->file->path, err_get())
				  : ret;
}

/* A sparse extent file opened directly: its embedded descriptor (if any)
 * gives the create type and parent; the extent is the file itself. */
static int open_monolithic(struct vmdk *s)
{
	struct vmdk_extent *e = calloc(1, sizeof(*e));
	struct vmdk_header h;
	int64_t len = bfile_length(s->img->file);
	char *text = NULL;
	int ret;

	if (!e)
		return err_set(-ENOMEM, "out of memory");
	s->ext = e;
	s->nr_ext = 1;
	e->type = VMDK_EXT_SPARSE;
	e->file = s->img->file;
	ret = len < 0 ? (int)len : vmdk_header_read(e->file, 0, &h);
	if (ret)
		return ret;
	snprintf(s->create_type, sizeof(s->create_type), "monolithicSparse");
	s->parent_cid = UINT32_MAX;
	if (h.desc_size && h.desc_offset) {
		if ((h.desc_offset + h.desc_size) * 512 > (uint64_t)len)
			return err_set(-EINVAL, "%s: VMDK descriptor past the end of the file",
				       e->file->path);
		ret = read_text(e->file, h.desc_offset * 512, h.desc_size * 512, &text);
		if (!ret)
			ret = desc_parse(s, text, false, e->file->path);
		free(text);
		if (ret)
			return ret;
	}
	ret = open_extent(s, e);
	e->len = e->h.capacity * 512;
	return ret;
}

static int open_descriptor(struct vmdk *s)
{
	int64_t len = bfile_length(s->img->file);
	char *text;
	int ret;

	if (len < 0)
		return (int)len;
	if (len > VMDK_MAX_DESC)
		return err_set(-EINVAL, "%s: not a VMDK image (descriptor over 1 MiB)",
			       s->img->file->path);
	ret = read_text(s->img->file, 0, (uint64_t)len, &text);
	if (ret)
		return ret;
	/* QEMU pads descriptor files with NUL bytes to a sector */
	for (size_t i = strlen(text); i < (size_t)len && !ret; i++)
		if (text[i])
			ret = err_set(-EINVAL, "%s: not a VMDK descriptor (binary data)", s->img->file->path);
	if (!ret)
		ret = desc_parse(s, text, true, s->img->file->path);
	free(text);
	if (!ret && !s->nr_ext)
		ret = err_set(-EINVAL, "%s: VMDK descriptor lists no extents", s->img->file->path);
	s->desc_file = true;
	for (int i = 0; !ret && i < s->nr_ext; i++)
		ret = open_extent(s, &s->ext[i]);
	return ret;
}

static int vmdk_open(struct image *img)
{
	struct vmdk *s = calloc(1, sizeof(*s));
	uint8_t magic[4];
	int ret;

	if (!s)
		return err_set(-ENOMEM, "out of memory");
	s->img = img;
	ret = bfile_pread(img->file, magic, 4, 0);
	if (!ret && !memcmp(magic, "COWD", 4))
		ret = err_set(-ENOTSUP, "%s: VMware 3 (COWD) sparse images are not supported",
			      img->file->path);
	else if (!ret)
		ret = memcmp(magic, "KDMV", 4) ? open_descriptor(s) : open_monolithic(s);
	if (ret) {
		img->backing_name[0] = '\0';
		vmdk_free_state(s);
		return ret;
	}
	img->size = s->ext[s->nr_ext - 1].start + s->ext[s->nr_ext - 1].len;
	img->opaque = s;
	return 0;
}

static void vmdk_close(struct image *img)
{
	vmdk_free_state(img->opaque);
	img->opaque = NULL;
}

/* ---- I/O: split at extent boundaries ---- */

static struct vmdk_extent *find_extent(struct vmdk *s, uint64_t off)
{
	int lo = 0, hi = s->nr_ext - 1;

	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;

		if (s->ext[mid].start <= off)
			lo = mid;
		else
			hi = mid - 1;
	}
	return &s->ext[lo];
}

static int vmdk_rw(struct image *img, uint64_t off, uint8_t *rbuf, const uint8_t *wbuf,
		   size_t len)
{
	struct vmdk *s = img->opaque;

	while (len) {
		struct vmdk_extent *e = find_extent(s, off);
		uint64_t eoff = off - e->start, n = e->len - eoff < len ? e->len - eoff : len;
		int ret;

		if (e->type == VMDK_EXT_ZERO)
			ret = rbuf ? (memset(rbuf, 0, n), 0)
				   : err_set(-EROFS, "%s: cannot write a VMDK ZERO extent",
					     img->file->path);
		else if (e->type == VMDK_EXT_FLAT)
			ret = rbuf ? bfile_pread(e->file, rbuf, n, e->flat_off + eoff)
				   : bfile_pwrite(e->file, wbuf, n, e->flat_off + eoff);
		else
			ret = rbuf ? vmdk_sparse_read(s, e, eoff, rbuf, n)
				   : vmdk_sparse_write(s, e, eoff, wbuf, n);
		if (ret)
			return ret;
		off += n;
		len -= n;
		rbuf = rbuf ? rbuf + n : NULL;
		wbuf = wbuf ? wbuf + n : NULL;
	}
	return 0;
}

static int vmdk_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	return vmdk_rw(img, off, buf, NULL, len);
}

static int vmdk_write(struct image *img, uint64_t off, const void *buf, size_t len)
{
	return vmdk_rw(img, off, NULL, buf, len);
}

/* convert -c, called without img->lock from several threads: a grain of a
 * streamOptimized extent is compressed first, then stored under the lock;
 * other extents store it plainly (the contract allows it; QEMU refuses). */
static int vmdk_write_compressed(struct image *img, uint64_t off, const void *buf, size_t len)
{
	struct vmdk *s = img->opaque;
	struct vmdk_extent *e = find_extent(s, off);
	uint64_t eoff = off - e->start, bytes = 0;
	uint8_t *z = NULL;
	int ret = 0;

	if (e->type == VMDK_EXT_SPARSE && e->compressed && eoff % e->grain == 0 &&
	    len <= e->grain && len <= e->len - eoff) {
		z = malloc(compressBound((uLong)e->grain) + 1024);
		ret = z ? vmdk_sparse_compress(e, eoff / e->grain, buf, len, z, &bytes)
			: err_set(-ENOMEM, "out of memory");
	}
	pthread_mutex_lock(&img->lock);
	if (!ret)
		ret = z ? vmdk_sparse_put_compressed(e, eoff / e->grain, z, bytes)
			: vmdk_rw(img, off, NULL, buf, len);
	pthread_mutex_unlock(&img->lock);
	free(z);
	return ret;
}

/* Unallocated grains without a parent already read as zeroes. */
static int vmdk_write_zeroes(struct image *img, uint64_t off, uint64_t len)
{
	enum { CHUNK = 1 << 20 };
	struct vmdk *s = img->opaque;
	uint8_t *zero = calloc(1, CHUNK);
	int ret = zero ? 0 : err_set(-ENOMEM, "out of memory");

	while (len && !ret) {
		struct vmdk_extent *e = find_extent(s, off);
		uint64_t eoff = off - e->start, n = e->len - eoff < len ? e->len - eoff : len;
		uint64_t pnum = n, host;

		int st = BLOCK_DATA;

		n = n < CHUNK ? n : CHUNK;
		if (e->type == VMDK_EXT_SPARSE && !img->backing) {
			st = vmdk_sparse_status(s, e, eoff, n, &pnum, &host);
			n = pnum < n ? pnum : n;
		}
		if (st < 0)
			ret = st;
		else if (st & BLOCK_DATA)
			ret = vmdk_rw(img, off, NULL, zero, n);
		off += n;
		len -= n;
	}
	free(zero);
	return ret;
}

static int vmdk_flush(struct image *img)
{
	struct vmdk *s = img->opaque;
	int ret = 0;

	for (int i = 0; i < s->nr_ext && !ret; i++) {
		struct vmdk_extent *e = &s->ext[i];

		if (e->type == VMDK_EXT_SPARSE)
			ret = vmdk_sparse_flush(e);
		if (!ret && e->file && e->own_file)
			ret = bfile_flush(e->file);
	}
	return ret ? ret : bfile_flush(img->file);
}

static int vmdk_block_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
			     uint64_t *host_off)
{
	struct vmdk *s = img->opaque;
	struct vmdk_extent *e = find_extent(s, off);
	uint64_t eoff = off - e->start;
	int ret;

	if (len > e->len - eoff)
		len = e->len - eoff;
	*pnum = len;
	if (e->type == VMDK_EXT_ZERO)
		return BLOCK_ZERO | BLOCK_ALLOCATED;
	if (e->type == VMDK_EXT_FLAT) {
		*host_off = e->flat_off + eoff;
		return BLOCK_DATA | BLOCK_ALLOCATED | (e->own_file ? 0 : BLOCK_OFFSET);
	}
	ret = vmdk_sparse_status(s, e, eoff, len, pnum, host_off);
	if (ret > 0 && e->own_file)
		ret &= ~BLOCK_OFFSET;
	return ret;
}

static int vmdk_check(struct image *img, struct image_check *res, int fix)
{
	struct vmdk *s = img->opaque;
	int ret = 0;

	(void)fix;	/* nothing we find can be repaired without losing data */
	for (int i = 0; i < s->nr_ext && !ret; i++)
		if (s->ext[i].type == VMDK_EXT_SPARSE)
			ret = vmdk_sparse_check(s, &s->ext[i], res);
	return ret;
}

static void vmdk_info(struct image *img, struct image_info *info)
{
	struct vmdk *s = img->opaque;

	for (int i = 0; i < s->nr_ext; i++)
		if (s->ext[i].type == VMDK_EXT_SPARSE) {
			info->cluster_size = s->ext[i].grain;
			break;
		}
	image_info_add_int(info, "cid", s->cid);
	image_info_add_int(info, "parent-cid", s->parent_cid);
	image_info_add_str(info, "create-type", s->create_type);
}

/* ---- create ---- */

static int parent_cid(const char *path, const struct image_create_opts *o, uint32_t *cid)
{
	char ppath[BLOCK_PATH_MAX];
	struct image *p;
	int ret;

	if (o->backing_fmt && strcmp(o->backing_fmt, "vmdk"))
		return err_set(-EINVAL, "%s: a VMDK's parent must be a VMDK, not %s", path,
			       o->backing_fmt);
	ret = bfile_resolve(path, o->backing, ppath);
	if (!ret)
		ret = image_open(ppath, "vmdk", IMAGE_NO_BACKING | IMAGE_FORCE_SHARE, &p);
	if (ret)
		return ret;
	*cid = ((struct vmdk *)p->opaque)->cid;
	image_close(p);
	return 0;
}

static void desc_write(char *d, size_t cap, const char *type, uint64_t sectors, uint32_t pcid,
		       const char *parent, const char *extents)
{
	uint64_t cyls = sectors / (16 * 63);
	uint32_t cid;
	int n;

	if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
		cid = (uint32_t)(rand() ^ time(NULL));

	n = snprintf(d, cap, "# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=%08x\n"
		     "createType=\"%s\"\n", cid, pcid, type);
	if (parent)
		n += snprintf(d + n, cap - (size_t)n, "parentFileNameHint=\"%s\"\n", parent);
	snprintf(d + n, cap - (size_t)n, "\n# Extent description\n%s\n# The Disk Data Base\n#DDB\n\n"
		 "ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"%llu\"\n"
		 "ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\n"
		 "ddb.adapterType = \"ide\"\n", extents,
		 (unsigned long long)(cyls > 16383 ? 16383 : cyls));
}

/* Extent files are named after the descriptor: disk.vmdk -> disk-flat.vmdk,
 * disk-s001.vmdk, ... */
static void extent_name(const char *path, const char *suffix, char *out, size_t cap)
{
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	size_t n = strlen(base);

	if (n > 5 && !strcmp(base + n - 5, ".vmdk"))
		n -= 5;
	snprintf(out, cap, "%.*s%s", (int)(n > 200 ? 200 : n), base, suffix);
}

static int create_extent_file(struct bfile *desc, const char *name, uint64_t sectors, bool flat)
{
	struct bfile *f;
	int ret = bfile_open_relative(desc, name, BFILE_RDWR | BFILE_CREATE, &f);

	if (ret)
		return ret;
	ret = flat ? bfile_truncate(f, sectors * 512) : vmdk_sparse_create(f, sectors, NULL, false);
	if (!ret)
		ret = bfile_flush(f);
	bfile_close(f);
	return ret;
}

static int create_split(struct bfile *file, const char *path, const char *type, uint64_t sectors,
			uint32_t pcid, const char *parent)
{
	bool flat = !strcmp(type, "monolithicFlat");
	uint64_t per = flat ? sectors : VMDK_EXTENT_2G / 512, n = (sectors + per - 1) / per;
	size_t cap = 512 + n * 300;
	char *lines = calloc(1, cap), *desc = malloc(cap + 1024), name[256];
	size_t used = 0;
	int ret = lines && desc ? 0 : err_set(-ENOMEM, "out of memory");

	for (uint64_t i = 0; !ret && i < n; i++) {
		uint64_t sz = sectors - i * per < per ? sectors - i * per : per;
		char sfx[32];

		snprintf(sfx, sizeof(sfx), flat ? "-flat.vmdk" : "-s%03llu.vmdk",
			 (unsigned long long)i + 1);
		extent_name(path, sfx, name, sizeof(name));
		used += (size_t)snprintf(lines + used, cap - used, "RW %llu %s \"%s\"%s\n",
					 (unsigned long long)sz, flat ? "FLAT" : "SPARSE", name,
					 flat ? " 0" : "");
		ret = create_extent_file(file, name, sz, flat);
	}
	if (!ret) {
		desc_write(desc, cap + 1024, type, sectors, pcid, parent, lines);
		ret = bfile_pwrite(file, desc, strlen(desc), 0);
	}
	free(lines);
	free(desc);
	return ret;
}

static int vmdk_create(struct bfile *file, const char *path, const struct image_create_opts *o)
{
	static const char *const types[] = { "monolithicSparse", "monolithicFlat",
					     "twoGbMaxExtentSparse", "streamOptimized" };
	const char *type = o->subformat ? o->subformat : "monolithicSparse";
	uint64_t sectors = (o->size + 511) / 512;
	uint32_t pcid = UINT32_MAX;
	char desc[4096], line[512], name[256];
	bool known = false;
	int ret;

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		known |= !strcmp(type, types[i]);
	if (!known)
		return err_set(-EINVAL, "%s: unknown VMDK subformat '%s' (monolithicSparse, "
			       "monolithicFlat, twoGbMaxExtentSparse, streamOptimized)", path, type);
	if (!sectors || sectors > (1ull << 32))
		return err_set(-EINVAL, "%s: VMDK size must be 512 bytes to 2 TiB", path);
	if (o->backing && (!strcmp(type, "streamOptimized") || !strcmp(type, "monolithicFlat")))
		return err_set(-EINVAL, "%s: a %s VMDK cannot have a parent", path, type);
	if (o->backing && (ret = parent_cid(path, o, &pcid)))
		return ret;
	if (strcmp(type, "monolithicSparse") && strcmp(type, "streamOptimized"))
		return create_split(file, path, type, sectors, pcid, o->backing);
	extent_name(path, ".vmdk", name, sizeof(name));
	snprintf(line, sizeof(line), "RW %llu SPARSE \"%s\"\n", (unsigned long long)sectors, name);
	desc_write(desc, sizeof(desc), type, sectors, pcid, o->backing, line);
	return vmdk_sparse_create(file, sectors, desc, !strcmp(type, "streamOptimized"));
}

const struct image_format vmdk_format = {
	.name = "vmdk",
	.probe = vmdk_probe,
	.open = vmdk_open,
	.close = vmdk_close,
	.read = vmdk_read,
	.write = vmdk_write,
	.write_compressed = vmdk_write_compressed,
	.write_zeroes = vmdk_write_zeroes,
	.flush = vmdk_flush,
	.block_status = vmdk_block_status,
	.create = vmdk_create,
	.check = vmdk_check,
	.info = vmdk_info,
};

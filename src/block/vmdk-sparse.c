/* VMDK sparse extents: header, grain directory and tables, grain I/O,
 * compressed grains (streamOptimized), check, create. Written from VMware's
 * "Virtual Disk Format 5.0" specification; see vmdk.h for the layout.
 *
 * Allocation order (crash safety): a new grain (or grain table) is written
 * at the end of the file first, then the GT entry (primary, then redundant)
 * that points at it, then the GD entry for a new GT; a process killed in
 * between leaks space, nothing points at unwritten data. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "vmdk.h"
#include "vireo/log.h"

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }
static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++, v >>= 8)
		p[i] = (uint8_t)v;
}
static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- the header: one encode/decode/validate set (DESIGN §3.9) ---- */

void vmdk_header_encode(const struct vmdk_header *h, uint8_t *b)
{
	memset(b, 0, 512);
	put32(b, h->magic);
	put32(b + 4, h->version);
	put32(b + 8, h->flags);
	put64(b + 12, h->capacity);
	put64(b + 20, h->grain_size);
	put64(b + 28, h->desc_offset);
	put64(b + 36, h->desc_size);
	put32(b + 44, h->gtes_per_gt);
	put64(b + 48, h->rgd_offset);
	put64(b + 56, h->gd_offset);
	put64(b + 64, h->overhead);
	b[72] = h->unclean;
	memcpy(b + 73, h->nl, 4);
	b[77] = (uint8_t)h->compress;
	b[78] = (uint8_t)(h->compress >> 8);
}

int vmdk_header_read(struct bfile *f, uint64_t off, struct vmdk_header *h)
{
	uint8_t b[512];
	int ret = bfile_pread(f, b, sizeof(b), off);

	if (ret)
		return ret;
	h->magic = le32(b);
	h->version = le32(b + 4);
	h->flags = le32(b + 8);
	h->capacity = le64(b + 12);
	h->grain_size = le64(b + 20);
	h->desc_offset = le64(b + 28);
	h->desc_size = le64(b + 36);
	h->gtes_per_gt = le32(b + 44);
	h->rgd_offset = le64(b + 48);
	h->gd_offset = le64(b + 56);
	h->overhead = le64(b + 64);
	h->unclean = b[72];
	memcpy(h->nl, b + 73, 4);
	h->compress = (uint16_t)(b[77] | b[78] << 8);
	if (h->magic != VMDK_MAGIC)
		return err_set(-EINVAL, "%s: not a VMDK sparse extent (bad magic)", f->path);
	if (h->version < 1 || h->version > 3)
		return err_set(-ENOTSUP, "%s: unsupported VMDK version %u", f->path, h->version);
	if (!h->grain_size || h->grain_size > VMDK_MAX_GRAIN ||
	    (h->grain_size & (h->grain_size - 1)))
		return err_set(-EINVAL, "%s: VMDK grain size %llu sectors invalid", f->path,
			       (unsigned long long)h->grain_size);
	if (!h->gtes_per_gt || h->gtes_per_gt > 4096 || (h->gtes_per_gt & (h->gtes_per_gt - 1)))
		return err_set(-EINVAL, "%s: VMDK grain table size %u invalid", f->path,
			       h->gtes_per_gt);
	if (h->capacity > (1ull << 40))
		return err_set(-EINVAL, "%s: VMDK capacity %llu sectors too large", f->path,
			       (unsigned long long)h->capacity);
	if (h->desc_size > VMDK_MAX_DESC / 512 || h->desc_offset > (1ull << 40))
		return err_set(-EINVAL, "%s: VMDK embedded descriptor location invalid", f->path);
	if ((h->flags & VMDK_FLAG_COMPRESS) && h->compress != 1)
		return err_set(-ENOTSUP, "%s: unsupported VMDK compression %u", f->path, h->compress);
	if (h->overhead > (1ull << 40) || (h->gd_offset != VMDK_GD_AT_END &&
					   (h->gd_offset > (1ull << 40) || h->rgd_offset > (1ull << 40))))
		return err_set(-EINVAL, "%s: VMDK table offsets invalid", f->path);
	return 0;
}

/* ---- open ---- */

static int read_gd(struct vmdk_extent *e, uint64_t sector, uint32_t **out, const char *what)
{
	uint64_t bytes = e->gd_entries * 4ull, off = sector * 512;
	uint8_t *raw;
	uint32_t *gd;
	int ret;

	if (!sector || off > (uint64_t)e->file_len || bytes > (uint64_t)e->file_len - off)
		return err_set(-EINVAL, "%s: VMDK %s offset %llu invalid", e->file->path, what,
			       (unsigned long long)sector);
	raw = malloc(bytes);
	gd = calloc(e->gd_entries, 4);
	ret = raw && gd ? bfile_pread(e->file, raw, bytes, off) : err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; !ret && i < e->gd_entries; i++) {
		uint64_t gt = (gd[i] = le32(raw + 4 * i)) * 512ull;

		if (gd[i] && (gt < 512 || gt + e->gt_bytes > (uint64_t)e->file_len ||
			      (gt < (e->h.desc_offset + e->h.desc_size) * 512 &&
			       gt + e->gt_bytes > e->h.desc_offset * 512)))
			ret = err_set(-EINVAL, "%s: VMDK %s entry %u (sector %u) points %s", e->file->path,
				      what, i, gd[i], gt + e->gt_bytes > (uint64_t)e->file_len
				      ? "past the end of the file" : "into metadata");
	}
	free(raw);
	if (ret) {
		free(gd);
		return ret;
	}
	*out = gd;
	return 0;
}

/* streamOptimized images written in one stream keep the GD at the end: the
 * real header is the footer, 1024 bytes before the end of the file. */
static int read_footer(struct vmdk_extent *e)
{
	uint8_t m[16];
	int ret;

	if (e->file_len < 2048)
		return err_set(-EINVAL, "%s: VMDK stream too short for its footer", e->file->path);
	ret = bfile_pread(e->file, m, sizeof(m), (uint64_t)e->file_len - 1536);
	if (!ret && (le32(m + 8) || le32(m + 12) != VMDK_MARKER_FOOTER))
		ret = err_set(-EINVAL, "%s: VMDK footer marker missing", e->file->path);
	if (!ret)
		ret = vmdk_header_read(e->file, (uint64_t)e->file_len - 1024, &e->h);
	if (!ret && e->h.gd_offset == VMDK_GD_AT_END)
		ret = err_set(-EINVAL, "%s: VMDK footer has no GD offset", e->file->path);
	e->read_only = true;	/* appending would bury the footer */
	return ret;
}

int vmdk_sparse_open(struct vmdk *s, struct vmdk_extent *e, bool writable)
{
	uint64_t grains;
	int ret;

	(void)s;
	e->file_len = bfile_length(e->file);
	if (e->file_len < 0)
		return (int)e->file_len;
	ret = vmdk_header_read(e->file, 0, &e->h);
	if (!ret && e->h.gd_offset == VMDK_GD_AT_END)
		ret = read_footer(e);
	if (ret)
		return ret;
	e->grain = e->h.grain_size * 512;
	grains = (e->h.capacity + e->h.grain_size - 1) / e->h.grain_size;
	if ((grains + e->h.gtes_per_gt - 1) / e->h.gtes_per_gt * 4 > VMDK_MAX_GD_BYTES)
		return err_set(-EINVAL, "%s: VMDK grain directory too large", e->file->path);
	e->gd_entries = (uint32_t)((grains + e->h.gtes_per_gt - 1) / e->h.gtes_per_gt);
	e->gt_bytes = (e->h.gtes_per_gt * 4ull + 511) & ~511ull;
	e->compressed = e->h.flags & VMDK_FLAG_COMPRESS;
	e->markers = e->h.flags & VMDK_FLAG_MARKERS;
	if (e->h.overhead * 512 > (uint64_t)e->file_len)
		return err_set(-EINVAL, "%s: VMDK overhead %llu sectors past the end of the file",
			       e->file->path, (unsigned long long)e->h.overhead);
	e->meta_end = e->h.overhead * 512 > 512 ? e->h.overhead * 512 : 512;
	ret = read_gd(e, e->h.gd_offset, &e->gd, "grain directory");
	if (!ret && (e->h.flags & VMDK_FLAG_RGD) && e->h.rgd_offset)
		ret = read_gd(e, e->h.rgd_offset, &e->rgd, "redundant grain directory");
	if (ret)
		return ret;
	for (int i = 0; i < VMDK_GT_CACHE; i++)
		e->cache[i].gd_index = UINT32_MAX;
	e->next_off = ((uint64_t)e->file_len + 511) & ~511ull;
	if (e->compressed) {
		uint8_t last[512], zero[512] = { 0 };

		/* a trailing end-of-stream marker is overwritten by the next grain */
		if (writable && e->file_len >= 1024 && !(e->file_len & 511) &&
		    !bfile_pread(e->file, last, 512, (uint64_t)e->file_len - 512) &&
		    !memcmp(last, zero, 512) && (uint64_t)e->file_len - 512 >= e->meta_end)
			e->next_off -= 512;
		e->zbuf = malloc(compressBound((uLong)e->grain) + 1024);
		e->gbuf = malloc(e->grain);
		if (!e->zbuf || !e->gbuf)
			return err_set(-ENOMEM, "out of memory");
	}
	return 0;
}

void vmdk_sparse_close(struct vmdk_extent *e)
{
	for (int i = 0; i < VMDK_GT_CACHE; i++)
		free(e->cache[i].gt);
	free(e->gd);
	free(e->rgd);
	free(e->zbuf);
	free(e->gbuf);
}

/* ---- grain tables ---- */

static int get_gt(struct vmdk_extent *e, uint32_t gdi, uint32_t **gt)
{
	struct vmdk_gt_slot *c = &e->cache[gdi % VMDK_GT_CACHE];
	uint8_t *raw;
	int ret;

	*gt = NULL;
	if (!e->gd[gdi])
		return 0;
	if (c->gd_index == gdi) {
		*gt = c->gt;
		return 0;
	}
	if (!c->gt && !(c->gt = malloc(e->h.gtes_per_gt * 4ull)))
		return err_set(-ENOMEM, "out of memory");
	c->gd_index = UINT32_MAX;
	raw = malloc(e->h.gtes_per_gt * 4ull);
	if (!raw)
		return err_set(-ENOMEM, "out of memory");
	ret = bfile_pread(e->file, raw, e->h.gtes_per_gt * 4ull, e->gd[gdi] * 512ull);
	for (uint32_t i = 0; !ret && i < e->h.gtes_per_gt; i++)
		c->gt[i] = le32(raw + 4 * i);
	free(raw);
	if (ret)
		return ret;
	c->gd_index = gdi;
	*gt = c->gt;
	return 0;
}

/* The GT entry of grain g, validated: 0 unallocated, 1 zero grain (with the
 * flag), else a sector past the metadata whose grain starts in the file. */
static int lookup(struct vmdk *s, struct vmdk_extent *e, uint64_t g, uint32_t *entry)
{
	uint32_t *gt;
	uint64_t off;
	int ret = get_gt(e, (uint32_t)(g / e->h.gtes_per_gt), &gt);

	if (ret)
		return ret;
	*entry = gt ? gt[g % e->h.gtes_per_gt] : 0;
	if (*entry == 0 || (*entry == 1 && (e->h.flags & VMDK_FLAG_ZERO_GRAIN)))
		return 0;
	off = *entry * 512ull;
	if (off < e->meta_end)
		return vmdk_corrupt(s, e, "grain %llu at sector %u points into metadata",
				    (unsigned long long)g, *entry);
	if (off >= (uint64_t)e->file_len)
		return vmdk_corrupt(s, e, "grain %llu at sector %u is past the end of the file",
				    (unsigned long long)g, *entry);
	return 0;
}

static int inflate_grain(struct vmdk_extent *e, const uint8_t *in, uint32_t len, int wbits,
			 uLongf *out_len)
{
	z_stream z = { .next_in = (Bytef *)in, .avail_in = len, .next_out = e->gbuf,
		       .avail_out = (uInt)e->grain };
	int ret;

	if (inflateInit2(&z, wbits) != Z_OK)
		return -ENOMEM;
	ret = inflate(&z, Z_FINISH);
	*out_len = z.total_out;
	inflateEnd(&z);
	return ret == Z_STREAM_END ? 0 : -EIO;
}

/* Decompresses the grain at sector `entry` (grain number g) into e->gbuf. */
static int load_grain(struct vmdk *s, struct vmdk_extent *e, uint64_t g, uint32_t entry)
{
	uint64_t off = entry * 512ull, cap = compressBound((uLong)e->grain) + 512;
	uint32_t len = 0;
	uLongf out = 0;
	uint8_t hdr[12];
	int ret;

	if (e->gbuf_sector == entry)
		return 0;
	e->gbuf_sector = 0;
	if (e->markers) {
		ret = bfile_pread(e->file, hdr, sizeof(hdr), off);
		if (ret)
			return ret;
		len = le32(hdr + 8);
		if (le64(hdr) != g * e->h.grain_size || !len || len > cap)
			return vmdk_corrupt(s, e, "compressed grain at sector %u: bad header "
					    "(LBA %llu, size %u)", entry,
					    (unsigned long long)le64(hdr), len);
		off += sizeof(hdr);
	} else {
		len = (uint32_t)cap;
	}
	ret = bfile_pread(e->file, e->zbuf, len, off);
	if (ret)
		return ret;
	if (inflate_grain(e, e->zbuf, len, 15 + 32, &out) &&
	    inflate_grain(e, e->zbuf, len, -15, &out))
		return vmdk_corrupt(s, e, "compressed grain at sector %u does not inflate", entry);
	memset(e->gbuf + out, 0, e->grain - out);
	e->gbuf_sector = entry;
	return 0;
}

/* Reads from plain grain g at sector entry, and on through the grains that
 * follow it in the file too (one pread for a run); *n grows accordingly. */
static int read_run(struct vmdk *s, struct vmdk_extent *e, uint64_t g, uint32_t entry,
		    uint64_t goff, uint8_t *buf, uint64_t len, uint64_t *n)
{
	uint32_t got;

	while (*n < len && !lookup(s, e, g + (*n + goff) / e->grain, &got) &&
	       got == entry + (uint32_t)((*n + goff) / e->grain * e->h.grain_size) && got > 1)
		*n = *n + e->grain < len ? *n + e->grain : len;
	return bfile_pread(e->file, buf, *n, entry * 512ull + goff);
}

int vmdk_sparse_read(struct vmdk *s, struct vmdk_extent *e, uint64_t off, uint8_t *buf,
		     uint64_t len)
{
	while (len) {
		uint64_t g = off / e->grain, goff = off % e->grain;
		uint64_t n = e->grain - goff < len ? e->grain - goff : len;
		uint32_t entry;
		int ret = lookup(s, e, g, &entry);

		if (!ret && entry == 0)
			ret = image_read_backing(s->img, e->start + off, buf, n);
		else if (!ret && entry == 1 && (e->h.flags & VMDK_FLAG_ZERO_GRAIN))
			memset(buf, 0, n);
		else if (!ret && e->compressed && !(ret = load_grain(s, e, g, entry)))
			memcpy(buf, e->gbuf + goff, n);
		else if (!ret)
			ret = read_run(s, e, g, entry, goff, buf, len, &n);
		if (ret)
			return ret;
		buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* ---- allocation ---- */

static int write_gte(struct vmdk_extent *e, uint32_t gt_sector, uint32_t idx, uint32_t v)
{
	uint8_t b[4];

	put32(b, v);
	return bfile_pwrite(e->file, b, 4, gt_sector * 512ull + idx * 4ull);
}

/* Appends an empty GT for directory entry gdi (and its redundant copy). */
static int alloc_gt(struct vmdk_extent *e, uint32_t gdi)
{
	uint32_t *dirs[2] = { e->gd, e->rgd };
	uint64_t offs[2] = { e->h.gd_offset, e->h.rgd_offset };
	int ret = 0;

	for (int i = 0; i < 2 && !ret; i++) {
		uint64_t at = e->next_off;

		if (!dirs[i] || dirs[i][gdi])
			continue;
		if (at / 512 + e->gt_bytes / 512 > UINT32_MAX)
			return err_set(-EFBIG, "%s: VMDK extent full", e->file->path);
		ret = bfile_pwrite_zeroes(e->file, at, e->gt_bytes);
		if (!ret)
			ret = write_gte(e, (uint32_t)offs[i], gdi, (uint32_t)(at / 512));
		if (!ret) {
			dirs[i][gdi] = (uint32_t)(at / 512);
			e->next_off += e->gt_bytes;
			e->appended = true;
			if (e->next_off > (uint64_t)e->file_len)
				e->file_len = (int64_t)e->next_off;
		}
	}
	return ret;
}

static int set_gte(struct vmdk_extent *e, uint64_t g, uint32_t v)
{
	uint32_t gdi = (uint32_t)(g / e->h.gtes_per_gt), idx = (uint32_t)(g % e->h.gtes_per_gt);
	uint32_t *gt;
	int ret = 0;

	if (!e->gd[gdi] || (e->rgd && !e->rgd[gdi]))
		ret = alloc_gt(e, gdi);
	if (!ret)
		ret = get_gt(e, gdi, &gt);
	if (!ret)
		ret = write_gte(e, e->gd[gdi], idx, v);
	if (!ret && e->rgd)
		ret = write_gte(e, e->rgd[gdi], idx, v);
	if (!ret)
		gt[idx] = v;
	return ret;
}

/* Compresses len bytes of grain g into dst (compressBound + 524 bytes):
 * LBA, size, deflate data, padded to a sector. No shared state, so
 * `convert -c` runs it on several threads without the image lock. */
int vmdk_sparse_compress(struct vmdk_extent *e, uint64_t g, const uint8_t *data, uint64_t len,
			 uint8_t *dst, uint64_t *bytes)
{
	uLongf zlen = compressBound((uLong)e->grain);

	if (compress2(dst + 12, &zlen, data, (uLong)len, Z_DEFAULT_COMPRESSION) != Z_OK)
		return err_set(-EIO, "%s: compression failed", e->file->path);
	put64(dst, g * e->h.grain_size);
	put32(dst + 8, (uint32_t)zlen);
	*bytes = (12 + zlen + 511) & ~511ull;
	memset(dst + 12 + zlen, 0, *bytes - 12 - zlen);
	return 0;
}

/* Appends bytes of grain data at the end of the file. */
static int append(struct vmdk_extent *e, const uint8_t *data, uint64_t bytes, uint32_t *sector)
{
	uint64_t at = e->next_off;

	if ((at + bytes) / 512 > UINT32_MAX)
		return err_set(-EFBIG, "%s: VMDK extent full", e->file->path);
	*sector = (uint32_t)(at / 512);
	e->next_off += bytes;
	e->appended = true;
	if (e->next_off > (uint64_t)e->file_len)
		e->file_len = (int64_t)e->next_off;
	return bfile_pwrite(e->file, data, bytes, at);
}

/* Stores an already compressed grain g (vmdk_sparse_compress) and points
 * its GT entry at it. */
int vmdk_sparse_put_compressed(struct vmdk_extent *e, uint64_t g, const uint8_t *z,
			       uint64_t bytes)
{
	uint32_t sector;
	int ret;

	if (e->read_only)
		return err_set(-ENOTSUP, "%s: VMDK stream is read-only", e->file->path);
	ret = append(e, z, bytes, &sector);
	return ret ? ret : set_gte(e, g, sector);
}

/* Appends grain g (e->grain bytes at data), compressed if the extent is. */
static int append_grain(struct vmdk_extent *e, uint64_t g, const uint8_t *data, uint32_t *sector)
{
	uint64_t bytes = e->grain;
	int ret;

	if (!e->compressed)
		return append(e, data, bytes, sector);
	ret = vmdk_sparse_compress(e, g, data, e->grain, e->zbuf, &bytes);
	return ret ? ret : append(e, e->zbuf, bytes, sector);
}

/* A partial write to a grain that isn't plainly allocated: the whole new
 * grain is built from the old contents and written anew. */
static int rewrite_grain(struct vmdk *s, struct vmdk_extent *e, uint64_t g, uint32_t entry,
			 uint64_t goff, const uint8_t *buf, uint64_t n)
{
	uint8_t *t = malloc(e->grain);
	uint64_t gstart = g * e->grain, glen = e->len - gstart < e->grain ? e->len - gstart : e->grain;
	uint32_t sector = 0;
	int ret = 0;

	if (!t)
		return err_set(-ENOMEM, "out of memory");
	memset(t, 0, e->grain);
	if (n < e->grain && entry == 0)
		ret = image_read_backing(s->img, e->start + gstart, t, glen);
	else if (n < e->grain && entry > 1 && !(ret = load_grain(s, e, g, entry)))
		memcpy(t, e->gbuf, e->grain);
	memcpy(t + goff, buf, n);
	if (!ret)
		ret = append_grain(e, g, t, &sector);
	if (!ret)
		ret = set_gte(e, g, sector);
	if (!ret && e->compressed) {
		memcpy(e->gbuf, t, e->grain);
		e->gbuf_sector = sector;
	}
	free(t);
	return ret;
}

int vmdk_sparse_write(struct vmdk *s, struct vmdk_extent *e, uint64_t off, const uint8_t *buf,
		      uint64_t len)
{
	if (e->read_only)
		return err_set(-ENOTSUP, "%s: streamOptimized VMDK with its grain directory at "
			       "the end is read-only (convert it)", e->file->path);
	while (len) {
		uint64_t g = off / e->grain, goff = off % e->grain;
		uint64_t n = e->grain - goff < len ? e->grain - goff : len;
		uint32_t entry;
		int ret = lookup(s, e, g, &entry);

		if (!ret && entry > 1 && !e->compressed)
			ret = bfile_pwrite(e->file, buf, n, entry * 512ull + goff);
		else if (!ret)
			ret = rewrite_grain(s, e, g, entry == 1 && !(e->h.flags & VMDK_FLAG_ZERO_GRAIN)
					    ? 0 : entry, goff, buf, n);
		if (ret)
			return ret;
		buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* streamOptimized readers expect an end-of-stream marker after the last
 * grain; the next appended grain overwrites it. */
int vmdk_sparse_flush(struct vmdk_extent *e)
{
	static const uint8_t eos[512];

	int ret;

	if (!e->markers || e->read_only || e->file->readonly || !e->appended)
		return 0;
	ret = bfile_pwrite(e->file, eos, sizeof(eos), e->next_off);
	if (!ret)
		e->appended = false;
	return ret;
}

int vmdk_sparse_status(struct vmdk *s, struct vmdk_extent *e, uint64_t off, uint64_t len,
		       uint64_t *pnum, uint64_t *host_off)
{
	uint64_t g = off / e->grain, goff = off % e->grain, n = e->grain - goff;
	uint32_t entry;
	int ret = lookup(s, e, g, &entry);

	if (ret)
		return ret;
	*pnum = n < len ? n : len;
	if (entry == 0) {
		uint64_t per_gt = e->grain * e->h.gtes_per_gt;

		/* runs of unallocated grains, whole missing tables at a time */
		while (*pnum < len) {
			uint64_t next = off + *pnum, step;

			g = next / e->grain;
			if (!e->gd[g / e->h.gtes_per_gt])
				step = per_gt - next % per_gt;
			else if (lookup(s, e, g, &entry) || entry)
				break;
			else
				step = e->grain;
			*pnum = *pnum + step < len ? *pnum + step : len;
		}
		return 0;
	}
	if (entry == 1 && (e->h.flags & VMDK_FLAG_ZERO_GRAIN))
		return BLOCK_ZERO | BLOCK_ALLOCATED;
	if (e->compressed)
		return BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_COMPRESSED;
	*host_off = entry * 512ull + goff;
	/* grains that follow each other in the file too: one extent */
	while (*pnum < len) {
		uint64_t next = off + *pnum;
		uint32_t want = entry + (uint32_t)((next / e->grain - g) * e->h.grain_size), got;

		if (lookup(s, e, next / e->grain, &got) || got != want)
			break;
		*pnum = *pnum + e->grain < len ? *pnum + e->grain : len;
	}
	return BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET;
}

/* ---- check ---- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Two GT entries sharing a grain: writing one would change the other. */
static void check_overlaps(struct vmdk_extent *e, uint32_t *sec, uint64_t n,
			   struct image_check *res)
{
	if (n)
		qsort(sec, n, 4, cmp_u32);
	for (uint64_t i = 0; i + 1 < n; i++)
		if (e->compressed ? sec[i] == sec[i + 1]
				  : sec[i] + e->h.grain_size > sec[i + 1]) {
			res->corruptions++;
			image_check_msg(res, "ERROR %s: grains at sectors %u and %u overlap",
					e->file->path, sec[i], sec[i + 1]);
		}
}

/* Every GT entry must be valid (lookup() says why not); no two may share
 * a grain. Nothing is repaired: no fix keeps the data. */
int vmdk_sparse_check(struct vmdk *s, struct vmdk_extent *e, struct image_check *res)
{
	uint64_t grains = (e->len + e->grain - 1) / e->grain, n = 0, cap = 0;
	uint32_t *sec = NULL;

	res->total_clusters += grains;
	for (uint64_t g = 0; g < grains; g++) {
		uint32_t entry;
		int ret;

		if (g % e->h.gtes_per_gt == 0 && !e->gd[g / e->h.gtes_per_gt]) {
			g += e->h.gtes_per_gt - 1;
			continue;
		}
		ret = lookup(s, e, g, &entry);
		if (ret == -EIO && s->img->broken) {
			res->corruptions++;
			image_check_msg(res, "ERROR %s", err_get());
			s->img->broken = false;
		} else if (ret) {
			free(sec);
			return ret;
		} else if (entry > 1 || (entry == 1 && !(e->h.flags & VMDK_FLAG_ZERO_GRAIN))) {
			res->allocated_clusters++;
			res->compressed_clusters += e->compressed;
			if (n == cap) {	/* grows with what the file holds, not the disk size */
				uint32_t *t = realloc(sec, (cap = cap ? cap * 2 : 1024) * 4);

				if (!t) {
					free(sec);
					return err_set(-ENOMEM, "out of memory");
				}
				sec = t;
			}
			sec[n++] = entry;
		}
	}
	check_overlaps(e, sec, n, res);
	free(sec);
	if (e->next_off > res->image_end_offset)
		res->image_end_offset = e->next_off;
	return 0;
}

/* ---- create ---- */

/* The layout QEMU and VMware use: header, embedded descriptor (20 sectors),
 * redundant GD and GTs, GD and GTs, grains from a 64 KiB boundary. */
int vmdk_sparse_create(struct bfile *f, uint64_t sectors, const char *desc, bool stream)
{
	struct vmdk_header h = { .magic = VMDK_MAGIC, .version = stream ? 3 : 1,
				 .flags = VMDK_FLAG_NL_DETECT | VMDK_FLAG_RGD,
				 .capacity = sectors, .grain_size = 128, .gtes_per_gt = 512,
				 .nl = { '\n', ' ', '\r', '\n' } };
	uint64_t grains = (sectors + 127) / 128, gts = (grains + 511) / 512;
	uint64_t gd_sectors = (gts * 4 + 511) / 512;
	uint8_t *buf;
	int ret;

	if (desc && strlen(desc) > 20 * 512)
		return err_set(-EINVAL, "%s: VMDK descriptor too long", f->path);
	if (gts * 4 > VMDK_MAX_GD_BYTES)
		return err_set(-EFBIG, "%s: VMDK size too large", f->path);
	if (stream) {
		h.flags |= VMDK_FLAG_COMPRESS | VMDK_FLAG_MARKERS;
		h.compress = 1;
	}
	h.desc_offset = desc ? 1 : 0;
	h.desc_size = desc ? 20 : 0;
	h.rgd_offset = desc ? 21 : 1;
	h.gd_offset = h.rgd_offset + gd_sectors + gts * 4;
	h.overhead = (h.gd_offset + gd_sectors + gts * 4 + 127) & ~127ull;
	/* header and descriptor, then both directories; the GTs are zeroes
	 * (a sparse tail: a 2 TiB disk has 256 MiB of them) */
	buf = calloc(1, (h.desc_offset + h.desc_size + 1) * 512 + gd_sectors * 512);
	if (!buf)
		return err_set(-ENOMEM, "out of memory");
	vmdk_header_encode(&h, buf);
	if (desc)
		memcpy(buf + 512, desc, strlen(desc));
	ret = bfile_truncate(f, h.overhead * 512);
	if (!ret)
		ret = bfile_pwrite(f, buf, h.rgd_offset * 512, 0);
	for (int k = 0; k < 2 && !ret; k++) {
		uint64_t dir = k ? h.gd_offset : h.rgd_offset;

		memset(buf, 0, gd_sectors * 512);
		for (uint64_t i = 0; i < gts; i++)
			put32(buf + i * 4, (uint32_t)(dir + gd_sectors + i * 4));
		ret = bfile_pwrite(f, buf, gd_sectors * 512, dir * 512);
	}
	free(buf);
	return ret;
}

/* VHD block I/O: the BAT, sector bitmaps, block allocation, check.
 *
 * Dynamic images: an allocated block reads as its data (QEMU writes
 * all-ones bitmaps and ignores them too); an unallocated one as zeroes.
 * Differencing images: a sector whose bitmap bit is clear reads from the
 * parent. Allocation order (crash safety): bitmap and data of the new block
 * at the old end of file, then the footer after it, then the BAT entry; a
 * process killed in between leaks the block, nothing points at garbage. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhd.h"
#include "vireo/log.h"

static uint64_t block_off(struct vhd *s, uint32_t blk)
{
	return (uint64_t)s->bat[blk] * 512;
}

static bool bit_get(const uint8_t *bm, uint64_t i)
{
	return bm[i / 8] & (0x80 >> (i % 8));
}

static void bit_set(uint8_t *bm, uint64_t i)
{
	bm[i / 8] |= (uint8_t)(0x80 >> (i % 8));
}

static int load_bitmap(struct vhd *s, uint32_t blk)
{
	int ret;

	if (s->bitmap_block == blk)
		return 0;
	s->bitmap_block = VHD_BAT_FREE;
	ret = bfile_pread(s->file, s->bitmap, s->bitmap_size, block_off(s, blk));
	if (!ret)
		s->bitmap_block = blk;
	return ret;
}

/* Reads from the parent of a differencing image, which must be the VHD
 * whose UUID the child recorded (a replaced parent would silently change
 * the child's contents). */
static int check_parent(struct vhd *s)
{
	struct image *p = s->img->backing;

	if (p && !s->parent_checked && s->f.type == VHD_DIFF) {
		if (p->fmt != &vpc_format ||
		    memcmp(((struct vhd *)p->opaque)->f.uuid, s->d.parent_uuid, 16))
			return err_set(-EINVAL, "%s: parent %s is not the VHD this image was "
				       "created on (UUID differs)", s->file->path, p->filename);
		s->parent_checked = true;
	}
	return 0;
}

static int read_parent(struct vhd *s, uint64_t off, uint8_t *buf, uint64_t n)
{
	return check_parent(s) ?: image_read_backing(s->img, off, buf, n);
}

/* Reads [boff, boff+n) of allocated differencing block blk: sector runs
 * whose bits are set come from the file, the others from the parent. */
static int read_diff_block(struct vhd *s, uint32_t blk, uint64_t boff, uint8_t *buf,
			   uint64_t n)
{
	uint64_t base = (uint64_t)blk * s->d.block_size, pos = boff, end = boff + n;
	int ret = load_bitmap(s, blk);

	while (!ret && pos < end) {
		uint64_t sec = pos / 512, e = sec + 1, pend;
		bool set = bit_get(s->bitmap, sec);

		while (e * 512 < end && bit_get(s->bitmap, e) == set)
			e++;
		pend = e * 512 < end ? e * 512 : end;
		if (set)
			ret = bfile_pread(s->file, buf + (pos - boff), pend - pos,
					  block_off(s, blk) + s->bitmap_size + pos);
		else
			ret = read_parent(s, base + pos, buf + (pos - boff), pend - pos);
		pos = pend;
	}
	return ret;
}

static int read_block(struct vhd *s, uint32_t blk, uint64_t boff, uint8_t *buf, uint64_t n)
{
	uint64_t off = (uint64_t)blk * s->d.block_size + boff;

	if (s->bat[blk] == VHD_BAT_FREE)
		return read_parent(s, off, buf, n);
	if (s->f.type == VHD_DIFF)
		return read_diff_block(s, blk, boff, buf, n);
	return bfile_pread(s->file, buf, n, block_off(s, blk) + s->bitmap_size + boff);
}

int vhd_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	struct vhd *s = img->opaque;
	uint8_t *p = buf;

	if (s->f.type == VHD_FIXED)
		return bfile_pread(s->file, buf, len, off);
	while (len) {
		uint32_t blk = (uint32_t)(off / s->d.block_size);
		uint64_t boff = off % s->d.block_size;
		uint64_t n = s->d.block_size - boff < len ? s->d.block_size - boff : len;
		int ret = read_block(s, blk, boff, p, n);

		if (ret)
			return ret;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Widens [boff, boff+n) of block blk to whole sectors: *out holds the
 * current contents of the partial head and tail sectors and the new data.
 * Only differencing images need this (their bitmap is per sector). */
static int widen(struct vhd *s, uint32_t blk, uint64_t *boff, const uint8_t *data, uint64_t *n,
		 uint8_t **out)
{
	uint64_t a = *boff & ~511ull, b = (*boff + *n + 511) & ~511ull;
	uint8_t *t = malloc(b - a);
	int ret = 0;

	if (!t)
		return err_set(-ENOMEM, "out of memory");
	if (a < *boff)
		ret = read_block(s, blk, a, t, 512);
	/* the tail sector, unless it is the head sector just read */
	if (!ret && b > *boff + *n && !(b - 512 == a && a < *boff))
		ret = read_block(s, blk, b - 512, t + (b - 512 - a), 512);
	if (ret) {
		free(t);
		return ret;
	}
	memcpy(t + (*boff - a), data, *n);
	*boff = a;
	*n = b - a;
	*out = t;
	return 0;
}

static int write_bat_entry(struct vhd *s, uint32_t blk, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };

	return bfile_pwrite(s->file, b, 4, s->d.table_offset + 4ull * blk);
}

/* A new block at next_off: bitmap and data, footer, then the BAT entry. */
static int alloc_block(struct vhd *s, uint32_t blk, uint64_t boff, const uint8_t *data,
		       uint64_t n)
{
	/* data 4 KiB-aligned (after its bitmap), so O_DIRECT I/O needs no
	 * read-modify-write; the few sectors skipped stay unused */
	uint64_t off = ((s->next_off + s->bitmap_size + 4095) & ~4095ull) - s->bitmap_size;
	uint64_t end = off + s->bitmap_size + s->d.block_size;
	uint8_t foot[VHD_FOOTER_SIZE];
	int ret;

	if (end / 512 > UINT32_MAX)
		return err_set(-EFBIG, "%s: VHD file would exceed 2 TiB", s->file->path);
	s->bitmap_block = VHD_BAT_FREE;
	memset(s->bitmap, s->f.type == VHD_DIFF ? 0 : 0xff, s->bitmap_size);
	for (uint64_t i = boff / 512; s->f.type == VHD_DIFF && i < (boff + n) / 512; i++)
		bit_set(s->bitmap, i);
	ret = bfile_pwrite(s->file, s->bitmap, s->bitmap_size, off);
	if (!ret)
		ret = bfile_pwrite(s->file, data, n, off + s->bitmap_size + boff);
	vhd_footer_encode(&s->f, foot);
	if (!ret)
		ret = bfile_pwrite(s->file, foot, sizeof(foot), end);
	if (!ret)
		ret = write_bat_entry(s, blk, (uint32_t)(off / 512));
	if (ret)
		return ret;
	s->bat[blk] = (uint32_t)(off / 512);
	s->next_off = end;
	s->bitmap_block = blk;
	return 0;
}

/* Writes into allocated block blk; differencing: data, then its bits. */
static int write_block(struct vhd *s, uint32_t blk, uint64_t boff, const uint8_t *data,
		       uint64_t n)
{
	uint64_t base = block_off(s, blk);
	bool dirty = false;
	int ret;

	ret = bfile_pwrite(s->file, data, n, base + s->bitmap_size + boff);
	if (ret || s->f.type != VHD_DIFF)
		return ret;
	ret = load_bitmap(s, blk);
	for (uint64_t i = boff / 512; !ret && i < (boff + n) / 512; i++)
		if (!bit_get(s->bitmap, i)) {
			bit_set(s->bitmap, i);
			dirty = true;
		}
	if (!ret && dirty) {
		uint64_t a = boff / 512 / 8 & ~511ull;	/* the bitmap sector(s) touched */
		uint64_t b = (((boff + n) / 512 + 7) / 8 + 511) & ~511ull;

		ret = bfile_pwrite(s->file, s->bitmap + a, b - a, base + a);
	}
	return ret;
}

int vhd_write(struct image *img, uint64_t off, const void *buf, size_t len)
{
	struct vhd *s = img->opaque;
	const uint8_t *p = buf;

	if (s->f.type == VHD_FIXED)
		return bfile_pwrite(s->file, buf, len, off);
	while (len) {
		uint32_t blk = (uint32_t)(off / s->d.block_size);
		uint64_t boff = off % s->d.block_size, wb;
		uint64_t n = s->d.block_size - boff < len ? s->d.block_size - boff : len, wn = n;
		uint8_t *wide = NULL;
		int ret = 0;

		wb = boff;
		if (s->f.type == VHD_DIFF && ((boff | n) & 511))
			ret = widen(s, blk, &wb, p, &wn, &wide);
		if (!ret)
			ret = s->bat[blk] == VHD_BAT_FREE ? alloc_block(s, blk, wb, wide ? wide : p, wn)
							  : write_block(s, blk, wb, wide ? wide : p, wn);
		free(wide);
		if (ret)
			return ret;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Unallocated blocks already read as zeroes unless a parent shows through. */
int vhd_write_zeroes(struct image *img, uint64_t off, uint64_t len)
{
	enum { CHUNK = 1 << 20 };
	struct vhd *s = img->opaque;
	uint8_t *zero;
	int ret = 0;

	if (s->f.type == VHD_FIXED)
		return bfile_pwrite_zeroes(s->file, off, len);
	zero = calloc(1, CHUNK);
	if (!zero)
		return err_set(-ENOMEM, "out of memory");
	while (len && !ret) {
		uint32_t blk = (uint32_t)(off / s->d.block_size);
		uint64_t n = s->d.block_size - off % s->d.block_size;

		n = n < len ? n : len;
		n = n < CHUNK ? n : CHUNK;
		if (img->backing || s->bat[blk] != VHD_BAT_FREE)
			ret = vhd_write(img, off, zero, n);
		off += n;
		len -= n;
	}
	free(zero);
	return ret;
}

/* A fixed image is a raw file with a footer: holes read as zeroes (as
 * QEMU reports them, through the file's SEEK_DATA/SEEK_HOLE). */
static int fixed_status(struct vhd *s, uint64_t off, uint64_t len, uint64_t *pnum)
{
	const int st = BLOCK_ALLOCATED | BLOCK_OFFSET;
	off_t data, hole;

	if (s->file->fd < 0)
		return st | BLOCK_DATA;
	data = lseek(s->file->fd, (off_t)off, SEEK_DATA);
	if (data < 0 || (uint64_t)data > off) {
		uint64_t end = data < 0 ? off + len : (uint64_t)data;

		*pnum = (end < off + len ? end : off + len) - off;
		return st | BLOCK_ZERO | BLOCK_DATA;	/* as QEMU reports it */
	}
	hole = lseek(s->file->fd, (off_t)off, SEEK_HOLE);
	if (hole > (off_t)off && (uint64_t)hole < off + len)
		*pnum = (uint64_t)hole - off;
	return st | BLOCK_DATA;
}

int vhd_block_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		     uint64_t *host_off)
{
	struct vhd *s = img->opaque;
	uint32_t blk;
	uint64_t boff, n;
	int ret;

	*pnum = len;
	*host_off = off;
	if (s->f.type == VHD_FIXED)
		return fixed_status(s, off, len, pnum);
	blk = (uint32_t)(off / s->d.block_size);
	boff = off % s->d.block_size;
	n = s->d.block_size - boff < len ? s->d.block_size - boff : len;
	if (s->bat[blk] == VHD_BAT_FREE) {
		uint64_t got = n;

		while (got < len && s->bat[++blk] == VHD_BAT_FREE)
			got += s->d.block_size < len - got ? s->d.block_size : len - got;
		*pnum = got;
		ret = check_parent(s);	/* callers go to the parent next */
		if (ret)
			return ret;
		/* as QEMU: without a parent, unallocated blocks are this layer's zeroes */
		return s->f.type == VHD_DIFF ? 0 : BLOCK_ZERO | BLOCK_ALLOCATED;
	}
	*host_off = block_off(s, blk) + s->bitmap_size + boff;
	*pnum = n;
	if (s->f.type != VHD_DIFF)
		return BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET;
	ret = load_bitmap(s, blk);
	if (ret)
		return ret;
	{
		uint64_t sec = boff / 512, e = sec + 1;
		bool set = bit_get(s->bitmap, sec);

		while (e * 512 < boff + n && bit_get(s->bitmap, e) == set)
			e++;
		*pnum = (e * 512 < boff + n ? e * 512 : boff + n) - boff;
		return set ? BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET : check_parent(s);
	}
}

/* `img commit`: every block is dropped (the BAT first, then the file is
 * cut after the metadata and the footer rewritten there). */
int vhd_make_empty(struct image *img)
{
	struct vhd *s = img->opaque;
	uint64_t bat_bytes = ((uint64_t)s->d.max_entries * 4 + 511) & ~511ull;
	uint8_t *bat, foot[VHD_FOOTER_SIZE];
	int ret;

	if (s->f.type == VHD_FIXED)
		return 0;
	bat = malloc(bat_bytes);
	if (!bat)
		return err_set(-ENOMEM, "out of memory");
	memset(bat, 0xff, s->d.max_entries * 4ull);
	memset(bat + s->d.max_entries * 4ull, 0, bat_bytes - s->d.max_entries * 4ull);
	ret = bfile_pwrite(s->file, bat, bat_bytes, s->d.table_offset);
	free(bat);
	if (!ret)
		ret = bfile_flush(s->file);
	vhd_footer_encode(&s->f, foot);
	if (!ret)
		ret = bfile_pwrite(s->file, foot, sizeof(foot), s->meta_end);
	if (!ret)
		ret = bfile_truncate(s->file, s->meta_end + VHD_FOOTER_SIZE);
	if (ret)
		return ret;
	memset(s->bat, 0xff, s->d.max_entries * 4ull);
	s->next_off = s->meta_end;
	s->bitmap_block = VHD_BAT_FREE;
	return 0;
}

/* ---- check ---- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Blocks must not overlap each other (open has checked they lie inside the
 * file and past the metadata); the end footer must be there. */
static void check_blocks(struct vhd *s, struct image_check *res, uint64_t *end)
{
	uint64_t bsz = s->bitmap_size + (uint64_t)s->d.block_size;
	uint32_t *sorted = malloc((s->d.max_entries + 1ull) * 4), n = 0;

	*end = s->meta_end;
	if (!sorted) {
		res->check_errors++;
		return;
	}
	for (uint32_t i = 0; i < s->d.max_entries; i++)
		if (s->bat[i] != VHD_BAT_FREE)
			sorted[n++] = s->bat[i];
	qsort(sorted, n, 4, cmp_u32);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t off = (uint64_t)sorted[i] * 512;

		if (i + 1 < n && off + bsz > (uint64_t)sorted[i + 1] * 512) {
			res->corruptions++;
			image_check_msg(res, "ERROR block at offset %llu overlaps the next one",
					(unsigned long long)off);
		}
		if (off + bsz > *end)
			*end = off + bsz;
	}
	res->allocated_clusters = n;
	res->total_clusters = s->d.max_entries;
	free(sorted);
}

/* A missing end footer or space after the last block is what a killed
 * writer leaves (see alloc_block): the image is consistent (the footer copy
 * at offset 0 describes it), so both count as leaks; the repair writes the
 * footer right after the last block and cuts the file there. */
int vhd_check(struct image *img, struct image_check *res, int fix)
{
	struct vhd *s = img->opaque;
	int64_t file_len = bfile_length(s->file);
	struct vhd_footer tail;
	uint8_t b[VHD_FOOTER_SIZE];
	bool footer;
	uint64_t end;

	if (file_len < 0)
		return (int)file_len;
	if (s->f.type == VHD_FIXED) {
		res->image_end_offset = (uint64_t)file_len;
		return 0;
	}
	check_blocks(s, res, &end);
	res->image_end_offset = end + VHD_FOOTER_SIZE;
	footer = (uint64_t)file_len >= end + VHD_FOOTER_SIZE &&
		 !vhd_footer_read(s->file, (uint64_t)file_len - VHD_FOOTER_SIZE, &tail);
	if (footer && (uint64_t)file_len == end + VHD_FOOTER_SIZE)
		return 0;
	res->leaks++;
	if (!footer)
		image_check_msg(res, "Leaked space: the footer at the end of the file is missing");
	else
		image_check_msg(res, "Leaked space: %llu bytes after the last block",
				(unsigned long long)((uint64_t)file_len - end - VHD_FOOTER_SIZE));
	if (!(fix & IMAGE_FIX_LEAKS))
		return 0;
	vhd_footer_encode(&s->f, b);
	if (bfile_pwrite(s->file, b, sizeof(b), end) ||
	    bfile_truncate(s->file, end + VHD_FOOTER_SIZE)) {
		res->check_errors++;
		return 0;
	}
	res->leaks--;
	res->leaks_fixed++;
	s->next_off = end;
	return 0;
}

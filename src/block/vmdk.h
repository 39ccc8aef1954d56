/* VMDK internals, shared by vmdk*.c only.
 *
 * An image is a text descriptor plus extents (see docs/images.md):
 *   monolithicSparse / streamOptimized: one sparse extent file with the
 *     descriptor embedded after its header;
 *   monolithicFlat: descriptor file + one flat (raw) extent file;
 *   twoGbMaxExtentSparse: descriptor file + sparse extents of <= 2 GiB.
 * Sparse extent (all integers little-endian, offsets in 512-byte sectors):
 *   header (sector 0): magic "KDMV", version, flags, capacity, grain size,
 *     descriptor offset/size, GTEs per GT, redundant GD offset, GD offset,
 *     overhead, unclean shutdown, newline check bytes, compression;
 *   GD: u32 per grain table -> GT: u32 per grain (0 unallocated, 1 zero
 *     grain with flag ZERO_GRAIN) -> grain data; the redundant GD and GTs
 *     mirror them.
 *   compressed grains (streamOptimized): u64 LBA, u32 size, deflate data,
 *     padded to a sector; markers (u64 value, u32 0, u32 type) between. */
#ifndef VIREO_VMDK_H
#define VIREO_VMDK_H

#include <stdint.h>

#include "vireo/block.h"

#define VMDK_MAGIC          0x564d444bu	/* "KDMV" little-endian */
#define VMDK_FLAG_NL_DETECT (1u << 0)
#define VMDK_FLAG_RGD       (1u << 1)
#define VMDK_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK_FLAG_COMPRESS  (1u << 16)
#define VMDK_FLAG_MARKERS   (1u << 17)
#define VMDK_GD_AT_END      0xffffffffffffffffull
#define VMDK_MARKER_EOS     0
#define VMDK_MARKER_GT      1
#define VMDK_MARKER_GD      2
#define VMDK_MARKER_FOOTER  3
#define VMDK_MAX_GRAIN      2048u		/* sectors (1 MiB) */
#define VMDK_MAX_GD_BYTES   (32u << 20)
#define VMDK_MAX_DESC       (1u << 20)
#define VMDK_MAX_EXTENTS    4096
#define VMDK_GT_CACHE       64
#define VMDK_EXTENT_2G      (4194304ull * 512)	/* twoGbMaxExtentSparse */

/* The sparse extent header, host-endian after vmdk_header_read(). */
struct vmdk_header {
	uint32_t magic, version, flags;
	uint64_t capacity, grain_size, desc_offset, desc_size;
	uint32_t gtes_per_gt;
	uint64_t rgd_offset, gd_offset, overhead;
	uint8_t unclean;
	uint8_t nl[4];
	uint16_t compress;
};

enum vmdk_ext_type { VMDK_EXT_FLAT, VMDK_EXT_SPARSE, VMDK_EXT_ZERO };

struct vmdk_gt_slot {
	uint32_t gd_index;		/* UINT32_MAX: empty */
	uint32_t *gt;			/* host-endian */
};

struct vmdk_extent {
	enum vmdk_ext_type type;
	struct bfile *file;		/* NULL for ZERO extents */
	bool own_file;			/* not img->file */
	char name[256];
	uint64_t start, len;		/* virtual bytes */
	uint64_t flat_off;		/* FLAT: byte offset in the file */
	/* SPARSE */
	struct vmdk_header h;
	uint64_t grain;			/* bytes */
	uint64_t gt_bytes;		/* one GT on disk (sector-aligned) */
	uint32_t gd_entries;
	uint32_t *gd, *rgd;		/* host-endian; rgd NULL without RGD */
	uint64_t meta_end;		/* bytes: no grain below this */
	uint64_t next_off;		/* where the next grain goes */
	int64_t file_len;
	bool compressed, markers, read_only;
	bool appended;			/* grains appended since the last EOS marker */
	struct vmdk_gt_slot cache[VMDK_GT_CACHE];
	uint8_t *zbuf;			/* compressed grain I/O */
	uint8_t *gbuf;			/* the last decompressed grain */
	uint64_t gbuf_sector;		/* its GT entry; 0: none */
};

struct vmdk {
	struct image *img;
	struct vmdk_extent *ext;
	int nr_ext;
	char create_type[64];
	uint32_t cid, parent_cid;
	bool desc_file;			/* the image file is a text descriptor */
};

/* vmdk.c: the descriptor */
int vmdk_corrupt(struct vmdk *s, struct vmdk_extent *e, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* vmdk-sparse.c */
int vmdk_header_read(struct bfile *f, uint64_t off, struct vmdk_header *h);
void vmdk_header_encode(const struct vmdk_header *h, uint8_t *b);
int vmdk_sparse_open(struct vmdk *s, struct vmdk_extent *e, bool writable);
void vmdk_sparse_close(struct vmdk_extent *e);
int vmdk_sparse_read(struct vmdk *s, struct vmdk_extent *e, uint64_t off, uint8_t *buf,
		     uint64_t len);
int vmdk_sparse_write(struct vmdk *s, struct vmdk_extent *e, uint64_t off, const uint8_t *buf,
		      uint64_t len);
int vmdk_sparse_status(struct vmdk *s, struct vmdk_extent *e, uint64_t off, uint64_t len,
		       uint64_t *pnum, uint64_t *host_off);
int vmdk_sparse_flush(struct vmdk_extent *e);
int vmdk_sparse_compress(struct vmdk_extent *e, uint64_t g, const uint8_t *data, uint64_t len,
			 uint8_t *dst, uint64_t *bytes);
int vmdk_sparse_put_compressed(struct vmdk_extent *e, uint64_t g, const uint8_t *z,
			       uint64_t bytes);
int vmdk_sparse_check(struct vmdk *s, struct vmdk_extent *e, struct image_check *res);
/* Writes an empty sparse extent of `sectors` with an embedded descriptor
 * (desc may be NULL). */
int vmdk_sparse_create(struct bfile *f, uint64_t sectors, const char *desc, bool stream);

#endif

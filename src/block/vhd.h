/* VHD (QEMU's "vpc") internals, shared by vhd*.c only.
 *
 * On-disk layout (all integers big-endian; see docs/images.md):
 *   fixed:        guest data | footer (512)
 *   dynamic/diff: footer copy (512) | dynamic header (1024) | BAT (u32 sector
 *                 offsets, 0xffffffff = unallocated, padded to 512) |
 *                 [parent locator data] | blocks | footer (512)
 *   block:        sector bitmap (1 bit per sector, MSB first, padded to 512)
 *                 then block_size bytes of data.
 * Footer and dynamic header carry a one's-complement byte-sum checksum. */
#ifndef VIREO_VHD_H
#define VIREO_VHD_H

#include <stdint.h>

#include "vireo/block.h"

#define VHD_FOOTER_SIZE   512u
#define VHD_DYN_SIZE      1024u
#define VHD_FIXED         2u
#define VHD_DYNAMIC       3u
#define VHD_DIFF          4u
#define VHD_BAT_FREE      0xffffffffu
#define VHD_NO_OFFSET     0xffffffffffffffffull
#define VHD_MAX_GEOMETRY  (65535ull * 16 * 255)	/* sectors */
#define VHD_MAX_SECTORS   0xff000000ull		/* 2040 GiB */
#define VHD_MAX_BAT       (8u << 20)		/* entries we accept (32 MiB BAT) */
#define VHD_NR_LOCATORS   8
#define VHD_EPOCH         946684800u		/* 2000-01-01 00:00:00 UTC */

/* The footer (also the header copy at offset 0 of dynamic/diff images),
 * host-endian after vhd_footer_read(). */
struct vhd_footer {
	char cookie[8];
	uint32_t features, version;
	uint64_t data_offset;
	uint32_t timestamp;
	char creator_app[4];
	uint32_t creator_ver;
	char creator_os[4];
	uint64_t orig_size, cur_size;
	uint16_t cyls;
	uint8_t heads, secs;
	uint32_t type, checksum;
	uint8_t uuid[16];
	uint8_t saved_state;
};

struct vhd_locator {
	uint32_t code;		/* "W2ku", "W2ru", ... as a big-endian u32 */
	uint32_t space, len;
	uint64_t offset;
};

/* The dynamic disk header, host-endian after vhd_dyn_read(). */
struct vhd_dyn {
	char cookie[8];
	uint64_t data_offset, table_offset;
	uint32_t version, max_entries, block_size, checksum;
	uint8_t parent_uuid[16];
	uint32_t parent_ts;
	uint8_t parent_name[512];	/* UTF-16BE */
	struct vhd_locator loc[VHD_NR_LOCATORS];
};

struct vhd {
	struct image *img;
	struct bfile *file;
	struct vhd_footer f;
	struct vhd_dyn d;
	uint32_t *bat;			/* host-endian */
	uint32_t bitmap_size;		/* bytes, multiple of 512 */
	uint64_t meta_end;		/* end of the BAT and locator data */
	uint64_t next_off;		/* where the next block goes (the end footer) */
	uint8_t *bitmap;		/* cached bitmap of bitmap_block */
	uint32_t bitmap_block;		/* VHD_BAT_FREE: none cached */
	bool parent_checked;		/* the parent's UUID matched */
};

uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off);
void vhd_footer_encode(const struct vhd_footer *f, uint8_t *b);
int vhd_footer_read(struct bfile *file, uint64_t off, struct vhd_footer *f);
void vhd_geometry(uint64_t sectors, uint16_t *cyls, uint8_t *heads, uint8_t *secs);
int vhd_dyn_read(struct vhd *s, int64_t file_len);
void vhd_dyn_encode(const struct vhd_dyn *d, uint8_t *b);

/* vhd-io.c */
int vhd_read(struct image *img, uint64_t off, void *buf, size_t len);
int vhd_write(struct image *img, uint64_t off, const void *buf, size_t len);
int vhd_write_zeroes(struct image *img, uint64_t off, uint64_t len);
int vhd_block_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		     uint64_t *host_off);
int vhd_check(struct image *img, struct image_check *res, int fix);
int vhd_make_empty(struct image *img);

#endif

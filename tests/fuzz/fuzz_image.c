/* libFuzzer target for one image format parser (FUZZ_FORMAT, set by
 * tests/fuzz/fuzz.mk): the input is an image file. Open it read-only, read
 * windows of the disk, list snapshots, check; then open a writable copy,
 * write, repair and check again. Nothing may crash, leak or hang. */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/block.h"

#ifndef FUZZ_FORMAT
#define FUZZ_FORMAT "qcow2"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void read_windows(struct image *img)
{
	static uint8_t buf[65536];
	uint64_t offs[3] = { 0, img->size / 2, img->size > sizeof(buf) ? img->size - sizeof(buf) : 0 };

	for (int i = 0; i < 3; i++) {
		uint64_t n = img->size - offs[i] < sizeof(buf) ? img->size - offs[i] : sizeof(buf);

		image_read(img, offs[i], buf, n);
	}
}

static void exercise(struct image *img)
{
	struct image_snapshot *sn = NULL;
	struct image_check r;
	uint64_t pnum, host;
	size_t n;

	read_windows(img);
	if (img->fmt->snapshot_list && !img->fmt->snapshot_list(img, &sn, &n))
		free(sn);
	image_block_status(img, 0, img->size, &pnum, &host);
	image_check(img, &r, img->writable ? IMAGE_FIX_LEAKS | IMAGE_FIX_ERRORS : 0);
	image_check_free(&r);
}

/* Snapshot create/apply/delete on a writable copy, as `vireo img snapshot`. */
static void snapshots(struct image *img)
{
	struct image_snapshot *sn = NULL;
	size_t n = 0;

	if (!img->fmt->snapshot_create)
		return;
	pthread_mutex_lock(&img->lock);
	img->fmt->snapshot_create(img, "fuzz");
	if (!img->fmt->snapshot_list(img, &sn, &n) && n) {
		img->fmt->snapshot_apply(img, sn[0].name);
		img->fmt->snapshot_delete(img, sn[n - 1].name);
	}
	pthread_mutex_unlock(&img->lock);
	free(sn);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t pattern[4096] = { 1, 2, 3 };
	struct bfile *f;
	struct image *img;

	if (bfile_mem_open("fuzz.img", data, size, true, &f) == 0 &&
	    image_open_file(f, FUZZ_FORMAT, 0, &img) == 0) {
		exercise(img);
		image_close(img);
	}
	if (bfile_mem_open("fuzz.img", data, size, true, &f) == 0 &&	/* probing */
	    image_open_file(f, NULL, 0, &img) == 0)
		image_close(img);
	if (bfile_mem_open("fuzz.img", data, size, false, &f) == 0 &&
	    image_open_file(f, FUZZ_FORMAT, IMAGE_RDWR, &img) == 0) {
		if (img->size >= sizeof(pattern)) {
			image_write(img, 0, pattern, sizeof(pattern));
			image_write(img, img->size / 3 & ~511ull, pattern, 1000);
			image_write_zeroes(img, img->size / 2, img->size / 4);
			image_discard(img, img->size / 4, img->size / 8);
		}
		snapshots(img);
		exercise(img);
		image_close(img);
	}
	return 0;
}

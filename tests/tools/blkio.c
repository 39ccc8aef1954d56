/* Test writer for the block layer: seeded random writes (and zeroing) of
 * random sizes at random offsets through image_write(), mirrored into a
 * plain "shadow" raw file, so that the test can compare the two afterwards.
 *
 *   blkio [-f FMT] [-n COUNT] [-m MAXLEN] [-s SEED] [-z] [-F] IMAGE SHADOW
 * -z: mix in write_zeroes; -F: flush after every write (crash tests). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/log.h"

static uint64_t rng_state;

static uint64_t rng(void)
{
	/* xorshift64*: deterministic for a given seed on every machine */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static void fill(uint8_t *buf, size_t len, uint64_t tag)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)((tag * 131 + i * 7 + (i >> 9)) ^ (tag >> 8));
}

int main(int argc, char **argv)
{
	const char *fmt = NULL;
	uint64_t count = 100, maxlen = 256 << 10, seed = 1;
	bool zeroes = false, flush = false;
	struct image *img;
	uint8_t *buf;
	int c, shadow;

	while ((c = getopt(argc, argv, "f:n:m:s:zF")) != -1) {
		switch (c) {
		case 'f': fmt = optarg; break;
		case 'n': count = strtoull(optarg, NULL, 0); break;
		case 'm': maxlen = strtoull(optarg, NULL, 0); break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'z': zeroes = true; break;
		case 'F': flush = true; break;
		default: return 2;
		}
	}
	if (optind + 2 != argc || !maxlen) {
		fprintf(stderr, "usage: blkio [-f FMT] [-n N] [-m MAX] [-s SEED] [-z] [-F] IMG SHADOW\n");
		return 2;
	}
	rng_state = seed * 0x9e3779b97f4a7c15ull + 1;
	if (image_open(argv[optind], fmt, IMAGE_RDWR, &img)) {
		fprintf(stderr, "blkio: %s\n", err_get());
		return 1;
	}
	shadow = open(argv[optind + 1], O_RDWR);
	buf = malloc(maxlen + 512);	/* lengths are rounded up to sectors */
	if (shadow < 0 || !buf)
		return 1;
	for (uint64_t i = 0; i < count; i++) {
		uint64_t len = 1 + rng() % maxlen, off;
		bool z = zeroes && rng() % 5 == 0;
		int ret;

		if (rng() % 3 == 0)	/* sector-aligned, as a guest mostly does */
			len = (len + 511) & ~511ull;
		if (len > img->size)
			len = img->size;
		off = rng() % (img->size - len + 1);
		if (rng() % 2)
			off &= ~511ull;
		if (z) {
			memset(buf, 0, len);
			ret = image_write_zeroes(img, off, len);
		} else {
			fill(buf, len, seed * 1000003 + i);
			ret = image_write(img, off, buf, len);
		}
		if (!ret && flush)
			ret = image_flush(img);
		if (ret) {
			fprintf(stderr, "blkio: write %llu: %s\n", (unsigned long long)i, err_get());
			return 1;
		}
		if (pwrite(shadow, buf, len, (off_t)off) != (ssize_t)len)
			return 1;
	}
	image_close(img);
	close(shadow);
	free(buf);
	return 0;
}

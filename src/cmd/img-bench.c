/* vireo img bench: random I/O through a format driver (qemu-img bench's
 * role): -c requests of -s bytes at random aligned offsets, reads unless -w,
 * prints requests per second. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "img.h"
#include "vireo/log.h"
#include "vireo/size.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int img_bench(int argc, char **argv)
{
	const char *fmt = NULL;
	uint64_t count = 10000, size = 4096, seed = 1, slots;
	bool wr = false, flush = false, direct = false;
	struct image *img;
	uint8_t *buf;
	double t0, dt;
	int c, ret = 0;

	while ((c = getopt(argc, argv, "f:c:s:S:wFt:")) != -1) {
		switch (c) {
		case 'f': fmt = optarg; break;
		case 'c': count = strtoull(optarg, NULL, 0); break;
		case 's': if (size_parse(optarg, &size) || !size) return img_fail("bad -s"); break;
		case 'S': seed = strtoull(optarg, NULL, 0); break;
		case 'w': wr = true; break;
		case 'F': flush = true; break;
		case 't': direct = !strcmp(optarg, "none"); break;
		default: return img_fail("bench: bad option");
		}
	}
	if (optind >= argc)
		return img_fail("bench: FILE required");
	if (image_open(argv[optind], fmt, (wr ? IMAGE_RDWR : 0) | (direct ? IMAGE_DIRECT : 0),
		       &img))
		return img_fail(NULL);
	if (posix_memalign((void **)&buf, 4096, size))
		buf = NULL;
	slots = img->size / size;
	if (!buf || !slots) {
		image_close(img);
		free(buf);
		return img_fail("bench: image smaller than one request");
	}
	memset(buf, 0xa5, size);
	srandom((unsigned)seed);
	t0 = now();
	for (uint64_t i = 0; i < count && !ret; i++) {
		uint64_t off = ((uint64_t)random() << 31 | (uint64_t)random()) % slots * size;

		ret = wr ? image_write(img, off, buf, size) : image_read(img, off, buf, size);
		if (!ret && flush)
			ret = image_flush(img);
	}
	dt = now() - t0;
	if (!ret)
		printf("%s %s: %llu x %llu bytes in %.3f s: %.0f IOPS\n", img->fmt->name,
		       wr ? "write" : "read", (unsigned long long)count, (unsigned long long)size,
		       dt, (double)count / dt);
	free(buf);
	image_close(img);
	return ret ? img_fail("bench") : 0;
}

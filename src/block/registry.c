/* The format registry. A format is one `const struct image_format` in its
 * own files; the table below names it. Formats built on other branches are
 * weak references, so a tree without them still links and simply lacks them. */
#include <errno.h>
#include <string.h>

#include "vireo/block.h"
#include "vireo/log.h"

extern const struct image_format vpc_format __attribute__((weak));
extern const struct image_format vmdk_format __attribute__((weak));

static const struct image_format *const formats[] = {
	&raw_format,
	&qcow2_format,
	&vpc_format,
	&vmdk_format,
};

#define NR_FORMATS (sizeof(formats) / sizeof(formats[0]))

const struct image_format *image_format_find(const char *name)
{
	for (size_t i = 0; i < NR_FORMATS; i++)
		if (formats[i] && !strcmp(formats[i]->name, name))
			return formats[i];
	if (!strcmp(name, "vhd"))	/* the common name of QEMU's "vpc" */
		return image_format_find("vpc");
	return NULL;
}

void image_format_foreach(void (*fn)(const struct image_format *fmt, void *ctx), void *ctx)
{
	for (size_t i = 0; i < NR_FORMATS; i++)
		if (formats[i])
			fn(formats[i], ctx);
}

const struct image_format *image_format_probe(struct bfile *f, int *score)
{
	const struct image_format *best = &raw_format;
	uint8_t buf[4096];
	int best_score = 0;

	if (bfile_pread(f, buf, sizeof(buf), 0))
		return NULL;
	for (size_t i = 0; i < NR_FORMATS; i++) {
		int s;

		if (!formats[i] || !formats[i]->probe)
			continue;
		s = formats[i]->probe(buf, sizeof(buf), f->path);
		if (s > best_score) {
			best_score = s;
			best = formats[i];
		}
	}
	*score = best_score;
	return best;
}

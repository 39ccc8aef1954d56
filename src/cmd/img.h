/* vireo img internals shared by src/cmd/img*.c. */
#ifndef VIREO_CMD_IMG_H
#define VIREO_CMD_IMG_H

#include <stdbool.h>
#include <stdint.h>

#include "vireo/block.h"

/* Prints "vireo img: <msg>" with the last error, returns exit status 1. */
int img_fail(const char *what);
/* Parses -o "k=v,k=v" into opts (strings point into a copy kept alive). */
int img_parse_opts(const char *text, struct image_create_opts *o);
/* Status of [off, off+len) seen through the whole chain: BLOCK_ZERO when
 * every layer leaves it unallocated or zero. *depth: layer that decides. */
int img_chain_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		     int *depth, uint64_t *host_off);
bool img_is_zero(const void *buf, size_t len);

int img_convert(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_map(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_bench(int argc, char **argv);

#endif

/* Human sizes: "512", "64K", "512M", "2G", "1T" (binary multiples, optional
 * trailing "B" or "iB"). */
#ifndef VIREO_SIZE_H
#define VIREO_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Parses text into *out. Returns 0, or -EINVAL for malformed text and
 * -ERANGE for a value that does not fit in 64 bits. */
int size_parse(const char *text, uint64_t *out);

/* Formats bytes as e.g. "1.5 GiB" into buf. Returns buf. */
char *size_format(uint64_t bytes, char *buf, size_t len);

#endif

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/size.h"

static int suffix_shift(const char *s, unsigned int *shift)
{
	static const char units[] = "BKMGTPE";
	const char *u;

	if (*s == '\0') {
		*shift = 0;
		return 0;
	}
	u = strchr(units, toupper((unsigned char)*s));
	if (!u)
		return -EINVAL;
	*shift = (unsigned int)(u - units) * 10;
	s++;
	if (*shift && (*s == 'i' || *s == 'I'))
		s++;
	if (*shift && (*s == 'b' || *s == 'B'))
		s++;
	return *s == '\0' ? 0 : -EINVAL;
}

int size_parse(const char *text, uint64_t *out)
{
	unsigned long long value;
	unsigned int shift;
	char *end;

	if (!text || !isdigit((unsigned char)text[0]))
		return -EINVAL;
	errno = 0;
	value = strtoull(text, &end, 10);
	if (errno)
		return -ERANGE;
	if (suffix_shift(end, &shift))
		return -EINVAL;
	if (shift && value > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)value << shift;
	return 0;
}

char *size_format(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	unsigned int i = 0;

	while (v >= 1024 && i < 6) {
		v /= 1024;
		i++;
	}
	if (i == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, len, "%.3g %s", v, units[i]);
	return buf;
}

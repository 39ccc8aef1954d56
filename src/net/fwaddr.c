/* Addresses of the firewall's rules (include/vireo/firewall.h): parsed and
 * printed apart from the nftables calls, so that the definition parser
 * (and its fuzz target) needs no libnftables. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/firewall.h"

int fw_cidr_parse(const char *s, struct fw_cidr *c)
{
	char addr[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t len = slash ? (size_t)(slash - s) : strlen(s);
	unsigned int max;
	char *end;

	memset(c, 0, sizeof(*c));
	if (len == 0 || len >= sizeof(addr))
		return -EINVAL;
	memcpy(addr, s, len);
	addr[len] = '\0';
	if (inet_pton(AF_INET, addr, c->addr) == 1)
		c->family = AF_INET;
	else if (inet_pton(AF_INET6, addr, c->addr) == 1)
		c->family = AF_INET6;
	else
		return -EINVAL;
	max = c->family == AF_INET ? 32 : 128;
	c->prefix = max;
	if (slash) {
		unsigned long p;

		if (slash[1] < '0' || slash[1] > '9')
			return -EINVAL;
		errno = 0;
		p = strtoul(slash + 1, &end, 10);
		if (errno || *end || p > max)
			return -EINVAL;
		c->prefix = (unsigned int)p;
	}
	/* nftables refuses host bits under a prefix: clear them, as it prints. */
	for (unsigned int bit = c->prefix; bit < max; bit++)
		c->addr[bit / 8] &= (uint8_t)~(0x80 >> (bit % 8));
	return 0;
}

void fw_cidr_format(const struct fw_cidr *c, char *buf, unsigned int size)
{
	char a[INET6_ADDRSTRLEN];

	if (!c->family || !inet_ntop(c->family, c->addr, a, sizeof(a))) {
		snprintf(buf, size, "any");
		return;
	}
	if (c->prefix == (c->family == AF_INET ? 32u : 128u))
		snprintf(buf, size, "%s", a);
	else
		snprintf(buf, size, "%s/%u", a, c->prefix);
}

bool fw_conf_active(const struct fw_conf *c)
{
	return c->anti_spoof || c->enabled;
}

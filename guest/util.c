/* Small helpers for the virtio scenarios: CRC-32 (the zlib/IEEE one, so a
 * host test can check it with zlib.crc32), the splitmix64 mixer, memset. */
#include "virtio.h"

static uint32_t crc_table[256];

uint32_t crc32_update(uint32_t crc, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	if (!crc_table[1]) {
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;

			for (int k = 0; k < 8; k++)
				c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
			crc_table[i] = c;
		}
	}
	crc = ~crc;
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* splitmix64's finalizer */
uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void probe_memset(void *d, int c, size_t n)
{
	uint8_t *x = d;

	for (size_t i = 0; i < n; i++)
		x[i] = (uint8_t)c;
}

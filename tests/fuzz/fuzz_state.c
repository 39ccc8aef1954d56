/* libFuzzer target: the state file reader (src/state/state.c), which reads
 * snapshot files that may come from another host or a damaged disk. The
 * input is a state file. A file the reader accepts must read back through
 * every cursor call without a crash, and rewriting its known sections must
 * give a file the reader accepts with the same content. Random bytes
 * almost never carry right CRCs, so each input is tried twice: as it is
 * (the checks themselves), and with every CRC it reaches recomputed (what
 * lies behind the checks). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ID 8

/* Reads a section every way a restore does: integers, then blobs. */
static void poke(const struct state_reader *r, uint32_t type, uint32_t id)
{
	struct state_cursor c;
	uint8_t buf[512];

	if (state_section(r, type, id, &c))
		return;
	state_get_u8(&c);
	state_get_u32(&c);
	state_get_u64(&c);
	state_get_blob_max(&c, buf, sizeof(buf));
	state_get_blob(&c, buf, 16);
	state_get_bytes(&c, buf, sizeof(buf));
	(void)state_done(&c);
}

/* Copies the known sections into a new file; it must read back equal. */
static void rewrite(const struct state_reader *r)
{
	struct state_writer *w = state_writer_new(state_reader_header(r));
	struct state_reader *again;
	struct state_cursor c, d;
	const uint8_t *buf;
	size_t len;

	if (!w)
		return;
	for (uint32_t t = 1; t < STATE_SEC_COUNT; t++) {
		for (uint32_t id = 0; id < MAX_ID; id++) {
			if (state_section(r, t, id, &c))
				continue;
			state_begin(w, t, id, STATE_SECTION_CRITICAL);
			state_put_bytes(w, c.p, c.len);
			state_end(w);
		}
	}
	if (state_writer_finish(w, &buf, &len) || state_reader_open(buf, len, &again))
		abort();
	if (memcmp(state_reader_header(again), state_reader_header(r), sizeof(struct state_header)))
		abort();
	for (uint32_t t = 1; t < STATE_SEC_COUNT; t++) {
		for (uint32_t id = 0; id < MAX_ID; id++) {
			if (state_section(r, t, id, &c))
				continue;
			if (state_section(again, t, id, &d) || d.len != c.len || memcmp(d.p, c.p, c.len))
				abort();
		}
	}
	state_reader_free(again);
	state_writer_free(w);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Recomputes the header's CRC and those of every section that fits. */
static void fix_crcs(uint8_t *b, size_t len)
{
	size_t off = STATE_HEADER_SIZE;

	if (len < STATE_HEADER_SIZE)
		return;
	put32(b + 44, (uint32_t)crc32(0, b, 44));
	while (len - off >= STATE_SECTION_HEADER_SIZE) {
		uint8_t *h = b + off;
		uint32_t n = get32(h + 16);

		if (n > len - off - STATE_SECTION_HEADER_SIZE)
			n = 0;
		put32(h + 12, (uint32_t)crc32(0, h + STATE_SECTION_HEADER_SIZE, n));
		put32(h + 20, (uint32_t)crc32(0, h, 20));
		off += STATE_SECTION_HEADER_SIZE + n;
	}
}

static void one(const uint8_t *data, size_t size)
{
	struct state_reader *r;

	if (state_reader_open(data, size, &r))
		return;
	static struct machine_config m;

	for (uint32_t t = 0; t < STATE_SEC_COUNT + 1; t++)
		for (uint32_t id = 0; id < MAX_ID; id++)
			poke(r, t, id);
	/* The machine description: disk paths, tap names, counts. */
	if (!machine_load(r, &m) && (m.ndisks > MACHINE_MAX_DISKS || m.nnics > MACHINE_MAX_NICS))
		abort();
	rewrite(r);
	state_reader_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);

	one(data, size);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	fix_crcs(copy, size);
	one(copy, size);
	free(copy);
	return 0;
}

/* The state file format (src/state/state.c): what is written reads back,
 * and every damaged, truncated or foreign file is refused whole. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <zlib.h>

#include <sys/stat.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/state.h"
#include "vireo/vmm.h"

static const uint8_t blob[40] = "0123456789abcdefghijklmnopqrstuvwxyzABCD";

/* A file with a machine section, two vCPU sections and an empty one. */
static uint8_t *sample(size_t *len)
{
	struct state_header h = { .ncpus = 2, .mem_size = 64ull << 20, .created = 1234 };
	struct state_writer *w = state_writer_new(&h);
	const uint8_t *buf;
	uint8_t *copy;

	assert_non_null(w);
	state_begin(w, STATE_SEC_MACHINE, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, 0xdeadbeef);
	state_put_u64(w, 0x0102030405060708ull);
	state_end(w);
	for (uint32_t i = 0; i < 2; i++) {
		state_begin(w, STATE_SEC_VCPU, i, STATE_SECTION_CRITICAL);
		state_put_u8(w, (uint8_t)(0x40 + i));
		state_put_blob(w, blob, sizeof(blob));
		state_end(w);
	}
	state_begin(w, STATE_SEC_GED, 0, STATE_SECTION_CRITICAL);
	state_end(w);
	assert_int_equal(state_writer_finish(w, &buf, len), 0);
	copy = malloc(*len);
	memcpy(copy, buf, *len);
	state_writer_free(w);
	return copy;
}

static void round_trip(void **unused)
{
	struct state_reader *r;
	struct state_cursor c;
	uint8_t got[40];
	size_t len;
	uint8_t *f = sample(&len);

	(void)unused;
	assert_int_equal(state_reader_open(f, len, &r), 0);
	assert_int_equal(state_reader_header(r)->ncpus, 2);
	assert_int_equal(state_reader_header(r)->mem_size, 64ull << 20);
	assert_int_equal(state_reader_header(r)->created, 1234);
	assert_int_equal(state_section(r, STATE_SEC_MACHINE, 0, &c), 0);
	assert_int_equal(state_get_u32(&c), 0xdeadbeef);
	assert_true(state_get_u64(&c) == 0x0102030405060708ull);
	assert_int_equal(state_done(&c), 0);
	assert_int_equal(state_section(r, STATE_SEC_VCPU, 1, &c), 0);
	assert_int_equal(state_get_u8(&c), 0x41);
	state_get_blob(&c, got, sizeof(got));
	assert_memory_equal(got, blob, sizeof(blob));
	assert_int_equal(state_done(&c), 0);
	assert_int_equal(state_section(r, STATE_SEC_GED, 0, &c), 0);
	assert_int_equal(state_done(&c), 0);
	assert_int_equal(state_section(r, STATE_SEC_VCPU, 2, &c), -ENOENT);
	assert_non_null(strstr(err_get(), "no vcpu 2 section"));
	state_reader_free(r);
	free(f);
}

/* The explicit byte order: a u32 is little-endian whatever the host. */
static void little_endian(void **unused)
{
	size_t len;
	uint8_t *f = sample(&len);
	const uint8_t *payload = f + STATE_HEADER_SIZE + STATE_SECTION_HEADER_SIZE;

	(void)unused;
	assert_memory_equal(f, "VIREOSTA", 8);
	assert_int_equal(f[8], STATE_VERSION);
	assert_int_equal(payload[0], 0xef);
	assert_int_equal(payload[3], 0xde);
	assert_int_equal(payload[4], 0x08);
	free(f);
}

static void every_truncation_refused(void **unused)
{
	struct state_reader *r;
	size_t len;
	uint8_t *f = sample(&len);

	(void)unused;
	for (size_t n = 0; n < len; n++) {
		err_set(0, "none");
		assert_int_equal(state_reader_open(f, n, &r), -EINVAL);
		assert_null(r);
		assert_true(strstr(err_get(), "truncated") || strstr(err_get(), "magic"));
	}
	free(f);
}

static void every_byte_flip_refused(void **unused)
{
	struct state_reader *r;
	size_t len;
	uint8_t *f = sample(&len);

	(void)unused;
	for (size_t i = 0; i < len; i++) {
		for (unsigned int bit = 0; bit < 8; bit++) {
			f[i] ^= (uint8_t)(1u << bit);
			assert_int_not_equal(state_reader_open(f, len, &r), 0);
			assert_null(r);
			f[i] ^= (uint8_t)(1u << bit);
		}
		f[i] ^= 0xff;
		assert_int_not_equal(state_reader_open(f, len, &r), 0);
		f[i] ^= 0xff;
	}
	assert_int_equal(state_reader_open(f, len, &r), 0);
	state_reader_free(r);
	free(f);
}

static void trailing_bytes_refused(void **unused)
{
	struct state_reader *r;
	size_t len;
	uint8_t *f = sample(&len);

	(void)unused;
	f = realloc(f, len + 1);
	f[len] = 0;
	assert_int_equal(state_reader_open(f, len + 1, &r), -EINVAL);
	assert_non_null(strstr(err_get(), "after the end marker"));
	free(f);
}

/* Rewrites the header's version and its checksum: a well-formed file of
 * another version. */
static void wrong_version_refused(void **unused)
{
	struct state_reader *r;
	size_t len;
	uint8_t *f = sample(&len);
	uint32_t sum;

	(void)unused;
	f[8] = STATE_VERSION + 1;
	sum = (uint32_t)crc32(0, f, 44);
	memcpy(f + 44, &sum, 4);	/* x86: little-endian */
	assert_int_equal(state_reader_open(f, len, &r), -EINVAL);
	assert_non_null(strstr(err_get(), "version 2: this vireo reads version 1"));
	free(f);
}

static uint8_t *with_unknown(uint32_t flags, size_t *len)
{
	struct state_header h = { .ncpus = 1, .mem_size = 1 << 24 };
	struct state_writer *w = state_writer_new(&h);
	const uint8_t *buf;
	uint8_t *copy;

	state_begin(w, 999, 0, flags);
	state_put_u32(w, 7);
	state_end(w);
	state_begin(w, STATE_SEC_GED, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, 3);
	state_end(w);
	assert_int_equal(state_writer_finish(w, &buf, len), 0);
	copy = malloc(*len);
	memcpy(copy, buf, *len);
	state_writer_free(w);
	return copy;
}

static void unknown_sections(void **unused)
{
	struct state_reader *r;
	struct state_cursor c;
	size_t len;
	uint8_t *f = with_unknown(0, &len);

	(void)unused;
	assert_int_equal(state_reader_open(f, len, &r), 0);	/* skipped */
	assert_int_equal(state_section(r, STATE_SEC_GED, 0, &c), 0);
	assert_int_equal(state_get_u32(&c), 3);
	state_reader_free(r);
	free(f);
	f = with_unknown(STATE_SECTION_CRITICAL, &len);
	assert_int_equal(state_reader_open(f, len, &r), -EINVAL);
	assert_non_null(strstr(err_get(), "does not know (type 999)"));
	free(f);
}

static void short_and_long_reads(void **unused)
{
	struct state_reader *r;
	struct state_cursor c;
	uint8_t small[8];
	size_t len;
	uint8_t *f = sample(&len);

	(void)unused;
	assert_int_equal(state_reader_open(f, len, &r), 0);
	/* Read less than the section has. */
	assert_int_equal(state_section(r, STATE_SEC_MACHINE, 0, &c), 0);
	state_get_u32(&c);
	assert_int_equal(state_done(&c), -EINVAL);
	assert_non_null(strstr(err_get(), "section machine 0 has the wrong length"));
	/* More. */
	assert_int_equal(state_section(r, STATE_SEC_MACHINE, 0, &c), 0);
	state_get_u64(&c);
	state_get_u64(&c);
	assert_int_equal(state_get_u32(&c), 0);
	assert_int_equal(state_done(&c), -EINVAL);
	/* A blob larger than the reader's buffer. */
	assert_int_equal(state_section(r, STATE_SEC_VCPU, 0, &c), 0);
	state_get_u8(&c);
	state_get_blob(&c, small, sizeof(small));
	assert_true(c.bad);
	state_reader_free(r);
	free(f);
}

static void writer_misuse(void **unused)
{
	struct state_header h = { .ncpus = 1 };
	struct state_writer *w = state_writer_new(&h);
	const uint8_t *buf;
	size_t len;

	(void)unused;
	state_put_u32(w, 1);	/* outside a section */
	assert_int_equal(state_writer_finish(w, &buf, &len), -EINVAL);
	assert_non_null(strstr(err_get(), "outside a section"));
	state_writer_free(w);
	w = state_writer_new(&h);
	state_begin(w, STATE_SEC_GED, 0, 0);
	assert_int_equal(state_writer_finish(w, &buf, &len), -EINVAL);
	state_writer_free(w);
}

static void duplicate_section_refused(void **unused)
{
	struct state_header h = { .ncpus = 1 };
	struct state_writer *w = state_writer_new(&h);
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	(void)unused;
	for (int i = 0; i < 2; i++) {
		state_begin(w, STATE_SEC_VCPU, 0, STATE_SECTION_CRITICAL);
		state_end(w);
	}
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), -EINVAL);
	assert_non_null(strstr(err_get(), "twice"));
	state_writer_free(w);
}

static void too_many_sections_refused(void **unused)
{
	struct state_header h = { .ncpus = 1 };
	struct state_writer *w = state_writer_new(&h);
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	(void)unused;
	for (uint32_t i = 0; i <= STATE_MAX_SECTIONS; i++) {
		state_begin(w, STATE_SEC_VCPU, i, STATE_SECTION_CRITICAL);
		state_end(w);
	}
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), -EINVAL);
	assert_non_null(strstr(err_get(), "more than 4096 sections"));
	state_writer_free(w);
}

static struct state_reader *with_machine(const struct machine_config *m)
{
	struct state_header h = { .ncpus = m->ncpus, .mem_size = m->mem_size };
	struct state_writer *w = state_writer_new(&h);
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	assert_non_null(w);
	machine_save(m, w);
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), 0);
	state_writer_free(w);
	return r;
}

/* A machine section with one disk whose path blob is `path` (len bytes). */
static struct state_reader *with_disk_path(const char *path, size_t len)
{
	struct state_header h = { .ncpus = 1, .mem_size = 1 << 20 };
	struct state_writer *w = state_writer_new(&h);
	struct state_reader *r;
	const uint8_t *buf;
	size_t n;

	assert_non_null(w);
	state_begin(w, STATE_SEC_MACHINE, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, 1);
	state_put_u64(w, 1 << 20);
	state_put_u8(w, 0);
	state_put_u8(w, 0);
	state_put_u32(w, 1);            /* one disk */
	state_put_u32(w, 0);
	state_put_u8(w, 0);
	state_put_u8(w, 0);
	state_put_blob(w, path, len);
	state_put_blob(w, "", 0);       /* format, serial */
	state_put_blob(w, "", 0);
	state_put_u8(w, 0);
	state_put_u64(w, 0);
	state_put_u64(w, 0);
	state_put_u32(w, 0);
	state_put_u32(w, 0);
	state_end(w);
	assert_int_equal(state_writer_finish(w, &buf, &n), 0);
	assert_int_equal(state_reader_open(buf, n, &r), 0);
	state_writer_free(w);
	return r;
}

/* The devices of the machine description come back as they went in; a
 * disk path with a NUL in it, or too many disks, is refused. */
static void machine_devices_round_trip(void **unused)
{
	static struct machine_config m, back;
	struct state_reader *r;

	(void)unused;
	m = (struct machine_config){ .ncpus = 2, .mem_size = 128 << 20, .ndisks = 2, .nnics = 1,
				     .rng = true, .balloon = true, .rng_bps = 1000,
				     .balloon_target = 64 << 20 };
	strcpy(m.disks[0].path, "/var/lib/vireo/a.qcow2");
	strcpy(m.disks[0].format, "qcow2");
	strcpy(m.disks[0].serial, "disk-a");
	m.disks[0].iops = 100;
	m.disks[0].cache = 1;
	m.disks[0].queues = 4;
	strcpy(m.disks[1].path, "/b.raw");
	m.disks[1].queues = 1;
	m.disks[1].readonly = true;
	m.disks[1].aio = 1;
	strcpy(m.nics[0].tap, "tap7");
	memcpy(m.nics[0].mac, "\x52\x54\x00\x01\x02\x03", 6);
	m.nics[0].mac_set = true;
	m.nics[0].mtu = 9000;
	m.nics[0].tx_bps = 5;
	r = with_machine(&m);
	assert_int_equal(machine_load(r, &back), 0);
	assert_memory_equal(&m, &back, sizeof(m));
	state_reader_free(r);

	r = with_disk_path("/a\0b", 4);
	assert_int_equal(machine_load(r, &back), -EINVAL);
	state_reader_free(r);
	r = with_disk_path("/a", 2);
	assert_int_equal(machine_load(r, &back), 0);
	assert_string_equal(back.disks[0].path, "/a");
	assert_int_equal(back.disks[0].queues, 1);	/* a file from before multi-queue */
	state_reader_free(r);
	m.ndisks = MACHINE_MAX_DISKS + 1;
	r = with_machine(&m);
	assert_int_equal(machine_load(r, &back), -EINVAL);
	state_reader_free(r);
}

/* A firmware VM's description round-trips; a file from before it (the
 * description ends after the disks' queues) is a direct boot; a kernel
 * through a firmware the description does not have is refused. */
static void firmware_machine_round_trip(void **unused)
{
	static struct machine_config m, back;
	struct state_header h = { .ncpus = 1, .mem_size = 1 << 20 };
	struct state_writer *w;
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	(void)unused;
	m = (struct machine_config){ .ncpus = 2, .mem_size = 128 << 20, .firmware = true,
				     .firmware_kernel = true };
	r = with_machine(&m);
	assert_int_equal(machine_load(r, &back), 0);
	assert_true(back.firmware);
	assert_true(back.firmware_kernel);
	state_reader_free(r);

	r = with_disk_path("/d", 2);   /* an older file: nothing after the disks */
	back.firmware = back.firmware_kernel = true;
	assert_int_equal(machine_load(r, &back), 0);
	assert_false(back.firmware);
	assert_false(back.firmware_kernel);
	state_reader_free(r);

	w = state_writer_new(&h);
	assert_non_null(w);
	state_begin(w, STATE_SEC_MACHINE, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, 1);
	state_put_u64(w, 1 << 20);
	for (int i = 0; i < 2; i++)
		state_put_u8(w, 0);
	state_put_u32(w, 0);
	state_put_u32(w, 0);
	for (int i = 0; i < 2; i++)
		state_put_u8(w, 0);
	state_put_u8(w, 0);            /* no firmware, but a kernel through it */
	state_put_u8(w, 1);
	state_end(w);
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), 0);
	assert_int_equal(machine_load(r, &back), -EINVAL);
	state_reader_free(r);
	state_writer_free(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(round_trip),
		cmocka_unit_test(little_endian),
		cmocka_unit_test(every_truncation_refused),
		cmocka_unit_test(every_byte_flip_refused),
		cmocka_unit_test(trailing_bytes_refused),
		cmocka_unit_test(wrong_version_refused),
		cmocka_unit_test(unknown_sections),
		cmocka_unit_test(short_and_long_reads),
		cmocka_unit_test(writer_misuse),
		cmocka_unit_test(duplicate_section_refused),
		cmocka_unit_test(too_many_sections_refused),
		cmocka_unit_test(machine_devices_round_trip),
		cmocka_unit_test(firmware_machine_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

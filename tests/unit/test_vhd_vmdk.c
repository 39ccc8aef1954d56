/* Unit tests for the VHD and VMDK drivers: checksums, geometry, header
 * encode/decode, and write errors injected at every step leaving images
 * that check finds consistent. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/block/vhd.h"
#include "../../src/block/vmdk.h"
#include "vireo/block.h"
#include "vireo/log.h"

#define SIZE (8u << 20)

static uint64_t rng_state;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void vhd_checksum_known(void **state)
{
	uint8_t b[512] = { 0 };

	(void)state;
	/* all zero but the checksum field: the sum is 0, the checksum ~0 */
	assert_int_equal(vhd_checksum(b, sizeof(b), 64), 0xffffffffu);
	b[0] = 1;
	b[64] = 0x77;	/* the checksum field itself doesn't count */
	assert_int_equal(vhd_checksum(b, sizeof(b), 64), 0xfffffffeu);
}

static void vhd_geometry_as_spec(void **state)
{
	uint16_t c;
	uint8_t h, s;

	(void)state;
	vhd_geometry(2097648, &c, &h, &s);		/* qemu-img create -f vpc 1G */
	assert_true(c == 2081 && h == 16 && s == 63);
	vhd_geometry(20536, &c, &h, &s);		/* 10M */
	assert_true(c == 302 && h == 4 && s == 17);
	vhd_geometry(VHD_MAX_GEOMETRY * 2, &c, &h, &s);	/* clamped to the maximum */
	assert_true(c == 65535 && h == 16 && s == 255);
}

static void vhd_footer_roundtrip_and_bad_checksum(void **state)
{
	struct vhd_footer f = { .cookie = "conectix", .features = 2, .version = 0x10000,
				.data_offset = VHD_NO_OFFSET, .cur_size = 1 << 20,
				.orig_size = 1 << 20, .cyls = 61, .heads = 4, .secs = 17,
				.type = VHD_FIXED, .uuid = { 1, 2, 3 } }, g;
	uint8_t b[512];
	struct bfile *file;

	(void)state;
	vhd_footer_encode(&f, b);
	assert_int_equal(bfile_mem_open("f.vhd", b, sizeof(b), true, &file), 0);
	assert_int_equal(vhd_footer_read(file, 0, &g), 0);
	assert_true(g.cur_size == f.cur_size && g.cyls == 61 && g.type == VHD_FIXED &&
		    g.uuid[2] == 3);
	bfile_close(file);
	b[100] ^= 1;
	assert_int_equal(bfile_mem_open("f.vhd", b, sizeof(b), true, &file), 0);
	assert_int_equal(vhd_footer_read(file, 0, &g), -EIO);
	assert_non_null(strstr(err_get(), "f.vhd"));
	assert_non_null(strstr(err_get(), "checksum"));
	bfile_close(file);
}

static void vmdk_header_roundtrip(void **state)
{
	struct vmdk_header h = { .magic = VMDK_MAGIC, .version = 1, .flags = 3,
				 .capacity = 2048, .grain_size = 128, .gtes_per_gt = 512,
				 .rgd_offset = 21, .gd_offset = 26, .overhead = 128,
				 .nl = { '\n', ' ', '\r', '\n' } }, g;
	uint8_t b[512];
	struct bfile *file;

	(void)state;
	vmdk_header_encode(&h, b);
	assert_memory_equal(b, "KDMV", 4);
	assert_int_equal(bfile_mem_open("h.vmdk", b, sizeof(b), true, &file), 0);
	assert_int_equal(vmdk_header_read(file, 0, &g), 0);
	assert_true(g.capacity == 2048 && g.gd_offset == 26 && g.overhead == 128);
	bfile_close(file);
	h.grain_size = 3;
	vmdk_header_encode(&h, b);
	assert_int_equal(bfile_mem_open("h.vmdk", b, sizeof(b), true, &file), 0);
	assert_int_equal(vmdk_header_read(file, 0, &g), -EINVAL);
	assert_non_null(strstr(err_get(), "h.vmdk"));
	bfile_close(file);
}

static struct image *mem_image(const char *fmt, const char *sub)
{
	struct image_create_opts o = { .size = SIZE, .subformat = sub };
	const struct image_format *f = image_format_find(fmt);
	struct bfile *file;
	struct image *img;

	assert_int_equal(bfile_mem_open(fmt, NULL, 0, false, &file), 0);
	assert_int_equal(f->create(file, fmt, &o), 0);
	assert_int_equal(image_open_file(file, fmt, IMAGE_RDWR, &img), 0);
	return img;
}

static struct image *reopen_copy(struct image *img)
{
	struct bfile *file;
	struct image *out;
	size_t len;
	const uint8_t *data = bfile_mem_data(img->file, &len);

	assert_int_equal(bfile_mem_open(img->fmt->name, data, len, true, &file), 0);
	if (image_open_file(file, img->fmt->name, 0, &out))
		return NULL;
	return out;
}

static int random_writes(struct image *img, int n)
{
	static uint8_t buf[200000];

	for (int i = 0; i < n; i++) {
		uint64_t len = 1 + rng() % sizeof(buf), off = rng() % (img->size - len);

		memset(buf, (int)(i + 1), len);
		if (image_write(img, off, buf, len))
			return -1;
	}
	return 0;
}

/* Fails the n-th file write for every n: the image left behind opens and
 * check finds no corruption (at most leaks), as after a crash. */
static void write_error_at_every_step(const char *fmt, const char *sub)
{
	int failures = 0;

	for (int64_t n = 0; n < 300; n += 2) {
		struct image *img = mem_image(fmt, sub), *after;
		struct image_check r;
		static uint8_t buf[SIZE];

		rng_state = 7;
		img->file->fail_writes_after = n;
		failures += random_writes(img, 30) != 0;
		after = reopen_copy(img);
		assert_non_null(after);
		assert_int_equal(image_check(after, &r, 0), 0);
		assert_int_equal(r.corruptions, 0);
		image_check_free(&r);
		assert_int_equal(image_read(after, 0, buf, after->size < SIZE ? after->size : SIZE), 0);
		image_close(after);
		img->file->fail_writes_after = -1;
		img->writable = false;
		image_close(img);
	}
	assert_true(failures > 10);
}

static void vpc_write_errors(void **state)
{
	(void)state;
	write_error_at_every_step("vpc", "dynamic");
}

static void vmdk_write_errors(void **state)
{
	(void)state;
	write_error_at_every_step("vmdk", "monolithicSparse");
	write_error_at_every_step("vmdk", "streamOptimized");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(vhd_checksum_known),
		cmocka_unit_test(vhd_geometry_as_spec),
		cmocka_unit_test(vhd_footer_roundtrip_and_bad_checksum),
		cmocka_unit_test(vmdk_header_roundtrip),
		cmocka_unit_test(vpc_write_errors),
		cmocka_unit_test(vmdk_write_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

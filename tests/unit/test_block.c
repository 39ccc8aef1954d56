/* Unit tests of the block layer on in-memory files: qcow2 table arithmetic,
 * random writes read back, and crash consistency by write-error injection
 * at every metadata step (the image must never check as corrupt). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../src/block/qcow2.h"
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

static void refcount_widths(void **state)
{
	uint8_t block[512];

	(void)state;
	for (uint32_t bits = 1; bits <= 64; bits *= 2) {
		uint64_t n = sizeof(block) * 8 / bits;
		uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;

		memset(block, 0, sizeof(block));
		for (uint64_t i = 0; i < n; i++)
			qcow2_rc_set(block, i, bits, (i * 2654435761u) & max);
		for (uint64_t i = 0; i < n; i++)
			assert_int_equal(qcow2_rc_get(block, i, bits), (i * 2654435761u) & max);
	}
}

static void be64_roundtrip(void **state)
{
	uint8_t b[8];

	(void)state;
	put_be64(b, 0x0102030405060708ull);
	assert_int_equal(b[0], 1);
	assert_int_equal(b[7], 8);
	assert_int_equal(be64(b), 0x0102030405060708ull);
}

/* A fresh qcow2 image in a memory file, opened writable. */
static struct image *mem_qcow2(uint32_t cluster_size)
{
	struct image_create_opts o = { .size = SIZE, .cluster_size = cluster_size };
	struct bfile *f;
	struct image *img;

	assert_int_equal(bfile_mem_open("mem.qcow2", NULL, 0, false, &f), 0);
	assert_int_equal(qcow2_format.create(f, "mem.qcow2", &o), 0);
	assert_int_equal(image_open_file(f, "qcow2", IMAGE_RDWR, &img), 0);
	return img;
}

/* Reopens a copy of a memory image's bytes (what a crash leaves behind). */
static struct image *reopen_copy(struct image *img, int flags)
{
	size_t len;
	const uint8_t *data = bfile_mem_data(img->file, &len);
	struct bfile *f;
	struct image *out = NULL;

	assert_int_equal(bfile_mem_open("copy.qcow2", data, len, !(flags & IMAGE_RDWR), &f), 0);
	if (image_open_file(f, "qcow2", flags, &out))
		return NULL;
	return out;
}

static int random_writes(struct image *img, uint8_t *shadow, int n)
{
	static uint8_t buf[300000];

	for (int i = 0; i < n; i++) {
		uint64_t len = 1 + rng() % sizeof(buf), off = rng() % (SIZE - len);
		int ret;

		if (rng() % 4 == 0) {
			ret = image_write_zeroes(img, off, len);
			memset(buf, 0, len);
		} else if (rng() % 8 == 0) {
			ret = image_discard(img, off, len);
			len = 0;	/* contents unspecified: re-read below */
		} else {
			for (uint64_t k = 0; k < len; k++)
				buf[k] = (uint8_t)(i + k * 7);
			ret = image_write(img, off, buf, len);
		}
		if (ret)
			return ret;
		memcpy(shadow + off, buf, len);
		if (!len)
			assert_int_equal(image_read(img, 0, shadow, SIZE), 0);
	}
	return 0;
}

static void qcow2_random_rw(void **state)
{
	static const uint32_t sizes[] = { 512, 4096, 65536 };
	uint8_t *shadow = calloc(1, SIZE), *back = malloc(SIZE);

	(void)state;
	for (size_t s = 0; s < 3; s++) {
		struct image *img = mem_qcow2(sizes[s]);
		struct image_check r;

		rng_state = 88172645463325252ull + s;
		memset(shadow, 0, SIZE);
		assert_int_equal(random_writes(img, shadow, 150), 0);
		assert_int_equal(image_read(img, 0, back, SIZE), 0);
		assert_memory_equal(back, shadow, SIZE);
		assert_int_equal(image_check(img, &r, 0), 0);
		assert_int_equal(r.corruptions, 0);
		assert_int_equal(r.leaks, 0);
		image_check_free(&r);
		image_close(img);
	}
	free(shadow);
	free(back);
}

/* Tiny caches force dirty L2 tables and refcount blocks out by eviction. */
static void shrink_caches(struct image *img)
{
	struct qcow2 *s = img->opaque;

	assert_int_equal(qcow2_flush_caches(s), 0);
	qcow2_cache_free(&s->l2_cache);
	qcow2_cache_free(&s->rb_cache);
	assert_int_equal(qcow2_cache_init(&s->l2_cache, 2, s->cluster_size), 0);
	assert_int_equal(qcow2_cache_init(&s->rb_cache, 2, s->cluster_size), 0);
}

static void qcow2_tiny_caches(void **state)
{
	uint8_t *shadow = calloc(1, SIZE), *back = malloc(SIZE);
	struct image *img = mem_qcow2(512), *after;
	struct image_check r;

	(void)state;
	shrink_caches(img);
	rng_state = 7;
	assert_int_equal(random_writes(img, shadow, 200), 0);
	assert_int_equal(image_read(img, 0, back, SIZE), 0);
	assert_memory_equal(back, shadow, SIZE);
	assert_int_equal(image_flush(img), 0);
	after = reopen_copy(img, 0);
	assert_non_null(after);
	assert_int_equal(image_read(after, 0, back, SIZE), 0);
	assert_memory_equal(back, shadow, SIZE);
	assert_int_equal(image_check(after, &r, 0), 0);
	assert_int_equal(r.corruptions + r.leaks, 0);
	image_check_free(&r);
	image_close(after);
	image_close(img);
	free(shadow);
	free(back);
}

/* Fail the n-th file write, for every n: the image left behind must open
 * and check without corruption (leaks are allowed). */
static void qcow2_write_error_at_every_step(void **state)
{
	uint8_t *shadow = calloc(1, SIZE);
	int failures = 0;

	(void)state;
	for (int64_t n = 0; n < 600; n += 3) {
		struct image *img = mem_qcow2(n % 2 ? 512 : 4096), *after;
		struct image_check r;

		if (n % 4 == 1)
			shrink_caches(img);
		rng_state = 42;
		img->file->fail_writes_after = n;
		if (random_writes(img, shadow, 40))
			failures++;
		after = reopen_copy(img, 0);
		assert_non_null(after);
		assert_int_equal(image_check(after, &r, 0), 0);
		assert_int_equal(r.corruptions, 0);
		image_check_free(&r);
		image_close(after);
		img->file->fail_writes_after = -1;
		img->writable = false;	/* nothing to flush: the "crash" */
		image_close(img);
	}
	assert_true(failures > 10);
	free(shadow);
}

static void bad_header_named(void **state)
{
	uint8_t hdr[512] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 };
	struct bfile *f;
	struct image *img;

	(void)state;
	hdr[23] = 70;	/* cluster_bits */
	assert_int_equal(bfile_mem_open("bad.qcow2", hdr, sizeof(hdr), true, &f), 0);
	assert_int_equal(image_open_file(f, "qcow2", 0, &img), -EINVAL);
	assert_non_null(strstr(err_get(), "bad.qcow2"));
	assert_non_null(strstr(err_get(), "cluster size"));
}

static void raw_probe_is_read_only(void **state)
{
	struct bfile *f;
	struct image *img;

	(void)state;
	assert_int_equal(bfile_mem_open("disk.img", NULL, 4096, false, &f), 0);
	assert_int_equal(image_open_file(f, NULL, IMAGE_RDWR, &img), -EPERM);
	assert_int_equal(bfile_mem_open("disk.img", NULL, 4096, false, &f), 0);
	assert_int_equal(image_open_file(f, NULL, 0, &img), 0);
	assert_string_equal(img->fmt->name, "raw");
	assert_int_equal(image_write(img, 0, "x", 1), -EROFS);
	image_close(img);
}

/* The API virtio-blk uses: iovec I/O, read-only devices, counters. */
static void blockdev_iovecs_and_stats(void **state)
{
	char path[] = "/tmp/vireo-test-XXXXXX";
	struct image_create_opts o = { .size = 1 << 20 };
	struct blockdev_opts bo = { .path = path, .format = "qcow2" };
	struct blockdev *bd;
	struct blockdev_stats st;
	char a[100], b[412], c[512], back[1024];
	struct iovec w[3] = { { a, sizeof(a) }, { b, sizeof(b) }, { c, sizeof(c) } };
	struct iovec r[1] = { { back, sizeof(back) } };
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(image_create(path, "qcow2", &o), 0);
	memset(a, 'a', sizeof(a));
	memset(b, 'b', sizeof(b));
	memset(c, 'c', sizeof(c));
	assert_int_equal(blockdev_open(&bo, &bd), 0);
	assert_int_equal(blockdev_size(bd), 1 << 20);
	assert_int_equal(blockdev_writev(bd, 4096, w, 3), 0);
	assert_int_equal(blockdev_flush(bd), 0);
	assert_int_equal(blockdev_readv(bd, 4096, r, 1), 0);
	assert_memory_equal(back, a, sizeof(a));
	assert_memory_equal(back + 100, b, sizeof(b));
	assert_memory_equal(back + 512, c, sizeof(c));
	assert_int_equal(blockdev_writev(bd, (1 << 20) - 10, w, 1), -EINVAL);
	assert_int_equal(blockdev_discard(bd, 0, 1 << 20), 0);
	assert_int_equal(blockdev_readv(bd, 4096, r, 1), 0);
	assert_int_equal(back[0], 0);
	blockdev_get_stats(bd, &st);
	assert_int_equal(st.wr_ops, 2);
	assert_int_equal(st.rd_ops, 2);
	assert_int_equal(st.wr_bytes, 1124);
	assert_int_equal(st.errors, 1);
	blockdev_close(bd);
	bo.readonly = true;
	assert_int_equal(blockdev_open(&bo, &bd), 0);
	assert_int_equal(blockdev_writev(bd, 0, w, 1), -EROFS);
	blockdev_close(bd);
	unlink(path);
}

/* Dirty tracking (copied-storage migration): every write, discard and
 * write-zeroes marks the grains it touched, clamped to the disk, only while
 * on; a collect hands them over once. */
static void blockdev_dirty_grains(void **state)
{
	char path[] = "/tmp/vireo-test-XXXXXX";
	struct image_create_opts o = { .size = 1 << 20 };	/* 16 grains */
	struct blockdev_opts bo = { .path = path, .format = "qcow2" };
	struct blockdev *bd;
	char a[512] = { 1 };
	struct iovec w[1] = { { a, sizeof(a) } };
	uint64_t bits[2] = { 0 };
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(image_create(path, "qcow2", &o), 0);
	assert_int_equal(blockdev_open(&bo, &bd), 0);
	assert_int_equal(blockdev_dirty_words(bd), 1);
	assert_int_equal(blockdev_writev(bd, 0, w, 1), 0);	/* before the start */
	assert_int_equal(blockdev_dirty_start(bd), 0);
	assert_int_equal(blockdev_writev(bd, 65536 - 256, w, 1), 0);	/* grains 0 and 1 */
	assert_int_equal(blockdev_discard(bd, 5 * 65536, 65536), 0);	/* grain 5 */
	assert_int_equal(blockdev_write_zeroes(bd, 15 * 65536 + 512, 512), 0);	/* 15 */
	blockdev_dirty_mark(bd, (1 << 20) - 512, 1 << 30);	/* clamped: 15 */
	blockdev_dirty_mark(bd, 1 << 20, 4096);			/* past the end: none */
	blockdev_dirty_collect(bd, bits);
	assert_int_equal(bits[0], (1ull << 0) | (1ull << 1) | (1ull << 5) | (1ull << 15));
	assert_int_equal(bits[1], 0);
	bits[0] = 0;
	blockdev_dirty_collect(bd, bits);
	assert_int_equal(bits[0], 0);
	blockdev_dirty_stop(bd);
	assert_int_equal(blockdev_writev(bd, 3 * 65536, w, 1), 0);
	blockdev_dirty_collect(bd, bits);
	assert_int_equal(bits[0], 0);
	blockdev_close(bd);
	unlink(path);
}

struct async_state {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done, errors;
};

static void async_done(struct blockdev_req *req, int ret)
{
	struct async_state *st = req->opaque;

	pthread_mutex_lock(&st->lock);
	st->done++;
	st->errors += ret != 0;
	pthread_cond_signal(&st->cond);
	pthread_mutex_unlock(&st->lock);
}

static void async_wait(struct async_state *st, int n)
{
	pthread_mutex_lock(&st->lock);
	while (st->done < n)
		pthread_cond_wait(&st->cond, &st->lock);
	pthread_mutex_unlock(&st->lock);
}

/* 64 writes through 4 I/O workers, then reads, then a flush. */
static void blockdev_async_workers(void **state)
{
	enum { N = 64, LEN = 12288 };
	char path[] = "/tmp/vireo-test-XXXXXX";
	struct image_create_opts o = { .size = 4 << 20, .cluster_size = 4096 };
	struct blockdev_opts bo = { .path = path, .format = "qcow2" };
	struct async_state st = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };
	static uint8_t data[N][LEN], back[N][LEN];
	static struct iovec iov[N], riov[N];
	static struct blockdev_req req[N + 1];
	struct blockdev *bd;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(image_create(path, "qcow2", &o), 0);
	assert_int_equal(blockdev_open(&bo, &bd), 0);
	assert_int_equal(blockdev_start_workers(bd, 4), 0);
	for (int i = 0; i < N; i++) {
		memset(data[i], i + 1, LEN);
		iov[i] = (struct iovec){ data[i], LEN };
		req[i] = (struct blockdev_req){ .op = BLOCKDEV_WRITE, .off = (uint64_t)i * 61440,
			.iov = &iov[i], .iovcnt = 1, .done = async_done, .opaque = &st };
		blockdev_submit(bd, &req[i]);
	}
	async_wait(&st, N);
	req[N] = (struct blockdev_req){ .op = BLOCKDEV_FLUSH, .done = async_done, .opaque = &st };
	blockdev_submit(bd, &req[N]);
	for (int i = 0; i < N; i++) {
		riov[i] = (struct iovec){ back[i], LEN };
		req[i] = (struct blockdev_req){ .op = BLOCKDEV_READ, .off = (uint64_t)i * 61440,
			.iov = &riov[i], .iovcnt = 1, .done = async_done, .opaque = &st };
		blockdev_submit(bd, &req[i]);
	}
	async_wait(&st, 2 * N + 1);
	assert_int_equal(st.errors, 0);
	for (int i = 0; i < N; i++)
		assert_memory_equal(back[i], data[i], LEN);
	blockdev_close(bd);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(refcount_widths),
		cmocka_unit_test(be64_roundtrip),
		cmocka_unit_test(qcow2_random_rw),
		cmocka_unit_test(qcow2_tiny_caches),
		cmocka_unit_test(qcow2_write_error_at_every_step),
		cmocka_unit_test(bad_header_named),
		cmocka_unit_test(raw_probe_is_read_only),
		cmocka_unit_test(blockdev_iovecs_and_stats),
		cmocka_unit_test(blockdev_async_workers),
		cmocka_unit_test(blockdev_dirty_grains),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

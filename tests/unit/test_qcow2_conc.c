/* qcow2 with many requests in flight (src/block/qcow2-cluster.c,
 * "concurrency"): reads of allocated clusters do not wait for an
 * allocating write, two writes allocating one cluster are ordered, and
 * random concurrent reads and writes through the block API leave an image
 * that `qemu-img check` finds clean and that holds what a model says. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../src/block/qcow2.h"

#define CS      4096u		/* small clusters: many allocations */
#define SIZE    (1u << 20)
/* Stripe i of `stripe` bytes belongs to thread i % NTHR: 1 KiB (threads
 * share clusters) or, under O_DIRECT, 4 KiB (aligned writes, and 512-byte
 * ones that go through a read-modify-write). */
static unsigned int stripe;
#define NTHR    4
#define NOPS    3000

static char path[64];

static struct blockdev *make_image_cache(enum block_cache cache)
{
	struct image_create_opts o = { .size = SIZE, .cluster_size = CS };
	struct blockdev_opts bo = { .path = path, .format = "qcow2", .cache = cache };
	struct blockdev *bd;
	int fd;

	snprintf(path, sizeof(path), "/tmp/vireo-qconc-XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(image_create(path, "qcow2", &o), 0);
	assert_int_equal(blockdev_open(&bo, &bd), 0);
	return bd;
}

static struct blockdev *make_image(void)
{
	return make_image_cache(BLOCK_CACHE_WRITEBACK);
}

static int bd_write(struct blockdev *bd, uint64_t off, const void *buf, size_t len)
{
	struct iovec v = { (void *)buf, len };

	return blockdev_writev(bd, off, &v, 1);
}

static int bd_read(struct blockdev *bd, uint64_t off, void *buf, size_t len)
{
	struct iovec v = { buf, len };

	return blockdev_readv(bd, off, &v, 1);
}

/* qemu-img check: exit 0 is neither errors nor leaks. */
static void qemu_img_check(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "qemu-img check -q %s", path);
	assert_int_equal(system(cmd), 0);
}

/* ---- an allocation held by the hook ---- */

static pthread_mutex_t hk = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hk_cond = PTHREAD_COND_INITIALIZER;
static uint64_t hold_off = UINT64_MAX;
static bool held, release, read_done, second_done;

static void hold_hook(struct image *img, uint64_t off)
{
	(void)img;
	pthread_mutex_lock(&hk);
	if (off == hold_off) {
		held = true;
		pthread_cond_broadcast(&hk_cond);
		while (!release)
			pthread_cond_wait(&hk_cond, &hk);
	}
	pthread_mutex_unlock(&hk);
}

/* Waits up to 5 s for *flag; returns it. */
static bool wait_flag(bool *flag)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 5;
	pthread_mutex_lock(&hk);
	while (!*flag && pthread_cond_timedwait(&hk_cond, &hk, &dl) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&hk);
	return *flag;
}

static void set_flag(bool *flag)
{
	pthread_mutex_lock(&hk);
	*flag = true;
	pthread_cond_broadcast(&hk_cond);
	pthread_mutex_unlock(&hk);
}

static struct blockdev *hbd;
static uint8_t cl_a[CS], cl_b[512];
static int w1_ret = -1, w2_ret = -1;	/* cmocka asserts only on the main thread */

static void *first_writer(void *arg)
{
	(void)arg;
	w1_ret = bd_write(hbd, 8 * CS, cl_a, CS);
	return NULL;
}

static void *second_writer(void *arg)
{
	(void)arg;
	w2_ret = bd_write(hbd, 8 * CS, cl_b, sizeof(cl_b));
	set_flag(&second_done);
	return NULL;
}

static void *reader(void *arg)
{
	uint8_t buf[CS];

	(void)arg;
	if (bd_read(hbd, 2 * CS, buf, CS) || buf[0] != 0x11 ||
	    bd_write(hbd, 2 * CS, buf, CS))	/* in place */
		return NULL;	/* read_done stays false: the test fails */
	set_flag(&read_done);
	return NULL;
}

static void read_during_allocation(void **state)
{
	uint8_t buf[CS], want[CS];
	pthread_t w1, w2, r;

	(void)state;
	hbd = make_image();
	memset(buf, 0x11, sizeof(buf));
	assert_int_equal(bd_write(hbd, 2 * CS, buf, CS), 0);	/* allocated */
	memset(cl_a, 0xaa, sizeof(cl_a));
	memset(cl_b, 0xbb, sizeof(cl_b));
	hold_off = 8 * CS;
	qcow2_alloc_hook = hold_hook;
	pthread_create(&w1, NULL, first_writer, NULL);
	assert_true(wait_flag(&held));		/* cluster 8 allocated, data not written */
	pthread_create(&w2, NULL, second_writer, NULL);	/* same cluster: must wait */
	pthread_create(&r, NULL, reader, NULL);
	assert_true(wait_flag(&read_done));	/* not behind the allocation */
	assert_false(second_done);		/* can't finish while the first is held */
	set_flag(&release);
	pthread_join(w1, NULL);
	pthread_join(w2, NULL);
	pthread_join(r, NULL);
	qcow2_alloc_hook = NULL;
	assert_int_equal(w1_ret, 0);
	assert_int_equal(w2_ret, 0);
	/* the second write landed on the first's cluster, after it */
	memcpy(want, cl_a, CS);
	memcpy(want, cl_b, sizeof(cl_b));
	assert_int_equal(bd_read(hbd, 8 * CS, buf, CS), 0);
	assert_memory_equal(buf, want, CS);
	assert_int_equal(blockdev_flush(hbd), 0);
	blockdev_close(hbd);
	qemu_img_check();
	unlink(path);
}

/* ---- random concurrent reads and writes against a model ---- */

static struct blockdev *sbd;
static uint8_t model[SIZE];

struct worker {
	int id;
	unsigned int seed;
	int failures;
};

/* A random stripe of this thread's: [*off, *off + *len). */
static void pick_own(struct worker *w, uint64_t *off, size_t *len)
{
	uint64_t i = (uint64_t)(rand_r(&w->seed) % (SIZE / stripe / NTHR)) * NTHR + w->id;

	*off = i * stripe;
	*len = stripe;
	if (rand_r(&w->seed) % 2) {	/* one sector of it */
		*off += (rand_r(&w->seed) % (stripe / 512)) * 512;
		*len = 512;
	}
}

/* Holds each allocation a little: concurrent writes to a cluster being
 * allocated become likely instead of rare. */
static void widen_hook(struct image *img, uint64_t off)
{
	(void)img;
	(void)off;
	usleep(300);
}

static void *stress(void *arg)
{
	struct worker *w = arg;
	uint8_t buf[4 * CS] __attribute__((aligned(4096)));

	for (int i = 0; i < NOPS; i++) {
		int op = rand_r(&w->seed) % 10;
		uint64_t off;
		size_t len;

		pick_own(w, &off, &len);
		if (op < 5) {		/* write: allocating the first time */
			for (size_t k = 0; k < len; k++)
				buf[k] = (uint8_t)rand_r(&w->seed);
			if (bd_write(sbd, off, buf, len))
				w->failures++;
			memcpy(model + off, buf, len);	/* only this thread writes it */
		} else if (op < 8) {	/* read back: only this thread writes it */
			if (bd_read(sbd, off, buf, len) || memcmp(buf, model + off, len))
				w->failures++;
		} else if (op < 9) {	/* wide read over others' stripes */
			off = (uint64_t)(rand_r(&w->seed) % (SIZE / 512 - 32)) * 512;
			if (bd_read(sbd, off, buf, sizeof(buf)))
				w->failures++;
		} else if (blockdev_flush(sbd)) {
			w->failures++;
		}
	}
	return NULL;
}

static void run_stress(enum block_cache cache)
{
	struct worker w[NTHR];
	pthread_t t[NTHR];
	struct blockdev_opts bo = { .path = NULL, .format = "qcow2" };
	static uint8_t all[SIZE];

	sbd = make_image_cache(cache);
	memset(model, 0, sizeof(model));
	qcow2_alloc_hook = widen_hook;
	for (int i = 0; i < NTHR; i++) {
		w[i] = (struct worker){ .id = i, .seed = 1234u + (unsigned int)i };
		pthread_create(&t[i], NULL, stress, &w[i]);
	}
	for (int i = 0; i < NTHR; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].failures, 0);
	}
	qcow2_alloc_hook = NULL;
	blockdev_close(sbd);
	qemu_img_check();
	bo.path = path;
	assert_int_equal(blockdev_open(&bo, &sbd), 0);
	assert_int_equal(bd_read(sbd, 0, all, SIZE), 0);
	assert_memory_equal(all, model, SIZE);
	blockdev_close(sbd);
	unlink(path);
}

static void random_concurrent_rw(void **state)
{
	(void)state;
	stripe = 1024;
	run_stress(BLOCK_CACHE_WRITEBACK);
}

/* O_DIRECT (cache=none): /tmp must take it (tmpfs does from Linux 6.6). */
static void random_concurrent_rw_direct(void **state)
{
	(void)state;
	stripe = 4096;
	run_stress(BLOCK_CACHE_NONE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(read_during_allocation),
		cmocka_unit_test(random_concurrent_rw),
		cmocka_unit_test(random_concurrent_rw_direct),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

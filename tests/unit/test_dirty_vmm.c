/* The VMM's side of dirty logging (src/vmm/dirty.c): what dirty_mark()
 * records, what dirty_track_collect() merges and clears, the virtqueue's
 * marks, and no mark lost to threads marking while a collector runs. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "vireo/dirty.h"
#include "vireo/virtio.h"

#define RAM   (1 << 20)             /* 256 pages: 4 bitmap words */
#define WORDS (RAM / DIRTY_PAGE_SIZE / 64)

static struct guest_memory mem;

static int setup(void **state)
{
	(void)state;
	assert_int_equal(guest_memory_init(&mem, RAM, false), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	guest_memory_free(&mem);
	return 0;
}

static bool bit(const uint64_t *bits, uint64_t page)
{
	return bits[page / 64] >> (page % 64) & 1;
}

static void marks_only_while_tracking(void **state)
{
	uint64_t bits[WORDS] = { 0 };

	(void)state;
	dirty_mark(&mem, mem.host, 1);		/* never started: nothing */
	dirty_track_collect(&mem, bits);
	assert_int_equal(dirty_bitmap_count(bits, WORDS), 0);
	assert_int_equal(dirty_track_start(&mem), 0);
	dirty_mark(&mem, mem.host + 5 * 4096 + 4000, 200);	/* pages 5 and 6 */
	dirty_track_stop(&mem);
	dirty_mark(&mem, mem.host + 9 * 4096, 1);		/* stopped: not recorded */
	dirty_track_collect(&mem, bits);
	assert_int_equal(dirty_bitmap_count(bits, WORDS), 2);
	assert_true(bit(bits, 5) && bit(bits, 6));
	/* A start while on keeps the bits; a new start forgets what the last
	 * one left. */
	assert_int_equal(dirty_track_start(&mem), 0);
	dirty_mark(&mem, mem.host, 1);
	assert_int_equal(dirty_track_start(&mem), 0);
	memset(bits, 0, sizeof(bits));
	dirty_track_collect(&mem, bits);
	assert_true(bit(bits, 0) && dirty_bitmap_count(bits, WORDS) == 1);
	dirty_mark(&mem, mem.host, 1);
	dirty_track_stop(&mem);
	assert_int_equal(dirty_track_start(&mem), 0);
	memset(bits, 0, sizeof(bits));
	dirty_track_collect(&mem, bits);
	assert_int_equal(dirty_bitmap_count(bits, WORDS), 0);
	dirty_track_stop(&mem);
}

static void collect_merges_and_clears(void **state)
{
	uint64_t bits[WORDS] = { 0 }, unrelated = 0;

	(void)state;
	assert_int_equal(dirty_track_start(&mem), 0);
	bits[0] = 1ull << 3;				/* from KVM's log, say */
	dirty_mark(&mem, mem.host + 63 * 4096, 4096 + 1);	/* 63, 64: across a word */
	dirty_mark(&mem, mem.host + RAM - 10, 100);	/* past the end: the last page only */
	dirty_mark(&mem, mem.host + 7 * 4096, 0);	/* nothing */
	dirty_mark(&mem, &unrelated, 8);		/* not guest RAM: ignored */
	dirty_mark(&mem, mem.host - 4096, 4096);	/* just before it: ignored */
	dirty_track_collect(&mem, bits);
	assert_int_equal(dirty_bitmap_count(bits, WORDS), 4);
	assert_true(bit(bits, 3) && bit(bits, 63) && bit(bits, 64) && bit(bits, 255));
	memset(bits, 0, sizeof(bits));
	dirty_track_collect(&mem, bits);		/* cleared by the first */
	assert_int_equal(dirty_bitmap_count(bits, WORDS), 0);
	dirty_track_stop(&mem);
}

/* What a device writes through a chain, and the used ring, are marked at
 * the push; what it only read is not. */
static void push_marks_written_buffers_and_used_ring(void **state)
{
	struct virtq vq = { .size = 16, .enabled = true, .desc_gpa = 0x1000, .avail_gpa = 0x2000,
			    .used_gpa = 0x3000, .mem = &mem };
	struct { uint64_t addr; uint32_t len; uint16_t flags, next; } *d =
		guest_ptr(&mem, 0x1000, 32);
	uint16_t *avail = guest_ptr(&mem, 0x2000, 8);
	struct virtq_elem elem;
	uint64_t bits[WORDS] = { 0 };

	(void)state;
	d[0] = (typeof(d[0])){ 0x10000, 16, 1, 1 };		/* readable: page 16 */
	d[1] = (typeof(d[0])){ 0x20000 - 8, 16, 2, 0 };	/* writable: pages 31, 32 */
	avail[2] = 0;
	avail[1] = 1;
	assert_int_equal(dirty_track_start(&mem), 0);
	assert_int_equal(virtq_pop(&vq, &elem), 1);
	virtq_push(&vq, &elem, 16);
	dirty_track_collect(&mem, bits);
	assert_int_equal(dirty_bitmap_count(bits, WORDS), 3);
	assert_true(bit(bits, 3) && bit(bits, 31) && bit(bits, 32));
	assert_false(bit(bits, 16));
	dirty_track_stop(&mem);
}

#define THREADS 4
#define BIG     (256ull << 20)	/* 65536 pages */
#define BIG_PAGES (BIG / DIRTY_PAGE_SIZE)

static struct guest_memory big;
static unsigned int running;

static void *marker(void *arg)
{
	unsigned int t = (unsigned int)(uintptr_t)arg;

	/* Each page once, the threads' pages interleaved: they share every
	 * bitmap word, as do the collector's exchanges. */
	for (uint64_t i = t; i < BIG_PAGES; i += THREADS)
		dirty_mark(&big, big.host + i * DIRTY_PAGE_SIZE, 1);
	__atomic_fetch_sub(&running, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void concurrent_marks_are_never_lost(void **state)
{
	static uint64_t bits[BIG_PAGES / 64];
	pthread_t th[THREADS];

	(void)state;
	assert_int_equal(guest_memory_init(&big, BIG, false), 0);
	for (unsigned int r = 0; r < 5; r++) {
		memset(bits, 0, sizeof(bits));
		assert_int_equal(dirty_track_start(&big), 0);
		running = THREADS;
		for (unsigned int t = 0; t < THREADS; t++)
			assert_int_equal(pthread_create(&th[t], NULL, marker,
							(void *)(uintptr_t)t), 0);
		while (__atomic_load_n(&running, __ATOMIC_SEQ_CST))	/* merged while they mark */
			dirty_track_collect(&big, bits);
		for (unsigned int t = 0; t < THREADS; t++)
			pthread_join(th[t], NULL);
		dirty_track_collect(&big, bits);
		assert_int_equal(dirty_bitmap_count(bits, BIG_PAGES / 64), BIG_PAGES);
		dirty_track_stop(&big);
	}
	guest_memory_free(&big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(marks_only_while_tracking, setup, teardown),
		cmocka_unit_test_setup_teardown(collect_merges_and_clears, setup, teardown),
		cmocka_unit_test_setup_teardown(push_marks_written_buffers_and_used_ring, setup,
						teardown),
		cmocka_unit_test(concurrent_marks_are_never_lost),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

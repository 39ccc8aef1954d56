/* Split-ring parsing against hostile drivers (DESIGN §3.8): every malformed
 * chain is refused with an error, never followed out of bounds. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "vireo/virtio.h"

#define QSIZE 16
#define DESC  0x1000
#define AVAIL 0x2000
#define USED  0x3000
#define BUF   0x10000
#define RAM   (1 << 20)

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

static struct guest_memory mem;
static struct virtq vq;

static struct desc *D(unsigned int i) { return guest_ptr(&mem, DESC + 16 * i, 16); }

static void set_desc(unsigned int i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	*D(i) = (struct desc){ addr, len, flags, next };
}

static void offer(uint16_t head)
{
	uint16_t *avail = guest_ptr(&mem, AVAIL, 4 + 2 * QSIZE);

	avail[2 + avail[1] % QSIZE] = head;
	avail[1]++;
}

static int setup(void **state)
{
	(void)state;
	assert_int_equal(guest_memory_init(&mem, RAM, false), 0);
	vq = (struct virtq){ .size = QSIZE, .enabled = true, .desc_gpa = DESC, .avail_gpa = AVAIL,
			     .used_gpa = USED, .mem = &mem };
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	guest_memory_free(&mem);
	return 0;
}

static struct virtq_elem elem;

static void good_chain_round_trip(void **state)
{
	uint32_t *used;

	(void)state;
	set_desc(0, BUF, 16, 1, 1);            /* readable, NEXT */
	set_desc(1, BUF + 16, 512, 1 | 2, 2);  /* writable, NEXT */
	set_desc(2, BUF + 528, 1, 2, 0);       /* writable */
	offer(0);
	assert_int_equal(virtq_pop(&vq, &elem), 1);
	assert_int_equal(elem.out_num, 1);
	assert_int_equal(elem.in_num, 2);
	assert_int_equal(elem.in_len, 513);
	assert_int_equal(virtq_write_in(&elem, 510, "xyz", 3), 3);
	assert_memory_equal((uint8_t *)guest_ptr(&mem, BUF + 16 + 510, 3), "xy", 2);
	assert_int_equal(*(uint8_t *)guest_ptr(&mem, BUF + 528, 1), 'z');
	virtq_push(&vq, &elem, 513);
	used = guest_ptr(&mem, USED, 12);
	assert_int_equal(used[0] >> 16, 1);    /* used->idx */
	assert_int_equal(used[1], 0);          /* id */
	assert_int_equal(used[2], 513);        /* len */
	assert_int_equal(virtq_pop(&vq, &elem), 0);
}

static void refuses(uint16_t head)
{
	offer(head);
	assert_int_equal(virtq_pop(&vq, &elem), -EINVAL);
}

static void head_out_of_range(void **state) { (void)state; refuses(QSIZE); }

static void next_out_of_range(void **state)
{
	(void)state;
	set_desc(0, BUF, 16, 1, QSIZE + 3);
	refuses(0);
}

static void loop_is_detected(void **state)
{
	(void)state;
	set_desc(0, BUF, 16, 1, 1);
	set_desc(1, BUF, 16, 1, 0);
	refuses(0);
}

static void buffer_outside_ram(void **state)
{
	(void)state;
	set_desc(0, RAM - 8, 16, 0, 0);        /* straddles the end */
	refuses(0);
	set_desc(0, UINT64_MAX - 4, 16, 0, 0); /* wraps around */
	refuses(0);
}

/* Found by fuzz_virtio_vq: an odd used ring address made virtq_push() store
 * misaligned u32s (UB; atomics there are not atomic). The transport only
 * enables aligned rings inside RAM. */
static void rings_must_be_aligned_and_in_ram(void **state)
{
	(void)state;
	assert_true(virtq_rings_ok(&vq));
	vq.used_gpa = USED + 3;
	assert_false(virtq_rings_ok(&vq));
	vq.used_gpa = USED;
	vq.avail_gpa = AVAIL + 1;
	assert_false(virtq_rings_ok(&vq));
	vq.avail_gpa = AVAIL;
	vq.desc_gpa = DESC + 8;
	assert_false(virtq_rings_ok(&vq));
	vq.desc_gpa = RAM - 16;                /* the table runs past the end */
	assert_false(virtq_rings_ok(&vq));
	vq.desc_gpa = DESC;
}

/* Found by fuzz_virtio_blk: a used ring on top of the avail ring made each
 * push offer another chain, and blk's serve-until-empty loop never ended. */
static void used_ring_must_not_overlap(void **state)
{
	(void)state;
	vq.used_gpa = AVAIL;
	assert_false(virtq_rings_ok(&vq));
	vq.used_gpa = AVAIL + 4 + 2 * QSIZE;   /* on its used_event field */
	assert_false(virtq_rings_ok(&vq));
	vq.used_gpa = DESC + 16 * QSIZE - 4;   /* on the last descriptor */
	assert_false(virtq_rings_ok(&vq));
	vq.used_gpa = AVAIL + 8 + 2 * QSIZE;   /* just past the avail ring */
	assert_true(virtq_rings_ok(&vq));
}

static void readable_after_writable(void **state)
{
	(void)state;
	set_desc(0, BUF, 16, 1 | 2, 1);
	set_desc(1, BUF, 16, 0, 0);
	refuses(0);
}

static void avail_index_jump(void **state)
{
	uint16_t *avail = guest_ptr(&mem, AVAIL, 4);

	(void)state;
	avail[1] = QSIZE + 5;
	assert_int_equal(virtq_pop(&vq, &elem), -EINVAL);
}

static void indirect_tables(void **state)
{
	struct desc *table = guest_ptr(&mem, BUF, 16 * 3);

	(void)state;
	table[0] = (struct desc){ BUF + 0x100, 16, 1, 1 };
	table[1] = (struct desc){ BUF + 0x200, 64, 1 | 2, 2 };
	table[2] = (struct desc){ BUF + 0x300, 1, 2, 0 };
	set_desc(0, BUF, 48, 4, 0);
	offer(0);
	assert_int_equal(virtq_pop(&vq, &elem), 1);
	assert_int_equal(elem.out_num + elem.in_num, 3);
	table[2].flags = 4;                    /* nested indirect */
	refuses(0);
	table[2] = (struct desc){ BUF + 0x300, 1, 2 | 1, 0 }; /* NEXT back to 0: loop */
	refuses(0);
	set_desc(0, BUF, 20, 4, 0);            /* not a whole number of descriptors */
	refuses(0);
}

/* 2 GiB + 2 GiB + 100 bytes: 32-bit totals would read it as 100 bytes. */
static void chain_total_cannot_wrap(void **state)
{
	struct guest_memory big;
	uint64_t buf = 0x100000;

	(void)state;
	guest_memory_free(&mem);
	assert_int_equal(guest_memory_init(&big, buf + 0x80000000ULL, false), 0);
	mem = big;                             /* sparse: nothing is touched */
	set_desc(0, buf, 0x80000000U, 1, 1);
	set_desc(1, buf, 0x80000000U, 1, 2);
	set_desc(2, buf, 100, 0, 0);
	refuses(0);
	set_desc(0, buf, 0x80000000U, 2 | 1, 1); /* the same with writable segments */
	set_desc(1, buf, 0x80000000U, 2 | 1, 2);
	set_desc(2, buf, 100, 2, 0);
	refuses(0);
	set_desc(1, buf, 0x7fffff00U, 2 | 1, 2); /* just under 4 GiB is a chain */
	offer(0);
	assert_int_equal(virtq_pop(&vq, &elem), 1);
	assert_int_equal(elem.in_len, 0xffffff64U);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(good_chain_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(head_out_of_range, setup, teardown),
		cmocka_unit_test_setup_teardown(rings_must_be_aligned_and_in_ram, setup, teardown),
		cmocka_unit_test_setup_teardown(used_ring_must_not_overlap, setup, teardown),
		cmocka_unit_test_setup_teardown(next_out_of_range, setup, teardown),
		cmocka_unit_test_setup_teardown(loop_is_detected, setup, teardown),
		cmocka_unit_test_setup_teardown(buffer_outside_ram, setup, teardown),
		cmocka_unit_test_setup_teardown(readable_after_writable, setup, teardown),
		cmocka_unit_test_setup_teardown(avail_index_jump, setup, teardown),
		cmocka_unit_test_setup_teardown(indirect_tables, setup, teardown),
		cmocka_unit_test_setup_teardown(chain_total_cannot_wrap, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

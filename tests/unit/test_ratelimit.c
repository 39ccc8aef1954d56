#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "vireo/ratelimit.h"

#define SEC 1000000000ULL

static void unlimited_never_waits(void **state)
{
	struct ratelimit rl;

	(void)state;
	ratelimit_init(&rl);
	ratelimit_charge(&rl, 1ULL << 40, 0);
	assert_int_equal(ratelimit_delay_ns(&rl, 0), 0);
}

static void bandwidth_debt_is_paid_at_the_rate(void **state)
{
	struct ratelimit rl;
	uint64_t t = 1000 * SEC, sent = 0;

	(void)state;
	ratelimit_init(&rl);
	ratelimit_set(&rl, 1000000, 0);
	rl.bytes.last_ns = t;
	/* Simulate 10 s of 64 KiB requests sent as soon as allowed. */
	while (t < 1010 * SEC) {
		uint64_t d = ratelimit_delay_ns(&rl, t);

		if (d) {
			t += d;
			continue;
		}
		ratelimit_charge(&rl, 65536, t);
		sent += 65536;
	}
	/* 10 s at 1 MB/s plus the initial bucket (100 ms), within one request. */
	assert_true(sent >= 10100000 - 65536 && sent <= 10100000 + 2 * 65536);
}

static void ops_bucket_limits_count(void **state)
{
	struct ratelimit rl;
	uint64_t t = 5 * SEC, ops = 0;

	(void)state;
	ratelimit_init(&rl);
	ratelimit_set(&rl, 0, 100);
	rl.ops.last_ns = t;
	while (t < 7 * SEC) {
		uint64_t d = ratelimit_delay_ns(&rl, t);

		if (d) {
			t += d;
			continue;
		}
		ratelimit_charge(&rl, 4096, t);
		ops++;
	}
	assert_true(ops >= 209 && ops <= 211); /* 10 burst + 2 s x 100 */
}

/* Firecracker's order: a request that does not fit takes nothing, and
 * fits once the wait it was told has passed. */
static void consume_takes_nothing_until_it_fits(void **state)
{
	struct ratelimit rl;
	uint64_t t = 1000 * SEC, d;

	(void)state;
	ratelimit_init(&rl);
	ratelimit_set(&rl, 1000000, 0);	/* 1 MB/s, a 100 kB bucket */
	rl.bytes.last_ns = t;
	assert_int_equal(ratelimit_consume(&rl, 60000, t), 0);
	d = ratelimit_consume(&rl, 60000, t);	/* 40 kB left */
	assert_true(d > 19 * SEC / 1000 && d <= 21 * SEC / 1000);
	assert_true(rl.bytes.tokens > 39999 && rl.bytes.tokens < 40001); /* untouched */
	assert_int_equal(ratelimit_consume(&rl, 60000, t + d), 0);
}

/* The case: 1 GiB of write-zeroes through 1 MiB/s, as 8 MiB
 * requests (the device's max_write_zeroes_sectors), each sent as soon as
 * it is allowed: more than 1000 s. One request larger than the bucket goes
 * on a full bucket, into debt. */
static void gib_of_zeroes_at_one_mib_takes_1000_s(void **state)
{
	struct ratelimit rl;
	uint64_t start = 1000 * SEC, t = start;

	(void)state;
	ratelimit_init(&rl);
	ratelimit_set(&rl, 1 << 20, 0);
	rl.bytes.last_ns = t;
	for (int i = 0; i < 128; i++) {
		uint64_t d;

		while ((d = ratelimit_consume(&rl, 8 << 20, t)))
			t += d;
	}
	assert_true(t - start >= 1000 * SEC);
	assert_true(t - start <= 1024 * SEC);
}

/* The I/O policy changes a limit every interval: a change must not refill
 * the bucket (a burst per change) nor forgive a debt. */
static void a_new_rate_keeps_the_bucket(void **state)
{
	struct ratelimit rl;
	uint64_t t = 100 * SEC;

	(void)state;
	ratelimit_init(&rl);
	ratelimit_set_at(&rl, 1000000, 0, t);		/* none before: full, 100 kB */
	ratelimit_charge(&rl, 150000, t);		/* 50 kB of debt */
	ratelimit_set_at(&rl, 2000000, 0, t);
	assert_int_equal(ratelimit_delay_ns(&rl, t), 25000000 + 1);	/* 50 kB at 2 MB/s */
	t += SEC;					/* full again: 200 kB */
	ratelimit_set_at(&rl, 1000000, 0, t);		/* capped at the new 100 kB */
	assert_int_equal(ratelimit_consume(&rl, 100000, t), 0);
	assert_int_not_equal(ratelimit_consume(&rl, 1000, t), 0);
	ratelimit_set_at(&rl, 0, 0, t);			/* unlimited, then limited: full */
	ratelimit_set_at(&rl, 1000000, 0, t);
	assert_int_equal(ratelimit_consume(&rl, 100000, t), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(unlimited_never_waits),
		cmocka_unit_test(bandwidth_debt_is_paid_at_the_rate),
		cmocka_unit_test(ops_bucket_limits_count),
		cmocka_unit_test(consume_takes_nothing_until_it_fits),
		cmocka_unit_test(gib_of_zeroes_at_one_mib_takes_1000_s),
		cmocka_unit_test(a_new_rate_keeps_the_bucket),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

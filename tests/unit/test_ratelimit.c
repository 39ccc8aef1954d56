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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(unlimited_never_waits),
		cmocka_unit_test(bandwidth_debt_is_paid_at_the_rate),
		cmocka_unit_test(ops_bucket_limits_count),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

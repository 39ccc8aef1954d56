/* The I/O policy's allocation (src/mgr/iopolicy.c): io_allocate() and
 * io_demand() are pure, so every rule of docs/api.md "Automatic I/O policy"
 * is checked here on figures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "vireo/mgr.h"
#include "vireo/ratelimit.h"

#define U IO_UNBOUNDED
#define MB 1000000ULL

static uint64_t total(const struct io_share *s, unsigned int n)
{
	uint64_t t = 0;

	for (unsigned int i = 0; i < n; i++)
		t += s[i].limit;
	return t;
}

/* |a - b| <= tol */
static void assert_near(uint64_t a, uint64_t b, uint64_t tol)
{
	if (a > b + tol || b > a + tol)
		fail_msg("%llu is not within %llu of %llu", (unsigned long long)a,
			 (unsigned long long)tol, (unsigned long long)b);
}

static void busy_shares_follow_weights(void **state)
{
	struct io_share s[3] = { { .demand = U, .weight = 100 }, { .demand = U, .weight = 200 },
				 { .demand = U, .weight = 300 } };

	(void)state;
	assert_false(io_allocate(s, 3, 60 * MB));
	assert_near(s[0].limit, 10 * MB, 2);
	assert_near(s[1].limit, 20 * MB, 2);
	assert_near(s[2].limit, 30 * MB, 2);
}

/* One busy, two using little: the busy one gets everything they leave,
 * they keep what they use plus headroom. */
static void idle_share_goes_to_the_busy(void **state)
{
	struct io_share s[3] = { { .demand = U, .weight = 100 }, { .demand = 1 * MB, .weight = 100 },
				 { .demand = 2 * MB, .weight = 100 } };

	(void)state;
	io_allocate(s, 3, 60 * MB);
	assert_near(s[0].limit, 57 * MB, 2);
	assert_near(s[1].limit, 1 * MB, 2);
	assert_near(s[2].limit, 2 * MB, 2);
}

/* Nobody wants the whole budget: the rest is spread by weight on top of
 * the demands, so no capacity is left unused. */
static void spare_is_spread_by_weight(void **state)
{
	struct io_share s[2] = { { .demand = 10 * MB, .weight = 100 },
				 { .demand = 10 * MB, .weight = 300 } };

	(void)state;
	io_allocate(s, 2, 60 * MB);
	assert_near(s[0].limit, 20 * MB, 2);
	assert_near(s[1].limit, 40 * MB, 2);
}

static void floor_holds_under_contention(void **state)
{
	struct io_share s[3] = { { .demand = U, .weight = 100, .floor = 30 * MB },
				 { .demand = U, .weight = 100 }, { .demand = U, .weight = 100 } };

	(void)state;
	io_allocate(s, 3, 60 * MB);
	assert_near(s[0].limit, 30 * MB, 2);
	assert_near(s[1].limit, 15 * MB, 2);
	assert_near(s[2].limit, 15 * MB, 2);
}

/* A floor is part of the share, not on top of it: below its weighted
 * share it changes nothing. */
static void floor_below_share_changes_nothing(void **state)
{
	struct io_share s[2] = { { .demand = U, .weight = 100, .floor = 5 * MB },
				 { .demand = U, .weight = 100 } };

	(void)state;
	io_allocate(s, 2, 60 * MB);
	assert_near(s[0].limit, 30 * MB, 2);
	assert_near(s[1].limit, 30 * MB, 2);
}

/* An idle device keeps its floor even when another wants everything. */
static void idle_floor_is_kept(void **state)
{
	struct io_share s[2] = { { .demand = 0, .weight = 100, .floor = 20 * MB },
				 { .demand = U, .weight = 100 } };

	(void)state;
	io_allocate(s, 2, 60 * MB);
	assert_near(s[0].limit, 20 * MB, 2);
	assert_near(s[1].limit, 40 * MB, 2);
}

/* A fixed limit is never exceeded, whatever the weights and the spare
 * budget; what it cannot take goes to the others. */
static void caps_hold_and_the_rest_moves_on(void **state)
{
	struct io_share s[3] = { { .demand = U, .weight = 1000, .cap = 5 * MB },
				 { .demand = U, .weight = 100 }, { .demand = U, .weight = 100 } };

	(void)state;
	io_allocate(s, 3, 60 * MB);
	assert_int_equal(s[0].limit, 5 * MB);
	assert_near(s[1].limit, 27500000, 2);
	assert_near(s[2].limit, 27500000, 2);
	/* All capped below the budget: each at its cap, the rest unused. */
	s[1].cap = s[2].cap = 1 * MB;
	io_allocate(s, 3, 60 * MB);
	assert_int_equal(total(s, 3), 7 * MB);
}

/* A floor above its own cap counts as the cap. */
static void floor_above_cap_is_the_cap(void **state)
{
	struct io_share s[2] = { { .demand = U, .weight = 100, .floor = 50 * MB, .cap = 10 * MB },
				 { .demand = U, .weight = 100 } };

	(void)state;
	assert_false(io_allocate(s, 2, 60 * MB));
	assert_int_equal(s[0].limit, 10 * MB);
	assert_near(s[1].limit, 50 * MB, 2);
}

/* Floors summing above the budget cannot all hold: each gets the same
 * fraction of its floor (here 60/90.06: the minimum of 0.1 % of the budget
 * counts as a floor), devices without a floor the minimum, and the caller
 * is told. */
static void overcommitted_floors_are_scaled(void **state)
{
	struct io_share s[3] = { { .demand = U, .weight = 100, .floor = 60 * MB },
				 { .demand = 0, .weight = 500, .floor = 30 * MB },
				 { .demand = U, .weight = 100 } };

	(void)state;
	assert_true(io_allocate(s, 3, 60 * MB));
	assert_near(s[0].limit, 40 * MB, 30000);
	assert_near(s[1].limit, 20 * MB, 15000);
	assert_int_equal(s[2].limit, 60 * MB / 1000);
}

/* Never 0 (which the VMM reads as "unlimited"), even for tiny budgets,
 * weight 0 counts as 1, and the sum never passes the budget. */
static void edges(void **state)
{
	struct io_share s[4] = { { .demand = U, .weight = 0 }, { .demand = U, .weight = 1 },
				 { .demand = 0, .weight = 10000 }, { .demand = U, .weight = 1 } };

	(void)state;
	io_allocate(s, 4, 3);
	for (int i = 0; i < 4; i++)
		assert_true(s[i].limit >= 1);
	io_allocate(s, 4, 1000 * MB);
	assert_true(total(s, 4) <= 1000 * MB);
	assert_true(s[2].limit >= 1 * MB);	/* idle: still its minimum */
	assert_near(s[0].limit, s[1].limit, 2);
	assert_false(io_allocate(s, 0, 1000)); /* no device: nothing to do */
}

static void demand_estimate(void **state)
{
	const uint64_t sec = 1000000000ULL, budget = 100 * MB;

	(void)state;
	assert_true(io_demand(true, 0, 0, 0, sec, budget) == U);      /* nothing known */
	assert_true(io_demand(false, 9 * MB, 10 * MB, 0, sec, budget) == U); /* at its limit */
	/* held back a tenth of the time, whatever it used (a guest short of
	 * CPU may not reach its limit, its requests still wait) */
	assert_true(io_demand(false, 2 * MB, 10 * MB, sec / 10, sec, budget) == U);
	/* below its limit, not held back: what it used + 1/4 + 1 % of budget */
	assert_int_equal(io_demand(false, 4 * MB, 10 * MB, 0, sec, budget), 6 * MB);
	assert_int_equal(io_demand(false, 0, 10 * MB, 0, sec, budget), 1 * MB);
	/* held back less than a tenth: not saturated */
	assert_int_equal(io_demand(false, 1 * MB, 10 * MB, sec / 20, sec, budget), 2250000);
}

/* What the policy reads from each device's limiter: what was charged or
 * consumed (a refused request is not), and the time requests waited. */
static void limiter_counts_what_it_charged(void **state)
{
	const uint64_t t = 1000000000000ULL;
	struct ratelimit rl;

	(void)state;
	ratelimit_init(&rl);
	ratelimit_charge(&rl, 1500, t);                  /* unlimited: counted too */
	ratelimit_set(&rl, 1000000, 0);
	rl.bytes.last_ns = t;
	assert_int_equal(ratelimit_consume(&rl, 100000, t), 0); /* the full bucket */
	assert_true(ratelimit_consume(&rl, 100000, t) > 0);     /* refused: waits */
	assert_int_equal(rl.charged_bytes, 101500);
	assert_int_equal(rl.charged_ops, 2);
	assert_true(rl.throttled_ns >= 99000000);
}

/* ---- two levels: networks with their own budget (io_allocate_groups) ---- */

/* No host budget: each network divides its own, a vNIC on no budgeted
 * network is not managed (limit 0). */
static void networks_without_host_budget(void **state)
{
	struct io_share s[4] = { { .demand = U, .weight = 100 }, { .demand = U, .weight = 100 },
				 { .demand = U, .weight = 200 }, { .demand = U, .weight = 100 } };
	const int group[4] = { 0, 1, 1, -1 };
	const uint64_t gbudget[2] = { 10 * MB, 30 * MB };
	uint64_t galloc[2];

	(void)state;
	assert_false(io_allocate_groups(s, group, 4, gbudget, galloc, 2, 0));
	assert_near(s[0].limit, 10 * MB, 2);
	assert_near(s[1].limit, 10 * MB, 2);	/* weights within the network */
	assert_near(s[2].limit, 20 * MB, 2);
	assert_int_equal(s[3].limit, 0);
	assert_int_equal(galloc[0], 10 * MB);
	assert_int_equal(galloc[1], 30 * MB);
}

/* A host budget below the networks' sum holds for the total; each network
 * never passes its own. */
static void host_budget_caps_the_networks(void **state)
{
	struct io_share s[3] = { { .demand = U, .weight = 100 }, { .demand = U, .weight = 100 },
				 { .demand = U, .weight = 100 } };
	const int group[3] = { 0, 1, -1 };
	const uint64_t gbudget[2] = { 5 * MB, 40 * MB };
	uint64_t galloc[2];

	(void)state;
	assert_false(io_allocate_groups(s, group, 3, gbudget, galloc, 2, 30 * MB));
	assert_near(s[0].limit, 5 * MB, 2);	/* its network's budget */
	assert_near(s[1].limit, 12500000, 2);	/* the rest, evenly with the tap */
	assert_near(s[2].limit, 12500000, 2);
	assert_true(total(s, 3) <= 30 * MB);
	assert_int_equal(galloc[0], s[0].limit);
	assert_int_equal(galloc[1], s[1].limit);
}

/* At the host level a network weighs what its vNICs weigh together, its
 * floors count, and what a capped or idle vNIC cannot take goes to the
 * others (work-conserving across levels). */
static void networks_compete_by_their_vnics(void **state)
{
	struct io_share s[4] = { { .demand = U, .weight = 100 }, { .demand = U, .weight = 100 },
				 { .demand = U, .weight = 200 }, { .demand = 1 * MB, .weight = 100 } };
	const int group[4] = { 0, 0, -1, 1 };
	const uint64_t gbudget[2] = { 100 * MB, 100 * MB };
	uint64_t galloc[2];

	(void)state;
	/* 1 MB for network 1 (its demand), the rest 200:200 by weight. */
	io_allocate_groups(s, group, 4, gbudget, galloc, 2, 41 * MB);
	assert_near(s[3].limit, 1 * MB, 2);
	assert_near(s[2].limit, 20 * MB, 2);
	assert_near(s[0].limit, 10 * MB, 2);
	assert_near(s[1].limit, 10 * MB, 2);
	assert_near(galloc[0], 20 * MB, 2);
	/* A floor in network 0 raises the network's share. */
	s[0].floor = 30 * MB;
	io_allocate_groups(s, group, 4, gbudget, galloc, 2, 41 * MB);
	assert_near(galloc[0], 30 * MB, 2);
	/* (less the other vNIC's minimum, 0.1 % of the network's share) */
	assert_near(s[0].limit, 30 * MB, 30 * MB / 1000);
	/* A capped vNIC: its network claims the cap, the tap the rest. */
	s[0].floor = 0;
	s[0].cap = 2 * MB;
	s[1].demand = 1 * MB;
	io_allocate_groups(s, group, 4, gbudget, galloc, 2, 41 * MB);
	assert_near(s[0].limit, 2 * MB, 2);
	assert_true(s[2].limit >= 37 * MB);
}

/* Floors that sum above a network's budget are scaled within it and
 * reported. */
static void overcommitted_network_floors(void **state)
{
	struct io_share s[2] = { { .demand = U, .floor = 6 * MB }, { .demand = U, .floor = 12 * MB } };
	const int group[2] = { 0, 0 };
	const uint64_t gbudget[1] = { 12 * MB };
	uint64_t galloc[1];

	(void)state;
	assert_true(io_allocate_groups(s, group, 2, gbudget, galloc, 1, 0));
	assert_near(s[0].limit, 4 * MB, 2);
	assert_near(s[1].limit, 8 * MB, 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(busy_shares_follow_weights),
		cmocka_unit_test(idle_share_goes_to_the_busy),
		cmocka_unit_test(spare_is_spread_by_weight),
		cmocka_unit_test(floor_holds_under_contention),
		cmocka_unit_test(floor_below_share_changes_nothing),
		cmocka_unit_test(idle_floor_is_kept),
		cmocka_unit_test(caps_hold_and_the_rest_moves_on),
		cmocka_unit_test(floor_above_cap_is_the_cap),
		cmocka_unit_test(overcommitted_floors_are_scaled),
		cmocka_unit_test(edges),
		cmocka_unit_test(demand_estimate),
		cmocka_unit_test(limiter_counts_what_it_charged),
		cmocka_unit_test(networks_without_host_budget),
		cmocka_unit_test(host_budget_caps_the_networks),
		cmocka_unit_test(networks_compete_by_their_vnics),
		cmocka_unit_test(overcommitted_network_floors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

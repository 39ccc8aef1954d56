/* VLAN id sets (src/net/vlan.c): the JSON forms users write, their bounds,
 * and the runs that go into one netlink message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include <json-c/json.h>

#include "vireo/net.h"

static int parse(const char *json, struct vlan_set *s)
{
	struct json_object *o = json_tokener_parse(json);
	int ret = vlan_set_from_json(o, "trunk", s);

	json_object_put(o);
	return ret;
}

static void ids_and_ranges_round_trip(void **state)
{
	struct vlan_set s;
	struct json_object *o;

	(void)state;
	assert_int_equal(parse("[10, \"20-23\", 4094, 1, 2, 12]", &s), 0);
	assert_true(vlan_has(&s, 1) && vlan_has(&s, 2) && vlan_has(&s, 10));
	assert_false(vlan_has(&s, 11) || vlan_has(&s, 24) || vlan_has(&s, 0));
	assert_true(vlan_has(&s, 20) && vlan_has(&s, 23) && vlan_has(&s, 4094));
	o = vlan_set_to_json(&s);
	assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
			    "[1,2,10,12,\"20-23\",4094]");
	json_object_put(o);
}

static void bad_ids_are_refused_and_change_nothing(void **state)
{
	static const char *const bad[] = {
		"[0]", "[4095]", "[5000]", "[-1]", "[\"10-5\"]", "[\"0-3\"]", "[\"4000-4095\"]",
		"[\"10-\"]", "[\"-10\"]", "[\"10-20x\"]", "[\"ten\"]", "[1.5]", "[true]", "[]",
		"{}", "10", "[[10]]",
	};
	struct vlan_set s;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&s, 0xa5, sizeof(s));
		assert_int_equal(parse(bad[i], &s), -EINVAL);
		assert_int_equal(s.bits[0], 0xa5a5a5a5a5a5a5a5ULL);
	}
}

static void too_many_runs_are_refused(void **state)
{
	char json[8192] = "[";
	struct vlan_set s;

	(void)state;
	/* every other id: one run each */
	for (int v = 1; v <= 2 * (VLAN_RANGES_MAX + 1); v += 2)
		snprintf(json + strlen(json), sizeof(json) - strlen(json), "%s%d",
			 v > 1 ? "," : "", v);
	strcat(json, "]");
	assert_int_equal(parse(json, &s), -EINVAL);
	assert_int_equal(parse("[\"1-4094\"]", &s), 0);		/* one run */
}

static void runs_cover_the_set(void **state)
{
	struct vlan_set s = { 0 };
	unsigned int id = 0, end, n = 0;

	(void)state;
	assert_true(vlan_set_empty(&s));
	assert_false(vlan_next_range(&s, &id, &end));
	vlan_add(&s, 1);
	vlan_add(&s, 63);
	vlan_add(&s, 64);
	vlan_add(&s, 65);
	vlan_add(&s, 4094);
	id = 0;
	while (vlan_next_range(&s, &id, &end)) {
		static const unsigned int want[][2] = { { 1, 1 }, { 63, 65 }, { 4094, 4094 } };

		assert_true(n < 3);
		assert_int_equal(id, want[n][0]);
		assert_int_equal(end, want[n][1]);
		n++;
		id = end + 1;
	}
	assert_int_equal(n, 3);
}

static void command_line_lists(void **state)
{
	struct json_object *o = vlan_list_json("10;20-30,x");

	(void)state;
	assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
			    "[10,\"20-30\",\"x\"]");
	json_object_put(o);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ids_and_ranges_round_trip),
		cmocka_unit_test(bad_ids_are_refused_and_change_nothing),
		cmocka_unit_test(too_many_runs_are_refused),
		cmocka_unit_test(runs_cover_the_set),
		cmocka_unit_test(command_line_lists),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* API validation (DESIGN §6.1): control-socket requests into typed actions,
 * VM definitions and PATCH bodies, names and CPU lists. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <json-c/json.h>

#include "vireo/control.h"
#include "vireo/log.h"
#include "vireo/mgr.h"

static int parse(const char *text, struct control_action *a)
{
	return control_parse(text, strlen(text), a);
}

static void control_actions_parse(void **state)
{
	struct control_action a;

	(void)state;
	assert_int_equal(parse("{\"action\":\"info\"}", &a), 0);
	assert_int_equal(a.kind, CONTROL_INFO);
	assert_int_equal(parse(" {\"action\":\"pause\"}\r\n", &a), 0);
	assert_int_equal(a.kind, CONTROL_PAUSE);
	assert_int_equal(parse("{\"action\":\"set-limits\",\"disk\":2,\"iops\":7}", &a), 0);
	assert_int_equal(a.kind, CONTROL_SET_LIMITS);
	assert_int_equal(a.disk, 2);
	assert_true(a.has_iops && !a.has_bps);
	assert_int_equal(a.iops, 7);
	assert_int_equal(parse("{\"action\":\"pin\",\"vcpu\":1,\"cpus\":\"0,2-3\"}", &a), 0);
	assert_int_equal(a.vcpu, 1);
	assert_int_equal(CPU_COUNT(&a.cpus), 3);
	assert_true(CPU_ISSET(0, &a.cpus) && CPU_ISSET(2, &a.cpus) && CPU_ISSET(3, &a.cpus));
	assert_int_equal(parse("{\"action\":\"balloon\",\"target\":4096}", &a), 0);
	assert_int_equal(a.kind, CONTROL_BALLOON);
	assert_int_equal(a.target, 4096);
	assert_int_equal(parse("{\"action\":\"powerdown\"}", &a), 0);
	assert_int_equal(a.kind, CONTROL_POWERDOWN);
	assert_int_equal(parse("{\"action\":\"snapshot\",\"dir\":\"/var/snap/a\"}", &a), 0);
	assert_int_equal(a.kind, CONTROL_SNAPSHOT);
	assert_string_equal(a.dir, "/var/snap/a");
	assert_false(a.disks);
	/* The disks' internal snapshots, with or without memory and state. */
	assert_int_equal(parse("{\"action\":\"snapshot\",\"disks\":true,\"name\":\"s-1.a\"}", &a), 0);
	assert_true(a.disks && !a.dir[0]);
	assert_string_equal(a.name, "s-1.a");
	assert_int_equal(parse("{\"action\":\"snapshot\",\"dir\":\"/d\",\"disks\":true,"
			       "\"name\":\"s\"}", &a), 0);
	assert_true(a.disks);
	assert_string_equal(a.dir, "/d");
	assert_int_equal(parse("{\"action\":\"snapshot\",\"fds\":true}", &a), 0);
	assert_true(a.fds && !a.dir[0] && !a.disks);
	assert_true(a.fd[0] == -1 && a.fd[1] == -1);
	/* Incremental: into a directory or descriptors, naming its parent. */
	assert_int_equal(parse("{\"action\":\"snapshot\",\"dir\":\"/a\",\"incremental\":true}",
			       &a), 0);
	assert_true(a.incremental && !a.parent[0] && !a.parent_id);
	assert_int_equal(parse("{\"action\":\"snapshot\",\"fds\":true,\"incremental\":true,"
			       "\"parent\":\"../p\",\"parent_id\":\"00000000000000ff\"}", &a), 0);
	assert_string_equal(a.parent, "../p");
	assert_true(a.incremental && a.parent_id == 0xff);
	assert_false(a.track_dirty);
	/* Dirty tracking after it: asked for with memory only. */
	assert_int_equal(parse("{\"action\":\"snapshot\",\"dir\":\"/a\",\"track_dirty\":true}",
			       &a), 0);
	assert_true(a.track_dirty && !a.incremental);
	assert_int_equal(parse("{\"action\":\"snapshot\",\"fds\":true,\"incremental\":true,"
			       "\"track_dirty\":true}", &a), 0);
	assert_true(a.track_dirty && a.incremental && a.fds);
	assert_int_equal(parse("{\"action\":\"disk-snapshot-delete\",\"name\":\"s\"}", &a), 0);
	assert_int_equal(a.kind, CONTROL_DISK_SNAPSHOT_DELETE);
	assert_string_equal(a.name, "s");
}

static void control_rejects_bad_requests(void **state)
{
	static const char *const bad[] = {
		"", "{", "}", "null", "[]", "\"info\"", "{\"action\":null}", "{\"action\":1}",
		"{\"action\":\"\"}", "{\"action\":\"INFO\"}", "{\"action\":\"info\",\"x\":0}",
		"{\"action\":\"info\"}{}", "{\"action\":\"pause\",\"disk\":0}",
		"{\"action\":\"powerdown\",\"force\":true}", "{\"action\":\"power-down\"}",
		"{\"action\":\"set-limits\"}", "{\"action\":\"set-limits\",\"disk\":0}",
		"{\"action\":\"set-limits\",\"disk\":-1,\"bps\":1}",
		"{\"action\":\"set-limits\",\"disk\":256,\"bps\":1}",
		"{\"action\":\"set-limits\",\"disk\":0,\"bps\":\"1M\"}",
		"{\"action\":\"set-limits\",\"disk\":0,\"bps\":1e3}",
		"{\"action\":\"set-limits\",\"disk\":0,\"bps\":99999999999999999999999}",
		"{\"action\":\"pin\",\"vcpu\":0}", "{\"action\":\"pin\",\"cpus\":\"0\"}",
		"{\"action\":\"pin\",\"vcpu\":0,\"cpus\":0}", "{\"action\":\"pin\",\"vcpu\":0,\"cpus\":\"a\"}",
		"{\"action\":\"pin\",\"vcpu\":0,\"cpus\":\"1-\"}", "{\"action\":\"pin\",\"vcpu\":0,\"cpus\":\"-1\"}",
		"{\"action\":\"pin\",\"vcpu\":0,\"cpus\":\"5-2\"}", "{\"action\":\"pin\",\"vcpu\":0,\"cpus\":\"1,,2\"}",
		"{\"action\":\"pin\",\"vcpu\":0,\"cpus\":\"1048576\"}",
		"{\"action\":\"pin\",\"vcpu\":4096,\"cpus\":\"0\"}",
		"{\"action\":\"balloon\"}", "{\"action\":\"balloon\",\"target\":-1}",
		"{\"action\":\"balloon\",\"target\":\"1M\"}",
		"{\"action\":\"balloon\",\"target\":1,\"disk\":0}",
		"{\"action\":\"snapshot\"}", "{\"action\":\"snapshot\",\"dir\":1}",
		"{\"action\":\"snapshot\",\"dir\":\"\"}", "{\"action\":\"snapshot\",\"dir\":\"a/b\"}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"incremental\":1}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"parent\":\"/p\"}",
		"{\"action\":\"snapshot\",\"incremental\":true,\"disks\":true,\"name\":\"s\"}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"incremental\":true,\"parent\":\"\"}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"incremental\":true,\"parent_id\":\"12\"}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"incremental\":true,"
		"\"parent_id\":\"000000000000000g\"}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"incremental\":true,"
		"\"parent_id\":\"0000000000000000\"}",
		"{\"action\":\"snapshot\",\"disks\":true}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"track_dirty\":1}",
		"{\"action\":\"snapshot\",\"disks\":true,\"name\":\"s\",\"track_dirty\":true}",
		"{\"action\":\"snapshot\",\"fds\":false,\"disks\":true,\"name\":\"s\","
		"\"track_dirty\":false}",
		"{\"action\":\"snapshot\",\"disks\":false}",
		"{\"action\":\"snapshot\",\"disks\":\"yes\",\"name\":\"s\"}",
		"{\"action\":\"snapshot\",\"dir\":\"/a\",\"name\":\"s\"}",
		"{\"action\":\"snapshot\",\"disks\":true,\"name\":\".s\"}",
		"{\"action\":\"snapshot\",\"disks\":true,\"name\":\"a/b\"}",
		"{\"action\":\"snapshot\",\"disks\":true,\"name\":\"\"}",
		"{\"action\":\"snapshot\",\"disks\":true,\"name\":"
		"\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
		"{\"action\":\"disk-snapshot-delete\"}",
		"{\"action\":\"snapshot\",\"fds\":true,\"dir\":\"/a\"}",
		"{\"action\":\"snapshot\",\"fds\":1}", "{\"action\":\"snapshot\",\"fds\":false}",
		"{\"action\":\"disk-snapshot-delete\",\"name\":\"-x\"}",
		"{\"action\":\"disk-snapshot-delete\",\"name\":\"s\",\"dir\":\"/a\"}",
	};
	struct control_action a;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err_clear();
		if (parse(bad[i], &a) != -EINVAL)
			fail_msg("accepted: %s", bad[i]);
		assert_true(strlen(err_get()) > 5);
	}
}

static void control_migrate_parse(void **state)
{
	struct control_action a;

	(void)state;
	assert_int_equal(parse("{\"action\":\"migrate\",\"uri\":\"tcp:10.0.0.2:4444\","
			       "\"token\":\"t0k\",\"max_downtime_ms\":50,\"bandwidth\":1000}", &a), 0);
	assert_int_equal(a.kind, CONTROL_MIGRATE);
	assert_string_equal(a.uri, "tcp:10.0.0.2:4444");
	assert_string_equal(a.token, "t0k");
	assert_int_equal(a.max_downtime_ms, 50);
	assert_int_equal(a.bps, 1000);
	assert_int_equal(parse("{\"action\":\"migrate\",\"uri\":\"tcp:h:1\"}", &a), 0);
	assert_true(!a.token[0] && !a.max_downtime_ms && !a.bps);
	assert_int_equal(parse("{\"action\":\"migrate-cancel\"}", &a), 0);
	assert_int_equal(a.kind, CONTROL_MIGRATE_CANCEL);
	assert_int_equal(parse("{\"action\":\"migrate\"}", &a), -EINVAL);
	assert_int_equal(parse("{\"action\":\"migrate\",\"uri\":\"unix:/x\"}", &a), -EINVAL);
	assert_int_equal(parse("{\"action\":\"migrate\",\"uri\":\"tcp:h:1\","
			       "\"max_downtime_ms\":0}", &a), -EINVAL);
	assert_int_equal(parse("{\"action\":\"migrate\",\"uri\":\"tcp:h:1\",\"token\":5}", &a),
			 -EINVAL);
	assert_int_equal(parse("{\"action\":\"migrate-cancel\",\"uri\":\"tcp:h:1\"}", &a),
			 -EINVAL);
}

static void control_rejects_embedded_nul_and_huge(void **state)
{
	struct control_action a;
	char *big = malloc(CONTROL_MAX_LINE + 2);

	(void)state;
	assert_int_equal(control_parse("{\"action\":\"info\"}\0x", 19, &a), -EINVAL);
	memset(big, ' ', CONTROL_MAX_LINE + 1);
	big[CONTROL_MAX_LINE + 1] = '\0';
	assert_int_equal(control_parse(big, CONTROL_MAX_LINE + 1, &a), -EINVAL);
	free(big);
}

static void names(void **state)
{
	(void)state;
	assert_true(vm_name_valid("web-1.prod_2"));
	assert_true(vm_name_valid("a"));
	assert_false(vm_name_valid(""));
	assert_false(vm_name_valid(".."));
	assert_false(vm_name_valid(".x"));
	assert_false(vm_name_valid("-x"));
	assert_false(vm_name_valid("a/b"));
	assert_false(vm_name_valid("a b"));
	assert_false(vm_name_valid("a\n"));
	assert_false(vm_name_valid("é"));
	assert_true(vm_name_valid("0123456789012345678901234567890123456789012345678901234567890123"));
	assert_false(vm_name_valid("01234567890123456789012345678901234567890123456789012345678901234"));
}

static int def_parse(const char *text, struct vm_def *def)
{
	struct json_object *o = json_tokener_parse(text);
	int ret;

	assert_non_null(o);
	ret = vm_def_from_json(o, def);
	json_object_put(o);
	return ret;
}

static void definitions(void **state)
{
	struct vm_def d;
	struct json_object *out, *v;

	(void)state;
	assert_int_equal(def_parse("{\"name\":\"v\",\"kernel\":\"/k\"}", &d), 0);
	assert_int_equal(d.cpus, 1);
	assert_int_equal(d.memory, 256ULL << 20);
	assert_int_equal(d.cpu_weight, 100);
	vm_def_free(&d);
	assert_int_equal(def_parse("{\"name\":\"v\",\"kernel\":\"/k\",\"cpus\":2,\"memory\":\"64M\","
				   "\"cmdline\":\"a=b\",\"cpu_weight\":300,\"cpu_max\":150,"
				   "\"cpu_pin\":[\"0\",\"1-2\"],\"disks\":[{\"path\":\"/d\","
				   "\"format\":\"qcow2\",\"readonly\":true,\"bps\":5,\"iops\":6}]}", &d), 0);
	assert_int_equal(d.memory, 64ULL << 20);
	assert_int_equal(d.npin, 2);
	assert_string_equal(d.cpu_pin[1], "1-2");
	assert_int_equal(d.ndisks, 1);
	assert_true(d.disks[0].readonly);
	/* Round trip: what is saved parses back to the same. */
	out = vm_def_to_json(&d);
	vm_def_free(&d);
	assert_int_equal(vm_def_from_json(out, &d), 0);
	json_object_put(out);
	assert_int_equal(d.disks[0].iops, 6);
	assert_string_equal(d.disks[0].format, "qcow2");
	assert_string_equal(d.cmdline, "a=b");
	out = vm_def_to_json(&d);
	assert_true(json_object_object_get_ex(out, "cpu_max", &v));
	assert_int_equal(json_object_get_int(v), 150);
	json_object_put(out);
	vm_def_free(&d);
}

static void bad_definitions(void **state)
{
	static const char *const bad[] = {
		"{}", "{\"name\":\"v\"}", "{\"kernel\":\"/k\"}",
		"{\"name\":\"v\",\"kernel\":\"k\"}", "{\"name\":\"../v\",\"kernel\":\"/k\"}",
		"{\"name\":7,\"kernel\":\"/k\"}", "{\"name\":\"v\",\"kernel\":\"/k\",\"cpu\":1}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpus\":65}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpus\":true}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"memory\":\"15M\"}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"memory\":67108865}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"memory\":\"2T\"}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"memory\":[]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cmdline\":\"\\u0001\"}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"disks\":{}}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"disks\":[1]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"disks\":[{\"path\":\"rel\"}]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"disks\":[{\"path\":\"/a,b\"}]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"disks\":[{\"path\":\"/a\",\"readonly\":1}]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"disks\":[{\"path\":\"/a\",\"bps\":-1}]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpu_weight\":0}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpu_max\":6401}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpu_pin\":\"0\"}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpu_pin\":[0]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpus\":3,\"cpu_pin\":[\"0\",\"1\"]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"cpus\":2,\"cpu_pin\":[\"0\",\"x\"]}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"balloon_target\":\"1M\"}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"balloon\":true,\"balloon_target\":\"1T\"}",
		"{\"name\":\"v\",\"kernel\":\"/k\",\"balloon\":1}",
	};
	struct vm_def d;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (def_parse(bad[i], &d) != -EINVAL)
			fail_msg("accepted: %s", bad[i]);
}

static void patches(void **state)
{
	struct vm_def d;
	struct vm_patch p;
	struct json_object *o;

	(void)state;
	assert_int_equal(def_parse("{\"name\":\"v\",\"kernel\":\"/k\",\"cpus\":2,"
				   "\"disks\":[{\"path\":\"/d\",\"bps\":9}]}", &d), 0);
	o = json_tokener_parse("{\"cpu_max\":25,\"cpu_pin\":[\"1\"],"
			       "\"disk_limits\":[{\"disk\":0,\"iops\":4}]}");
	assert_int_equal(vm_patch_from_json(o, &d, &p), 0);
	json_object_put(o);
	assert_true(p.has_max && !p.has_weight && p.has_pin);
	vm_patch_apply(&d, &p);
	vm_patch_free(&p);
	assert_int_equal(d.cpu_max, 25);
	assert_int_equal(d.cpu_weight, 100);
	assert_int_equal(d.npin, 1);
	assert_int_equal(d.disks[0].bps, 9);   /* kept */
	assert_int_equal(d.disks[0].iops, 4);
	for (const char *const *b = (const char *const[]){
		     "{\"cpus\":1}", "{\"disk_limits\":[{\"disk\":1,\"bps\":1}]}",
		     "{\"disk_limits\":[{\"bps\":1}]}", "{\"disk_limits\":[{\"disk\":0,\"x\":1}]}",
		     "{\"cpu_pin\":[\"0\",\"1\",\"2\"]}", "{\"cpu_weight\":-3}", NULL }; *b; b++) {
		o = json_tokener_parse(*b);
		if (vm_patch_from_json(o, &d, &p) != -EINVAL)
			fail_msg("accepted: %s", *b);
		json_object_put(o);
	}
	vm_def_free(&d);
}

static void error_prefix_through_err_get(void **state)
{
	(void)state;
	err_set(-EINVAL, "inner %d", 42);
	assert_int_equal(err_set(-EIO, "outer: %s", err_get()), -EIO);
	assert_string_equal(err_get(), "outer: inner 42");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(control_actions_parse),
		cmocka_unit_test(control_rejects_bad_requests),
		cmocka_unit_test(control_rejects_embedded_nul_and_huge),
		cmocka_unit_test(control_migrate_parse),
		cmocka_unit_test(names),
		cmocka_unit_test(definitions),
		cmocka_unit_test(bad_definitions),
		cmocka_unit_test(patches),
		cmocka_unit_test(error_prefix_through_err_get),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

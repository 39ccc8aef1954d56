/* The per-vNIC firewall's definition (DESIGN §6.1): addresses, a nic's
 * "firewall"/"ips"/"anti_spoof" validated field by field, and the JSON
 * round trip that vm_def_copy() relies on. The nftables side runs in
 * tests/integration/test_firewall.py (it needs root). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <cmocka.h>
#include <json-c/json.h>

#include "vireo/firewall.h"
#include "vireo/log.h"
#include "vireo/mgr.h"

static void addresses(void **state)
{
	struct fw_cidr c;
	char buf[64];

	(void)state;
	assert_int_equal(fw_cidr_parse("10.1.2.3/8", &c), 0);
	assert_int_equal(c.family, AF_INET);
	fw_cidr_format(&c, buf, sizeof(buf));
	assert_string_equal(buf, "10.0.0.0/8");	/* host bits cleared */
	assert_int_equal(fw_cidr_parse("2001:db8::1", &c), 0);
	fw_cidr_format(&c, buf, sizeof(buf));
	assert_string_equal(buf, "2001:db8::1");
	assert_int_equal(c.prefix, 128);
	assert_int_equal(fw_cidr_parse("0.0.0.0/0", &c), 0);
	fw_cidr_format(&c, buf, sizeof(buf));
	assert_string_equal(buf, "0.0.0.0/0");
	static const char *const bad[] = { "", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1",
					   "10.0.0.0/8x", "::/129", "10.0.0", "host", "/8",
					   "10.0.0.0/ 8", "1.2.3.4/08/1" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(fw_cidr_parse(bad[i], &c), -EINVAL);
}

static int nic(const char *text, bool on_network, struct fw_conf *c)
{
	struct json_object *o = json_tokener_parse(text);
	int ret;

	assert_non_null(o);
	ret = nicfw_from_json(o, on_network, c);
	json_object_put(o);
	return ret;
}

static void good_and_round_trip(void **state)
{
	static const char text[] =
		"{\"ips\": [\"10.0.0.2\", \"2001:db8::2\"], \"anti_spoof\": false, \"firewall\": "
		"{\"policy_in\": \"drop\", \"rules\": [{\"dir\": \"in\", \"proto\": \"tcp\", "
		"\"dport\": \"8000-8080\", \"src\": \"10.0.0.0/8\", \"action\": \"reject\", "
		"\"log\": true}, {\"dir\": \"out\", \"proto\": \"udp\", \"dport\": 53, "
		"\"action\": \"accept\"}]}}";
	struct json_object *o = json_object_new_object();
	struct fw_conf c, d;

	(void)state;
	assert_int_equal(nic(text, true, &c), 0);
	assert_true(c.enabled && !c.anti_spoof);
	assert_int_equal(c.policy_in, FW_DROP);
	assert_int_equal(c.policy_out, FW_ACCEPT);
	assert_int_equal(c.nrules, 2);
	assert_int_equal(c.rules[0].dport_lo, 8000);
	assert_int_equal(c.rules[0].dport_hi, 8080);
	assert_true(c.rules[1].out && c.rules[1].dport_lo == 53 && c.rules[1].dport_hi == 53);
	nicfw_to_json(&c, o);
	assert_int_equal(nicfw_from_json(o, true, &d), 0);
	assert_int_equal(d.nrules, 2);
	assert_int_equal(d.nips, 2);
	assert_memory_equal(c.rules, d.rules, 2 * sizeof(*c.rules));
	assert_false(d.anti_spoof);
	json_object_put(o);
	nicfw_free(&c);
	nicfw_free(&d);
	/* Defaults: anti-spoofing on, no firewall. */
	assert_int_equal(nic("{}", false, &c), 0);
	assert_true(c.anti_spoof && !c.enabled && fw_conf_active(&c));
	nicfw_free(&c);
}

static void bad_fields_are_named(void **state)
{
	static const struct {
		const char *text, *field;
	} bad[] = {
		{ "{\"firewall\": {\"rules\": [{\"dir\": \"in\", \"action\": \"drop\", "
		  "\"src\": \"1.2.3.4/40\"}]}}", "'src'" },
		{ "{\"firewall\": {\"rules\": [{\"dir\": \"in\", \"action\": \"drop\", "
		  "\"proto\": \"udp\", \"dport\": \"9-\"}]}}", "'dport'" },
		{ "{\"firewall\": {\"rules\": [{\"dir\": \"in\", \"action\": \"drop\", "
		  "\"proto\": \"udp\", \"dport\": 65536}]}}", "'dport'" },
		{ "{\"firewall\": {\"rules\": [{\"dir\": \"in\", \"action\": \"drop\", "
		  "\"proto\": \"gre\"}]}}", "'proto'" },
		{ "{\"firewall\": {\"rules\": [{\"dir\": \"in\", \"action\": \"drop\", "
		  "\"proto\": \"icmp\", \"dst\": \"::1\"}]}}", "'proto'" },
		{ "{\"firewall\": {\"rules\": {}}}", "'rules'" },
		{ "{\"firewall\": {\"policy_out\": 1}}", "'policy_out'" },
		{ "{\"firewall\": {\"colour\": 1}}", "'colour'" },
		{ "{\"firewall\": 3}", "'firewall'" },
		{ "{\"ips\": \"10.0.0.1\"}", "'ips'" },
		{ "{\"ips\": [\"10.0.0.1\", 7]}", "'ips'[1]" },
	};
	struct fw_conf c;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(nic(bad[i].text, true, &c), -EINVAL);
		if (!strstr(err_get(), bad[i].field))
			fail_msg("%s: '%s' does not name %s", bad[i].text, err_get(), bad[i].field);
		nicfw_free(&c);
	}
	assert_int_equal(nic("{\"ips\": []}", false, &c), -EINVAL);
	assert_non_null(strstr(err_get(), "'network'"));
	nicfw_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(addresses),
		cmocka_unit_test(good_and_round_trip),
		cmocka_unit_test(bad_fields_are_named),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

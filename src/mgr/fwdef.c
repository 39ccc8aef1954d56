/* A vNIC's firewall in a definition: "firewall", "ips" and "anti_spoof"
 * in a nic, JSON <-> struct fw_conf, validated field by field (the rules
 * are put in force by nicfw.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/firewall.h"
#include "vireo/log.h"
#include "vireo/mgr.h"

static const char *const action_names[] = { "accept", "drop", "reject" };
static const char *const proto_names[] = { "any", "tcp", "udp", "icmp", "icmpv6" };

static int name_index(const char *s, const char *const *names, int n)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(s, names[i]))
			return i;
	return -1;
}

/* A string field of obj, or NULL (absent); -EINVAL if not a string. */
static int str_field(struct json_object *obj, const char *key, const char **out)
{
	struct json_object *v;

	*out = NULL;
	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return -EINVAL;
	*out = json_object_get_string(v);
	return 0;
}

static int check_keys(struct json_object *o, const char *const *keys, const char *what)
{
	if (!json_object_is_type(o, json_type_object))
		return err_set(-EINVAL, "%s must be a JSON object", what);
	json_object_object_foreach(o, key, val) {
		int i;

		(void)val;
		for (i = 0; keys[i] && strcmp(keys[i], key); i++)
			;
		if (!keys[i])
			return err_set(-EINVAL, "%s: unknown field '%.64s'", what, key);
	}
	return 0;
}

/* "22", "8000-8080" or 22. */
static int parse_dport(struct json_object *v, struct fw_rule *r)
{
	unsigned long lo, hi;
	const char *s;
	char *end;

	if (json_object_is_type(v, json_type_int)) {
		int64_t p = json_object_get_int64(v);

		if (p < 1 || p > 65535)
			return -EINVAL;
		r->dport_lo = r->dport_hi = (uint16_t)p;
		return 0;
	}
	if (!json_object_is_type(v, json_type_string))
		return -EINVAL;
	s = json_object_get_string(v);
	if (*s < '0' || *s > '9')
		return -EINVAL;
	lo = strtoul(s, &end, 10);
	hi = lo;
	if (*end == '-') {
		if (end[1] < '0' || end[1] > '9')
			return -EINVAL;
		hi = strtoul(end + 1, &end, 10);
	}
	if (*end || lo < 1 || hi > 65535 || lo > hi)
		return -EINVAL;
	r->dport_lo = (uint16_t)lo;
	r->dport_hi = (uint16_t)hi;
	return 0;
}

static int parse_addr(struct json_object *o, const char *key, struct fw_cidr *c)
{
	const char *s;

	if (str_field(o, key, &s) || (s && fw_cidr_parse(s, c)))
		return err_set(-EINVAL, "'%s' must be an address or CIDR (10.0.0.0/8, "
			       "2001:db8::/32)", key);
	return 0;
}

static int parse_rule_fields(struct json_object *o, struct fw_rule *r)
{
	struct json_object *v;
	const char *s;
	int i;

	if (str_field(o, "dir", &s) || !s || (strcmp(s, "in") && strcmp(s, "out")))
		return err_set(-EINVAL, "'dir' must be \"in\" or \"out\"");
	r->out = !strcmp(s, "out");
	if (str_field(o, "action", &s) || !s || (i = name_index(s, action_names, 3)) < 0)
		return err_set(-EINVAL, "'action' must be accept, drop or reject");
	r->action = (enum fw_action)i;
	if (str_field(o, "proto", &s) || (s && (i = name_index(s, proto_names, 5)) < 0))
		return err_set(-EINVAL, "'proto' must be tcp, udp, icmp, icmpv6 or any");
	r->proto = s ? (enum fw_proto)i : FW_ANY;
	if (json_object_object_get_ex(o, "dport", &v)) {
		if (r->proto != FW_TCP && r->proto != FW_UDP)
			return err_set(-EINVAL, "'dport' needs 'proto' tcp or udp");
		if (parse_dport(v, r))
			return err_set(-EINVAL, "'dport' must be a port (1-65535) or a range "
				       "like \"8000-8080\"");
	}
	if (parse_addr(o, "src", &r->src) || parse_addr(o, "dst", &r->dst))
		return -EINVAL;
	if (r->src.family && r->dst.family && r->src.family != r->dst.family)
		return err_set(-EINVAL, "'src' and 'dst' must be of one family");
	if ((r->proto == FW_ICMP && (r->src.family == AF_INET6 || r->dst.family == AF_INET6)) ||
	    (r->proto == FW_ICMPV6 && (r->src.family == AF_INET || r->dst.family == AF_INET)))
		return err_set(-EINVAL, "'proto' and the addresses are of different families");
	if (json_object_object_get_ex(o, "log", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "'log' must be true or false");
		r->log = json_object_get_boolean(v);
	}
	return 0;
}

static int parse_rules(struct json_object *fw, struct fw_conf *c)
{
	static const char *const keys[] = { "dir", "proto", "dport", "src", "dst", "action",
					    "log", NULL };
	struct json_object *arr;
	size_t n;

	if (!json_object_object_get_ex(fw, "rules", &arr))
		return 0;
	if (!json_object_is_type(arr, json_type_array))
		return err_set(-EINVAL, "firewall: 'rules' must be an array");
	n = json_object_array_length(arr);
	if (n > FW_MAX_RULES)
		return err_set(-EINVAL, "firewall: at most %d 'rules'", FW_MAX_RULES);
	c->rules = calloc(n ? n : 1, sizeof(*c->rules));
	if (!c->rules)
		return err_set(-ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		struct json_object *o = json_object_array_get_idx(arr, i);
		char what[48];

		snprintf(what, sizeof(what), "firewall: rules[%zu]", i);
		if (check_keys(o, keys, what))
			return -EINVAL;
		if (parse_rule_fields(o, &c->rules[i]))
			return err_set(-EINVAL, "%s: %s", what, err_get());
		c->nrules++;
	}
	return 0;
}

static int parse_policy(struct json_object *fw, const char *key, enum fw_action *out)
{
	const char *s;

	*out = FW_ACCEPT;
	if (str_field(fw, key, &s) || (s && strcmp(s, "accept") && strcmp(s, "drop")))
		return err_set(-EINVAL, "firewall: '%s' must be accept or drop", key);
	if (s && !strcmp(s, "drop"))
		*out = FW_DROP;
	return 0;
}

static int parse_firewall(struct json_object *fw, struct fw_conf *c)
{
	static const char *const keys[] = { "policy_in", "policy_out", "rules", NULL };

	if (check_keys(fw, keys, "'firewall'"))
		return -EINVAL;
	c->enabled = true;
	if (parse_policy(fw, "policy_in", &c->policy_in) ||
	    parse_policy(fw, "policy_out", &c->policy_out))
		return -EINVAL;
	return parse_rules(fw, c);
}

static int parse_ips(struct json_object *arr, struct fw_conf *c)
{
	size_t n;

	if (!json_object_is_type(arr, json_type_array))
		return err_set(-EINVAL, "'ips' must be an array of addresses");
	n = json_object_array_length(arr);
	if (n > FW_MAX_IPS)
		return err_set(-EINVAL, "at most %d 'ips'", FW_MAX_IPS);
	for (size_t i = 0; i < n; i++) {
		struct json_object *v = json_object_array_get_idx(arr, i);

		if (!json_object_is_type(v, json_type_string) ||
		    fw_cidr_parse(json_object_get_string(v), &c->ips[i]))
			return err_set(-EINVAL, "'ips'[%zu] must be an address or CIDR", i);
		c->nips++;
	}
	return 0;
}

int nicfw_from_json(struct json_object *nic, bool on_network, struct fw_conf *c)
{
	struct json_object *v;
	bool has_fw = json_object_object_get_ex(nic, "firewall", &v);
	int ret;

	memset(c, 0, sizeof(*c));
	c->anti_spoof = true;
	if ((has_fw || json_object_object_get_ex(nic, "ips", &v)) && !on_network)
		return err_set(-EINVAL, "'firewall' and 'ips' need a 'network'");
	if (has_fw && json_object_object_get_ex(nic, "firewall", &v) &&
	    !json_object_is_type(v, json_type_null) && (ret = parse_firewall(v, c)))
		return ret;
	if (json_object_object_get_ex(nic, "ips", &v) && (ret = parse_ips(v, c)))
		return ret;
	if (json_object_object_get_ex(nic, "anti_spoof", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "'anti_spoof' must be true or false");
		c->anti_spoof = json_object_get_boolean(v);
	}
	return 0;
}

void nicfw_free(struct fw_conf *c)
{
	free(c->rules);
	c->rules = NULL;
	c->nrules = 0;
}

static struct json_object *rule_json(const struct fw_rule *r)
{
	struct json_object *o = json_object_new_object();
	char a[64];

	json_object_object_add(o, "dir", json_object_new_string(r->out ? "out" : "in"));
	if (r->proto != FW_ANY)
		json_object_object_add(o, "proto", json_object_new_string(proto_names[r->proto]));
	if (r->dport_lo) {
		snprintf(a, sizeof(a), r->dport_lo == r->dport_hi ? "%u" : "%u-%u", r->dport_lo,
			 r->dport_hi);
		json_object_object_add(o, "dport", json_object_new_string(a));
	}
	if (r->src.family) {
		fw_cidr_format(&r->src, a, sizeof(a));
		json_object_object_add(o, "src", json_object_new_string(a));
	}
	if (r->dst.family) {
		fw_cidr_format(&r->dst, a, sizeof(a));
		json_object_object_add(o, "dst", json_object_new_string(a));
	}
	json_object_object_add(o, "action", json_object_new_string(action_names[r->action]));
	if (r->log)
		json_object_object_add(o, "log", json_object_new_boolean(true));
	return o;
}

void nicfw_to_json(const struct fw_conf *c, struct json_object *nic)
{
	if (c->enabled) {
		struct json_object *fw = json_object_new_object(), *rules = json_object_new_array();

		json_object_object_add(fw, "policy_in",
				       json_object_new_string(action_names[c->policy_in]));
		json_object_object_add(fw, "policy_out",
				       json_object_new_string(action_names[c->policy_out]));
		for (unsigned int i = 0; i < c->nrules; i++)
			json_object_array_add(rules, rule_json(&c->rules[i]));
		json_object_object_add(fw, "rules", rules);
		json_object_object_add(nic, "firewall", fw);
	}
	if (c->nips) {
		struct json_object *ips = json_object_new_array();
		char a[64];

		for (unsigned int i = 0; i < c->nips; i++) {
			fw_cidr_format(&c->ips[i], a, sizeof(a));
			json_object_array_add(ips, json_object_new_string(a));
		}
		json_object_object_add(nic, "ips", ips);
	}
	if (!c->anti_spoof)
		json_object_object_add(nic, "anti_spoof", json_object_new_boolean(false));
}

/* {"nic": I, "firewall"?, "ips"?, "anti_spoof"?} into *index and c. */
int nicfw_update_from_json(struct json_object *body, const struct vm_def *def,
			   unsigned int *index, struct fw_conf *c)
{
	static const char *const keys[] = { "nic", "firewall", "ips", "anti_spoof", NULL };
	struct json_object *v;
	int64_t i;

	memset(c, 0, sizeof(*c));
	if (check_keys(body, keys, "the body"))
		return -EINVAL;
	if (!json_object_object_get_ex(body, "nic", &v) || !json_object_is_type(v, json_type_int))
		return err_set(-EINVAL, "'nic' must be the index of a vNIC");
	i = json_object_get_int64(v);
	if (i < 0 || i >= (int64_t)def->nnics)
		return err_set(-EINVAL, "'nic': no vNIC %lld (the VM has %u)", (long long)i,
			       def->nnics);
	if (!def->nics[i].network)
		return err_set(-EINVAL, "'nic': vNIC %lld is on no network", (long long)i);
	*index = (unsigned int)i;
	return nicfw_from_json(body, true, c);
}

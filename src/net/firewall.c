/* The per-vNIC firewall and anti-spoofing (include/vireo/firewall.h): we
 * write nftables commands as text and hand each change to libnftables as
 * one buffer, which it sends as one netlink batch, so the kernel applies
 * all of it or none. The kernel does the filtering; nothing here is on the
 * data path. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <net/if.h>
#include <nftables/libnftables.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "vireo/firewall.h"
#include "vireo/log.h"

/* ---- a growing string ---- */

struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *p = realloc(b->p, cap);

		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

static char *sb_done(struct sbuf *b)
{
	if (b->oom) {
		free(b->p);
		return NULL;
	}
	return b->p ? b->p : strdup("");
}

/* "{ a, b/24 }" of the ips of one family (plus `extra`), into b. */
static void ip_set(struct sbuf *b, const struct fw_conf *c, int family, const char *extra)
{
	char a[64];

	sb_printf(b, "{ %s", extra);
	for (unsigned int i = 0; i < c->nips; i++) {
		if (c->ips[i].family != family)
			continue;
		fw_cidr_format(&c->ips[i], a, sizeof(a));
		sb_printf(b, ", %s", a);
	}
	sb_printf(b, " }");
}

/* ---- the bridge table: anti-spoofing and the vNIC mark ---- */

/* The tables, their base chains and the dispatch rules, all idempotent:
 * "add" of what exists is no error, and the dispatch rules are rewritten. */
static void base_text(struct sbuf *b)
{
	sb_printf(b,
		  "add table bridge vireo\n"
		  /* before br_netfilter (priority 0) hands IP to the inet hooks */
		  "add chain bridge vireo vnic_pre { type filter hook prerouting priority -300; "
		  "policy accept; }\n"
		  /* before br_netfilter's inet forward (priority -1) */
		  "add chain bridge vireo vnic_fwd { type filter hook forward priority -200; "
		  "policy accept; }\n"
		  "add map bridge vireo from_vnic { type ifname : verdict; }\n"
		  "add map bridge vireo to_vnic { type ifname : verdict; }\n"
		  "flush chain bridge vireo vnic_pre\n"
		  "add rule bridge vireo vnic_pre iifname vmap @from_vnic\n"
		  "flush chain bridge vireo vnic_fwd\n"
		  "add rule bridge vireo vnic_fwd oifname vmap @to_vnic\n"
		  "add table inet vireo\n"
		  "add chain inet vireo vnic_fwd { type filter hook forward priority 0; "
		  "policy accept; }\n"
		  "add chain inet vireo vnic_in { type filter hook input priority 0; "
		  "policy accept; }\n"
		  "add map inet vireo from_vnic { type mark : verdict; }\n"
		  "add map inet vireo to_vnic { type mark : verdict; }\n"
		  "flush chain inet vireo vnic_fwd\n"
		  "add rule inet vireo vnic_fwd meta mark and 0x0000ffff vmap @from_vnic\n"
		  "add rule inet vireo vnic_fwd meta mark and 0xffff0000 vmap @to_vnic\n"
		  "flush chain inet vireo vnic_in\n"
		  "add rule inet vireo vnic_in meta mark and 0x0000ffff vmap @from_vnic\n");
}

/* A chain emptied (made if absent), so that it can be refilled or deleted
 * in the same transaction whether or not it existed. */
static void chain_reset(struct sbuf *b, const char *family, const char *tap, const char *dir)
{
	sb_printf(b, "add chain %s vireo nic-%s-%s\nflush chain %s vireo nic-%s-%s\n", family, tap,
		  dir, family, tap, dir);
}

#define DROP(b, tap, match, what) \
	sb_printf(b, "add rule bridge vireo nic-%s-out %s counter drop comment \"%s\"\n", tap, \
		  match, what)

/* The frames a check is about, untagged or inside an 802.1Q tag (where
 * the bridge family matches the inner header after "vlan type"). */
struct spoof_kind {
	const char *ip, *arp, *ip6; /* prefixes before an ip / arp / ip6 match */
	const char *sfx;            /* of the counters' names */
};

static const struct spoof_kind untagged = { "", "", "", "" };
static const struct spoof_kind tagged = { "ether type 8021q vlan type ip ",
					  "ether type 8021q vlan type arp ",
					  "ether type 8021q vlan type ip6 ", "-vlan" };

/* IPv4 and ARP from the vNIC: only its addresses (0.0.0.0 for DHCP and ARP
 * probes); it may ask for a lease but not serve one. */
static void spoof_ipv4(struct sbuf *b, const char *tap, const struct fw_conf *c,
		       const struct spoof_kind *k)
{
	sb_printf(b, "add rule bridge vireo nic-%s-out %sudp sport 67 counter drop comment "
		  "\"dhcp-server%s\"\n", tap, *k->ip ? k->ip : "ether type ip ", k->sfx);
	sb_printf(b, "add rule bridge vireo nic-%s-out %sip saddr != ", tap, k->ip);
	ip_set(b, c, AF_INET, "0.0.0.0");
	sb_printf(b, " counter drop comment \"spoof-ip%s\"\n", k->sfx);
	sb_printf(b, "add rule bridge vireo nic-%s-out %sarp saddr ip != ", tap, k->arp);
	ip_set(b, c, AF_INET, "0.0.0.0");
	sb_printf(b, " counter drop comment \"spoof-arp-ip%s\"\n", k->sfx);
}

/* IPv6 from the vNIC: its addresses, link-local and :: (duplicate address
 * detection); neighbour adverts only for those targets; no router adverts. */
static void spoof_ipv6(struct sbuf *b, const char *tap, const struct fw_conf *c,
		       const struct spoof_kind *k)
{
	sb_printf(b, "add rule bridge vireo nic-%s-out %sip6 saddr != ", tap, k->ip6);
	ip_set(b, c, AF_INET6, "::, fe80::/10");
	sb_printf(b, " counter drop comment \"spoof-ip6%s\"\n", k->sfx);
	sb_printf(b, "add rule bridge vireo nic-%s-out %sicmpv6 type nd-router-advert counter drop "
		  "comment \"router-advert%s\"\n", tap, k->ip6, k->sfx);
	/* nft 1.0.6 has no "icmpv6 taddr": the target is 16 bytes at offset 8
	 * of the ICMPv6 header; fe80::/10 is its first 10 bits 0x3fa. */
	sb_printf(b, "add rule bridge vireo nic-%s-out %sicmpv6 type nd-neighbor-advert "
		  "@th,64,10 != 0x3fa @th,64,128 != { 0x0", tap, k->ip6);
	for (unsigned int i = 0; i < c->nips; i++) {
		if (c->ips[i].family != AF_INET6 || c->ips[i].prefix != 128)
			continue;
		sb_printf(b, ", 0x");
		for (int j = 0; j < 16; j++)
			sb_printf(b, "%02x", c->ips[i].addr[j]);
	}
	sb_printf(b, " } counter drop comment \"spoof-nd%s\"\n", k->sfx);
}

/* Every address check, for untagged frames and for frames in one 802.1Q
 * tag (a trunk's guest); two tags (802.1ad, or 802.1Q in 802.1Q) hide the
 * addresses from the checks and are dropped. */
static void spoof_ip(struct sbuf *b, const char *tap, const struct fw_conf *c, unsigned int id)
{
	sb_printf(b, "add rule bridge vireo nic-%s-out ip saddr 0.0.0.0 udp sport 68 udp dport 67 "
		  "meta mark set 0x%08x accept\n", tap, id);
	DROP(b, tap, "ether type 8021ad", "spoof-qinq");
	DROP(b, tap, "ether type 8021q vlan type { 8021q, 8021ad }", "spoof-qinq-inner");
	spoof_ipv4(b, tap, c, &untagged);
	spoof_ipv6(b, tap, c, &untagged);
	spoof_ipv4(b, tap, c, &tagged);
	spoof_ipv6(b, tap, c, &tagged);
}

/* The vNIC's bridge chains: what it sends is checked, then marked with its
 * id (bits 0-15); what goes to it gets its id in bits 16-31. */
static void bridge_text(struct sbuf *b, const struct fw_vnic *v, unsigned int id)
{
	const struct fw_conf *c = v->conf;

	chain_reset(b, "bridge", v->tap, "out");
	if (c->anti_spoof) {
		sb_printf(b, "add rule bridge vireo nic-%s-out ether saddr != %s counter drop "
			  "comment \"spoof-mac\"\n", v->tap, v->mac);
		sb_printf(b, "add rule bridge vireo nic-%s-out arp saddr ether != %s counter drop "
			  "comment \"spoof-arp-mac\"\n", v->tap, v->mac);
	}
	if (c->anti_spoof && c->nips)
		spoof_ip(b, v->tap, c, id);
	sb_printf(b, "add rule bridge vireo nic-%s-out meta mark set 0x%08x\n", v->tap, id);
	sb_printf(b, "add element bridge vireo from_vnic { \"%s\" : jump nic-%s-out }\n", v->tap,
		  v->tap);
	chain_reset(b, "bridge", v->tap, "in");
	sb_printf(b, "add rule bridge vireo nic-%s-in meta mark set meta mark and 0x0000ffff or "
		  "0x%08x\n", v->tap, id << 16);
	sb_printf(b, "add element bridge vireo to_vnic { \"%s\" : jump nic-%s-in }\n", v->tap,
		  v->tap);
}

/* ---- the inet table: the user's rules ---- */

static const char *const proto_nft[] = { "", "tcp", "udp", "icmp", "ipv6-icmp" };

static void rule_match(struct sbuf *b, const struct fw_rule *r)
{
	char a[64];

	if (r->proto != FW_ANY)
		sb_printf(b, " meta l4proto %s", proto_nft[r->proto]);
	if (r->dport_lo && r->dport_lo == r->dport_hi)
		sb_printf(b, " th dport %u", r->dport_lo);
	else if (r->dport_lo)
		sb_printf(b, " th dport %u-%u", r->dport_lo, r->dport_hi);
	if (r->src.family) {
		fw_cidr_format(&r->src, a, sizeof(a));
		sb_printf(b, " %s saddr %s", r->src.family == AF_INET ? "ip" : "ip6", a);
	}
	if (r->dst.family) {
		fw_cidr_format(&r->dst, a, sizeof(a));
		sb_printf(b, " %s daddr %s", r->dst.family == AF_INET ? "ip" : "ip6", a);
	}
}

/* "accept" returns, so that the other vNIC's chain (a frame between two
 * VMs passes the sender's out and the receiver's in) still runs. */
static const char *verdict(enum fw_action a, enum fw_proto p)
{
	return a == FW_ACCEPT ? "return" : a == FW_DROP ? "drop" :
	       p == FW_TCP ? "reject with tcp reset" : "reject";
}

/* What the firewall always lets through: replies to allowed connections,
 * neighbour discovery and DHCP (for the client's side of it). */
static void inet_prologue(struct sbuf *b, const char *tap, bool out)
{
	const char *d = out ? "out" : "in";

	sb_printf(b, "add rule inet vireo nic-%s-%s ct state established,related return\n", tap, d);
	sb_printf(b, "add rule inet vireo nic-%s-%s ct state invalid counter drop comment "
		  "\"invalid %s\"\n", tap, d, d);
	sb_printf(b, "add rule inet vireo nic-%s-%s icmpv6 type { nd-neighbor-solicit, "
		  "nd-neighbor-advert, nd-router-solicit, nd-router-advert } return\n", tap, d);
	if (out)
		sb_printf(b, "add rule inet vireo nic-%s-out udp sport 68 udp dport 67 return\n"
			  "add rule inet vireo nic-%s-out udp sport 546 udp dport 547 return\n", tap,
			  tap);
	else
		sb_printf(b, "add rule inet vireo nic-%s-in udp sport 67 udp dport 68 return\n"
			  "add rule inet vireo nic-%s-in udp sport 547 udp dport 546 return\n", tap,
			  tap);
}

/* Rules a verdict map keyed by protocol . port can decide: tcp or udp with
 * a port and nothing the key cannot say (addresses, a log, a reject). */
static bool mapable(const struct fw_rule *r)
{
	return (r->proto == FW_TCP || r->proto == FW_UDP) && r->dport_lo && !r->src.family &&
	       !r->dst.family && !r->log && r->action != FW_REJECT;
}

static bool overlap(const struct fw_rule *a, const struct fw_rule *b)
{
	return a->proto == b->proto && a->dport_lo <= b->dport_hi && b->dport_lo <= a->dport_hi;
}

/* The end (exclusive) of the run of rules of one direction from i that a
 * verdict map can hold: mapable, and no two keys overlap, so that the one
 * that matches is the first that would have. The other direction's rules
 * in between are in the other chain. */
static unsigned int run_end(const struct fw_conf *c, unsigned int i, bool out)
{
	unsigned int j;

	for (j = i; j < c->nrules; j++) {
		if (c->rules[j].out != out)
			continue;
		if (!mapable(&c->rules[j]))
			break;
		for (unsigned int k = i; k < j; k++)
			if (c->rules[k].out == out && overlap(&c->rules[k], &c->rules[j]))
				return j;
	}
	return j;
}

/* Rules [i, end) of one direction as one lookup: a map with a counter and
 * a comment "rule N" per element, which the counters are read from. The
 * key is port . protocol, port first: the kernel's set for concatenated
 * intervals (pipapo) narrows the candidates field by field and then walks
 * the ones left, so a first field that all elements share (the protocol)
 * would make each lookup cost as many steps as the map has elements
 * (measured: 1,000 rules, 3 µs a packet; port first: as cheap as 10). */
static void rule_map(struct sbuf *b, const struct fw_vnic *v, bool out, unsigned int i,
		     unsigned int end)
{
	const char *d = out ? "out" : "in", *sep = "";

	sb_printf(b, "add map inet vireo nic-%s-%s-m%u { type inet_service . inet_proto : "
		  "verdict; flags interval; counter; }\n", v->tap, d, i);
	sb_printf(b, "add element inet vireo nic-%s-%s-m%u {", v->tap, d, i);
	for (unsigned int k = i; k < end; k++) {
		const struct fw_rule *r = &v->conf->rules[k];

		if (r->out != out)
			continue;
		sb_printf(b, "%s %u", sep, r->dport_lo);
		if (r->dport_hi != r->dport_lo)
			sb_printf(b, "-%u", r->dport_hi);
		sb_printf(b, " . %s comment \"rule %u\" : %s", proto_nft[r->proto], k,
			  verdict(r->action, r->proto));
		sep = ",";
	}
	sb_printf(b, " }\nadd rule inet vireo nic-%s-%s th dport . meta l4proto vmap "
		  "@nic-%s-%s-m%u comment \"rules %u-%u\"\n", v->tap, d, v->tap, d, i, i, end - 1);
}

/* Fewer rules than this in a run stay rules (a lookup costs about as much). */
#define FW_MAP_MIN 4

static void inet_chain(struct sbuf *b, const struct fw_vnic *v, bool out)
{
	const struct fw_conf *c = v->conf;
	const char *d = out ? "out" : "in";
	enum fw_action policy = out ? c->policy_out : c->policy_in;

	chain_reset(b, "inet", v->tap, d);
	inet_prologue(b, v->tap, out);
	for (unsigned int i = 0; i < c->nrules; i++) {
		const struct fw_rule *r = &c->rules[i];
		unsigned int end = run_end(c, i, out), n = 0;

		if (r->out != out)
			continue;
		for (unsigned int k = i; k < end; k++)
			n += c->rules[k].out == out;
		if (n >= FW_MAP_MIN) {
			rule_map(b, v, out, i, end);
			i = end - 1;
			continue;
		}
		sb_printf(b, "add rule inet vireo nic-%s-%s", v->tap, d);
		rule_match(b, r);
		sb_printf(b, " counter");
		if (r->log)
			sb_printf(b, " log prefix \"vireo %s %s %u: \"", v->tap, d, i);
		sb_printf(b, " %s comment \"rule %u\"\n", verdict(r->action, r->proto), i);
	}
	sb_printf(b, "add rule inet vireo nic-%s-%s counter %s comment \"policy %s\"\n", v->tap, d,
		  policy == FW_ACCEPT ? "return" : "drop", d);
}

static void inet_text(struct sbuf *b, const struct fw_vnic *v, unsigned int id)
{
	inet_chain(b, v, true);
	inet_chain(b, v, false);
	sb_printf(b, "add element inet vireo from_vnic { 0x%08x : jump nic-%s-out }\n", id, v->tap);
	sb_printf(b, "add element inet vireo to_vnic { 0x%08x : jump nic-%s-in }\n", id << 16,
		  v->tap);
}

/* ---- running nftables ---- */

static int nft_run(const char *cmds, char **out, bool json)
{
	struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
	int ret;

	if (!ctx)
		return err_set(-ENOMEM, "cannot create an nftables context");
	nft_ctx_buffer_error(ctx);
	if (out) {
		nft_ctx_buffer_output(ctx);
		if (json)
			nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
	}
	ret = nft_run_cmd_from_buffer(ctx, cmds);
	if (ret) {
		const char *e = nft_ctx_get_error_buffer(ctx);
		size_t n = strcspn(e ? e : "", "\n");

		ret = err_set(-EINVAL, "nftables: %.*s", (int)(n > 400 ? 400 : n), e ? e : "");
	} else if (out) {
		*out = strdup(nft_ctx_get_output_buffer(ctx));
		ret = *out ? 0 : err_set(-ENOMEM, "out of memory");
	}
	nft_ctx_free(ctx);
	return ret;
}

/* Bridged IP reaches the inet hooks (and conntrack) only through
 * br_netfilter with these switched on. */
static int brnf_enable(void)
{
	static const char *const files[] = { "/proc/sys/net/bridge/bridge-nf-call-iptables",
					     "/proc/sys/net/bridge/bridge-nf-call-ip6tables" };

	for (int i = 0; i < 2; i++) {
		char c = '0';
		int fd = open(files[i], O_RDWR | O_CLOEXEC);

		if (fd < 0)
			return err_set(-EOPNOTSUPP, "the firewall needs br_netfilter "
				       "(modprobe br_netfilter): no %s", files[i]);
		if (read(fd, &c, 1) == 1 && c != '1' &&
		    (lseek(fd, 0, SEEK_SET) < 0 || write(fd, "1", 1) != 1)) {
			close(fd);
			return err_set(-errno, "cannot set %s: %m", files[i]);
		}
		close(fd);
	}
	return 0;
}

/* The vNIC's id in the marks: its tap's ifindex, unique while it exists. */
static int vnic_id(const char *tap, unsigned int *id)
{
	unsigned int idx = if_nametoindex(tap);

	if (!idx)
		return err_set(-ENOENT, "no tap %s for the firewall", tap);
	if (idx > 0xffff)
		return err_set(-ERANGE, "tap %s: ifindex %u does not fit the firewall's mark", tap,
			       idx);
	*id = idx;
	return 0;
}

/* The table as nftables' JSON ("nftables" array), or NULL if absent. */
static struct json_object *list_table(const char *family)
{
	char cmd[64], *out = NULL;
	struct json_object *o, *arr = NULL;

	snprintf(cmd, sizeof(cmd), "list table %s vireo", family);
	if (nft_run(cmd, &out, true))
		return NULL;
	o = json_tokener_parse(out);
	free(out);
	if (o && json_object_object_get_ex(o, "nftables", &arr))
		json_object_get(arr);
	json_object_put(o);
	return arr;
}

/* Is e (a map element [key, {"jump": {"target": T}}]) a jump to a chain of tap? */
static bool elem_of(struct json_object *e, const char *tap, int64_t *key)
{
	struct json_object *v, *j, *t;
	char c1[300], c2[300];

	if (json_object_array_length(e) != 2)
		return false;
	v = json_object_array_get_idx(e, 1);
	if (!json_object_object_get_ex(v, "jump", &j) ||
	    !json_object_object_get_ex(j, "target", &t))
		return false;
	snprintf(c1, sizeof(c1), "nic-%s-out", tap);
	snprintf(c2, sizeof(c2), "nic-%s-in", tap);
	if (strcmp(json_object_get_string(t), c1) && strcmp(json_object_get_string(t), c2))
		return false;
	*key = json_object_get_int64(json_object_array_get_idx(e, 0));
	return true;
}

/* The inet map elements of a tap are keyed by its mark, which is not known
 * once the tap is gone: they are found by the chain they jump to. */
static void old_inet_elements(struct sbuf *b, struct json_object *table, const char *tap)
{
	size_t n = table ? json_object_array_length(table) : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *m, *name, *elems;

		if (!json_object_object_get_ex(json_object_array_get_idx(table, i), "map", &m) ||
		    !json_object_object_get_ex(m, "name", &name) ||
		    !json_object_object_get_ex(m, "elem", &elems))
			continue;
		for (size_t k = 0; k < json_object_array_length(elems); k++) {
			int64_t key;

			if (elem_of(json_object_array_get_idx(elems, k), tap, &key))
				sb_printf(b, "delete element inet vireo %s { 0x%08llx }\n",
					  json_object_get_string(name), (unsigned long long)key);
		}
	}
}

/* Deletes the tap's rule maps ("nic-TAP-DIR-mN") that the listing has. */
static void old_rule_maps(struct sbuf *b, struct json_object *table, const char *tap)
{
	size_t n = table ? json_object_array_length(table) : 0;
	char p1[300], p2[300];

	snprintf(p1, sizeof(p1), "nic-%s-out-m", tap);
	snprintf(p2, sizeof(p2), "nic-%s-in-m", tap);
	for (size_t i = 0; i < n; i++) {
		struct json_object *m, *name;
		const char *s;

		if (!json_object_object_get_ex(json_object_array_get_idx(table, i), "map", &m) ||
		    !json_object_object_get_ex(m, "name", &name))
			continue;
		s = json_object_get_string(name);
		if (!strncmp(s, p1, strlen(p1)) || !strncmp(s, p2, strlen(p2)))
			sb_printf(b, "delete map inet vireo %s\n", s);
	}
}

/* Removes a vNIC's chains, its rule maps and its bridge map elements (the
 * inet ones: old_inet_elements()). A bridge element or a chain is first
 * added (a no-op if it exists: the names are fixed by the tap) so that
 * deleting it cannot fail on what is absent; the rule maps are those the
 * listing old_inet has. */
static void remove_text(struct sbuf *b, const char *tap, struct json_object *old_inet)
{
	static const char *const dir[] = { "out", "in" };
	static const char *const map[] = { "from_vnic", "to_vnic" };

	for (int d = 0; d < 2; d++) {
		chain_reset(b, "bridge", tap, dir[d]);
		sb_printf(b, "add element bridge vireo %s { \"%s\" : jump nic-%s-%s }\n"
			  "delete element bridge vireo %s { \"%s\" }\n"
			  "delete chain bridge vireo nic-%s-%s\n", map[d], tap, tap, dir[d], map[d],
			  tap, tap, dir[d]);
	}
	for (int d = 0; d < 2; d++)
		chain_reset(b, "inet", tap, dir[d]);
	old_rule_maps(b, old_inet, tap);	/* no longer used once the chains are empty */
	for (int d = 0; d < 2; d++)
		sb_printf(b, "delete chain inet vireo nic-%s-%s\n", tap, dir[d]);
}

char *fw_install_text(const struct fw_vnic *v, unsigned int n)
{
	struct json_object *old = list_table("inet");
	struct sbuf b = { 0 };

	base_text(&b);
	for (unsigned int i = 0; i < n; i++) {
		unsigned int id = 0;

		if (vnic_id(v[i].tap, &id)) {
			free(b.p);
			json_object_put(old);
			return NULL;
		}
		/* whatever an earlier configuration left */
		old_inet_elements(&b, old, v[i].tap);
		remove_text(&b, v[i].tap, old);
		bridge_text(&b, &v[i], id);
		if (v[i].conf->enabled)
			inet_text(&b, &v[i], id);
	}
	json_object_put(old);
	return sb_done(&b);
}

/* Does the bridge table jump for a tap other than taps[0..n)? */
static bool others_left(struct json_object *table, const char *const *taps, unsigned int n)
{
	size_t len = table ? json_object_array_length(table) : 0;

	for (size_t i = 0; i < len; i++) {
		struct json_object *m, *elems;

		if (!json_object_object_get_ex(json_object_array_get_idx(table, i), "map", &m) ||
		    !json_object_object_get_ex(m, "elem", &elems))
			continue;
		for (size_t k = 0; k < json_object_array_length(elems); k++) {
			struct json_object *e = json_object_array_get_idx(elems, k);
			const char *key = json_object_get_string(json_object_array_get_idx(e, 0));
			unsigned int t;

			for (t = 0; t < n && strcmp(key ? key : "", taps[t]); t++)
				;
			if (t == n)
				return true;
		}
	}
	return false;
}

char *fw_remove_text(const char *const *taps, unsigned int n)
{
	struct json_object *old = list_table("inet"), *br = list_table("bridge");
	struct sbuf b = { 0 };

	if (!others_left(br, taps, n)) {
		/* The last vNIC: no base chain stays hooked into every bridge. */
		sb_printf(&b, "add table bridge vireo\ndelete table bridge vireo\n"
			  "add table inet vireo\ndelete table inet vireo\n");
		goto out;
	}
	base_text(&b);
	for (unsigned int i = 0; i < n; i++) {
		old_inet_elements(&b, old, taps[i]);
		remove_text(&b, taps[i], old);
	}
out:
	json_object_put(old);
	json_object_put(br);
	return sb_done(&b);
}

/* A change reads the ruleset, then writes one transaction made from what it
 * read (the last vNIC's removal drops the tables). Two daemons on one host
 * share the tables, so their read-then-write must not interleave (one could
 * drop the tables the other just filled): they take this lock, as iptables
 * takes xtables.lock. Waited for at most FW_LOCK_WAIT_MS. */
#define FW_LOCK_PATH "/run/vireo-firewall.lock"
#define FW_LOCK_WAIT_MS 10000

static int ruleset_lock(void)
{
	int fd = open(FW_LOCK_PATH, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (fd < 0)
		return err_set(-errno, "cannot open %s: %m", FW_LOCK_PATH);
	for (int waited = 0; flock(fd, LOCK_EX | LOCK_NB) < 0; waited += 10) {
		int ret = errno != EWOULDBLOCK && errno != EINTR ?
			  err_set(-errno, "cannot lock %s: %m", FW_LOCK_PATH) :
			  waited >= FW_LOCK_WAIT_MS ?
			  err_set(-EBUSY, "%s: held by another process for %d ms", FW_LOCK_PATH,
				  FW_LOCK_WAIT_MS) : 0;

		if (ret) {
			close(fd);
			return ret;
		}
		usleep(10000);
	}
	return fd;
}

int fw_vnic_apply(const struct fw_vnic *v, unsigned int n)
{
	char *text;
	int ret, lock;

	for (unsigned int i = 0; i < n; i++)
		if (v[i].conf->enabled && (ret = brnf_enable()))
			return ret;
	if ((lock = ruleset_lock()) < 0)
		return lock;
	err_clear();
	text = fw_install_text(v, n);
	if (!text)
		ret = *err_get() ? -ENOENT : err_set(-ENOMEM, "out of memory");
	else
		ret = nft_run(text, NULL, false);
	free(text);
	close(lock);
	return ret;
}

int fw_vnic_remove(const char *const *taps, unsigned int n)
{
	int lock = ruleset_lock();
	char *text;
	int ret;

	if (lock < 0)
		return lock;
	text = fw_remove_text(taps, n);
	ret = text ? nft_run(text, NULL, false) : err_set(-ENOMEM, "out of memory");
	free(text);
	close(lock);
	return ret;
}

/* Adds the counters of the elements of a rule map of the tap to out. */
static void map_counters(struct json_object *m, const char *tap, struct json_object *out)
{
	struct json_object *name, *elems;
	char p1[300], p2[300];
	const char *s;

	snprintf(p1, sizeof(p1), "nic-%s-out-m", tap);
	snprintf(p2, sizeof(p2), "nic-%s-in-m", tap);
	if (!json_object_object_get_ex(m, "name", &name) ||
	    !json_object_object_get_ex(m, "elem", &elems))
		return;
	s = json_object_get_string(name);
	if (strncmp(s, p1, strlen(p1)) && strncmp(s, p2, strlen(p2)))
		return;
	for (size_t k = 0; k < json_object_array_length(elems); k++) {
		struct json_object *e = json_object_array_get_idx(json_object_array_get_idx(elems, k), 0);
		struct json_object *el, *comment, *cnt;

		if (json_object_object_get_ex(e, "elem", &el) &&
		    json_object_object_get_ex(el, "comment", &comment) &&
		    json_object_object_get_ex(el, "counter", &cnt))
			json_object_object_add(out, json_object_get_string(comment),
					       json_object_get(cnt));
	}
}

/* Adds the counters of one table's rules (and rule maps) of the tap to out. */
static void table_counters(struct json_object *table, const char *tap, struct json_object *out)
{
	char c1[300], c2[300];
	size_t n = table ? json_object_array_length(table) : 0;

	snprintf(c1, sizeof(c1), "nic-%s-out", tap);
	snprintf(c2, sizeof(c2), "nic-%s-in", tap);
	for (size_t i = 0; i < n; i++) {
		struct json_object *r, *chain, *comment, *expr, *m;

		if (json_object_object_get_ex(json_object_array_get_idx(table, i), "map", &m))
			map_counters(m, tap, out);
		if (!json_object_object_get_ex(json_object_array_get_idx(table, i), "rule", &r) ||
		    !json_object_object_get_ex(r, "chain", &chain) ||
		    (strcmp(json_object_get_string(chain), c1) &&
		     strcmp(json_object_get_string(chain), c2)) ||
		    !json_object_object_get_ex(r, "comment", &comment) ||
		    !json_object_object_get_ex(r, "expr", &expr))
			continue;
		for (size_t k = 0; k < json_object_array_length(expr); k++) {
			struct json_object *cnt;

			if (json_object_object_get_ex(json_object_array_get_idx(expr, k), "counter",
						      &cnt)) {
				json_object_object_add(out, json_object_get_string(comment),
						       json_object_get(cnt));
				break;
			}
		}
	}
}

struct json_object *fw_vnic_counters(const char *tap)
{
	struct json_object *br = list_table("bridge"), *in = list_table("inet");
	struct json_object *out = json_object_new_object();

	table_counters(br, tap, out);
	table_counters(in, tap, out);
	json_object_put(br);
	json_object_put(in);
	if (json_object_object_length(out) == 0) {
		json_object_put(out);
		return NULL;
	}
	return out;
}

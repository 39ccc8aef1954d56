/* The per-vNIC firewall and anti-spoofing (src/net/firewall.c), in
 * nftables through libnftables (DESIGN §4). Each change is one nftables
 * transaction: it all applies or nothing does.
 *
 * Two tables, because bridged frames between VMs are seen only by the
 * bridge family, which knows the port (the tap) but on many kernels (ours:
 * no nf_conntrack_bridge, no nft_reject_bridge) can neither track
 * connections nor reject:
 *   bridge vireo  L2, per port: anti-spoofing (MAC, ARP, IPv4/IPv6 source,
 *                 NDP) and a packet mark that names the vNIC the frame
 *                 came from (bits 0-15) and goes to (bits 16-31): the
 *                 tap's ifindex;
 *   inet vireo    the user's rules, stateful (ct) and with reject, chosen
 *                 by that mark; it sees bridged IPv4/IPv6 through
 *                 br_netfilter (bridge-nf-call-iptables/ip6tables = 1,
 *                 which fw_vnic_apply() sets when a vNIC has a firewall),
 *                 and the VM's traffic to the host itself (input).
 * Chains are named after the tap: "nic-TAP-out" (what the VM sends) and
 * "nic-TAP-in" (what it receives), in both tables. */
#ifndef VIREO_FIREWALL_H
#define VIREO_FIREWALL_H

#include <stdbool.h>
#include <stdint.h>

struct json_object;

#define FW_MAX_RULES 1024
#define FW_MAX_IPS 16

enum fw_action { FW_ACCEPT, FW_DROP, FW_REJECT };
enum fw_proto { FW_ANY, FW_TCP, FW_UDP, FW_ICMP, FW_ICMPV6 };

/* An address with a prefix; family 0: any address. */
struct fw_cidr {
	int family;                  /* 0, AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned int prefix;
};

struct fw_rule {
	bool out;                    /* "dir": "out" (from the VM) or "in" */
	enum fw_proto proto;
	uint16_t dport_lo, dport_hi; /* 0: any port */
	struct fw_cidr src, dst;
	enum fw_action action;
	bool log;
};

/* A vNIC's "firewall", "ips" and "anti_spoof" (JSON in src/mgr/nicfw.c). */
struct fw_conf {
	bool anti_spoof;             /* default true */
	bool enabled;                /* a "firewall" object was given */
	enum fw_action policy_in, policy_out; /* FW_ACCEPT or FW_DROP */
	struct fw_cidr ips[FW_MAX_IPS];
	unsigned int nips;
	struct fw_rule *rules;
	unsigned int nrules;
};

/* One vNIC as the firewall sees it. */
struct fw_vnic {
	const char *tap;
	const char *mac;             /* "52:54:00:12:34:56" */
	const struct fw_conf *conf;
};

/* Parses "10.0.0.0/8", "2001:db8::1" (a host prefix if none): 0 or -EINVAL. */
int fw_cidr_parse(const char *s, struct fw_cidr *c);
void fw_cidr_format(const struct fw_cidr *c, char *buf, unsigned int size);
/* Does the vNIC need any rule (anti-spoofing or a firewall)? */
bool fw_conf_active(const struct fw_conf *c);
/* The nftables commands that (re)install n vNICs, or remove them: one
 * string each (the caller frees; NULL: out of memory). The tap must exist
 * for install (its ifindex is the mark). */
char *fw_install_text(const struct fw_vnic *v, unsigned int n);
char *fw_remove_text(const char *const *taps, unsigned int n);
/* Installs / removes in one transaction each: 0 or -errno with nftables'
 * message in err_set(). Removing what is absent is no error; removing the
 * last vNIC deletes both tables. */
int fw_vnic_apply(const struct fw_vnic *v, unsigned int n);
int fw_vnic_remove(const char *const *taps, unsigned int n);
/* The counters of the vNIC's rules: {"COMMENT": {"packets", "bytes"}},
 * where COMMENT is "spoof-mac", "spoof-ip", ... (anti-spoofing), "rule N"
 * (the Nth of the "firewall" rules), "policy in", "policy out". NULL if
 * it has none or nftables cannot be read. */
struct json_object *fw_vnic_counters(const char *tap);

#endif

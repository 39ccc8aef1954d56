/* Host networking (src/net/): tap devices for vNICs, Linux bridges and
 * their 802.1Q VLANs. */
#ifndef VIREO_NET_H
#define VIREO_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

/* Opens (creating if needed, which needs CAP_NET_ADMIN) the tap device
 * `name` (NULL or "": the kernel picks one) with IFF_VNET_HDR and a
 * virtio-net header of hdr_len bytes, non-blocking, and brings it up.
 * The chosen name is written to name_out[16]. Returns the fd or -errno. */
int tap_open(const char *name, size_t hdr_len, char *name_out);
/* Tells the tap which offloads the guest can take (TUNSETOFFLOAD): with
 * none, the kernel hands us only complete, checksummed frames. */
int tap_set_offload(int fd, bool csum, bool tso4, bool tso6, bool ecn);

/* ---- VLAN ids (src/net/vlan.c) ----
 * A set of 802.1Q VLAN ids, 1 to 4094 (0 and 4095 are reserved). */
#define VLAN_ID_MAX 4094
struct vlan_set {
	uint64_t bits[(VLAN_ID_MAX + 64) / 64];
};
static inline bool vlan_valid(long id)
{
	return id >= 1 && id <= VLAN_ID_MAX;
}
static inline bool vlan_has(const struct vlan_set *s, unsigned int id)
{
	return vlan_valid(id) && (s->bits[id / 64] >> (id % 64) & 1);
}
static inline void vlan_add(struct vlan_set *s, unsigned int id)
{
	s->bits[id / 64] |= 1ULL << (id % 64);
}
bool vlan_set_empty(const struct vlan_set *s);
/* The next run of ids in s from *id on: [*id, *end]; false when none is left. */
bool vlan_next_range(const struct vlan_set *s, unsigned int *id, unsigned int *end);
/* A JSON array of ids and "A-B" ranges (Proxmox's trunks=10;20-30 as JSON)
 * into s: 0 or -EINVAL naming `key`, s unchanged. At most VLAN_RANGES_MAX
 * runs, so that one netlink message carries them. */
#define VLAN_RANGES_MAX 256
int vlan_set_from_json(struct json_object *arr, const char *key, struct vlan_set *s);
/* "10;20-30" (the command line's form; ',' works too) as that JSON array,
 * unchecked: vlan_set_from_json() judges it. */
struct json_object *vlan_list_json(const char *text);
/* The same array, runs of 3 or more as "A-B". */
struct json_object *vlan_set_to_json(const struct vlan_set *s);

/* Linux bridges over rtnetlink (src/net/bridge.c). Each returns 0 or
 * -errno with err_set() detail. */

/* Creates bridge `name` and brings it up. vlan_filtering: the kernel must
 * support it (CONFIG_BRIDGE_VLAN_FILTERING), else -EOPNOTSUPP and no bridge
 * is left behind. */
int bridge_create(const char *name, bool vlan_filtering);
int bridge_delete(const char *name);
/* Is `name` an existing bridge (-ENOENT: no such link, -ENOTTY: not a bridge)? */
int bridge_check(const char *name);
/* Makes link `port` a port of `bridge`, or (bridge NULL) of none. */
int bridge_set_port(const char *bridge, const char *port);
int link_set_up(const char *name);
/* VLANs of a port of a bridge with vlan_filtering: frames with a tag in
 * `tagged` pass tagged; untagged frames belong to VLAN pvid (0: they are
 * dropped) and leave the port untagged. */
struct port_vlans {
	struct vlan_set tagged;
	unsigned int pvid;
};
/* Sets exactly v on `port`: the new VLANs are added before the others are
 * removed, so a change on a running VM never drops its current VLAN. */
int bridge_port_set_vlans(const char *port, const struct port_vlans *v);
/* What the kernel has on `port` (-ENOENT: no VLAN information). */
int bridge_port_get_vlans(const char *port, struct port_vlans *out);
/* Deletes any link (a bridge, a persistent tap). */
int link_delete(const char *name);
/* Creates the persistent tap `name` (IFF_VNET_HDR, as tap_open() wants it)
 * owned by uid (0: root only), so that it can be made a bridge port before
 * the VMM opens it: the guest's first frames find the bridge. It outlives
 * the VMM; link_delete() removes it. */
int tap_create_persistent(const char *name, unsigned int uid);

#endif

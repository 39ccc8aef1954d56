/* Host networking (src/net/): tap devices for vNICs. Bridges, VLANs and the
 * per-vNIC firewall come later in this module. */
#ifndef VIREO_NET_H
#define VIREO_NET_H

#include <stdbool.h>
#include <stddef.h>

/* Opens (creating if needed, which needs CAP_NET_ADMIN) the tap device
 * `name` (NULL or "": the kernel picks one) with IFF_VNET_HDR and a
 * virtio-net header of hdr_len bytes, non-blocking, and brings it up.
 * The chosen name is written to name_out[16]. Returns the fd or -errno. */
int tap_open(const char *name, size_t hdr_len, char *name_out);
/* Tells the tap which offloads the guest can take (TUNSETOFFLOAD): with
 * none, the kernel hands us only complete, checksummed frames. */
int tap_set_offload(int fd, bool csum, bool tso4, bool tso6, bool ecn);

/* Linux bridges over rtnetlink (src/net/bridge.c). Each returns 0 or
 * -errno with err_set() detail. VLANs (per-port vids) and the firewall
 * come later and take a bridge made here with vlan_filtering. */

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
/* Deletes any link (a bridge, a persistent tap). */
int link_delete(const char *name);
/* Creates the persistent tap `name` (IFF_VNET_HDR, as tap_open() wants it)
 * owned by uid (0: root only), so that it can be made a bridge port before
 * the VMM opens it: the guest's first frames find the bridge. It outlives
 * the VMM; link_delete() removes it. */
int tap_create_persistent(const char *name, unsigned int uid);

#endif

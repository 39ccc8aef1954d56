/* Linux bridges configured over rtnetlink with libmnl (DESIGN §4): the
 * kernel forwards the frames, we only set it up. One request per call,
 * acknowledged (NLM_F_ACK), so an error comes back as the call's -errno. */
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if_bridge.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/net.h"

/* Sends one request and waits for its acknowledgement: 0 or -errno. */
static int nl_talk(struct nlmsghdr *nlh)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct mnl_socket *nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	unsigned int seq = (unsigned int)time(NULL), portid;
	ssize_t n;
	int ret;

	if (!nl)
		return -errno;
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		ret = -errno;
		goto out;
	}
	portid = mnl_socket_get_portid(nl);
	nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = seq;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		ret = -errno;
		goto out;
	}
	ret = -EIO;
	while ((n = mnl_socket_recvfrom(nl, buf, sizeof(buf))) > 0) {
		ret = mnl_cb_run(buf, (size_t)n, seq, portid, NULL, NULL);
		if (ret <= MNL_CB_STOP)
			break;
	}
	ret = n < 0 ? -errno : ret < 0 ? -errno : 0;
out:
	mnl_socket_close(nl);
	return ret;
}

static struct ifinfomsg *link_msg(char *buf, uint16_t type, uint16_t flags)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifinfomsg *ifi;

	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = flags;
	ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	return ifi;
}

static int name_ok(const char *name)
{
	if (!name || !*name || strlen(name) >= IFNAMSIZ)
		return err_set(-EINVAL, "bad interface name '%s'", name ? name : "");
	return 0;
}

int bridge_check(const char *name)
{
	char path[64];
	struct stat st;

	if (name_ok(name))
		return -EINVAL;
	snprintf(path, sizeof(path), "/sys/class/net/%s", name);
	if (stat(path, &st) < 0)
		return -ENOENT;
	snprintf(path, sizeof(path), "/sys/class/net/%s/bridge", name);
	return stat(path, &st) < 0 ? -ENOTTY : 0;
}

int bridge_create(const char *name, bool vlan_filtering)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	struct nlattr *info, *data;
	int ret;

	if (name_ok(name))
		return -EINVAL;
	link_msg(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
	if (vlan_filtering) {
		data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
		mnl_attr_put_u8(nlh, IFLA_BR_VLAN_FILTERING, 1);
		mnl_attr_nest_end(nlh, data);
	}
	mnl_attr_nest_end(nlh, info);
	ret = nl_talk(nlh);
	if (ret == -EOPNOTSUPP || (ret && vlan_filtering && ret != -EEXIST)) {
		/* The kernel unregisters a bridge whose options fail; make sure. */
		if (!bridge_check(name))
			bridge_delete(name);
		if (ret == -EOPNOTSUPP)
			return err_set(ret, "this host kernel has no bridge VLAN filtering "
				       "(CONFIG_BRIDGE_VLAN_FILTERING)");
	}
	if (ret)
		return err_set(ret, "cannot create bridge %s: %s", name, strerror(-ret));
	ret = link_set_up(name);
	if (ret) {
		bridge_delete(name);
		return ret;
	}
	return 0;
}

int bridge_delete(const char *name)
{
	return link_delete(name);
}

int link_delete(const char *name)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	int ret;

	if (name_ok(name))
		return -EINVAL;
	link_msg(buf, RTM_DELLINK, 0);
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	ret = nl_talk(nlh);
	if (ret)
		return err_set(ret, "cannot delete %s: %s", name, strerror(-ret));
	return 0;
}

int bridge_set_port(const char *bridge, const char *port)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	struct ifinfomsg *ifi;
	unsigned int master = 0, idx;
	int ret;

	if (name_ok(port) || (bridge && name_ok(bridge)))
		return -EINVAL;
	idx = if_nametoindex(port);
	if (!idx)
		return err_set(-errno, "no interface %s: %m", port);
	if (bridge && !(master = if_nametoindex(bridge)))
		return err_set(-errno, "no bridge %s: %m", bridge);
	ifi = link_msg(buf, RTM_NEWLINK, 0);
	ifi->ifi_index = (int)idx;
	mnl_attr_put_u32(nlh, IFLA_MASTER, master);
	ret = nl_talk(nlh);
	if (ret)
		return err_set(ret, "cannot %s %s: %s", bridge ? "add port" : "release port", port,
			       strerror(-ret));
	return 0;
}

int link_set_up(const char *name)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	struct ifinfomsg *ifi;
	unsigned int idx;
	int ret;

	if (name_ok(name))
		return -EINVAL;
	idx = if_nametoindex(name);
	if (!idx)
		return err_set(-errno, "no interface %s: %m", name);
	ifi = link_msg(buf, RTM_NEWLINK, 0);
	ifi->ifi_index = (int)idx;
	ifi->ifi_flags = IFF_UP;
	ifi->ifi_change = IFF_UP;
	ret = nl_talk(nlh);
	if (ret)
		return err_set(ret, "cannot bring %s up: %s", name, strerror(-ret));
	return 0;
}

/* ---- VLANs of a port ---------------------------------------------------- */

static void put_vlan(struct nlmsghdr *nlh, uint16_t flags, unsigned int vid)
{
	struct bridge_vlan_info vi = { .flags = flags, .vid = (uint16_t)vid };

	mnl_attr_put(nlh, IFLA_BRIDGE_VLAN_INFO, sizeof(vi), &vi);
}

/* One RTM_SETLINK (add) or RTM_DELLINK (remove) of the VLANs in s, and of
 * pvid (0: none) as the port's untagged PVID, on port idx. */
static int port_vlan_msg(uint16_t type, unsigned int idx, const struct vlan_set *s,
			 unsigned int pvid)
{
	/* VLAN_RANGES_MAX runs (or their complement, one more) of 16 bytes fit */
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	struct ifinfomsg *ifi = link_msg(buf, type, 0);
	unsigned int id = 0, end;
	struct nlattr *spec;

	ifi->ifi_family = AF_BRIDGE;
	ifi->ifi_index = (int)idx;
	spec = mnl_attr_nest_start(nlh, IFLA_AF_SPEC);
	if (pvid)
		put_vlan(nlh, BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED, pvid);
	while (vlan_next_range(s, &id, &end)) {
		if (id == end) {
			put_vlan(nlh, 0, id);
		} else {
			put_vlan(nlh, BRIDGE_VLAN_INFO_RANGE_BEGIN, id);
			put_vlan(nlh, BRIDGE_VLAN_INFO_RANGE_END, end);
		}
		id = end + 1;
	}
	mnl_attr_nest_end(nlh, spec);
	return nl_talk(nlh);
}

int bridge_port_set_vlans(const char *port, const struct port_vlans *v)
{
	struct vlan_set tagged = v->tagged, others;
	unsigned int idx;
	int ret;

	if (name_ok(port))
		return -EINVAL;
	if (v->pvid && !vlan_valid(v->pvid))
		return err_set(-EINVAL, "bad PVID %u", v->pvid);
	idx = if_nametoindex(port);
	if (!idx)
		return err_set(-errno, "no interface %s: %m", port);
	if (v->pvid)
		tagged.bits[v->pvid / 64] &= ~(1ULL << (v->pvid % 64));
	/* Tagged first: adding the PVID after a tagged entry of the same id
	 * would be undone by it (the kernel moves the PVID with each add). */
	ret = port_vlan_msg(RTM_SETLINK, idx, &tagged, v->pvid);
	if (ret)
		return err_set(ret, "cannot set the VLANs of %s: %s", port, strerror(-ret));
	for (size_t i = 0; i < sizeof(others.bits) / sizeof(others.bits[0]); i++)
		others.bits[i] = ~(tagged.bits[i]);
	others.bits[0] &= ~1ULL;			/* 0 is no VLAN */
	others.bits[VLAN_ID_MAX / 64] &= (1ULL << (VLAN_ID_MAX % 64 + 1)) - 1;
	if (v->pvid)
		others.bits[v->pvid / 64] &= ~(1ULL << (v->pvid % 64));
	ret = port_vlan_msg(RTM_DELLINK, idx, &others, 0);
	if (ret)
		return err_set(ret, "cannot remove old VLANs of %s: %s", port, strerror(-ret));
	return 0;
}

struct vlan_dump {
	int ifindex;
	bool found;
	unsigned int range_start;
	struct port_vlans *out;
};

static int vlan_attr_cb(const struct nlattr *a, void *data)
{
	struct vlan_dump *d = data;
	const struct bridge_vlan_info *vi;

	if (mnl_attr_get_type(a) != IFLA_BRIDGE_VLAN_INFO ||
	    mnl_attr_get_payload_len(a) < sizeof(*vi))
		return MNL_CB_OK;
	vi = mnl_attr_get_payload(a);
	if (!vlan_valid(vi->vid))
		return MNL_CB_OK;
	if (vi->flags & BRIDGE_VLAN_INFO_RANGE_BEGIN) {
		d->range_start = vi->vid;
		return MNL_CB_OK;
	}
	if (vi->flags & BRIDGE_VLAN_INFO_PVID)
		d->out->pvid = vi->vid;
	else if (vi->flags & BRIDGE_VLAN_INFO_RANGE_END && d->range_start)
		for (unsigned int v = d->range_start; v <= vi->vid; v++)
			vlan_add(&d->out->tagged, v);
	else
		vlan_add(&d->out->tagged, vi->vid);
	d->range_start = 0;
	return MNL_CB_OK;
}

static int vlan_link_cb(const struct nlmsghdr *nlh, void *data)
{
	struct vlan_dump *d = data;
	const struct ifinfomsg *ifi = mnl_nlmsg_get_payload(nlh);
	const struct nlattr *a;

	if (ifi->ifi_index != d->ifindex)
		return MNL_CB_OK;
	mnl_attr_for_each(a, nlh, sizeof(*ifi)) {
		if (mnl_attr_get_type(a) == IFLA_AF_SPEC) {
			d->found = true;
			mnl_attr_parse_nested(a, vlan_attr_cb, d);
		}
	}
	return MNL_CB_OK;
}

int bridge_port_get_vlans(const char *port, struct port_vlans *out)
{
	/* a dump message may carry a port's whole VLAN list */
	size_t size = 65536;
	char *buf = malloc(size);
	struct vlan_dump d = { .out = out };
	struct mnl_socket *nl = NULL;
	unsigned int seq = (unsigned int)time(NULL), portid;
	struct nlmsghdr *nlh;
	struct ifinfomsg *ifi;
	ssize_t n;
	int ret = -ENOMEM;

	memset(out, 0, sizeof(*out));
	if (!buf)
		return err_set(ret, "out of memory");
	if (name_ok(port) || !(d.ifindex = (int)if_nametoindex(port))) {
		ret = err_set(-ENOENT, "no interface %s", port);
		goto out;
	}
	ifi = link_msg(buf, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP);
	nlh = (struct nlmsghdr *)buf;
	ifi->ifi_family = AF_BRIDGE;
	nlh->nlmsg_seq = seq;
	mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_BRVLAN_COMPRESSED);
	nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0 ||
	    mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		ret = -errno;
		goto out;
	}
	portid = mnl_socket_get_portid(nl);
	ret = MNL_CB_OK;
	while (ret > MNL_CB_STOP && (n = mnl_socket_recvfrom(nl, buf, size)) > 0)
		ret = mnl_cb_run(buf, (size_t)n, seq, portid, vlan_link_cb, &d);
	ret = ret < 0 ? -errno : d.found ? 0 : -ENOENT;
	if (ret)
		err_set(ret, "no VLAN information for %s", port);
out:
	if (nl)
		mnl_socket_close(nl);
	free(buf);
	return ret;
}

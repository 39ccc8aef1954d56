/* Linux bridges configured over rtnetlink with libmnl (DESIGN §4): the
 * kernel forwards the frames, we only set it up. One request per call,
 * acknowledged (NLM_F_ACK), so an error comes back as the call's -errno. */
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <stdio.h>
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

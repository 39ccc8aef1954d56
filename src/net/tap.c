#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/net.h"

static int tap_bring_up(const char *name)
{
	struct ifreq ifr = { 0 };
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), ret = 0;

	if (s < 0)
		return -errno;
	memcpy(ifr.ifr_name, name, strnlen(name, IFNAMSIZ - 1));
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0 ||
	    (!(ifr.ifr_flags & IFF_UP) &&
	     (ifr.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &ifr) < 0)))
		ret = -errno;
	close(s);
	return ret;
}

int tap_open(const char *name, size_t hdr_len, char *name_out)
{
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
	int fd, ret, sz = (int)hdr_len;

	if (name && strlen(name) >= IFNAMSIZ)
		return err_set(-EINVAL, "tap name '%s' is too long", name);
	fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return err_set(-errno, "cannot open /dev/net/tun: %m");
	if (name)
		memcpy(ifr.ifr_name, name, strlen(name));
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		ret = err_set(-errno, "cannot attach tap '%s': %m%s", name ? name : "",
			      errno == EPERM ? " (needs CAP_NET_ADMIN to create it)" : "");
		goto close_fd;
	}
	if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) {
		ret = err_set(-errno, "tap %s: TUNSETVNETHDRSZ: %m", ifr.ifr_name);
		goto close_fd;
	}
	memcpy(name_out, ifr.ifr_name, IFNAMSIZ);
	ret = tap_set_offload(fd, false, false, false, false);
	if (!ret && tap_bring_up(ifr.ifr_name))
		log_warn("tap %s: could not bring the link up", ifr.ifr_name);
	if (ret)
		goto close_fd;
	return fd;
close_fd:
	close(fd);
	return ret;
}

int tap_set_offload(int fd, bool csum, bool tso4, bool tso6, bool ecn)
{
	unsigned int flags = (csum ? TUN_F_CSUM : 0) |
			     (csum && tso4 ? TUN_F_TSO4 : 0) |
			     (csum && tso6 ? TUN_F_TSO6 : 0) |
			     (csum && ecn ? TUN_F_TSO_ECN : 0);

	if (ioctl(fd, TUNSETOFFLOAD, flags) < 0)
		return err_set(-errno, "TUNSETOFFLOAD: %m");
	return 0;
}

int tap_create_persistent(const char *name, unsigned int uid)
{
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
	int fd, ret = 0;

	if (!name || !*name || strlen(name) >= IFNAMSIZ)
		return err_set(-EINVAL, "bad tap name '%s'", name ? name : "");
	fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return err_set(-errno, "cannot open /dev/net/tun: %m");
	memcpy(ifr.ifr_name, name, strlen(name));
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		ret = err_set(-errno, "cannot create tap %s: %m", name);
	else if (uid && ioctl(fd, TUNSETOWNER, (unsigned long)uid) < 0)
		ret = err_set(-errno, "tap %s: TUNSETOWNER: %m", name);
	else if (ioctl(fd, TUNSETPERSIST, 1UL) < 0)
		ret = err_set(-errno, "tap %s: TUNSETPERSIST: %m", name);
	close(fd);	/* a tap not made persistent goes with the descriptor */
	return ret;
}

/* virtio-net (virtio 1.x §5.1) on a tap device with IFF_VNET_HDR: the
 * 12-byte virtio-net header travels between guest and tap unchanged, so
 * checksum and TSO offloads cost nothing here; the tap is told which of
 * them the guest accepted. Queues: 0 receive, 1 transmit.
 * Config (little-endian): mac[6] @0, status u16 @6, max_virtqueue_pairs
 * u16 @8, mtu u16 @10. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/net.h"
#include "vireo/ratelimit.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

#define NET_F_CSUM       (1ULL << 0)
#define NET_F_GUEST_CSUM (1ULL << 1)
#define NET_F_MTU        (1ULL << 3)
#define NET_F_MAC        (1ULL << 5)
#define NET_F_GUEST_TSO4 (1ULL << 7)
#define NET_F_GUEST_TSO6 (1ULL << 8)
#define NET_F_GUEST_ECN  (1ULL << 9)
#define NET_F_HOST_TSO4  (1ULL << 11)
#define NET_F_HOST_TSO6  (1ULL << 12)
#define NET_F_HOST_ECN   (1ULL << 13)
#define NET_F_MRG_RXBUF  (1ULL << 15)
#define NET_F_STATUS     (1ULL << 16)

#define HDR_LEN 12              /* struct virtio_net_hdr_v1 */
#define MAX_PACKET (HDR_LEN + 65550)
#define MAX_MERGE 64            /* receive buffers one packet may span */
enum { Q_RX, Q_TX };

struct virtio_net {
	struct virtio_dev dev;
	int tap;
	char tap_name[16];
	struct ratelimit rx_limit, tx_limit;
	struct virtq_elem elems[MAX_MERGE]; /* receive side */
	struct virtq_elem tx_elem;
	uint8_t packet[MAX_PACKET];         /* received, waiting for buffers */
	size_t packet_len;
	uint64_t rx_packets, tx_packets, rx_dropped, tx_dropped;
};

/* Spreads the pending packet over receive chains. Returns 1 when
 * delivered (or dropped as undeliverable), 0 when the guest has not given
 * enough buffers yet, -1 when it broke the ring. */
static int net_deliver(struct virtio_net *n)
{
	struct virtq *vq = &n->dev.vqs[Q_RX];
	bool merge = virtio_feature(&n->dev, NET_F_MRG_RXBUF);
	unsigned int used = 0;
	size_t done = 0;
	uint16_t count;

	while (done < n->packet_len) {
		struct virtq_elem *e = &n->elems[used];
		int ret;

		if (used == MAX_MERGE || (!merge && used)) {
			/* The buffers the guest gives can never hold this packet:
			 * drop it, as a too-small receive ring on a real NIC would. */
			virtq_unpop(vq, used);
			n->rx_dropped++;
			n->packet_len = 0;
			return 1;
		}
		ret = virtq_pop(vq, e);
		if (ret < 0 || (ret > 0 && (e->out_num || !e->in_len)))
			return -1;
		if (ret == 0) {
			virtq_unpop(vq, used); /* wait for more buffers */
			return 0;
		}
		done += virtq_write_in(e, 0, n->packet + done, n->packet_len - done);
		used++;
	}
	count = (uint16_t)used;
	virtq_write_in(&n->elems[0], 10, &count, 2); /* num_buffers */
	done = 0;
	for (unsigned int i = 0; i < used; i++) {
		size_t len = n->packet_len - done < n->elems[i].in_len ? n->packet_len - done
								       : n->elems[i].in_len;

		virtq_push(vq, &n->elems[i], (uint32_t)len);
		done += len;
	}
	ratelimit_charge(&n->rx_limit, n->packet_len - HDR_LEN, ratelimit_now_ns());
	n->packet_len = 0;
	n->rx_packets++;
	return 1;
}

static void net_receive(struct virtio_net *n)
{
	for (;;) {
		uint64_t wait = ratelimit_delay_ns(&n->rx_limit, ratelimit_now_ns());
		int ret;

		if (wait) {
			virtio_defer(&n->dev, Q_RX, wait);
			break;
		}
		if (!n->packet_len) {
			ssize_t len = read(n->tap, n->packet, sizeof(n->packet));

			if (len <= HDR_LEN)
				break; /* EAGAIN: the tap is empty */
			n->packet_len = (size_t)len;
		}
		ret = net_deliver(n);
		if (ret < 0) {
			virtio_set_broken(&n->dev, "bad receive buffer");
			break;
		}
		if (ret == 0)
			break;
	}
	virtio_notify(&n->dev, Q_RX);
}

static void net_transmit(struct virtio_net *n)
{
	struct virtq *vq = &n->dev.vqs[Q_TX];
	struct virtq_elem *e = &n->tx_elem;
	int ret;

	for (;;) {
		uint64_t now = ratelimit_now_ns(), wait = ratelimit_delay_ns(&n->tx_limit, now);

		if (wait) {
			virtio_defer(&n->dev, Q_TX, wait);
			break;
		}
		ret = virtq_pop(vq, e);
		if (ret == 0)
			break;
		if (ret < 0 || e->out_len < HDR_LEN || e->in_num || e->out_len > MAX_PACKET) {
			virtio_set_broken(&n->dev, ret < 0 ? err_get() : "bad transmit chain");
			break;
		}
		if (writev(n->tap, e->iov, (int)e->out_num) < 0)
			n->tx_dropped++; /* tap queue full or link down: like a wire */
		else
			n->tx_packets++;
		ratelimit_charge(&n->tx_limit, e->out_len - HDR_LEN, now);
		virtq_push(vq, e, 0);
	}
	virtio_notify(&n->dev, Q_TX);
}

static void net_notify(struct virtio_dev *dev, unsigned int q)
{
	struct virtio_net *n = dev->opaque;

	if (q == Q_TX)
		net_transmit(n);
	else
		net_receive(n); /* new buffers: maybe a packet was waiting */
}

static void net_fd_ready(struct virtio_dev *dev)
{
	/* Quiesced for a snapshot: the tap waits; virtio_unquiesce() kicks
	 * the receive queue, which reads it. */
	if (!dev->quiesced)
		net_receive(dev->opaque);
}

static void net_activate(struct virtio_dev *dev)
{
	struct virtio_net *n = dev->opaque;

	if (tap_set_offload(n->tap, virtio_feature(dev, NET_F_GUEST_CSUM),
			    virtio_feature(dev, NET_F_GUEST_TSO4),
			    virtio_feature(dev, NET_F_GUEST_TSO6), virtio_feature(dev, NET_F_GUEST_ECN)))
		log_warn("net %s: %s", n->tap_name, err_get());
}

static void net_reset(struct virtio_dev *dev)
{
	struct virtio_net *n = dev->opaque;

	n->packet_len = 0;
}

/* State: the MAC the guest knows (a random one is not in the machine
 * description), then the packet read from the tap that waits for receive
 * buffers (u32 length, 0: none, and its bytes). */
static void net_save(struct virtio_dev *dev, struct state_writer *w)
{
	struct virtio_net *n = dev->opaque;

	state_put_bytes(w, dev->config, 6);
	state_put_blob(w, n->packet, n->packet_len);
}

static int net_load(struct virtio_dev *dev, struct state_cursor *c)
{
	struct virtio_net *n = dev->opaque;
	uint8_t mac[6];
	size_t len;
	int ret;

	state_get_bytes(c, mac, 6);
	/* Read into place: a refused file discards the whole device. */
	len = state_get_blob_max(c, n->packet, sizeof(n->packet));
	ret = state_done(c);
	if (ret)
		return ret;
	if (len && len <= HDR_LEN)
		return err_set(-EINVAL, "pending packet of %zu bytes", len);
	memcpy(dev->config, mac, 6);
	n->packet_len = len;
	return 0;
}

static const struct virtio_device_ops net_ops = {
	.name = "net",
	.device_id = 1,
	.pci_class = 0x020000,
	.features = NET_F_CSUM | NET_F_GUEST_CSUM | NET_F_MTU | NET_F_MAC | NET_F_GUEST_TSO4 |
		    NET_F_GUEST_TSO6 | NET_F_GUEST_ECN | NET_F_HOST_TSO4 | NET_F_HOST_TSO6 |
		    NET_F_HOST_ECN | NET_F_MRG_RXBUF | NET_F_STATUS,
	.num_queues = 2,
	.queue_notify = net_notify,
	.reset = net_reset,
	.activate = net_activate,
	.fd_ready = net_fd_ready,
	.state_type = STATE_SEC_VIRTIO_NET,
	.save = net_save,
	.load = net_load,
};

static void net_fill_config(struct virtio_net *n, const struct nic_config *cfg)
{
	uint8_t *c = n->dev.config;
	uint16_t status = 1, pairs = 1, mtu = cfg->mtu ? cfg->mtu : 1500;

	if (cfg->mac_set) {
		memcpy(c, cfg->mac, 6);
	} else {
		if (getrandom(c, 6, 0) != 6)
			memset(c, 0x5a, 6);
		c[0] = (uint8_t)((c[0] & 0xfe) | 0x02); /* unicast, locally administered */
	}
	memcpy(c + 6, &status, 2); /* link up */
	memcpy(c + 8, &pairs, 2);
	memcpy(c + 10, &mtu, 2);
}

int virtio_net_open_tap(const char *name)
{
	char ignored[16];

	return tap_open(name, HDR_LEN, ignored);
}

int virtio_net_create(struct vm *vm, struct pci_bus *bus, const struct nic_config *cfg,
		      struct virtio_net **out)
{
	struct virtio_net *n = calloc(1, sizeof(*n));
	int ret;

	if (!n) {
		if (cfg->tap_opened)
			close(cfg->tap_fd);
		return err_set(-ENOMEM, "out of memory");
	}
	if (cfg->tap_opened) {
		n->tap = cfg->tap_fd;
		snprintf(n->tap_name, sizeof(n->tap_name), "%s", cfg->tap ? cfg->tap : "");
	} else {
		n->tap = tap_open(cfg->tap, HDR_LEN, n->tap_name);
	}
	if (n->tap < 0) {
		ret = n->tap;
		free(n);
		return ret;
	}
	ratelimit_init(&n->rx_limit);
	ratelimit_init(&n->tx_limit);
	ratelimit_set(&n->rx_limit, cfg->rx_bps, 0);
	ratelimit_set(&n->tx_limit, cfg->tx_bps, 0);
	net_fill_config(n, cfg);
	n->dev.extra_fd = n->tap;
	ret = virtio_pci_create(&n->dev, vm, bus, &net_ops, n, 12);
	if (ret) {
		close(n->tap);
		free(n);
		return ret;
	}
	log_info("net: tap %s", n->tap_name);
	*out = n;
	return 0;
}

void virtio_net_destroy(struct virtio_net *n)
{
	if (!n)
		return;
	virtio_pci_destroy(&n->dev);
	close(n->tap);
	free(n);
}

struct virtio_dev *virtio_net_dev(struct virtio_net *n)
{
	return &n->dev;
}

/* QEMU's qemu_announce_self frame: a broadcast RARP "reverse request"
 * (RFC 903, op 3) naming the vNIC's MAC as sender and target, padded to
 * the 60-byte Ethernet minimum. Every bridge and switch on the way learns
 * the MAC from it, whatever the guest runs. */
int virtio_net_announce(struct virtio_net *n)
{
	uint8_t frame[HDR_LEN + 60] = { 0 }; /* a zero virtio-net header: no offload */
	uint8_t *eth = frame + HDR_LEN, *rarp = eth + 14;
	static const uint8_t head[] = { 0x80, 0x35, 0, 1, 0x08, 0, 6, 4, 0, 3 };

	memset(eth, 0xff, 6);
	memcpy(eth + 6, n->dev.config, 6);
	memcpy(eth + 12, head, sizeof(head));
	memcpy(rarp + 8, n->dev.config, 6);  /* sender hardware address */
	memcpy(rarp + 18, n->dev.config, 6); /* target hardware address */
	if (write(n->tap, frame, sizeof(frame)) < 0)
		return err_set(-errno, "net %s: announce: %m", n->tap_name);
	return 0;
}

struct ratelimit *virtio_net_ratelimit(struct virtio_net *n, bool tx)
{
	return tx ? &n->tx_limit : &n->rx_limit;
}

void virtio_net_get_stats(struct virtio_net *n, struct virtio_net_stats *out)
{
	out->rx_packets = __atomic_load_n(&n->rx_packets, __ATOMIC_RELAXED);
	out->tx_packets = __atomic_load_n(&n->tx_packets, __ATOMIC_RELAXED);
	out->rx_dropped = __atomic_load_n(&n->rx_dropped, __ATOMIC_RELAXED);
	out->tx_dropped = __atomic_load_n(&n->tx_dropped, __ATOMIC_RELAXED);
	memcpy(out->tap, n->tap_name, sizeof(out->tap));
}

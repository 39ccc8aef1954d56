/* virtio-net and the "net" scenario: send n=N frames (default 64) of sizes
 * spread evenly over 60..max_frame (ethernet header included, no FCS);
 * max_frame = min(9014, mtu + 14) when the device offers VIRTIO_NET_F_MTU,
 * else 1514 (net_max=BYTES lowers it). A host-side helper
 * (tests/net_echo.py) sends every frame back with the MAC addresses
 * swapped; the guest checks each echo byte for byte.
 *
 * Frame i: dst 02:00:00:00:00:01, src = the device's MAC (or
 * 52:54:00:12:34:56 without VIRTIO_NET_F_MAC), ethertype 0x88b5 (local
 * experimental), then "VRPB", le32 i, le32 size, then payload byte j (from
 * offset 26) = byte j % 8 of mix64(seed << 32 | i) + j / 8 ... see fill().
 *
 * Features: VERSION_1, MAC, MTU, STATUS, MRG_RXBUF (receive buffers of
 * 2 KiB, frames merged by num_buffers); no checksum or GSO offloads, so
 * every frame is complete in both directions. Without MRG_RXBUF each
 * receive buffer holds max_frame + 12 bytes. */
#include "virtio.h"

#define NET_F_MTU		(1ull << 3)
#define NET_F_MAC		(1ull << 5)
#define NET_F_MRG_RXBUF		(1ull << 15)
#define NET_F_STATUS		(1ull << 16)
#define HDR_LEN			12
#define ETHERTYPE		0x88b5
#define RX_BUF_MRG		2048
#define TX_WINDOW		32		/* tx buffer slots; net_window <= this */
#define MAX_FRAME		9014
#define MAX_FRAMES		4096

struct net_hdr {
	uint8_t flags, gso_type;
	uint16_t hdr_len, gso_size, csum_start, csum_offset, num_buffers;
};

static const uint8_t host_mac[6] = { 2, 0, 0, 0, 0, 1 };

struct net {
	struct vdev *d;
	struct virtq *rx, *tx;
	uint8_t mac[6];
	uint32_t rx_buf_len, max_frame;
	uint8_t *rx_bufs;		/* rx->size buffers */
	uint8_t *tx_bufs;		/* TX_WINDOW slots of HDR_LEN + MAX_FRAME */
	uint8_t *frame;			/* reassembly / expected frame */
	uint8_t *expect;
	uint64_t seed;
	uint32_t other, mismatches, received, dup;
	uint8_t *seen;
	uint32_t echoed, tx_inflight;	/* net_echo */
	void (*on_frame)(struct net *t, const uint8_t *f, uint32_t len, uint32_t n);
};

static uint32_t frame_size(uint32_t i, uint32_t n, uint32_t max)
{
	return n < 2 ? 60 : 60 + (uint32_t)((uint64_t)(max - 60) * i / (n - 1));
}

/* The frame the guest sends as number i (size len) into p. */
static void fill(struct net *t, uint8_t *p, uint32_t i, uint32_t len)
{
	probe_memcpy(p, host_mac, 6);
	probe_memcpy(p + 6, t->mac, 6);
	p[12] = ETHERTYPE >> 8;
	p[13] = ETHERTYPE & 0xff;
	probe_memcpy(p + 14, "VRPB", 4);
	probe_memcpy(p + 18, &i, 4);
	probe_memcpy(p + 22, &len, 4);
	for (uint32_t j = 26; j < len; j++)
		p[j] = (uint8_t)(mix64(t->seed << 32 | i) >> (8 * (j % 8))) + (uint8_t)(j / 8);
}

static void rx_post(struct net *t, uint8_t *buf)
{
	struct vq_buf v = { buf, t->rx_buf_len };

	vq_add(t->rx, &v, 0, 1, buf);
}

static void check_frame(struct net *t, const uint8_t *f, uint32_t len, uint32_t n)
{
	uint32_t i, size;

	if (len < 26 || f[12] != ETHERTYPE >> 8 || f[13] != (ETHERTYPE & 0xff) ||
	    probe_memcmp(f + 14, "VRPB", 4)) {
		t->other++;
		return;
	}
	probe_memcpy(&i, f + 18, 4);
	probe_memcpy(&size, f + 22, 4);
	if (i >= n) {
		t->other++;
		return;
	}
	if (t->seen[i]) {
		t->dup++;
		return;
	}
	t->seen[i] = 1;
	t->received++;
	fill(t, t->expect, i, frame_size(i, n, t->max_frame));
	/* the echo swaps the addresses */
	probe_memcpy(t->expect, t->mac, 6);
	probe_memcpy(t->expect + 6, host_mac, 6);
	if (len != frame_size(i, n, t->max_frame) || probe_memcmp(f, t->expect, len))
		t->mismatches++;
}

/* Takes every complete frame off the receive queue. */
static void rx_poll(struct net *t, uint32_t n)
{
	uint32_t len;
	uint8_t *b;

	while ((b = vq_get(t->rx, &len))) {
		struct net_hdr h;
		uint32_t total = 0;

		probe_memcpy(&h, b, sizeof(h));
		uint16_t nbuf = t->d->features & NET_F_MRG_RXBUF ? h.num_buffers : 1;

		if (len > t->rx_buf_len)
			len = t->rx_buf_len;
		if (len > HDR_LEN) {
			probe_memcpy(t->frame, b + HDR_LEN, len - HDR_LEN);
			total = len - HDR_LEN;
		}
		rx_post(t, b);
		for (uint16_t k = 1; k < nbuf; k++) {
			if (!vq_wait(t->rx, 1000) || !(b = vq_get(t->rx, &len)))
				break;
			if (len > t->rx_buf_len)
				len = t->rx_buf_len;
			if (total + len <= MAX_FRAME + 64) {
				probe_memcpy(t->frame + total, b, len);
				total += len;
			}
			rx_post(t, b);
		}
		if (t->on_frame)
			t->on_frame(t, t->frame, total, n);
		else
			check_frame(t, t->frame, total, n);
	}
	vq_kick(t->rx);
}

static int net_open(struct net *t)
{
	uint64_t want = NET_F_MAC | NET_F_MTU | NET_F_STATUS;
	static const uint8_t dflt_mac[6] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };

	if (!cmdline_u64("net_nomrg", 0))
		want |= NET_F_MRG_RXBUF;
	t->d = virtio_find(VIRTIO_ID_NET, 0);
	if (!t->d) {
		probe_printf("PROBE net_error=no-device\n");
		return -1;
	}
	if (vdev_init(t->d, want, 2, 256))
		return -1;
	t->rx = &t->d->vq[0];
	t->tx = &t->d->vq[1];
	probe_memcpy(t->mac, dflt_mac, 6);
	if (t->d->features & NET_F_MAC)
		for (int i = 0; i < 6; i++)
			t->mac[i] = cfg_r8(t->d, (uint32_t)i);
	t->max_frame = 1514;
	if (t->d->features & NET_F_MTU) {
		uint32_t mtu = cfg_r16(t->d, 10) + 14u;

		t->max_frame = mtu > MAX_FRAME ? MAX_FRAME : mtu < 60 ? 60 : mtu;
	}
	uint32_t lim = (uint32_t)cmdline_u64("net_max", MAX_FRAME);

	if (lim >= 60 && lim < t->max_frame)
		t->max_frame = lim;
	t->rx_buf_len = t->d->features & NET_F_MRG_RXBUF ? RX_BUF_MRG : t->max_frame + HDR_LEN;
	t->rx_bufs = dma_alloc((size_t)t->rx->size * t->rx_buf_len, 4096);
	t->tx_bufs = dma_alloc((size_t)TX_WINDOW * (HDR_LEN + MAX_FRAME + 2), 4096);
	t->frame = dma_alloc(MAX_FRAME + 128, 64);
	t->expect = dma_alloc(MAX_FRAME + 128, 64);
	t->seen = dma_alloc(MAX_FRAMES, 64);
	vdev_driver_ok(t->d);
	for (uint32_t i = 0; i < t->rx->size; i++)
		rx_post(t, t->rx_bufs + (size_t)i * t->rx_buf_len);
	vq_kick(t->rx);
	return 0;
}

void scn_net(const char *arg)
{
	struct net t = { 0 };
	uint32_t n = (uint32_t)parse_u64(arg, cmdline_u64("n", 64)), sent = 0, inflight = 0;
	uint64_t timeout_ms = cmdline_u64("net_timeout_ms", 5000), deadline, t0;
	uint32_t window = (uint32_t)cmdline_u64("net_window", 16);

	if (n > MAX_FRAMES)
		n = MAX_FRAMES;
	if (window < 1 || window > TX_WINDOW)
		window = 16;
	t.seed = cmdline_u64("seed", 1);
	if (net_open(&t))
		probe_exit(1);
	/* Give the host side a moment to see the link (net_wait_ms). */
	clock_delay_us(cmdline_u64("net_wait_ms", 0) * 1000);
	t0 = clock_ns();
	deadline = t0 + timeout_ms * 1000000;
	while ((sent < n || t.received < n) && clock_ns() < deadline) {
		/* Keep at most "window" frames unanswered so receive buffers suffice. */
		while (sent < n && inflight < TX_WINDOW && sent - t.received - t.dup < window) {
			uint8_t *p = t.tx_bufs + (size_t)(sent % TX_WINDOW) * (HDR_LEN + MAX_FRAME + 2);
			uint32_t len = frame_size(sent, n, t.max_frame);
			struct vq_buf v = { p, HDR_LEN + len };

			probe_memset(p, 0, HDR_LEN);
			fill(&t, p + HDR_LEN, sent, len);
			if (vq_add(t.tx, &v, 1, 0, p) < 0)
				break;
			sent++;
			inflight++;
		}
		vq_kick(t.tx);
		while (vq_get(t.tx, NULL))
			inflight--;
		if (!vq_has_used(t.rx))
			vq_sleep(t.rx);
		rx_poll(&t, n);
	}
	uint64_t ms = (clock_ns() - t0) / 1000000;
	uint16_t status = t.d->features & NET_F_STATUS ? cfg_r16(t.d, 6) : 1;

	probe_printf("PROBE net mac=%02x:%02x:%02x:%02x:%02x:%02x sent=%u received=%u mismatches=%u\n",
		     t.mac[0], t.mac[1], t.mac[2], t.mac[3], t.mac[4], t.mac[5], sent, t.received,
		     t.mismatches);
	probe_printf("PROBE net_stats max_frame=%u mrg_rxbuf=%d link=%s other=%u dup=%u irq=%s irqs=%u "
		     "tx_kicks=%lu ms=%lu\n", t.max_frame, !!(t.d->features & NET_F_MRG_RXBUF),
		     status & 1 ? "up" : "down", t.other, t.dup, t.d->msix ? "msix" : "poll",
		     virtio_irq_count(), t.tx->kicks, ms);
}

/* net_echo: the guest side of tests/net_echo.py, so that two guests on
 * one bridge can talk: a frame of our ethertype sent to our MAC goes back
 * with the addresses swapped. */
static void echo_frame(struct net *t, const uint8_t *f, uint32_t len, uint32_t n)
{
	uint8_t *p;
	struct vq_buf v;

	(void)n;
	if (len < 14 || len > t->max_frame || f[12] != ETHERTYPE >> 8 ||
	    f[13] != (ETHERTYPE & 0xff) || probe_memcmp(f, t->mac, 6)) {
		t->other++;
		return;
	}
	while (t->tx_inflight >= TX_WINDOW) {
		while (vq_get(t->tx, NULL))
			t->tx_inflight--;
		if (t->tx_inflight >= TX_WINDOW && !vq_wait(t->tx, 1000))
			return;
	}
	p = t->tx_bufs + (size_t)(t->echoed % TX_WINDOW) * (HDR_LEN + MAX_FRAME + 2);
	probe_memset(p, 0, HDR_LEN);
	probe_memcpy(p + HDR_LEN, f + 6, 6);
	probe_memcpy(p + HDR_LEN + 6, t->mac, 6);
	probe_memcpy(p + HDR_LEN + 12, f + 12, len - 12);
	v = (struct vq_buf){ p, HDR_LEN + len };
	if (vq_add(t->tx, &v, 1, 0, p) < 0)
		return;
	t->tx_inflight++;
	t->echoed++;
	vq_kick(t->tx);
}

/* net_echo=N (default 64) frames, or until net_echo_ms (default 30000).
 * PROBE net_echo ready mac=M, then PROBE net_echo echoed=N other=N. */
void scn_net_echo(const char *arg)
{
	struct net t = { .on_frame = echo_frame };
	uint32_t n = (uint32_t)parse_u64(arg, 64);
	uint64_t deadline;

	if (net_open(&t))
		probe_exit(1);
	deadline = clock_ns() + cmdline_u64("net_echo_ms", 30000) * 1000000;
	probe_printf("PROBE net_echo ready mac=%02x:%02x:%02x:%02x:%02x:%02x\n", t.mac[0],
		     t.mac[1], t.mac[2], t.mac[3], t.mac[4], t.mac[5]);
	while (t.echoed < n && clock_ns() < deadline) {
		if (!vq_has_used(t.rx))
			vq_sleep(t.rx);
		rx_poll(&t, n);
		while (vq_get(t.tx, NULL))
			t.tx_inflight--;
	}
	/* The last echoes must leave before the VM powers off. */
	while (t.tx_inflight && vq_wait(t.tx, 1000))
		while (vq_get(t.tx, NULL))
			t.tx_inflight--;
	probe_printf("PROBE net_echo echoed=%u other=%u\n", t.echoed, t.other);
}

/* net_bench: transmit only, for time_ms=T (default 2000), frames of
 * net_size=BYTES (default 1514, at most max_frame), as many in flight as
 * the tx slots allow; the host needs no helper (the tap drops them).
 * PROBE net_bench size=B frames=N ms=T pps=N mbps=N (10^6 frame bytes/s). */
void scn_net_bench(const char *arg)
{
	struct net t = { 0 };
	uint64_t ms = cmdline_u64("time_ms", 2000), frames = 0, sent = 0, t0, end;
	uint32_t size = (uint32_t)cmdline_u64("net_size", 1514);

	(void)arg;
	t.seed = 1;
	if (net_open(&t))
		probe_exit(1);
	if (size < 60 || size > t.max_frame)
		size = t.max_frame;
	for (uint32_t i = 0; i < TX_WINDOW; i++) {
		uint8_t *p = t.tx_bufs + (size_t)i * (HDR_LEN + MAX_FRAME + 2);

		probe_memset(p, 0, HDR_LEN);
		fill(&t, p + HDR_LEN, i, size);
	}
	t0 = clock_ns();
	end = t0 + ms * 1000000;
	while (clock_ns() < end) {
		while (sent - frames < TX_WINDOW) {
			struct vq_buf v = { t.tx_bufs + (size_t)(sent % TX_WINDOW) * (HDR_LEN + MAX_FRAME + 2),
					    HDR_LEN + size };

			if (vq_add(t.tx, &v, 1, 0, (void *)v.addr) < 0)
				break;
			sent++;
		}
		vq_kick(t.tx);
		if (!vq_has_used(t.tx))
			vq_sleep(t.tx);
		while (vq_get(t.tx, NULL))
			frames++;
		/* drop whatever arrives */
		uint8_t *b;

		while ((b = vq_get(t.rx, NULL)))
			rx_post(&t, b);
		vq_kick(t.rx);
	}
	uint64_t ns = clock_ns() - t0;

	probe_printf("PROBE net_bench size=%u frames=%lu ms=%lu pps=%lu mbps=%lu irq=%s tx_kicks=%lu\n",
		     size, frames, ns / 1000000, frames * 1000000000 / ns, frames * size * 1000 / ns,
		     t.d->msix ? "msix" : "poll", t.tx->kicks);
}

/* net_ip: a tiny IPv4 host for the firewall tests (docs/networking.md),
 * with the address net_ip=A.B.C.D and the device's MAC. It answers ARP
 * for its address, ICMP echo requests, a TCP SYN to any port with a
 * SYN-ACK, TCP data with the same data back (its sequence numbers are the
 * peer's acknowledgements: no connection state), a FIN with a FIN-ACK, and
 * UDP datagrams with the same datagram back; except a datagram to port
 * 9998, which makes it start a flow of its own (UDP "hello" from its port
 * 5555 to the sender's port in the datagram's first two bytes, or to the
 * address and MAC in the next 10), one from port 5555 (another guest's
 * flow: counted, not echoed, so two guests cannot loop), and one to
 * 9999, which it answers three times: "ok" from its own addresses,
 * "spoof-ip" from another IPv4 address, "spoof-mac" from another MAC, and
 * with an ARP reply claiming that other address (anti-spoofing tests); and
 * one to 9996, which it answers with a DHCP client's and a DHCP server's
 * broadcast (dhcp_frames); one to 9995, with IPv6 frames (ipv6_frames).
 * Runs net_ip_ms (default 30000). PROBE net_ip ready mac=M ip=A, then
 * PROBE net_ip arp=N icmp=N syn=N tcp_data=N udp=N spoof=N other=N. */
struct ipstat {
	uint8_t ip[4];
	uint32_t arp, icmp, syn, tcp_data, udp, spoof;
};
static struct ipstat ips;

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)be16(p) << 16 | be16(p + 2); }
static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v); }

static uint32_t csum_add(uint32_t sum, const uint8_t *p, uint32_t len)
{
	for (uint32_t i = 0; i + 1 < len; i += 2)
		sum += be16(p + i);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* Queues frame f (len bytes) for transmission. */
static void tx_frame(struct net *t, const uint8_t *f, uint32_t len)
{
	uint8_t *p;
	struct vq_buf v;

	while (t->tx_inflight >= TX_WINDOW) {
		while (vq_get(t->tx, NULL))
			t->tx_inflight--;
		if (t->tx_inflight >= TX_WINDOW && !vq_wait(t->tx, 1000))
			return;
	}
	if (len < 60)
		len = 60;
	p = t->tx_bufs + (size_t)(t->echoed++ % TX_WINDOW) * (HDR_LEN + MAX_FRAME + 2);
	probe_memset(p, 0, HDR_LEN + 60);
	probe_memcpy(p + HDR_LEN, f, len > t->max_frame ? t->max_frame : len);
	v = (struct vq_buf){ p, HDR_LEN + len };
	if (vq_add(t->tx, &v, 1, 0, p) < 0)
		return;
	t->tx_inflight++;
	vq_kick(t->tx);
}

/* The reply frame r to IPv4 frame f: MACs and addresses swapped, header
 * checksum done; returns the IP header's length. */
static uint32_t ip_reply(struct net *t, const uint8_t *f, uint8_t *r, uint32_t iplen)
{
	uint32_t ihl = (f[14] & 15u) * 4;

	probe_memcpy(r, f + 6, 6);
	probe_memcpy(r + 6, t->mac, 6);
	r[12] = 8;
	r[13] = 0;
	probe_memcpy(r + 14, f + 14, ihl);
	put16(r + 16, iplen);
	r[22] = 64;
	probe_memcpy(r + 26, ips.ip, 4);
	probe_memcpy(r + 30, f + 26, 4);
	put16(r + 24, 0);
	put16(r + 24, csum_fold(csum_add(0, r + 14, ihl)));
	return ihl;
}

/* The TCP/UDP checksum of the segment at l4 (len bytes) of IP header ip. */
static void l4_csum(uint8_t *ip, uint8_t *l4, uint32_t len, uint32_t off)
{
	uint8_t pseudo[12];

	probe_memcpy(pseudo, ip + 12, 8);
	pseudo[8] = 0;
	pseudo[9] = ip[9];
	put16(pseudo + 10, len);
	put16(l4 + off, 0);
	put16(l4 + off, csum_fold(csum_add(csum_add(0, pseudo, 12), l4, len)));
}

/* An ARP reply to the sender of f (an ARP request or an IPv4 frame) that
 * claim_ip is at our MAC. */
static void arp_frame(struct net *t, const uint8_t *f, const uint8_t *claim_ip)
{
	const uint8_t *their_ip = f[13] == 6 ? f + 28 : f + 26;
	uint8_t r[60];

	probe_memset(r, 0, sizeof(r));
	probe_memcpy(r, f + 6, 6);
	probe_memcpy(r + 6, t->mac, 6);
	r[12] = 8;
	r[13] = 6;
	probe_memcpy(r + 14, "\x00\x01\x08\x00\x06\x04\x00\x02", 8);
	probe_memcpy(r + 22, t->mac, 6);
	probe_memcpy(r + 28, claim_ip, 4);
	probe_memcpy(r + 32, f + 6, 6);	/* the requester */
	probe_memcpy(r + 38, their_ip, 4);
	tx_frame(t, r, 60);
}

static void icmp_in(struct net *t, const uint8_t *f, uint32_t iplen)
{
	uint8_t *r = t->expect;
	uint32_t ihl = ip_reply(t, f, r, iplen);

	if (f[14 + ihl] != 8)
		return;
	probe_memcpy(r + 14 + ihl, f + 14 + ihl, iplen - ihl);
	r[14 + ihl] = 0;
	put16(r + 14 + ihl + 2, 0);
	put16(r + 14 + ihl + 2, csum_fold(csum_add(0, r + 14 + ihl, iplen - ihl)));
	ips.icmp++;
	tx_frame(t, r, 14 + iplen);
}

static void tcp_in(struct net *t, const uint8_t *f, uint32_t iplen)
{
	uint32_t ihl = (f[14] & 15u) * 4, doff, data, len;
	const uint8_t *s = f + 14 + ihl;
	uint8_t *r = t->expect, *rs, flags = s[13];

	doff = (s[12] >> 4) * 4u;
	data = iplen - ihl - doff;
	if ((flags & 0x04) || (!(flags & 0x02) && !data && !(flags & 0x01)))
		return;	/* RST, or a bare ACK */
	len = 20 + (flags & 0x02 ? 0 : data);
	ip_reply(t, f, r, ihl + len);
	rs = r + 14 + ihl;
	probe_memset(rs, 0, 20);
	probe_memcpy(rs, s + 2, 2);
	probe_memcpy(rs + 2, s, 2);
	if (flags & 0x02) {		/* SYN: SYN-ACK */
		put32(rs + 4, 0x1000);
		put32(rs + 8, be32(s + 4) + 1);
		rs[13] = 0x12;
		ips.syn++;
	} else {			/* data back, FIN answered */
		put32(rs + 4, be32(s + 8));
		put32(rs + 8, be32(s + 4) + data + (flags & 1));
		rs[13] = (uint8_t)(0x18 | (flags & 1));
		probe_memcpy(rs + 20, s + doff, data);
		ips.tcp_data += data ? 1 : 0;
	}
	rs[12] = 5 << 4;
	put16(rs + 14, 65535);
	l4_csum(r + 14, rs, len, 16);
	tx_frame(t, r, 14 + ihl + len);
}

static void udp_reply(struct net *t, const uint8_t *f, uint32_t iplen, const char *text)
{
	uint32_t ihl = (f[14] & 15u) * 4, len = iplen - ihl;
	const uint8_t *u = f + 14 + ihl;
	uint8_t *r = t->expect, *ru;

	if (text)
		len = 8 + (uint32_t)probe_strlen(text);
	ip_reply(t, f, r, ihl + len);
	ru = r + 14 + ihl;
	probe_memcpy(ru, u + 2, 2);
	probe_memcpy(ru + 2, u, 2);
	put16(ru + 4, len);
	probe_memcpy(ru + 8, text ? (const uint8_t *)text : u + 8, len - 8);
	if (text && !probe_memcmp(text, "spoof-ip", 8)) {
		r[29] ^= 0x80;	/* another source address */
		put16(r + 24, 0);
		put16(r + 24, csum_fold(csum_add(0, r + 14, ihl)));
	}
	if (text && !probe_memcmp(text, "spoof-mac", 9))
		r[11] ^= 0x40;	/* another source MAC */
	l4_csum(r + 14, ru, len, 6);
	tx_frame(t, r, 14 + ihl + len);
}

/* A flow of our own: "hello" from our port 5555 to the port named by the
 * datagram's first two bytes (big-endian), at the sender, or with 12 bytes
 * at the IPv4 address and MAC in bytes 2-5 and 6-11 (another guest). */
static void start_flow(struct net *t, const uint8_t *f, uint32_t iplen)
{
	uint32_t ihl = (f[14] & 15u) * 4;
	const uint8_t *arg = f + 14 + ihl + 8;
	uint8_t *r = t->expect, *ru;

	ip_reply(t, f, r, ihl + 8 + 5);
	if (iplen >= ihl + 8 + 12) {
		probe_memcpy(r + 30, arg + 2, 4);
		probe_memcpy(r, arg + 6, 6);
		put16(r + 24, 0);
		put16(r + 24, csum_fold(csum_add(0, r + 14, ihl)));
	}
	ru = r + 14 + ihl;
	put16(ru, 5555);
	probe_memcpy(ru + 2, arg, 2);
	put16(ru + 4, 8 + 5);
	probe_memcpy(ru + 8, "hello", 5);
	l4_csum(r + 14, ru, 8 + 5, 6);
	tx_frame(t, r, 14 + ihl + 8 + 5);
}

/* A datagram to 9996: two broadcasts as a DHCP client and a DHCP server
 * would send them, "dhcp-client" from 0.0.0.0:68 to port 67 and
 * "dhcp-server" from our address's port 67 to port 68 (firewall tests). */
static void dhcp_frames(struct net *t, const uint8_t *f)
{
	static const char *const text[] = { "dhcp-client", "dhcp-server" };
	uint32_t ihl = (f[14] & 15u) * 4, len;
	uint8_t *r = t->expect, *ru;

	for (int i = 0; i < 2; i++) {
		len = 8 + (uint32_t)probe_strlen(text[i]);
		ip_reply(t, f, r, ihl + len);
		probe_memset(r, 0xff, 6);
		probe_memset(r + 30, 0xff, 4);
		if (i == 0)
			probe_memset(r + 26, 0, 4);
		put16(r + 24, 0);
		put16(r + 24, csum_fold(csum_add(0, r + 14, ihl)));
		ru = r + 14 + ihl;
		put16(ru, i == 0 ? 68 : 67);
		put16(ru + 2, i == 0 ? 67 : 68);
		put16(ru + 4, len);
		probe_memcpy(ru + 8, text[i], len - 8);
		l4_csum(r + 14, ru, len, 6);
		tx_frame(t, r, 14 + ihl + len);
	}
}

/* A datagram to 9997 [count be32, size be16, IPv4 address, MAC]: count
 * datagrams of size payload bytes (zeros, no UDP checksum) from our port
 * 5555 to that address's port 7777, TX_WINDOW in flight (bench/net.sh).
 * PROBE net_ip blast frames=N size=B ms=T. */
static void blast(struct net *t, const uint8_t *f, uint32_t iplen)
{
	uint32_t ihl = (f[14] & 15u) * 4, sent = 0, done = 0, len, count, size;
	const uint8_t *arg = f + 14 + ihl + 8;
	uint8_t *r = t->expect;
	uint64_t t0;

	if (iplen < ihl + 8 + 16)
		return;
	count = be32(arg);
	size = be16(arg + 4);
	if (14 + ihl + 8 + size > t->max_frame)
		size = t->max_frame - 14 - ihl - 8;
	len = 14 + ihl + 8 + size;
	while (t->tx_inflight && vq_wait(t->tx, 1000))
		while (vq_get(t->tx, NULL))
			t->tx_inflight--;
	ip_reply(t, f, r, ihl + 8 + size);
	probe_memcpy(r + 30, arg + 6, 4);
	probe_memcpy(r, arg + 10, 6);
	put16(r + 24, 0);
	put16(r + 24, csum_fold(csum_add(0, r + 14, ihl)));
	put16(r + 14 + ihl, 5555);
	put16(r + 14 + ihl + 2, 7777);
	put16(r + 14 + ihl + 4, 8 + size);
	put16(r + 14 + ihl + 6, 0);
	probe_memset(r + 14 + ihl + 8, 0, size);
	for (uint32_t i = 0; i < TX_WINDOW; i++) {
		uint8_t *p = t->tx_bufs + (size_t)i * (HDR_LEN + MAX_FRAME + 2);

		probe_memset(p, 0, HDR_LEN);
		probe_memcpy(p + HDR_LEN, r, len);
	}
	t0 = clock_ns();
	while (done < count) {
		while (sent < count && sent - done < TX_WINDOW) {
			struct vq_buf v = { t->tx_bufs + (size_t)(sent % TX_WINDOW) *
					    (HDR_LEN + MAX_FRAME + 2), HDR_LEN + len };

			if (vq_add(t->tx, &v, 1, 0, (void *)v.addr) < 0)
				break;
			sent++;
		}
		vq_kick(t->tx);
		if (!vq_has_used(t->tx) && !vq_wait(t->tx, 1000))
			break;
		while (vq_get(t->tx, NULL))
			done++;
	}
	probe_printf("PROBE net_ip blast frames=%u size=%u ms=%lu\n", done, size,
		     (clock_ns() - t0) / 1000000);
}

/* An ICMPv6 message to dmac: type, the 4 bytes after the checksum (rest),
 * then body; hop limit 255, as neighbour discovery requires. */
static void icmp6_frame(struct net *t, const uint8_t *dmac, const uint8_t *src,
			const uint8_t *dst, uint8_t type, uint32_t rest,
			const uint8_t *body, uint32_t blen)
{
	uint8_t r[14 + 40 + 8 + 32], pseudo[40], *ip = r + 14, *ic = ip + 40;
	uint32_t len = 8 + blen;

	probe_memset(r, 0, sizeof(r));
	probe_memcpy(r, dmac, 6);
	probe_memcpy(r + 6, t->mac, 6);
	put16(r + 12, 0x86dd);
	ip[0] = 0x60;
	put16(ip + 4, len);
	ip[6] = 58;
	ip[7] = 255;
	probe_memcpy(ip + 8, src, 16);
	probe_memcpy(ip + 24, dst, 16);
	ic[0] = type;
	put32(ic + 4, rest);
	probe_memcpy(ic + 8, body, blen);
	probe_memcpy(pseudo, src, 16);
	probe_memcpy(pseudo + 16, dst, 16);
	put32(pseudo + 32, len);
	put32(pseudo + 36, 58);
	put16(ic + 2, csum_fold(csum_add(csum_add(0, pseudo, 40), ic, len)));
	tx_frame(t, r, 14 + 40 + len);
}

/* The IPv6 anti-spoofing test (a datagram to port 9995 whose payload is
 * our IPv6 address, the sender's and a foreign one, 16 bytes each): to
 * the sender, an echo request "ok6" from our address, one "spoof6" from
 * the foreign address, a neighbour advert for the foreign address and one
 * for ours, a router advert (from a link-local address, to all nodes);
 * last an echo request "end6", so that the sender knows it has seen all
 * that got through. */
static void ipv6_frames(struct net *t, const uint8_t *f, uint32_t iplen)
{
	static const uint8_t all_nodes_mac[6] = { 0x33, 0x33, 0, 0, 0, 1 };
	static const uint8_t all_nodes[16] = { 0xff, 2, [15] = 1 };
	static const uint8_t link_local[16] = { 0xfe, 0x80, [15] = 0x99 };
	const uint8_t *arg = f + 14 + (f[14] & 15u) * 4 + 8;
	const uint8_t *own = arg, *peer = arg + 16, *other = arg + 32;
	uint8_t ra[8] = { 0 };

	if (iplen < (f[14] & 15u) * 4 + 8 + 48)
		return;
	icmp6_frame(t, f + 6, own, peer, 128, 0x00010001, (const uint8_t *)"ok6", 3);
	icmp6_frame(t, f + 6, other, peer, 128, 0x00010002, (const uint8_t *)"spoof6", 6);
	icmp6_frame(t, f + 6, own, peer, 136, 0x20000000, other, 16);
	icmp6_frame(t, f + 6, own, peer, 136, 0x20000000, own, 16);
	icmp6_frame(t, all_nodes_mac, link_local, all_nodes, 134, 0x40000708, ra, 8);
	icmp6_frame(t, f + 6, own, peer, 128, 0x00010003, (const uint8_t *)"end6", 4);
	ips.spoof++;
}

static void udp_in(struct net *t, const uint8_t *f, uint32_t iplen)
{
	uint32_t ihl = (f[14] & 15u) * 4;
	uint8_t other[4];

	ips.udp++;
	if (be16(f + 14 + ihl + 2) == 9997) {
		blast(t, f, iplen);
		return;
	}
	if (be16(f + 14 + ihl + 2) == 9996) {
		dhcp_frames(t, f);
		return;
	}
	if (be16(f + 14 + ihl + 2) == 9995) {
		ipv6_frames(t, f, iplen);
		return;
	}
	if (be16(f + 14 + ihl + 2) == 9998 && iplen >= ihl + 10) {
		start_flow(t, f, iplen);
		return;
	}
	if (be16(f + 14 + ihl) == 5555)
		return;		/* another guest's flow: no echo, or two would loop */
	if (be16(f + 14 + ihl + 2) != 9999) {
		udp_reply(t, f, iplen, NULL);
		return;
	}
	udp_reply(t, f, iplen, "ok");
	udp_reply(t, f, iplen, "spoof-ip");
	udp_reply(t, f, iplen, "spoof-mac");
	probe_memcpy(other, ips.ip, 4);
	other[3] ^= 0x80;
	arp_frame(t, f, other);
	ips.spoof++;
}

static void ip_frame(struct net *t, const uint8_t *f, uint32_t len, uint32_t n)
{
	uint32_t iplen;

	(void)n;
	if (len >= 42 && f[12] == 8 && f[13] == 6 && be16(f + 20) == 1 &&
	    !probe_memcmp(f + 38, ips.ip, 4)) {
		ips.arp++;
		arp_frame(t, f, ips.ip);
		return;
	}
	if (len < 34 || f[12] != 8 || f[13] != 0 || (f[14] >> 4) != 4 ||
	    probe_memcmp(f + 30, ips.ip, 4) || probe_memcmp(f, t->mac, 6)) {
		t->other++;
		return;
	}
	iplen = be16(f + 16);
	if (iplen > len - 14 || iplen < (f[14] & 15u) * 4 + 8 || iplen + 14 > t->max_frame) {
		t->other++;
		return;
	}
	if (f[23] == 1)
		icmp_in(t, f, iplen);
	else if (f[23] == 6)
		tcp_in(t, f, iplen);
	else if (f[23] == 17)
		udp_in(t, f, iplen);
	else
		t->other++;
}

/* "A.B.C.D" into ip[4]; false if malformed. */
static bool parse_ip4(const char *s, uint8_t ip[4])
{
	for (int i = 0; i < 4; i++) {
		uint32_t v = 0;
		int digits = 0;

		while (*s >= '0' && *s <= '9' && digits < 3) {
			v = v * 10 + (uint32_t)(*s++ - '0');
			digits++;
		}
		if (!digits || v > 255 || (i < 3 && *s++ != '.'))
			return false;
		ip[i] = (uint8_t)v;
	}
	return *s == '\0' || *s == ' ';
}

void scn_net_ip(const char *arg)
{
	struct net t = { .on_frame = ip_frame };
	uint64_t deadline;

	if (!parse_ip4(arg, ips.ip)) {
		probe_printf("PROBE net_ip error=bad-address\n");
		probe_exit(1);
	}
	if (net_open(&t))
		probe_exit(1);
	deadline = clock_ns() + cmdline_u64("net_ip_ms", 30000) * 1000000;
	probe_printf("PROBE net_ip ready mac=%02x:%02x:%02x:%02x:%02x:%02x ip=%u.%u.%u.%u\n",
		     t.mac[0], t.mac[1], t.mac[2], t.mac[3], t.mac[4], t.mac[5], ips.ip[0],
		     ips.ip[1], ips.ip[2], ips.ip[3]);
	while (clock_ns() < deadline) {
		if (!vq_has_used(t.rx))
			vq_wait(t.rx, 200);
		rx_poll(&t, 0);
		while (vq_get(t.tx, NULL))
			t.tx_inflight--;
	}
	probe_printf("PROBE net_ip arp=%u icmp=%u syn=%u tcp_data=%u udp=%u spoof=%u other=%u\n",
		     ips.arp, ips.icmp, ips.syn, ips.tcp_data, ips.udp, ips.spoof, t.other);
}

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

/* The "devloop" scenario: every virtio device in use at once, without end,
 * for the snapshot tests (a restored guest must find its devices working
 * and its disks as its memory remembers them).
 *
 * Setup: every disk (up to 4), the rng, the balloon inflated by
 * balloon_mib=N MiB, the first vNIC (receive buffers posted). Then
 * "PROBE devloop ready disks=D rng=0|1 balloon_pages=P net=0|1" and, every
 * MS ms (scenario=devloop=MS, default 100), one round:
 *   each disk: write 4 KiB at slot n % 64 (sector 2048 + 8 * slot) with
 *   words (n << 32 | disk << 16 | i), read it back, and read the slot of
 *   round n - 1, both compared;
 *   rng: 64 bytes;  net: one broadcast frame (ethertype 0x88b5);
 * "PROBE devloop n=N ms=T blk=ok|bad rng=BYTES net=ok|bad|none" with T the
 * clock since the scenario began. A request not answered within 10 s:
 * "PROBE devloop_error=timeout dev=…".
 *
 * keep=K (for the migration tests): each disk also has K page-sized
 * buffers that only the device writes: round n reads the slot it just
 * wrote into buffer n % K, then checks all K still hold what their last
 * read brought. A page the VMM wrote that a live migration did not carry
 * over shows as " kept=bad" at the end of the line (else " kept=ok").
 * dirty_mib=M: each round also writes every page of M MiB with its address
 * and the round, checking first what the previous round left (the guest's
 * own writes, as the "dirty" scenario): " dirty=ok|bad" ends the line.
 * A byte on the serial console holds the disks (for the copied-storage
 * migration tests: the images then stay as they are): "PROBE devloop held
 * n=N" once, and from round N on no disk request, "blk=held". */
#include "virtio.h"

#define MAX_DISKS	4
#define SLOTS		64
#define WORDS		512		/* 4 KiB */
#define TIMEOUT_MS	10000
#define MAX_KEEP	16

struct blk_hdr {
	uint32_t type, reserved;
	uint64_t sector;
};

struct disk {
	struct vdev *d;
	struct blk_hdr *hdr;
	uint8_t *status;
	uint64_t *buf;
	uint64_t *kept[MAX_KEEP];
};

static struct disk disks[MAX_DISKS];
static int ndisks;
static uint64_t nkeep, dirty_pages;
static volatile uint64_t *dirty_buf;
static struct vdev *rng, *net;
static uint8_t *rng_buf, *tx_frame, *rx_bufs;

static uint64_t word(uint64_t n, int k, int i)
{
	return n << 32 | (uint64_t)k << 16 | (uint64_t)i;
}

/* One request: header, data, status; true when answered with status OK. */
static bool blk_io_buf(struct disk *s, bool write, uint64_t slot, uint64_t *buf)
{
	struct vq_buf v[3] = { { s->hdr, sizeof(*s->hdr) }, { buf, WORDS * 8 }, { s->status, 1 } };

	s->hdr->type = write ? 1 : 0;
	s->hdr->reserved = 0;
	s->hdr->sector = 2048 + 8 * slot;
	*s->status = 0xff;
	if (vq_add(&s->d->vq[0], v, write ? 2 : 1, write ? 1 : 2, s) < 0)
		return false;
	vq_kick(&s->d->vq[0]);
	if (!vq_get_wait(&s->d->vq[0], NULL, TIMEOUT_MS)) {
		probe_printf("PROBE devloop_error=timeout dev=blk status=0x%x\n", vdev_status(s->d));
		probe_exit(1);
	}
	return *s->status == 0;
}

static bool blk_io(struct disk *s, bool write, uint64_t slot)
{
	return blk_io_buf(s, write, slot, s->buf);
}

static bool words_are(const uint64_t *buf, uint64_t n, int k)
{
	for (int i = 0; i < WORDS; i++)
		if (buf[i] != word(n, k, i))
			return false;
	return true;
}

/* Reads round n's slot into its kept buffer, then checks every kept
 * buffer against the last round that read into it. */
static bool keep_round(struct disk *s, int k, uint64_t n)
{
	bool ok = blk_io_buf(s, false, n % SLOTS, s->kept[n % nkeep]);

	for (uint64_t j = 0; j < nkeep && j <= n; j++)
		ok &= words_are(s->kept[j], n - (n - j) % nkeep, k);
	return ok;
}

static bool blk_check(struct disk *s, int k, uint64_t n)
{
	if (!blk_io(s, false, n % SLOTS))
		return false;
	for (int i = 0; i < WORDS; i++)
		if (s->buf[i] != word(n, k, i))
			return false;
	return true;
}

static bool blk_round(uint64_t n, bool *kept)
{
	bool ok = true;

	for (int k = 0; k < ndisks; k++) {
		struct disk *s = &disks[k];

		for (int i = 0; i < WORDS; i++)
			s->buf[i] = word(n, k, i);
		ok &= blk_io(s, true, n % SLOTS);
		ok &= blk_check(s, k, n);
		if (n)
			ok &= blk_check(s, k, n - 1);
		if (nkeep)
			*kept &= keep_round(s, k, n);
	}
	return ok;
}

static bool dirty_round(uint64_t n)
{
	bool ok = true;

	for (uint64_t i = 0; i < dirty_pages; i++) {
		volatile uint64_t *pg = dirty_buf + i * 512;

		if (n && (pg[0] != (uint64_t)(uintptr_t)pg || pg[1] != n - 1))
			ok = false;
		pg[0] = (uint64_t)(uintptr_t)pg;
		pg[1] = n;
	}
	return ok;
}

static uint32_t rng_round(void)
{
	struct vq_buf v = { rng_buf, 64 };
	uint32_t len = 0;

	if (vq_add(&rng->vq[0], &v, 0, 1, rng_buf) < 0)
		return 0;
	vq_kick(&rng->vq[0]);
	if (!vq_get_wait(&rng->vq[0], &len, TIMEOUT_MS)) {
		probe_printf("PROBE devloop_error=timeout dev=rng\n");
		probe_exit(1);
	}
	return len;
}

/* A broadcast frame after the 12-byte virtio-net header; true when the
 * device gave the buffer back. Received frames are handed back unread. */
static bool net_round(uint64_t n)
{
	struct vq_buf v = { tx_frame, 12 + 60 };
	void *p;

	probe_memset(tx_frame, 0, 12 + 60);
	probe_memset(tx_frame + 12, 0xff, 6);
	tx_frame[12 + 6] = 0x02;
	tx_frame[12 + 12] = 0x88;
	tx_frame[12 + 13] = 0xb5;
	for (int i = 0; i < 8; i++)
		tx_frame[12 + 14 + i] = (uint8_t)(n >> (8 * i));
	if (vq_add(&net->vq[1], &v, 1, 0, tx_frame) < 0)
		return false;
	vq_kick(&net->vq[1]);
	if (!vq_get_wait(&net->vq[1], NULL, TIMEOUT_MS))
		return false;
	while ((p = vq_get(&net->vq[0], NULL))) {
		struct vq_buf r = { p, 2048 };

		vq_add(&net->vq[0], &r, 0, 1, p);
	}
	vq_kick(&net->vq[0]);
	return true;
}

static void devloop_setup(void)
{
	for (; ndisks < MAX_DISKS; ndisks++) {
		struct disk *s = &disks[ndisks];

		s->d = virtio_find(VIRTIO_ID_BLK, ndisks);
		if (!s->d || vdev_init(s->d, 0, 1, 64))
			break;
		s->hdr = dma_alloc(sizeof(*s->hdr), 64);
		s->status = dma_alloc(64, 64);
		s->buf = dma_alloc(WORDS * 8, 4096);
		for (uint64_t j = 0; j < nkeep; j++)
			s->kept[j] = dma_alloc(WORDS * 8, 4096);
		vdev_driver_ok(s->d);
	}
	rng = virtio_find(VIRTIO_ID_RNG, 0);
	if (rng && !vdev_init(rng, 0, 1, 64)) {
		rng_buf = dma_alloc(64, 64);
		vdev_driver_ok(rng);
	} else {
		rng = NULL;
	}
	net = virtio_find(VIRTIO_ID_NET, 0);
	if (net && !vdev_init(net, 0, 2, 64)) {
		tx_frame = dma_alloc(2048, 64);
		rx_bufs = dma_alloc(16 * 2048, 4096);
		vdev_driver_ok(net);
		for (int i = 0; i < 16; i++) {
			struct vq_buf r = { rx_bufs + 2048 * i, 2048 };

			vq_add(&net->vq[0], &r, 0, 1, rx_bufs + 2048 * i);
		}
		vq_kick(&net->vq[0]);
	} else {
		net = NULL;
	}
}

void scn_devloop(const char *arg)
{
	uint64_t ms = parse_u64(arg, 100), start, pages = 0;
	bool held = false;

	if (!ms)
		ms = 100;
	nkeep = cmdline_u64("keep", 0);
	if (nkeep > MAX_KEEP)
		nkeep = MAX_KEEP;
	dirty_pages = cmdline_u64("dirty_mib", 0) << 8;
	if (dirty_pages)
		dirty_buf = dma_alloc(dirty_pages * 4096, 4096);
	devloop_setup();
	if (cmdline_u64("balloon_mib", 0) && virtio_find(VIRTIO_ID_BALLOON, 0))
		pages = balloon_inflate(cmdline_u64("balloon_mib", 0));
	probe_printf("PROBE devloop ready disks=%d rng=%d balloon_pages=%lu net=%d\n", ndisks,
		     rng != NULL, pages, net != NULL);
	start = clock_ns();
	for (uint64_t n = 0;; n++) {
		bool kept = true, blk;

		if (!held && (inb(0x3f8 + 5) & 1)) {	/* COM1 LSR.DR */
			(void)inb(0x3f8);
			held = true;
			probe_printf("PROBE devloop held n=%lu\n", n);
		}
		blk = held || blk_round(n, &kept);
		uint32_t bytes = rng ? rng_round() : 0;
		const char *nt = net ? (net_round(n) ? "ok" : "bad") : "none";
		bool dirty = dirty_round(n);

		balloon_service();
		probe_printf("PROBE devloop n=%lu ms=%lu blk=%s rng=%u net=%s%s%s\n", n,
			     (clock_ns() - start) / 1000000, held ? "held" : blk ? "ok" : "bad", bytes, nt,
			     !nkeep ? "" : kept ? " kept=ok" : " kept=bad",
			     !dirty_pages ? "" : dirty ? " dirty=ok" : " dirty=bad");
		clock_delay_us(ms * 1000);
	}
}

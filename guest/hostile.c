/* The "hostile" scenario: feed each virtio device present (blk, net, rng,
 * balloon) malformed descriptor chains, one case at a time on a freshly
 * initialised device, and report what the device did; then reset it and
 * check that one well-formed request still works.
 *
 * Each device has a well-formed template request on one queue:
 *   blk q0:     [header R 16: IN sector 0] [data W 512] [status W 1]
 *   net q1:     [virtio-net header + 60-byte frame R 72]
 *   rng q0:     [buffer W 64]
 *   balloon q0: [one PFN R 4]
 * and every case breaks exactly one thing in it:
 *   head_oob      avail ring entry = queue size
 *   next_oob      last descriptor gets NEXT with next = queue size + 5
 *   addr_oob      first buffer at 1 TiB (no RAM there)
 *   addr_straddle first buffer starts 8 bytes before the end of RAM (len 4096)
 *   loop          last descriptor chains to itself (for blk the status
 *                 byte: a loop of writable descriptors, not an order error)
 *   long_chain    all queue-size descriptors chained 0,1,..,size-1 and then
 *                 back to 1: more than queue-size descriptors without
 *                 revisiting the head
 *   zero_len      the data (or only) buffer has length 0
 *   wrong_dir     a buffer the device must read is write-only (blk header,
 *                 net frame, balloon PFNs), or rng's buffer is read-only
 * and when the device offers VIRTIO_F_INDIRECT_DESC (negotiated then), six
 * more with the template in an indirect table (scratch + 1024):
 *   ind_nested    an INDIRECT descriptor inside the table
 *   ind_len       table length not a multiple of 16
 *   ind_next_oob  a next beyond the table
 *   ind_loop      the table's last descriptor chains to itself
 *   ind_and_next  the ring descriptor has INDIRECT and NEXT (forbidden)
 *   ind_empty     table length 0
 * Result per case, from the used ring and device_status after 300 ms:
 *   needs_reset (DEVICE_NEEDS_RESET set), used (the device returned the
 *   chain; blk adds its status byte), ignored (neither), failed (FAILED or
 *   status 0). After the reset: after_reset=ok|fail.
 * Lines: PROBE hostile dev=D case=C result=R after_reset=ok|fail, then
 *   PROBE hostile dev=D result=needs_reset|... (the most frequent result)
 *   cases=N needs_reset=N used=N ignored=N recovered=N */
#include "virtio.h"

#define CASE_MS		300
#define PROBE_ADDR_OOB	0x10000000000ull	/* 1 TiB */

enum { R_NEEDS_RESET, R_USED, R_IGNORED, R_FAILED, R_COUNT };
static const char *const rname[R_COUNT] = { "needs_reset", "used", "ignored", "failed" };

enum { C_HEAD_OOB, C_NEXT_OOB, C_ADDR_OOB, C_ADDR_STRADDLE, C_LOOP, C_LONG_CHAIN,
       C_ZERO_LEN, C_WRONG_DIR,
       C_IND_NESTED, C_IND_LEN, C_IND_NEXT_OOB, C_IND_LOOP, C_IND_AND_NEXT, C_IND_EMPTY,
       C_COUNT };
#define C_IND_FIRST C_IND_NESTED
static const char *const cname[C_COUNT] = {
	"head_oob", "next_oob", "addr_oob", "addr_straddle", "loop", "long_chain",
	"zero_len", "wrong_dir",
	"ind_nested", "ind_len", "ind_next_oob", "ind_loop", "ind_and_next", "ind_empty",
};

struct tmpl {
	uint16_t type;
	const char *name;
	int queue, nvq;
	uint64_t features;
};

static const struct tmpl devs[] = {
	{ VIRTIO_ID_BLK, "blk", 0, 1, 0 },
	{ VIRTIO_ID_NET, "net", 1, 2, 0 },
	{ VIRTIO_ID_RNG, "rng", 0, 1, 0 },
	{ VIRTIO_ID_BALLOON, "balloon", 0, 2, 0 },
};

static uint8_t *scratch;		/* 8 KiB of buffers */

/* The well-formed request's descriptors into d[]; returns how many. */
static int tmpl_build(uint16_t type, volatile struct vring_desc *d)
{
	uint8_t *hdr = scratch, *data = scratch + 4096;

	probe_memset(scratch, 0, 8192);
	switch (type) {
	case VIRTIO_ID_BLK:		/* header: type 0 (IN), sector 0 */
		d[0] = (struct vring_desc){ (uintptr_t)hdr, 16, VRING_DESC_F_NEXT, 1 };
		d[1] = (struct vring_desc){ (uintptr_t)data, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
		d[2] = (struct vring_desc){ (uintptr_t)(hdr + 64), 1, VRING_DESC_F_WRITE, 0 };
		hdr[64] = 0xff;
		return 3;
	case VIRTIO_ID_NET:
		probe_memset(hdr + 12, 0xff, 12);	/* broadcast dst, src ff.. */
		hdr[24] = 0x88;
		hdr[25] = 0xb5;
		d[0] = (struct vring_desc){ (uintptr_t)hdr, 72, 0, 0 };
		return 1;
	case VIRTIO_ID_RNG:
		d[0] = (struct vring_desc){ (uintptr_t)data, 64, VRING_DESC_F_WRITE, 0 };
		return 1;
	default:			/* balloon: PFN of the second scratch page */
		*(uint32_t *)hdr = (uint32_t)((uintptr_t)data >> 12);
		d[0] = (struct vring_desc){ (uintptr_t)hdr, 4, 0, 0 };
		return 1;
	}
}

/* The buffer a zero_len / wrong_dir case changes. */
static int data_desc(uint16_t type)
{
	return type == VIRTIO_ID_BLK ? 1 : 0;
}

/* Indirect cases: the template moves into a table at scratch + 1024 and
 * ring descriptor 0 points at it; then one thing is broken. */
static void apply_indirect(struct virtq *q, int c, int n)
{
	volatile struct vring_desc *d = q->desc, *t = (volatile struct vring_desc *)(scratch + 1024);

	for (int i = 0; i < n; i++) {
		t[i] = d[i];
		t[i].next = (uint16_t)(i + 1);
	}
	d[0] = (struct vring_desc){ (uintptr_t)t, (uint32_t)n * 16, VRING_DESC_F_INDIRECT, 1 };
	d[1] = (struct vring_desc){ (uintptr_t)(scratch + 2048), 16, 0, 0 };
	switch (c) {
	case C_IND_NESTED:	/* an indirect descriptor inside the table */
		t[0].flags |= VRING_DESC_F_INDIRECT;
		break;
	case C_IND_LEN:		/* table length not a multiple of 16 */
		d[0].len += 8;
		break;
	case C_IND_NEXT_OOB:
		t[n - 1].flags |= VRING_DESC_F_NEXT;
		t[n - 1].next = (uint16_t)(n + 3);
		break;
	case C_IND_LOOP:
		t[n - 1].flags |= VRING_DESC_F_NEXT;
		t[n - 1].next = (uint16_t)(n - 1);
		break;
	case C_IND_AND_NEXT:	/* INDIRECT and NEXT together (forbidden) */
		d[0].flags |= VRING_DESC_F_NEXT;
		break;
	case C_IND_EMPTY:
		d[0].len = 0;
		break;
	}
}

static void apply_case(struct virtq *q, uint16_t type, int c, int n, uint16_t *head)
{
	volatile struct vring_desc *d = q->desc;

	*head = 0;
	if (c >= C_IND_FIRST) {
		apply_indirect(q, c, n);
		return;
	}
	switch (c) {
	case C_HEAD_OOB:
		*head = q->size;
		break;
	case C_NEXT_OOB:
		d[n - 1].flags |= VRING_DESC_F_NEXT;
		d[n - 1].next = (uint16_t)(q->size + 5);
		break;
	case C_ADDR_OOB:
		d[0].addr = PROBE_ADDR_OOB;
		break;
	case C_ADDR_STRADDLE:
		d[0].addr = ram_end() - 8;
		d[0].len = 4096;
		break;
	case C_LOOP:		/* a pure loop: no direction change on the way */
		d[n - 1].flags |= VRING_DESC_F_NEXT;
		d[n - 1].next = (uint16_t)(n - 1);
		break;
	case C_LONG_CHAIN:
		for (uint16_t i = (uint16_t)n; i < q->size; i++)
			d[i] = d[n - 1];
		for (uint16_t i = 0; i < q->size; i++) {
			d[i].flags |= VRING_DESC_F_NEXT;
			d[i].next = (uint16_t)(i + 1 < q->size ? i + 1 : 1);
		}
		break;
	case C_ZERO_LEN:
		d[data_desc(type)].len = 0;
		break;
	case C_WRONG_DIR:
		if (type == VIRTIO_ID_RNG)
			d[0].flags &= (uint16_t)~VRING_DESC_F_WRITE;
		else
			d[0].flags |= VRING_DESC_F_WRITE;
		break;
	}
}

static int observe(struct vdev *dv, struct virtq *q, uint16_t type, char *extra)
{
	uint64_t end = clock_ns() + CASE_MS * 1000000ull;
	uint8_t st;

	extra[0] = 0;
	do {
		st = vdev_status(dv);
		if (st & VS_NEEDS_RESET)
			return R_NEEDS_RESET;
		if (vq_has_used(q))
			break;
		clock_delay_us(1000);
	} while (clock_ns() < end);
	st = vdev_status(dv);
	if (st & VS_NEEDS_RESET)
		return R_NEEDS_RESET;
	if ((st & VS_FAILED) || !st)
		return R_FAILED;
	if (!vq_has_used(q))
		return R_IGNORED;
	if (type == VIRTIO_ID_BLK) {
		static const char hex[] = "0123456789abcdef";
		uint8_t s = scratch[64];

		probe_memcpy(extra, " blk_status=0x", 14);
		extra[14] = hex[s >> 4];
		extra[15] = hex[s & 15];
		extra[16] = 0;
	}
	return R_USED;
}

/* After a reset: one well-formed request through the normal driver path. */
static bool sanity(struct vdev *dv, const struct tmpl *t)
{
	struct virtq *q = &dv->vq[t->queue];
	struct vring_desc d[3];
	struct vq_buf v[3];
	int n = tmpl_build(t->type, d), nout = 0;

	for (int i = 0; i < n; i++) {
		v[i] = (struct vq_buf){ (const void *)(uintptr_t)d[i].addr, d[i].len };
		if (!(d[i].flags & VRING_DESC_F_WRITE))
			nout = i + 1;
	}
	if (vq_add(q, v, nout, n - nout, scratch) < 0)
		return false;
	vq_kick(q);
	if (!vq_get_wait(q, NULL, 2000))
		return false;
	if (t->type == VIRTIO_ID_BLK && scratch[64] != 0)
		return false;
	return !(vdev_status(dv) & (VS_NEEDS_RESET | VS_FAILED));
}

static void hostile_dev(struct vdev *dv, const struct tmpl *t)
{
	uint32_t count[R_COUNT] = { 0 }, recovered = 0, cases = 0;
	char extra[24];
	bool indirect = vdev_offered(dv) & VIRTIO_F_INDIRECT_DESC;

	for (int c = 0; c < C_COUNT; c++) {
		uint16_t head;
		int r;

		if (c >= C_IND_FIRST && !indirect)
			break;
		cases++;

		dma_mark();
		if (vdev_init(dv, t->features | (indirect ? VIRTIO_F_INDIRECT_DESC : 0), t->nvq, 64)) {
			probe_printf("PROBE hostile dev=%s case=%s result=init-failed\n", t->name, cname[c]);
			dma_release();
			continue;
		}
		vdev_driver_ok(dv);
		struct virtq *q = &dv->vq[t->queue];
		int n = tmpl_build(t->type, q->desc);

		apply_case(q, t->type, c, n, &head);
		q->avail->ring[0] = head;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		q->avail->idx = 1;
		*q->notify = q->index;
		r = observe(dv, q, t->type, extra);
		count[r]++;
		dma_release();
		/* Reset, set up again, and try a good request. */
		dma_mark();
		bool ok = !vdev_init(dv, t->features | (indirect ? VIRTIO_F_INDIRECT_DESC : 0), t->nvq, 64);

		if (ok) {
			vdev_driver_ok(dv);
			ok = sanity(dv, t);
		}
		recovered += ok;
		probe_printf("PROBE hostile dev=%s case=%s result=%s%s after_reset=%s\n", t->name,
			     cname[c], rname[r], extra, ok ? "ok" : "fail");
		vdev_reset(dv);
		dma_release();
	}
	int best = 0;

	for (int r = 1; r < R_COUNT; r++)
		if (count[r] > count[best])
			best = r;
	probe_printf("PROBE hostile dev=%s result=%s cases=%u needs_reset=%u used=%u ignored=%u "
		     "failed=%u recovered=%u\n", t->name, rname[best], cases, count[R_NEEDS_RESET],
		     count[R_USED], count[R_IGNORED], count[R_FAILED], recovered);
}

void scn_hostile(const char *arg)
{
	int found = 0;

	(void)arg;
	scratch = dma_alloc(8192, 4096);
	for (unsigned i = 0; i < sizeof(devs) / sizeof(devs[0]); i++) {
		struct vdev *dv = virtio_find(devs[i].type, 0);

		if (!dv)
			continue;
		found++;
		hostile_dev(dv, &devs[i]);
	}
	probe_printf("PROBE hostile_devices=%d\n", found);
}

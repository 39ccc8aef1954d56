/* virtio-blk driver and the "blk" scenario.
 *
 * Disk layout written by "blk" (seed=S, n=N; sectors of 512 bytes; C =
 * capacity in sectors, at least 8192), so that a host test can compute the
 * expected image:
 *
 *   pattern bytes: the byte at disk offset b is byte (b % 8) (little-endian)
 *     of W(b / 8), W(k) = mix64(S * 0x9e3779b97f4a7c15 + k) (mod 2^64),
 *     mix64 = splitmix64's finalizer (util.c).
 *   tail: E = (C & ~2047) - 4096; discard range D = [E, E+2048),
 *     write-zeroes range Z = [E+2048, E+4096) (1 MiB each).
 *   pattern area [0, E): stride T = (E / N) & ~127 (N is lowered to E/128
 *     if T would be < 128). A generator r = S; next() = mix64(r += G),
 *     G = 0x9e3779b97f4a7c15; for i = 0..N-1: x = next(), len = 1 + (x & 127),
 *     off = (x >> 32) % (129 - len); request i writes pattern bytes to the
 *     sectors [i*T + off, i*T + off + len).
 *   D and Z are then written with pattern bytes too (64 KiB requests).
 *   Every write is read back and compared. Then flush; discard of D (if
 *   VIRTIO_BLK_F_DISCARD), D read back: discard_reads=zero|pattern|mixed;
 *   write-zeroes of Z (if VIRTIO_BLK_F_WRITE_ZEROES), Z read back must be
 *   zero; flush again.
 *   Expected image: zero (a fresh image) except the N request ranges and
 *   D (pattern, or zero if discard_reads=zero) and Z (zero if
 *   write_zeroes=ok, else pattern).
 *   checksum = CRC-32 (zlib) of the N requests' data in request order.
 */
#include "virtio.h"

#define BLK_F_SIZE_MAX		(1ull << 1)
#define BLK_F_SEG_MAX		(1ull << 2)
#define BLK_F_RO		(1ull << 5)
#define BLK_F_BLK_SIZE		(1ull << 6)
#define BLK_F_FLUSH		(1ull << 9)
#define BLK_F_MQ		(1ull << 12)
#define BLK_F_DISCARD		(1ull << 13)
#define BLK_F_WRITE_ZEROES	(1ull << 14)

enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13 };
#define GOLDEN		0x9e3779b97f4a7c15ull
#define SLOTS		32
#define SLOT_BYTES	65536
#define TIMEOUT_MS	10000

struct blk_hdr {
	uint32_t type, reserved;
	uint64_t sector;
};
struct blk_range {			/* discard / write-zeroes segment */
	uint64_t sector;
	uint32_t num_sectors, flags;
};
struct blk_req {
	struct blk_hdr hdr;
	struct blk_range range;
	uint8_t status;
	bool done;
};

struct blk {
	struct vdev *d;
	struct virtq *q;
	uint64_t capacity;
	struct blk_req *reqs;		/* SLOTS of them */
	uint8_t *buf;			/* SLOTS * SLOT_BYTES */
	uint64_t writes, reads, errors;
};

static uint64_t pat_seed;

static uint64_t pat_word(uint64_t k)
{
	return mix64(pat_seed * GOLDEN + k);
}

/* Pattern bytes of sectors [sector, sector + count) into p. */
static void pat_fill(uint8_t *p, uint64_t sector, uint32_t count)
{
	uint64_t *w = (uint64_t *)p, k = sector * 64;

	for (uint32_t i = 0; i < count * 64; i++)
		w[i] = pat_word(k + i);
}

static bool pat_check(const uint8_t *p, uint64_t sector, uint32_t count)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t k = sector * 64;

	for (uint32_t i = 0; i < count * 64; i++)
		if (w[i] != pat_word(k + i))
			return false;
	return true;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	const uint64_t *w = (const uint64_t *)p;

	for (size_t i = 0; i < n / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* Queues one request in slot s (not kicked). data is device-readable for
 * writes, discard and write-zeroes, device-writable for reads and get-id. */
static int blk_queue(struct blk *b, int s, uint32_t type, uint64_t sector, void *data, uint32_t len)
{
	struct blk_req *r = &b->reqs[s];
	struct vq_buf v[3];
	int n = 0, nout;

	r->hdr.type = type;
	r->hdr.reserved = 0;
	r->hdr.sector = sector;
	r->status = 0xff;
	r->done = false;
	v[n++] = (struct vq_buf){ &r->hdr, sizeof(r->hdr) };
	if (type == T_DISCARD || type == T_WRITE_ZEROES) {
		r->range.sector = sector;
		r->range.num_sectors = len;
		r->range.flags = 0;
		r->hdr.sector = 0;
		v[n++] = (struct vq_buf){ &r->range, sizeof(r->range) };
	} else if (type == T_OUT) {
		v[n++] = (struct vq_buf){ data, len };
	}
	nout = n;
	if (type == T_IN || type == T_GET_ID)
		v[n++] = (struct vq_buf){ data, len };
	v[n++] = (struct vq_buf){ &r->status, 1 };
	if (type == T_OUT)
		b->writes++;
	else if (type == T_IN)
		b->reads++;
	return vq_add(b->q, v, nout, n - nout, r) < 0 ? -1 : 0;
}

/* Kicks and waits for every queued request; returns how many failed
 * (status != OK), or -1 on a timeout. */
static int blk_complete(struct blk *b, int queued)
{
	int failed = 0;

	vq_kick(b->q);
	while (queued) {
		struct blk_req *r = vq_get_wait(b->q, NULL, TIMEOUT_MS);

		if (!r) {
			probe_printf("PROBE blk_error=timeout status=0x%x\n", vdev_status(b->d));
			return -1;
		}
		r->done = true;
		if (r->status)
			failed++;
		queued--;
	}
	b->errors += (uint64_t)failed;
	return failed;
}

/* One request, synchronously; returns its status (0 OK, 1 IOERR, 2 UNSUPP, 0xff timeout). */
static int blk_sync(struct blk *b, uint32_t type, uint64_t sector, void *data, uint32_t len)
{
	if (blk_queue(b, 0, type, sector, data, len) || blk_complete(b, 1) < 0)
		return 0xff;
	return b->reqs[0].status;
}

static int blk_open(struct blk *b, uint64_t wanted)
{
	b->d = virtio_find(VIRTIO_ID_BLK, (int)cmdline_u64("blk_dev", 0));
	if (!b->d) {
		probe_printf("PROBE blk_error=no-device\n");
		return -1;
	}
	if (vdev_init(b->d, wanted, 1, 128))
		return -1;
	b->q = &b->d->vq[0];
	b->capacity = cfg_r64(b->d, 0);
	b->reqs = dma_alloc(sizeof(struct blk_req) * SLOTS, 64);
	b->buf = dma_alloc((size_t)SLOTS * SLOT_BYTES, 4096);
	vdev_driver_ok(b->d);
	return 0;
}

static void get_serial(struct blk *b, char out[21])
{
	uint8_t *id = b->buf;
	int n = 0;

	probe_memset(id, 0, 20);
	if (blk_sync(b, T_GET_ID, 0, id, 20) == 0)
		for (; n < 20 && id[n]; n++)
			out[n] = id[n] > ' ' && id[n] < 127 ? (char)id[n] : '?';
	if (!n)
		out[n++] = '-';
	out[n] = 0;
}

struct layout {
	uint64_t tail, stride;
	uint32_t n;
};

static uint64_t rng_state;
static uint64_t rng_next(void) { return mix64(rng_state += GOLDEN); }

static void req_range(const struct layout *l, uint32_t i, uint64_t *sector, uint32_t *len)
{
	uint64_t x = rng_next();

	*len = 1 + (uint32_t)(x & 127);
	*sector = i * l->stride + (x >> 32) % (129 - *len);
}

/* Writes (read=false) or reads back and checks the N pattern requests.
 * Returns mismatches (requests whose data differ or that failed). */
static uint32_t pattern_pass(struct blk *b, const struct layout *l, bool read, uint32_t *crc)
{
	uint64_t sec[SLOTS];
	uint32_t len[SLOTS], mism = 0;

	rng_state = pat_seed;
	for (uint32_t i = 0; i < l->n; i += SLOTS) {
		int k = 0, failed;

		for (; k < SLOTS && i + (uint32_t)k < l->n; k++) {
			uint8_t *p = b->buf + (size_t)k * SLOT_BYTES;

			req_range(l, i + (uint32_t)k, &sec[k], &len[k]);
			if (read)
				probe_memset(p, 0xa5, len[k] * 512u);
			else
				pat_fill(p, sec[k], len[k]);
			if (!read && crc)
				*crc = crc32_update(*crc, p, len[k] * 512u);
			blk_queue(b, k, read ? T_IN : T_OUT, sec[k], p, len[k] * 512u);
		}
		failed = blk_complete(b, k);
		if (failed < 0)
			return l->n;
		for (int j = 0; j < k; j++)
			if (b->reqs[j].status || (read && !pat_check(b->buf + (size_t)j * SLOT_BYTES, sec[j], len[j])))
				mism++;
	}
	return mism;
}

/* 1 MiB at sector s in 16 requests of 64 KiB: write pattern, or read
 * and classify: 0 all pattern, 1 all zero, 2 mixed/failed. */
static int range_io(struct blk *b, uint64_t s, bool read)
{
	int zero = 0, pat = 0;

	for (int k = 0; k < 16; k++) {
		uint8_t *p = b->buf + (size_t)k * SLOT_BYTES;

		if (!read)
			pat_fill(p, s + 128u * (unsigned)k, 128);
		blk_queue(b, k, read ? T_IN : T_OUT, s + 128u * (unsigned)k, p, SLOT_BYTES);
	}
	if (blk_complete(b, 16))
		return 2;
	if (!read)
		return 0;
	for (int k = 0; k < 16; k++) {
		uint8_t *p = b->buf + (size_t)k * SLOT_BYTES;

		zero += all_zero(p, SLOT_BYTES);
		pat += pat_check(p, s + 128u * (unsigned)k, 128);
	}
	return pat == 16 ? 0 : zero == 16 ? 1 : 2;
}

/* Discard or write-zeroes of 2048 sectors at s, split by the device's max. */
static const char *range_op(struct blk *b, uint32_t type, uint64_t s, uint32_t max)
{
	int k = 0;

	if (!max)
		max = 2048;
	for (uint32_t done = 0; done < 2048; k++) {
		uint32_t n = 2048 - done < max ? 2048 - done : max;

		if (k == SLOTS) {
			if (blk_complete(b, k))
				return "fail";
			k = 0;
		}
		blk_queue(b, k, type, s + done, NULL, n);
		done += n;
	}
	return blk_complete(b, k) ? "fail" : "ok";
}

/* verify=1: only read the N pattern ranges back (a disk written by an
 * earlier "blk" run with the same seed and n, e.g. opened read-only now);
 * on a VIRTIO_BLK_F_RO disk also try to write request 0's range with its
 * own pattern, which the device must refuse. */
static void blk_verify(struct blk *b, const struct layout *l, const char *serial)
{
	const char *ro_write = "skipped";
	uint32_t mism = pattern_pass(b, l, true, NULL);

	if (b->d->features & BLK_F_RO) {
		uint64_t sector;
		uint32_t len;

		rng_state = pat_seed;
		req_range(l, 0, &sector, &len);
		pat_fill(b->buf, sector, len);
		int st = blk_sync(b, T_OUT, sector, b->buf, len * 512u);

		ro_write = st == 0 ? "accepted" : st == 0xff ? "timeout" : "refused";
	}
	probe_printf("PROBE blk_verify capacity=%lu serial=%s reads=%u mismatches=%u ro=%d ro_write=%s\n",
		     b->capacity, serial, l->n, mism, !!(b->d->features & BLK_F_RO), ro_write);
}

void scn_blk(const char *arg)
{
	static const char *const reads_name[] = { "pattern", "zero", "mixed" };
	struct blk b = { 0 };
	struct layout l;
	char serial[21];
	uint32_t crc = 0, mism;
	const char *flush = "unsupported", *discard = "unsupported", *wz = "unsupported";
	const char *dreads = "none";

	(void)arg;
	pat_seed = cmdline_u64("seed", 1);
	l.n = (uint32_t)cmdline_u64("n", 256);
	if (blk_open(&b, BLK_F_FLUSH | BLK_F_DISCARD | BLK_F_WRITE_ZEROES | BLK_F_RO |
		     BLK_F_BLK_SIZE | BLK_F_SIZE_MAX | BLK_F_SEG_MAX))
		probe_exit(1);
	if (b.capacity < 8192) {
		probe_printf("PROBE blk_error=disk-too-small capacity=%lu\n", b.capacity);
		probe_exit(1);
	}
	l.tail = (b.capacity & ~2047ull) - 4096;
	if (!l.n)
		l.n = 1;
	if (l.tail / l.n < 128)
		l.n = (uint32_t)(l.tail / 128);
	l.stride = (l.tail / l.n) & ~127ull;
	get_serial(&b, serial);
	probe_printf("PROBE blk_layout seed=%lu n=%u stride=%lu tail=%lu features=0x%lx\n",
		     pat_seed, l.n, l.stride, l.tail, b.d->features);

	if (cmdline_u64("verify", 0)) {
		blk_verify(&b, &l, serial);
		return;
	}
	if (b.d->features & BLK_F_RO) {
		probe_printf("PROBE blk_error=read-only\n");
		probe_exit(1);
	}
	mism = pattern_pass(&b, &l, false, &crc);
	range_io(&b, l.tail, false);
	range_io(&b, l.tail + 2048, false);
	mism += pattern_pass(&b, &l, true, NULL);
	mism += range_io(&b, l.tail, true) != 0;
	mism += range_io(&b, l.tail + 2048, true) != 0;
	if (b.d->features & BLK_F_FLUSH)
		flush = blk_sync(&b, T_FLUSH, 0, NULL, 0) ? "fail" : "ok";
	if (b.d->features & BLK_F_DISCARD) {
		discard = range_op(&b, T_DISCARD, l.tail, cfg_r32(b.d, 36));
		dreads = reads_name[range_io(&b, l.tail, true)];
	}
	if (b.d->features & BLK_F_WRITE_ZEROES) {
		wz = range_op(&b, T_WRITE_ZEROES, l.tail + 2048, cfg_r32(b.d, 48));
		if (range_io(&b, l.tail + 2048, true) != 1)
			wz = "fail";
	}
	if (b.d->features & BLK_F_FLUSH && blk_sync(&b, T_FLUSH, 0, NULL, 0))
		flush = "fail";
	probe_printf("PROBE blk capacity=%lu serial=%s writes=%u reads=%u mismatches=%u "
		     "checksum=%08x flush=%s discard=%s discard_reads=%s write_zeroes=%s\n",
		     b.capacity, serial, l.n, l.n, mism, crc, flush, discard, dreads, wz);
	probe_printf("PROBE blk_stats irq=%s irqs=%u kicks=%lu requests_failed=%lu status=0x%x\n",
		     b.d->msix ? "msix" : "poll", virtio_irq_count(), b.q->kicks, b.errors,
		     vdev_status(b.d));
}

/* ---- blk_bench ---- */

struct bench_mode {
	const char *name;
	uint32_t type, bytes;
	bool random;
};

static uint64_t bench_run(struct blk *b, const struct bench_mode *m, uint64_t ms, int qd,
			  uint8_t *bufs)
{
	uint64_t span = (b->capacity & ~2047ull) / (m->bytes / 512), next = 0, ops = 0;
	uint64_t t0 = clock_ns(), end = t0 + ms * 1000000;
	int inflight = 0;

	rng_state = 12345;
	for (;;) {
		bool more = clock_ns() < end;

		while (more && inflight < qd) {
			uint64_t blkno = m->random ? rng_next() % span : next++ % span;
			int s = inflight;	/* any free slot: find one */

			for (s = 0; s < qd && !b->reqs[s].done; s++)
				;
			if (s == qd)
				break;
			if (blk_queue(b, s, m->type, blkno * (m->bytes / 512),
				      bufs + (size_t)s * m->bytes, m->bytes))
				break;
			inflight++;
		}
		vq_kick(b->q);
		if (!inflight)
			break;
		struct blk_req *r = vq_get_wait(b->q, NULL, TIMEOUT_MS);

		if (!r) {
			probe_printf("PROBE blk_error=timeout\n");
			break;
		}
		r->done = true;
		inflight--;
		ops++;
		while ((r = vq_get(b->q, NULL))) {
			r->done = true;
			inflight--;
			ops++;
		}
	}
	uint64_t ns = clock_ns() - t0;

	probe_printf("PROBE blk_bench mode=%s bs=%u qd=%d ops=%lu ms=%lu iops=%lu mbps=%lu\n",
		     m->name, m->bytes, qd, ops, ns / 1000000, ops * 1000000000 / (ns ? ns : 1),
		     ops * m->bytes * 1000 / (ns ? ns : 1));
	return ops;
}

/* blk_bench: time_ms=T per mode (default 2000), qd=N (default 16),
 * mode=NAME to run one mode only. */
void scn_blk_bench(const char *arg)
{
	static const struct bench_mode modes[] = {
		{ "seqwrite", T_OUT, 1 << 20, false },
		{ "seqread", T_IN, 1 << 20, false },
		{ "randwrite", T_OUT, 4096, true },
		{ "randread", T_IN, 4096, true },
	};
	struct blk b = { 0 };
	uint64_t ms = cmdline_u64("time_ms", 2000);
	int qd = (int)cmdline_u64("qd", 16);
	uint8_t *bufs;
	char only[64] = "";
	unsigned ran = 0;

	(void)arg;
	cmdline_get("mode", only);
	if (qd < 1 || qd > SLOTS)
		qd = 16;
	if (blk_open(&b, BLK_F_FLUSH))
		probe_exit(1);
	bufs = dma_alloc((size_t)qd << 20, 4096);
	for (size_t i = 0; i < (size_t)qd << 20; i += 8)
		*(uint64_t *)(bufs + i) = mix64(i);
	for (unsigned i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		if (only[0] && probe_memcmp(only, modes[i].name, probe_strlen(modes[i].name) + 1))
			continue;
		for (int s = 0; s < SLOTS; s++)
			b.reqs[s].done = true;
		bench_run(&b, &modes[i], ms, qd, bufs);
		ran++;
	}
	if (!ran)	/* a misspelt mode= must not look like a run */
		probe_printf("PROBE blk_bench unknown mode=%s (seqwrite, seqread, randwrite, "
			     "randread)\n", only);
	probe_printf("PROBE blk_bench_done irq=%s irqs=%u kicks=%lu errors=%lu\n",
		     b.d->msix ? "msix" : "poll", virtio_irq_count(), b.q->kicks, b.errors);
}

/* blk_wz: mib=M (default 32) MiB of write-zeroes from sector 0, one
 * request at a time, each as large as the device's max_write_zeroes_sectors
 * allows; prints how long they took (a rate limit must pace them), then
 * one request of max + 1 sectors, which the device must refuse. */
void scn_blk_wz(const char *arg)
{
	struct blk b = { 0 };
	uint64_t left = cmdline_u64("mib", 32) << 11, t0, s = 0;
	uint32_t max, reqs = 0, failed = 0;
	int over;

	(void)arg;
	if (blk_open(&b, BLK_F_WRITE_ZEROES))
		probe_exit(1);
	if (!(b.d->features & BLK_F_WRITE_ZEROES)) {
		probe_printf("PROBE blk_error=no-write-zeroes\n");
		probe_exit(1);
	}
	max = cfg_r32(b.d, 48);
	if (left > b.capacity)
		left = b.capacity;
	t0 = clock_ns();
	while (left && max) {
		uint32_t n = left < max ? (uint32_t)left : max;

		failed += blk_sync(&b, T_WRITE_ZEROES, s, NULL, n) != 0;
		reqs++;
		s += n;
		left -= n;
	}
	probe_printf("PROBE blk_wz max_sectors=%u max_segs=%u requests=%u failed=%u ms=%lu\n",
		     max, cfg_r32(b.d, 52), reqs, failed, (clock_ns() - t0) / 1000000);
	over = max && max < b.capacity ? blk_sync(&b, T_WRITE_ZEROES, 0, NULL, max + 1) : -1;
	probe_printf("PROBE blk_wz_over status=%d\n", over);
}

/* ---- blk_mq ---- */

#define MQ_PER_QUEUE	(SLOTS / VDEV_MAX_VQ)	/* requests of 64 KiB: 512 KiB per queue */

/* One pass over the nq regions (region q: sectors [q * 2048, q * 2048 +
 * 1024), pattern bytes): every request of every queue is queued and every
 * queue kicked before any completion is waited for. Writes go through the
 * region's own queue, reads through the next one. Returns the requests that
 * failed or read back wrong. */
static uint32_t mq_pass(struct blk *b, int nq, bool read)
{
	uint32_t bad = 0;

	for (int q = 0; q < nq; q++) {
		b->q = &b->d->vq[read ? (q + 1) % nq : q];
		for (int k = 0; k < MQ_PER_QUEUE; k++) {
			int s = q * MQ_PER_QUEUE + k;
			uint8_t *p = b->buf + (size_t)s * SLOT_BYTES;
			uint64_t sector = (uint64_t)q * 2048 + 128u * (unsigned)k;

			if (read)
				probe_memset(p, 0xa5, SLOT_BYTES);
			else
				pat_fill(p, sector, 128);
			if (blk_queue(b, s, read ? T_IN : T_OUT, sector, p, SLOT_BYTES))
				return (uint32_t)(nq * MQ_PER_QUEUE);
		}
	}
	for (int q = 0; q < nq; q++)
		vq_kick(&b->d->vq[q]);
	for (int q = 0; q < nq; q++)
		for (int k = 0; k < MQ_PER_QUEUE; k++) {
			struct blk_req *r = vq_get_wait(&b->d->vq[q], NULL, TIMEOUT_MS);

			if (!r) {
				probe_printf("PROBE blk_error=timeout queue=%d\n", q);
				return (uint32_t)(nq * MQ_PER_QUEUE);
			}
			bad += r->status != 0;
		}
	for (int s = 0; read && s < nq * MQ_PER_QUEUE; s++)
		bad += !pat_check(b->buf + (size_t)s * SLOT_BYTES,
				  (uint64_t)(s / MQ_PER_QUEUE) * 2048 + 128u * (unsigned)(s % MQ_PER_QUEUE),
				  128);
	return bad;
}

/* blk_mq: queues=N (4; at most VDEV_MAX_VQ) with VIRTIO_BLK_F_MQ, seed=S:
 * writes through every queue at once, reads back through the others.
 * Reports the device's num_queues and how many queues' MSI-X vectors
 * interrupted for the writes (irq=msix: each queue has its own; with
 * event_idx=1 an interrupt says that something was pushed). */
void scn_blk_mq(const char *arg)
{
	struct blk b = { 0 };
	int nq = (int)cmdline_u64("queues", 4);
	uint32_t bad, interrupted = 0;

	(void)arg;
	if (nq < 1 || nq > VDEV_MAX_VQ)
		nq = VDEV_MAX_VQ;
	pat_seed = cmdline_u64("seed", 1);
	b.d = virtio_find(VIRTIO_ID_BLK, (int)cmdline_u64("blk_dev", 0));
	if (!b.d) {
		probe_printf("PROBE blk_error=no-device\n");
		probe_exit(1);
	}
	if (vdev_init(b.d, BLK_F_MQ, nq, 128))
		probe_exit(1);
	b.capacity = cfg_r64(b.d, 0);
	b.reqs = dma_alloc(sizeof(struct blk_req) * SLOTS, 64);
	b.buf = dma_alloc((size_t)SLOTS * SLOT_BYTES, 4096);
	vdev_driver_ok(b.d);
	if (b.capacity < (uint64_t)nq * 2048) {
		probe_printf("PROBE blk_error=disk-too-small capacity=%lu\n", b.capacity);
		probe_exit(1);
	}
	bad = mq_pass(&b, nq, false);
	/* Counted after the writes, before any queue is kicked again (a kick
	 * may bring an interrupt a completion should have raised). Those
	 * found before the probe slept left theirs pending in the APIC (the
	 * probe runs with IF=0 but in its waits): taken now, 10 ms at most
	 * each. */
	for (int i = 0; b.d->msix && i <= nq; i++)
		sys_call(SYS_WAIT_IRQ, 10000000, 0);
	for (int q = 0; q < nq; q++)
		interrupted += b.d->vq[q].vector && irq_counts[b.d->vq[q].vector];
	bad += mq_pass(&b, nq, true);
	probe_printf("PROBE blk_mq num_queues=%u mq=%d queues=%d requests=%d mismatches=%u "
		     "irq=%s queues_interrupted=%u\n",
		     b.d->features & BLK_F_MQ ? cfg_r16(b.d, 34) : 1, !!(b.d->features & BLK_F_MQ),
		     nq, 2 * nq * MQ_PER_QUEUE, bad, b.d->msix ? "msix" : "poll", interrupted);
}

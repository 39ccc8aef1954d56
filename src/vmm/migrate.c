/* Live migration, the source side (include/vireo/migrate.h): a thread per
 * migration that pre-copies guest RAM over TCP and hands the VM over. */
#include <errno.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "migrate-wire.h"
#include "vireo/block.h"
#include "vireo/dirty.h"
#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/migrate.h"
#include "vireo/state.h"
#include "vireo/virtio.h"
#include "vireo/vmm.h"

#define MIG_MAX_ROUNDS 30        /* then give up: the VM stays here */
#define MIG_THROTTLE_FIRST 20    /* % of vCPU time taken, as QEMU's auto-converge */
#define MIG_THROTTLE_STEP 10
#define MIG_THROTTLE_MAX 99
#define MIG_THROTTLE_SLICE_US 10000
#define MIG_IO_TIMEOUT_S 30      /* a peer silent this long has failed */
#define MIG_CONNECT_TIMEOUT_S 10

enum mig_state { MIG_NONE, MIG_ACTIVE, MIG_COMPLETING, MIG_COMPLETED, MIG_FAILED,
		 MIG_CANCELLED };
static const char *const state_names[] = {
	[MIG_NONE] = "none", [MIG_ACTIVE] = "active", [MIG_COMPLETING] = "completing",
	[MIG_COMPLETED] = "completed", [MIG_FAILED] = "failed", [MIG_CANCELLED] = "cancelled",
};

struct migration {
	struct snapshot_target t;
	struct machine_config machine;
	struct migrate_params p;
	pthread_t thread, kicker;
	bool thread_started, kicker_started;
	pthread_mutex_t lock;    /* the fields below */
	enum mig_state state;
	bool incoming;           /* the record of the migration that brought the VM */
	bool cancel, committed;
	bool encrypted;          /* TLS (a token was given) */
	char cipher[32];         /* its cipher */
	struct mig_conn conn;
	char error[256];
	uint64_t bytes_sent, remaining, dirty_rate, rounds, expected_downtime_ms;
	uint64_t downtime_us, total_ms, throttle, started_us;
	/* the thread's own */
	uint64_t *bits, words, pace_start_us, pace_bytes;
	bool quiesced;           /* the devices serve nothing (snapshot_quiesce) */
	bool disks_released;     /* the image locks are dropped for the destination */
	struct mig_disks disks;  /* copy_storage: the disks being copied */
};

/* ---- throttling (auto-converge) ---- */

void vcpu_throttle(struct vcpu *vcpu)
{
	unsigned int pct = __atomic_load_n(&vcpu->vm->throttle_pct, __ATOMIC_RELAXED);
	struct timespec ts = { 0, (long)pct * MIG_THROTTLE_SLICE_US * 10 };

	if (pct)
		nanosleep(&ts, NULL);
}

/* Kicks every vCPU out of KVM_RUN once a slice; each then sleeps its share
 * (vcpu_throttle) and runs the rest of the slice. */
static void *kicker_thread(void *arg)
{
	struct migration *m = arg;
	struct vm *vm = m->t.vm;
	struct timespec ts = { 0, MIG_THROTTLE_SLICE_US * 1000 };

	while (__atomic_load_n(&vm->throttle_pct, __ATOMIC_RELAXED)) {
		for (unsigned int i = 0; i < vm->ncpus; i++)
			if (vm->vcpus[i].thread_started)
				pthread_kill(vm->vcpus[i].thread, SIGUSR1);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static void throttle_set(struct migration *m, unsigned int pct)
{
	__atomic_store_n(&m->t.vm->throttle_pct, pct, __ATOMIC_RELAXED);
	pthread_mutex_lock(&m->lock);
	m->throttle = pct;
	pthread_mutex_unlock(&m->lock);
	if (!pct && m->kicker_started) {
		pthread_join(m->kicker, NULL);
		m->kicker_started = false;
	} else if (pct && !m->kicker_started) {
		m->kicker_started = !pthread_create(&m->kicker, NULL, kicker_thread, m);
	}
}

/* ---- sending ---- */

static bool cancelled(struct migration *m)
{
	return __atomic_load_n(&m->cancel, __ATOMIC_RELAXED);
}

/* Sends and keeps to the bandwidth limit. */
static int send_paced(struct migration *m, const void *buf, size_t len)
{
	int ret = mig_send(&m->conn, buf, len);

	if (ret)
		return ret;
	pthread_mutex_lock(&m->lock);
	m->bytes_sent += len;
	pthread_mutex_unlock(&m->lock);
	m->pace_bytes += len;
	if (m->p.bandwidth) {
		uint64_t due = m->pace_start_us + m->pace_bytes * 1000000 / m->p.bandwidth;
		uint64_t now = mig_now_us();

		if (due > now)
			usleep((useconds_t)(due - now));
	}
	return cancelled(m) ? err_set(-ECANCELED, "migration cancelled") : 0;
}

static bool page_zero(const uint8_t *p)
{
	const uint64_t *q = (const uint64_t *)p;

	for (unsigned int i = 0; i < DIRTY_PAGE_SIZE / 8; i++)
		if (q[i])
			return false;
	return true;
}

/* One run of pages, all zero or all not. */
static int send_run(struct migration *m, uint64_t first, uint32_t n, bool zero)
{
	uint8_t hdr[16];
	int ret;

	mig_put32(hdr, zero ? MIG_REC_ZERO : MIG_REC_PAGES);
	mig_put64(hdr + 4, first * DIRTY_PAGE_SIZE);
	mig_put32(hdr + 12, n);
	/* The header waits in the stream's buffer; the pages go from guest
	 * RAM, without a copy of their own. */
	ret = send_paced(m, hdr, sizeof(hdr));
	if (!ret && !zero)
		ret = send_paced(m, m->t.vm->mem.host + first * DIRTY_PAGE_SIZE,
				 (size_t)n * DIRTY_PAGE_SIZE);
	return ret;
}

/* Sends the pages of [from, to) whose bits are set (all: bits NULL).
 * Zero pages cost a record header per run, and nothing at all the first
 * time (skip_zero: the destination's RAM starts zeroed). */
static int send_range(struct migration *m, const uint64_t *bits, bool skip_zero,
		      uint64_t from, uint64_t to)
{
	uint64_t first = 0;
	uint32_t n = 0;
	bool zero = false;
	int ret = 0;

	for (uint64_t i = from; i < to && !ret; i++) {
		bool want = !bits || (bits[i / 64] >> (i % 64) & 1), z;

		if (!want) {
			if (n && !(zero && skip_zero))
				ret = send_run(m, first, n, zero);
			n = 0;
			continue;
		}
		z = page_zero(m->t.vm->mem.host + i * DIRTY_PAGE_SIZE);
		if (n && (z != zero || n == MIG_MAX_RUN)) {
			if (!(zero && skip_zero))
				ret = send_run(m, first, n, zero);
			n = 0;
		}
		if (!n) {
			first = i;
			zero = z;
		}
		n++;
	}
	if (!ret && n && !(zero && skip_zero))
		ret = send_run(m, first, n, zero);
	return ret;
}

/* The first pass: every page but the zero ones. Only the memory's data
 * extents are read: reading a page of a memfd's hole would allocate it
 * (an idle 1 GiB guest: seconds, and the whole GiB resident here). */
static int send_all(struct migration *m)
{
	const struct guest_memory *mem = &m->t.vm->mem;
	uint64_t off = 0, start, end;
	int ret;

	while (!(ret = guest_memory_next_data(mem, off, &start, &end))) {
		ret = send_range(m, NULL, true, start / DIRTY_PAGE_SIZE, end / DIRTY_PAGE_SIZE);
		if (ret)
			return ret;
		off = end;
	}
	return ret == -ENXIO ? 0 : ret;
}

/* Sends the pages whose bits are set, zero ones as zero records. */
static int send_pages(struct migration *m, const uint64_t *bits)
{
	return send_range(m, bits, false, 0, m->t.vm->mem.size / DIRTY_PAGE_SIZE);
}

/* ---- the phases ---- */

/* The stream: the one passed in (m->p.fd), else a connection of our own. */
static int connect_to(struct migration *m)
{
	struct addrinfo *ai, *a;
	struct timeval tv = { MIG_CONNECT_TIMEOUT_S, 0 };
	int ret, fd = -1;

	if (m->p.fd >= 0) {
		fd = m->p.fd;
		m->p.fd = -1;
		goto connected;
	}
	ret = migrate_resolve(m->p.uri, &ai);
	if (ret)
		return ret;
	for (a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (!connect(fd, a->ai_addr, a->ai_addrlen))
			break;
		ret = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		return err_set(ret ? ret : -EHOSTUNREACH, "cannot connect to %s: %s", m->p.uri,
			       strerror(ret ? -ret : EHOSTUNREACH));
connected:
	mig_nodelay(fd);
	tv.tv_sec = MIG_IO_TIMEOUT_S;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	pthread_mutex_lock(&m->lock);
	m->conn.fd = fd;
	if (m->cancel)
		shutdown(fd, SHUT_RDWR);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/* Both ends prove the token before a byte of memory moves. */
static int handshake(struct migration *m)
{
	uint8_t peer[MIG_HELLO_SIZE], out[MIG_HELLO_SIZE + MIG_MAC], ns[MIG_NONCE], mac[MIG_MAC];
	uint8_t reply[1 + MIG_MAC];
	const uint8_t *nd;
	int ret = mig_recv(&m->conn, peer, sizeof(peer));

	if (!ret)
		ret = mig_hello_check(peer, &nd);
	if (!ret && getrandom(ns, sizeof(ns), 0) != sizeof(ns))
		ret = err_set(-EIO, "getrandom: %m");
	if (ret)
		return ret;
	mig_hello(out, ns);
	ret = mig_mac(m->p.token, "src", nd, ns, out + MIG_HELLO_SIZE);
	if (!ret)
		ret = mig_send(&m->conn, out, sizeof(out));
	if (!ret)
		ret = mig_recv(&m->conn, reply, sizeof(reply));
	if (ret == -EPIPE || (!ret && reply[0] != 1))
		return err_set(-EACCES, "the destination refused the migration (wrong token?)");
	if (!ret)
		ret = mig_mac(m->p.token, "dst", ns, nd, mac);
	if (!ret && mig_mac_cmp(mac, reply + 1))
		ret = err_set(-EACCES, "the destination does not know the token");
	return ret;
}

static int send_hello(struct migration *m)
{
	uint8_t rec[16];

	mig_put32(rec, MIG_REC_HELLO);
	mig_put64(rec + 4, m->t.vm->mem.size);
	mig_put32(rec + 12, m->t.vm->ncpus);
	return send_paced(m, rec, sizeof(rec));
}

/* The first pass over the disks shows what it has left as remaining. */
static int disk_send(void *ctx, const void *buf, size_t len)
{
	struct migration *m = ctx;

	if (m->disks.left) {
		pthread_mutex_lock(&m->lock);
		m->remaining = m->disks.left;
		pthread_mutex_unlock(&m->lock);
	}
	return send_paced(m, buf, len);
}

static void set_progress(struct migration *m, uint64_t dirty, uint64_t round_us,
			 uint64_t round_bytes, uint64_t bw)
{
	pthread_mutex_lock(&m->lock);
	m->remaining = dirty;
	m->dirty_rate = round_us ? m->remaining * 1000000 / round_us : 0;
	m->expected_downtime_ms = bw ? m->remaining * 1000 / bw : 0;
	m->rounds++;
	pthread_mutex_unlock(&m->lock);
	(void)round_bytes;
}

/* Rounds of dirtied pages until the rest fits the downtime limit. */
static int precopy(struct migration *m)
{
	uint64_t start = mig_now_us(), sent0 = m->pace_bytes, prev_dirty = UINT64_MAX;
	unsigned int throttle = 0;
	int ret = send_all(m);

	for (unsigned int round = 1; !ret; round++) {
		uint64_t now = mig_now_us(), elapsed = now - start, bytes = m->pace_bytes - sent0;
		uint64_t bw = elapsed ? bytes * 1000000 / elapsed : 0, dirty;

		memset(m->bits, 0, m->words * sizeof(*m->bits));
		ret = dirty_log_collect(m->t.vm, m->bits);
		if (ret)
			break;
		/* In bytes: the pages, and the disk grains when they go too. */
		dirty = dirty_bitmap_count(m->bits, m->words) * DIRTY_PAGE_SIZE;
		if (m->p.copy_storage)
			dirty += mig_disks_collect(&m->disks);
		set_progress(m, dirty, elapsed, bytes, bw);
		/* Converged: the rest (these bits and what is written until the
		 * pause) goes while the VM is paused. */
		if (bw && dirty * 1000 / bw <= m->p.max_downtime_ms)
			return 0;
		if (round >= MIG_MAX_ROUNDS)
			return err_set(-ETIMEDOUT, "migration did not converge in %u rounds "
				       "(the guest dirties memory faster than it can be sent)",
				       MIG_MAX_ROUNDS);
		/* Not shrinking: take more of the vCPUs' time each round. */
		if (round >= 2 && dirty * 10 > prev_dirty * 9 && throttle < MIG_THROTTLE_MAX) {
			throttle = throttle ? throttle + MIG_THROTTLE_STEP : MIG_THROTTLE_FIRST;
			throttle_set(m, throttle < MIG_THROTTLE_MAX ? throttle : MIG_THROTTLE_MAX);
		}
		prev_dirty = dirty;
		start = mig_now_us();
		sent0 = m->pace_bytes;
		ret = send_pages(m, m->bits);
		if (!ret && m->p.copy_storage)
			ret = mig_disks_send_dirty(&m->disks);
	}
	return ret;
}

static int wait_byte(struct migration *m, char want)
{
	uint8_t c, len[4];
	char msg[200] = "";
	int ret = mig_recv(&m->conn, &c, 1);

	if (ret)
		return ret;
	if (c == want)
		return 0;
	if (c == 'E' && !mig_recv(&m->conn, len, 4)) {
		size_t n = mig_get32(len) < sizeof(msg) - 1 ? mig_get32(len) : sizeof(msg) - 1;

		mig_recv(&m->conn, msg, n);
		msg[n] = 0;
	}
	return err_set(-EPROTO, "the destination refused the VM: %s", msg[0] ? msg : "protocol error");
}

/* ---- the devices at the switch ---- */

static void disks_relock(struct migration *m)
{
	for (unsigned int i = 0; i < m->t.nvirtio; i++) {
		struct blockdev *bd = virtio_dev_blockdev(m->t.virtio[i]);

		if (bd && image_set_locked(blockdev_image(bd), true))
			fprintf(stderr, "vireo: migration: %s\n", err_get());
	}
}

/* Shared storage: the destination opens the same images, so they are
 * written out (metadata caches included) and their locks dropped before
 * it does; it opens them once it has the state. */
static int disks_release(struct migration *m)
{
	for (unsigned int i = 0; i < m->t.nvirtio; i++) {
		struct blockdev *bd = virtio_dev_blockdev(m->t.virtio[i]);
		int ret;

		if (!bd)
			continue;
		ret = blockdev_readonly(bd) ? 0 : blockdev_flush(bd);
		if (ret)
			ret = err_set(ret, "cannot flush a disk: %s", err_get());
		if (!ret) {
			m->disks_released = true;
			ret = image_set_locked(blockdev_image(bd), false);
		}
		if (ret)
			return ret;
	}
	return 0;
}

/* The vCPUs are paused: no request may start or still run when the last
 * pages are collected, since the devices write guest RAM (used rings,
 * read data, received frames) and the disks. */
static int devices_stop(struct migration *m)
{
	int ret = snapshot_quiesce(&m->t);

	if (ret)
		return ret;
	m->quiesced = true;
	/* Copied storage: the destination has images of its own. */
	return m->p.copy_storage ? 0 : disks_release(m);
}

/* Not handed over: the devices go on here. */
static void devices_resume(struct migration *m)
{
	if (m->disks_released)
		disks_relock(m);
	if (m->quiesced)
		snapshot_unquiesce(&m->t);
	m->disks_released = m->quiesced = false;
}

/* Nothing may have written guest RAM since the last pages were collected
 * (the devices are quiesced, the vCPUs paused): a write now would leave the
 * destination a stale page, so the VM stays here rather than move broken. */
static int check_still(struct migration *m)
{
	memset(m->bits, 0, m->words * sizeof(*m->bits));
	dirty_track_collect(&m->t.vm->mem, m->bits);
	if (dirty_bitmap_count(m->bits, m->words))
		return err_set(-EIO, "the VMM wrote %llu guest pages after the switch began",
			       (unsigned long long)dirty_bitmap_count(m->bits, m->words));
	if (m->p.copy_storage && mig_disks_collect(&m->disks))
		return err_set(-EIO, "a disk was written after the switch began");
	return 0;
}

/* Paused: the last pages, the state, and the handover. */
static int complete(struct migration *m, uint64_t *paused_at)
{
	struct state_writer *w = NULL;
	const uint8_t *state;
	size_t len;
	uint8_t hdr[8];
	int ret;

	/* bits still holds what precopy() found dirty last and did not send:
	 * add what was written since, up to the pause (the guest's) and up
	 * to devices_stop() (the VMM's). */
	ret = dirty_log_collect(m->t.vm, m->bits);
	if (!ret)
		ret = send_pages(m, m->bits);
	/* The devices are quiesced: these are the disks' last writes. */
	if (!ret && m->p.copy_storage) {
		mig_disks_collect(&m->disks);
		ret = mig_disks_send_dirty(&m->disks);
	}
	if (!ret)
		ret = snapshot_state_build(&m->t, &w, &state, &len);
	if (!ret) {
		mig_put32(hdr, MIG_REC_STATE);
		mig_put32(hdr + 4, (uint32_t)len);
		ret = send_paced(m, hdr, sizeof(hdr));
	}
	if (!ret)
		ret = send_paced(m, state, len);
	state_writer_free(w);
	if (!ret)
		ret = wait_byte(m, 'R');
	if (!ret)
		ret = check_still(m);
	if (ret)
		return ret;
	/* The point of no return: after 'G' this VM never runs again. Under
	 * the lock, so that a cancel comes either before (and wins) or after
	 * (and is refused). */
	pthread_mutex_lock(&m->lock);
	if (m->cancel)
		ret = err_set(-ECANCELED, "migration cancelled");
	else
		m->committed = true;
	pthread_mutex_unlock(&m->lock);
	if (ret)
		return ret;
	ret = mig_send(&m->conn, "G", 1);
	if (!ret && !wait_byte(m, 'U')) {
		uint8_t d[8];
		uint64_t downtime = mig_now_us() - *paused_at;

		mig_put64(d, downtime);
		if (!mig_send(&m->conn, d, sizeof(d)))
			mig_flush(&m->conn);
		pthread_mutex_lock(&m->lock);
		m->downtime_us = downtime;
		pthread_mutex_unlock(&m->lock);
	}
	return 0;
}

static void finish(struct migration *m, enum mig_state state, const char *error)
{
	pthread_mutex_lock(&m->lock);
	m->state = state;
	m->total_ms = (mig_now_us() - m->started_us) / 1000;
	snprintf(m->error, sizeof(m->error), "%s", error ? error : "");
	mig_close(&m->conn);
	pthread_mutex_unlock(&m->lock);
}

static int migrate_run(struct migration *m, bool *logging, bool *paused, uint64_t *paused_at)
{
	int ret = connect_to(m);

	if (!ret)
		ret = handshake(m);
	/* With a token everything after the handshake is encrypted; without
	 * one, the caller asked for a plain stream. */
	if (!ret && m->p.token[0])
		ret = mig_tls_start(&m->conn, m->p.token, false);
	if (!ret && m->p.token[0]) {
		pthread_mutex_lock(&m->lock);
		m->encrypted = true;
		snprintf(m->cipher, sizeof(m->cipher), "%s", mig_tls_cipher(&m->conn));
		pthread_mutex_unlock(&m->lock);
	}
	if (!ret)
		ret = mig_buffer(&m->conn);
	if (!ret)
		ret = send_hello(m);
	/* The disks first, while the VM runs: their bulk dwarfs the RAM's. */
	if (!ret && m->p.copy_storage)
		ret = mig_disks_init(&m->disks, &m->t, disk_send, m);
	if (!ret && m->p.copy_storage)
		ret = mig_disks_copy(&m->disks);
	if (!ret)
		ret = dirty_log_start(m->t.vm);
	if (ret)
		return ret;
	*logging = true;
	ret = precopy(m);
	if (ret)
		return ret;
	pthread_mutex_lock(&m->lock);
	m->state = MIG_COMPLETING;
	pthread_mutex_unlock(&m->lock);
	*paused_at = mig_now_us();
	if (vm_get_state(m->t.vm) == VM_STATE_RUNNING) {
		ret = vm_pause(m->t.vm);
		if (ret)
			return ret;
		*paused = true;
	}
	throttle_set(m, 0);
	ret = devices_stop(m);
	if (ret)
		return ret;
	return complete(m, paused_at);
}

static void *migrate_thread(void *arg)
{
	struct migration *m = arg;
	bool logging = false, paused = false, committed;
	uint64_t paused_at = 0;
	int ret;

	pthread_setname_np(pthread_self(), "migrate");
	m->pace_start_us = mig_now_us();
	ret = migrate_run(m, &logging, &paused, &paused_at);
	throttle_set(m, 0);
	pthread_mutex_lock(&m->lock);
	committed = m->committed;
	pthread_mutex_unlock(&m->lock);
	if (committed) {
		fprintf(stderr, "vireo: migrated to %s (downtime %llu ms)\n", m->p.uri,
			(unsigned long long)(m->downtime_us + 999) / 1000);
		finish(m, MIG_COMPLETED, NULL);
		mig_disks_free(&m->disks);
		vm_request_stop_why(m->t.vm, VM_EXIT_POWEROFF, "migrated");
		return NULL;
	}
	/* Not handed over: the VM goes on here as it was. After commit the
	 * devices stay quiesced and the disks unlocked: they are the
	 * destination's. */
	devices_resume(m);
	mig_disks_free(&m->disks);
	if (logging)
		dirty_log_stop(m->t.vm);
	if (paused)
		vm_resume(m->t.vm);
	/* A cancel shuts the connection down: whatever error the stream met
	 * after it (a send that failed, TLS's "Error in the push function") is
	 * the cancel's doing, and is reported as the cancel. */
	if (ret != -ECANCELED && cancelled(m))
		ret = err_set(-ECANCELED, "migration cancelled");
	fprintf(stderr, "vireo: migration to %s %s: %s\n", m->p.uri,
		ret == -ECANCELED ? "cancelled" : "failed", err_get());
	finish(m, ret == -ECANCELED ? MIG_CANCELLED : MIG_FAILED, err_get());
	return NULL;
}

/* ---- control ---- */

struct migration *migration_create(const struct snapshot_target *t)
{
	struct migration *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->t = *t;
	if (t->machine)
		m->machine = *t->machine;
	m->t.machine = &m->machine;
	m->conn.fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	return m;
}

static void reap(struct migration *m)
{
	if (m->thread_started) {
		pthread_join(m->thread, NULL);
		m->thread_started = false;
	}
	free(m->bits);
	m->bits = NULL;
}

/* migration_start() but for the passed stream: the thread owns it once it
 * runs; on failure the caller closes it. */
static int migration_begin(struct migration *m, const struct migrate_params *p)
{
	enum mig_state s;
	bool incoming;
	int ret;

	pthread_mutex_lock(&m->lock);
	s = m->state;
	incoming = m->incoming;
	pthread_mutex_unlock(&m->lock);
	/* The migration that brought the VM here does not stop it moving on. */
	if (s == MIG_ACTIVE || s == MIG_COMPLETING || (s == MIG_COMPLETED && !incoming))
		return err_set(-EBUSY, "a migration is %s", state_names[s]);
	reap(m);
	m->p = *p;
	if (!m->p.max_downtime_ms)
		m->p.max_downtime_ms = MIGRATE_DEFAULT_DOWNTIME_MS;
	m->words = dirty_bitmap_words(m->t.vm);
	m->bits = calloc(m->words, sizeof(*m->bits));
	if (!m->bits)
		return err_set(-ENOMEM, "out of memory");
	m->state = MIG_ACTIVE;
	m->cancel = m->committed = m->incoming = m->encrypted = false;
	m->bytes_sent = m->remaining = m->dirty_rate = m->rounds = 0;
	m->expected_downtime_ms = m->downtime_us = m->total_ms = m->throttle = 0;
	m->pace_bytes = 0;
	m->quiesced = m->disks_released = false;
	m->error[0] = 0;
	m->started_us = mig_now_us();
	ret = pthread_create(&m->thread, NULL, migrate_thread, m);
	if (ret) {
		m->state = MIG_FAILED;
		return err_set(-ret, "cannot start a thread: %s", strerror(ret));
	}
	m->thread_started = true;
	return 0;
}

int migration_start(struct migration *m, const struct migrate_params *p)
{
	int ret = migration_begin(m, p);

	if (ret && p->fd >= 0)
		close(p->fd);
	return ret;
}

int migration_cancel(struct migration *m)
{
	int ret = 0;

	pthread_mutex_lock(&m->lock);
	if (m->state != MIG_ACTIVE && m->state != MIG_COMPLETING)
		ret = err_set(-ENOENT, "no migration is running");
	else if (m->committed)
		ret = err_set(-EBUSY, "the migration is past the point of no return");
	else {
		__atomic_store_n(&m->cancel, true, __ATOMIC_RELAXED);
		if (m->conn.fd >= 0)
			shutdown(m->conn.fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&m->lock);
	return ret;
}

void migration_destroy(struct migration *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	if (!m->committed) {
		m->cancel = true;
		if (m->conn.fd >= 0)
			shutdown(m->conn.fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&m->lock);
	reap(m);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

bool migration_holds_pause(struct migration *m)
{
	bool held;

	pthread_mutex_lock(&m->lock);
	held = m->state == MIG_COMPLETING || m->committed;
	pthread_mutex_unlock(&m->lock);
	return held;
}

void migration_set_incoming(struct migration *m, uint64_t bytes, uint64_t downtime_us,
			    const char *cipher)
{
	pthread_mutex_lock(&m->lock);
	m->encrypted = cipher != NULL;
	snprintf(m->cipher, sizeof(m->cipher), "%s", cipher ? cipher : "");
	m->incoming = true;
	m->state = MIG_COMPLETED;
	m->bytes_sent = bytes;
	m->downtime_us = downtime_us;
	pthread_mutex_unlock(&m->lock);
}

static void add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

struct json_object *migration_info(struct migration *m)
{
	struct json_object *o;

	pthread_mutex_lock(&m->lock);
	if (m->state == MIG_NONE) {
		pthread_mutex_unlock(&m->lock);
		return NULL;
	}
	o = json_object_new_object();
	json_object_object_add(o, "state", json_object_new_string(state_names[m->state]));
	json_object_object_add(o, "direction",
			       json_object_new_string(m->incoming ? "incoming" : "outgoing"));
	add_u64(o, m->incoming ? "bytes_received" : "bytes_sent", m->bytes_sent);
	json_object_object_add(o, "encrypted", json_object_new_boolean(m->encrypted));
	if (m->encrypted)
		json_object_object_add(o, "cipher", json_object_new_string(m->cipher));
	if (!m->incoming)
		json_object_object_add(o, "copy_storage",
				       json_object_new_boolean(m->p.copy_storage));
	if (!m->incoming) {
		add_u64(o, "remaining_bytes", m->remaining);
		add_u64(o, "dirty_rate", m->dirty_rate);
		add_u64(o, "rounds", m->rounds);
		add_u64(o, "expected_downtime_ms", m->expected_downtime_ms);
		add_u64(o, "throttle_percent", m->throttle);
		if (m->state != MIG_ACTIVE && m->state != MIG_COMPLETING)
			add_u64(o, "total_ms", m->total_ms);
	}
	if (m->state == MIG_COMPLETED)
		add_u64(o, "downtime_ms", (m->downtime_us + 999) / 1000);
	if (m->error[0])
		json_object_object_add(o, "error", json_object_new_string(m->error));
	pthread_mutex_unlock(&m->lock);
	return o;
}

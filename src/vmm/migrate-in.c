/* Live migration, the destination side (include/vireo/migrate.h): one
 * authenticated stream into a memfd and a state file image, opened as a
 * snapshot for `vireo run --incoming` to build and restore. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "migrate-wire.h"
#include "vireo/block.h"
#include "vireo/dirty.h"
#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/migrate.h"
#include "vireo/state.h"

#define MIG_MAX_RAM (1ull << 40)
#define MIG_MAX_CPUS 1024       /* beyond any KVM's; the VM checks its own limit */
#define MIG_GO_TIMEOUT_S 30
#define MIG_DOWNTIME_TIMEOUT_S 2

struct migrate_incoming {
	struct mig_conn conn;
	uint64_t bytes;
	char token[MIGRATE_TOKEN_MAX];
	uint8_t *pages;        /* one record's pages, on their way to mem_fd */
	uint64_t size;
	int mem_fd;
	/* copied storage: the destination's images, open while they fill */
	const struct migrate_storage *st;
	migrate_hello_fn *hello;   /* the caller's, at the hello */
	void *ctx;
	struct image *img[MIGRATE_MAX_DISKS];
	unsigned int ndisks;   /* from the DISKS record; 0 before it */
	uint8_t *disk_buf;
};

static int read_token(const char *path, char *token, size_t size)
{
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f)
		return err_set(-errno, "--incoming-token-file %s: %m", path);
	n = fread(token, 1, size - 1, f);
	fclose(f);
	token[n] = 0;
	while (n && (token[n - 1] == '\n' || token[n - 1] == '\r'))
		token[--n] = 0;
	if (!n)
		return err_set(-EINVAL, "--incoming-token-file %s is empty", path);
	return 0;
}

/* "fd:N": a TCP socket bound by whoever started this VMM (the daemon,
 * which so holds the port from the moment it picks it until here); it is
 * listened on only now, after the token is read, which tells the daemon
 * that the source may connect. */
static int listen_on_fd(const char *uri)
{
	struct sockaddr_storage a;
	socklen_t alen = sizeof(a);
	int type = 0, fd;
	socklen_t tlen = sizeof(type);
	char *end;
	long n = strtol(uri + 3, &end, 10);

	if (end == uri + 3 || *end || n < 3 || n > 65535)
		return err_set(-EINVAL, "--incoming %s: fd:N with a descriptor number", uri);
	fd = (int)n;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_STREAM ||
	    getsockname(fd, (struct sockaddr *)&a, &alen) < 0 ||
	    (a.ss_family != AF_INET && a.ss_family != AF_INET6))
		return err_set(-EBADF, "--incoming %s: not a TCP socket", uri);
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || listen(fd, 1) < 0)
		return err_set(-errno, "--incoming %s: %m", uri);
	return fd;
}

static int listen_on(const char *uri)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	char host[256], port[32];
	int one = 1, fd, ret;

	if (!strncmp(uri, "fd:", 3))
		return listen_on_fd(uri);
	ret = migrate_parse_uri(uri, host, sizeof(host), port, sizeof(port));
	if (ret)
		return err_set(ret, "--incoming: %s", err_get());
	ret = getaddrinfo(host, port, &hints, &ai);
	if (ret)
		return err_set(-EINVAL, "--incoming %s: %s", uri, gai_strerror(ret));
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1) < 0) {
			ret = -errno;
			close(fd);
			fd = ret;
		}
	} else {
		fd = -errno;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		return err_set(fd, "--incoming %s: %s", uri, strerror(-fd));
	return fd;
}

/* The source proves the token first; then this end proves it too. */
static int handshake(struct migrate_incoming *in)
{
	uint8_t nd[MIG_NONCE], hello[MIG_HELLO_SIZE], peer[MIG_HELLO_SIZE + MIG_MAC];
	uint8_t mac[MIG_MAC], reply[1 + MIG_MAC];
	const uint8_t *ns;
	int ret;

	if (getrandom(nd, sizeof(nd), 0) != sizeof(nd))
		return err_set(-EIO, "getrandom: %m");
	mig_hello(hello, nd);
	ret = mig_send(&in->conn, hello, sizeof(hello));
	if (!ret)
		ret = mig_recv(&in->conn, peer, sizeof(peer));
	if (!ret)
		ret = mig_hello_check(peer, &ns);
	if (!ret)
		ret = mig_mac(in->token, "src", nd, ns, mac);
	if (ret)
		return ret;
	if (mig_mac_cmp(mac, peer + MIG_HELLO_SIZE)) {
		reply[0] = 0;
		mig_send(&in->conn, reply, 1);
		return err_set(-EACCES, "migration refused: the source did not prove the token");
	}
	reply[0] = 1;
	ret = mig_mac(in->token, "dst", ns, nd, reply + 1);
	return ret ? ret : mig_send(&in->conn, reply, sizeof(reply));
}

static int recv_hello(struct migrate_incoming *in)
{
	uint8_t rec[16];
	uint32_t ncpus;
	int ret = mig_recv(&in->conn, rec, sizeof(rec));

	if (ret)
		return ret;
	in->size = mig_get64(rec + 4);
	ncpus = mig_get32(rec + 12);
	if (mig_get32(rec) != MIG_REC_HELLO || !in->size || in->size > MIG_MAX_RAM ||
	    in->size % DIRTY_PAGE_SIZE || !ncpus || ncpus > MIG_MAX_CPUS)
		return err_set(-EPROTO, "migration stream: bad hello");
	in->mem_fd = guest_memory_create_fd(in->size, false);
	if (in->mem_fd < 0)
		return in->mem_fd;
	in->pages = malloc((size_t)MIG_MAX_RUN * DIRTY_PAGE_SIZE);
	if (!in->pages)
		return err_set(-ENOMEM, "out of memory");
	return in->hello ? in->hello(in->ctx, in->mem_fd, in->size, ncpus) : 0;
}

/* ---- copied storage ---- */

/* Nothing in this image yet (holes, zero clusters, or data that reads as
 * zeroes): the source does not send what reads as zeroes at first. */
static int image_empty(struct image *img, uint8_t *buf)
{
	uint64_t off = 0, pnum, host;

	if (img->backing)
		return err_set(-EINVAL, "%s has a backing file: the copy needs an empty image "
			       "without one", img->filename);
	while (off < img->size) {
		int st = image_block_status(img, off, img->size - off, &pnum, &host);

		if (st < 0)
			return st;
		for (uint64_t o = off; (st & BLOCK_DATA) && !(st & BLOCK_ZERO) && o < off + pnum;) {
			size_t n = off + pnum - o < MIG_DISK_CHUNK ? off + pnum - o : MIG_DISK_CHUNK;
			int ret = image_read(img, o, buf, n);

			if (ret)
				return ret;
			if (buf[0] || (n > 1 && memcmp(buf, buf + 1, n - 1)))
				return err_set(-EEXIST, "%s is not empty: the copy goes into a new "
					       "image (vireo img create)", img->filename);
			o += n;
		}
		off += pnum;
	}
	return 0;
}

/* The DISKS record: as many disks as this end was given, each image open,
 * empty and of the source disk's virtual size. */
static int recv_disks(struct migrate_incoming *in)
{
	const struct migrate_storage *st = in->st;
	uint8_t rec[4 + 8 * MIGRATE_MAX_DISKS];
	uint32_t n;
	int ret = mig_recv(&in->conn, rec, 4);

	if (ret)
		return ret;
	n = mig_get32(rec);
	if (!st || !st->ndisks)
		return err_set(-EPROTO, "the source copies its disks: give --incoming-disk for each");
	if (in->ndisks || n != st->ndisks)
		return err_set(-EPROTO, "migration stream: %u disks to copy, %u --incoming-disk",
			       n, st->ndisks);
	ret = mig_recv(&in->conn, rec + 4, 8 * (size_t)n);
	if (!ret && !(in->disk_buf = malloc(MIG_DISK_CHUNK)))
		ret = err_set(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < n && !ret; i++) {
		uint64_t size = mig_get64(rec + 4 + 8 * i);

		ret = image_open_policy(st->path[i], st->format[i], IMAGE_RDWR, st->policy,
					&in->img[i]);
		in->ndisks = i + 1;
		if (!ret && in->img[i]->size != size)
			ret = err_set(-EINVAL, "%s: virtual size %llu, the source's disk %u has %llu",
				      st->path[i], (unsigned long long)in->img[i]->size, i,
				      (unsigned long long)size);
		if (!ret)
			ret = image_empty(in->img[i], in->disk_buf);
	}
	return ret;
}

/* A DISK_DATA or DISK_ZERO record, checked against the disk it names. */
static int recv_disk_range(struct migrate_incoming *in, uint32_t type)
{
	uint8_t hdr[MIG_DISK_ZERO_HDR];
	size_t hlen = (type == MIG_REC_DISK_DATA ? MIG_DISK_DATA_HDR : MIG_DISK_ZERO_HDR) - 4;
	uint64_t off, len;
	uint32_t i;
	int ret = mig_recv(&in->conn, hdr, hlen);

	if (ret)
		return ret;
	i = mig_get32(hdr);
	off = mig_get64(hdr + 4);
	len = type == MIG_REC_DISK_DATA ? mig_get32(hdr + 12) : mig_get64(hdr + 12);
	if (i >= in->ndisks || !len || off > in->img[i]->size || len > in->img[i]->size - off ||
	    (type == MIG_REC_DISK_DATA && len > MIG_DISK_CHUNK))
		return err_set(-EPROTO, "migration stream: disk range out of bounds");
	if (type == MIG_REC_DISK_DATA) {
		ret = mig_recv(&in->conn, in->disk_buf, len);
		if (ret)
			return ret;
		ret = image_write(in->img[i], off, in->disk_buf, len);
	} else {
		ret = image_write_zeroes(in->img[i], off, len);
	}
	in->bytes += hlen + 4 + (type == MIG_REC_DISK_DATA ? len : 0);
	return ret ? err_set(ret, "writing disk %u: %s", i, err_get()) : 0;
}

/* The copy is complete: durable, and the images closed for the VM to
 * open; the machine names them instead of the source's. */
static int disks_finish(struct migrate_incoming *in, struct machine_config *m)
{
	int ret = 0;

	if (in->st && in->st->ndisks && !in->ndisks)
		return err_set(-EPROTO, "the source did not copy its disks (shared storage?): "
			       "migrate with copy_storage, or without --incoming-disk");
	if (in->ndisks && m->ndisks != in->ndisks)
		return err_set(-EPROTO, "migration stream: %u disks copied, the machine has %u",
			       in->ndisks, m->ndisks);
	for (unsigned int i = 0; i < in->ndisks && !ret; i++) {
		ret = image_flush(in->img[i]);
		snprintf(m->disks[i].path, sizeof(m->disks[i].path), "%s", in->st->path[i]);
		snprintf(m->disks[i].format, sizeof(m->disks[i].format), "%s",
			 in->img[i]->fmt->name);
	}
	return ret;
}

static void disks_close(struct migrate_incoming *in)
{
	for (unsigned int i = 0; i < in->ndisks; i++)
		if (in->img[i])
			image_close(in->img[i]);
	in->ndisks = 0;
	free(in->disk_buf);
	in->disk_buf = NULL;
}

/* Pages go into the memfd with write(), not through a mapping of it: a
 * store to a page not yet there faults (~4 times the copy's cost here),
 * and unmapping the whole at the end took milliseconds of the downtime. */
static int write_pages(struct migrate_incoming *in, uint64_t off, uint64_t n)
{
	int ret = mig_recv(&in->conn, in->pages, n);

	for (uint64_t done = 0; !ret && done < n; ) {
		ssize_t w = pwrite(in->mem_fd, in->pages + done, n - done, (off_t)(off + done));

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return err_set(w < 0 ? -errno : -EIO, "cannot write guest memory: %s",
				       w < 0 ? strerror(errno) : "short write");
		done += (uint64_t)w;
	}
	return ret;
}

/* Pages the guest zeroed since they were sent: a hole again. */
static int zero_pages(struct migrate_incoming *in, uint64_t off, uint64_t n)
{
	if (fallocate(in->mem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)n) < 0)
		return err_set(-errno, "cannot zero guest memory: %m");
	return 0;
}

/* Page records until the state: returns the state's bytes (malloc'd). */
static int recv_memory(struct migrate_incoming *in, uint8_t **state, size_t *len)
{
	for (;;) {
		uint8_t hdr[16];
		uint64_t off, n;
		int ret = mig_recv(&in->conn, hdr, 4);
		uint32_t type = ret ? 0 : mig_get32(hdr);

		if (!ret && type == MIG_REC_STATE) {
			ret = mig_recv(&in->conn, hdr + 4, 4);
			*len = ret ? 0 : mig_get32(hdr + 4);
			if (!ret && (!*len || *len > STATE_MAX_FILE))
				return err_set(-EPROTO, "migration stream: bad state length");
			if (!ret && !(*state = malloc(*len)))
				return err_set(-ENOMEM, "out of memory");
			return ret ? ret : mig_recv(&in->conn, *state, *len);
		}
		if (!ret && (type == MIG_REC_DISKS || type == MIG_REC_DISK_DATA ||
			     type == MIG_REC_DISK_ZERO)) {
			ret = type == MIG_REC_DISKS ? recv_disks(in) : recv_disk_range(in, type);
			if (ret)
				return ret;
			continue;
		}
		if (!ret && type != MIG_REC_PAGES && type != MIG_REC_ZERO)
			return err_set(-EPROTO, "migration stream: unknown record %u", type);
		if (!ret)
			ret = mig_recv(&in->conn, hdr + 4, 12);
		if (ret)
			return ret;
		off = mig_get64(hdr + 4);
		n = mig_get32(hdr + 12) * (uint64_t)DIRTY_PAGE_SIZE;
		if (off % DIRTY_PAGE_SIZE || !n || n > MIG_MAX_RUN * DIRTY_PAGE_SIZE ||
		    off > in->size || n > in->size - off)
			return err_set(-EPROTO, "migration stream: pages out of range");
		ret = type == MIG_REC_ZERO ? zero_pages(in, off, n) : write_pages(in, off, n);
		if (ret)
			return ret;
		in->bytes += 16 + (type == MIG_REC_PAGES ? n : 0);
	}
}

static int receive(struct migrate_incoming *in, int lfd, struct snapshot **snap,
		   struct machine_config *m)
{
	struct timeval tv = { MIG_GO_TIMEOUT_S, 0 };
	uint8_t *state = NULL;
	size_t len = 0;
	int ret;

	in->conn.fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (in->conn.fd < 0)
		return err_set(-errno, "--incoming: accept: %m");
	/* A source that stops sending mid-stream has failed. */
	setsockopt(in->conn.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(in->conn.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	mig_nodelay(in->conn.fd);
	ret = handshake(in);
	if (!ret && in->token[0])
		ret = mig_tls_start(&in->conn, in->token, true);
	if (!ret)
		ret = recv_hello(in);
	if (!ret)
		ret = recv_memory(in, &state, &len);
	if (!ret) {
		free(in->pages);
		in->pages = NULL;
		ret = snapshot_open_buffer(state, len, in->mem_fd, snap, m);
		in->mem_fd = -1;
		in->bytes += len;
	}
	/* Flushed before this end says it is ready; closed either way (the
	 * VM opens them again, and a failed copy is nobody's disk). */
	if (!ret)
		ret = disks_finish(in, m);
	disks_close(in);
	free(state);
	return ret;
}

/* Tells the source why this end cannot take the VM. */
static void refuse(struct migrate_incoming *in, const char *why)
{
	uint8_t hdr[5];
	size_t n = strlen(why);

	hdr[0] = 'E';
	mig_put32(hdr + 1, (uint32_t)n);
	if (!mig_send(&in->conn, hdr, sizeof(hdr)))
		mig_send(&in->conn, why, n);
}

int migrate_incoming_receive(const char *uri, const char *token_file,
			     const struct migrate_storage *st, migrate_hello_fn *hello,
			     void *ctx, struct migrate_incoming **out, struct snapshot **snap,
			     struct machine_config *m)
{
	struct migrate_incoming *in = calloc(1, sizeof(*in));
	int lfd, ret;

	*out = NULL;
	if (!in)
		return err_set(-ENOMEM, "out of memory");
	in->conn.fd = in->mem_fd = -1;
	in->st = st;
	in->hello = hello;
	in->ctx = ctx;
	ret = token_file ? read_token(token_file, in->token, sizeof(in->token)) : 0;
	lfd = ret ? ret : listen_on(uri);
	if (lfd < 0) {
		migrate_incoming_free(in);
		return lfd;
	}
	fprintf(stderr, "vireo: waiting for a migration on %s\n", uri);
	ret = receive(in, lfd, snap, m);
	close(lfd);
	if (ret) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err_get());
		if (in->conn.fd >= 0 && ret != -EACCES)
			refuse(in, why);
		migrate_incoming_free(in);
		return err_set(ret, "--incoming: %s", why);
	}
	*out = in;
	return 0;
}

int migrate_incoming_ready(struct migrate_incoming *in)
{
	uint8_t c;
	int ret = mig_send(&in->conn, "R", 1);

	if (!ret)
		ret = mig_recv(&in->conn, &c, 1);
	if (!ret && c != 'G')
		ret = err_set(-EPROTO, "migration stream: no go from the source");
	return ret ? err_set(ret, "the source did not hand the VM over: %s", err_get()) : 0;
}

void migrate_incoming_running(struct migrate_incoming *in, struct migration *m)
{
	struct timeval tv = { MIG_DOWNTIME_TIMEOUT_S, 0 };
	uint8_t d[8];
	uint64_t downtime = 0;

	setsockopt(in->conn.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (!mig_send(&in->conn, "U", 1) && !mig_recv(&in->conn, d, sizeof(d)))
		downtime = mig_get64(d);
	if (m)
		migration_set_incoming(m, in->bytes, downtime, mig_tls_cipher(&in->conn));
	mig_close(&in->conn);
}

void migrate_incoming_free(struct migrate_incoming *in)
{
	if (!in)
		return;
	disks_close(in);
	mig_close(&in->conn);
	free(in->pages);
	if (in->mem_fd >= 0)
		close(in->mem_fd);
	free(in);
}

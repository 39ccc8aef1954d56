/* Wire helpers shared by the migration source and destination. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "migrate-wire.h"
#include "vireo/log.h"
#include "vireo/migrate.h"

/* PSK key exchanges only; AES-GCM first (AES-NI: ~6 GB/s a core here),
 * since NORMAL's order had the peers agree on ChaCha20-Poly1305 (~0.6 GB/s),
 * which left the encrypted stream a quarter of the plain one's throughput. */
#define MIG_TLS_PRIORITY "NORMAL:-KX-ALL:+ECDHE-PSK:+DHE-PSK:+PSK:-CIPHER-ALL:" \
	"+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"

/* gnutls reads a record's 5-byte header and then its body, and writes
 * each record, with a system call each: two calls per 16 KiB received,
 * one per 16 KiB sent, which cost the encrypted stream more than the
 * cipher did. Records go through these buffers instead. */
#define MIG_TLS_IO (256u << 10)

struct mig_tls_io {
	size_t in_pos, in_len, out_len;
	uint8_t in[MIG_TLS_IO], out[MIG_TLS_IO];
};

static int tls_flush(struct mig_conn *c)
{
	struct mig_tls_io *io = c->io;
	size_t off = 0;

	while (off < io->out_len) {
		ssize_t n = send(c->fd, io->out + off, io->out_len - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		off += (size_t)n;
	}
	io->out_len = 0;
	return 0;
}

/* gnutls's push: gathers records until tls_send() ends or io->out fills. */
static ssize_t tls_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	struct mig_conn *c = ptr;
	struct mig_tls_io *io = c->io;
	int ret = 0;

	if (io->out_len + len > sizeof(io->out))
		ret = tls_flush(c);
	if (!ret && len > sizeof(io->out)) {
		ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);

		ret = n < 0 ? -errno : 0;
		len = n < 0 ? 0 : (size_t)n;
	} else if (!ret) {
		memcpy(io->out + io->out_len, buf, len);
		io->out_len += len;
	}
	/* A send timeout (SO_SNDTIMEO) is the peer's failure, not a retry:
	 * gnutls would take EAGAIN for one. */
	if (ret) {
		gnutls_transport_set_errno(c->tls, ret == -EAGAIN ? ETIMEDOUT : -ret);
		return -1;
	}
	return (ssize_t)len;
}

/* gnutls's pull: one recv() for as much as has arrived. */
static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct mig_conn *c = ptr;
	struct mig_tls_io *io = c->io;

	if (io->in_pos == io->in_len) {
		ssize_t n = recv(c->fd, io->in, sizeof(io->in), 0);

		if (n <= 0) {
			if (n < 0)
				gnutls_transport_set_errno(c->tls, errno);
			return n;
		}
		io->in_pos = 0;
		io->in_len = (size_t)n;
	}
	if (len > io->in_len - io->in_pos)
		len = io->in_len - io->in_pos;
	memcpy(buf, io->in + io->in_pos, len);
	io->in_pos += len;
	return (ssize_t)len;
}

static int tls_send(struct mig_conn *c, const uint8_t *p, size_t len)
{
	int ret;

	while (len) {
		ssize_t n = gnutls_record_send(c->tls, p, len);

		if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN)
			continue;
		if (n < 0)
			return err_set(-EPIPE, "migration stream (TLS): %s", gnutls_strerror((int)n));
		p += n;
		len -= (size_t)n;
	}
	ret = tls_flush(c);
	if (ret == -EAGAIN)
		return err_set(-ETIMEDOUT, "migration stream: the peer stopped answering");
	return ret ? err_set(ret, "migration stream: %s", strerror(-ret)) : 0;
}

static int tls_recv(struct mig_conn *c, uint8_t *p, size_t len)
{
	while (len) {
		ssize_t n = gnutls_record_recv(c->tls, p, len);

		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == GNUTLS_E_AGAIN)
			return err_set(-ETIMEDOUT, "migration stream: the peer stopped answering");
		if (n == 0)
			return err_set(-EPIPE, "migration stream: the peer closed the connection");
		if (n < 0)
			return err_set(-EPIPE, "migration stream (TLS): %s", gnutls_strerror((int)n));
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int psk_server_key(gnutls_session_t s, const char *user, gnutls_datum_t *key)
{
	struct mig_conn *c = gnutls_session_get_ptr(s);
	size_t n = strlen(c->key);

	(void)user;
	key->data = gnutls_malloc(n);
	if (!key->data)
		return -1;
	memcpy(key->data, c->key, n);
	key->size = (unsigned int)n;
	return 0;
}

static int tls_credentials(struct mig_conn *c, bool server, gnutls_session_t s)
{
	gnutls_datum_t key = { (unsigned char *)c->key, (unsigned int)strlen(c->key) };
	int ret;

	if (server) {
		gnutls_psk_server_credentials_t cred;

		ret = gnutls_psk_allocate_server_credentials(&cred);
		if (ret < 0)
			return ret;
		c->cred = cred;
		gnutls_psk_set_server_credentials_function(cred, psk_server_key);
		return gnutls_credentials_set(s, GNUTLS_CRD_PSK, cred);
	}
	gnutls_psk_client_credentials_t cred;

	ret = gnutls_psk_allocate_client_credentials(&cred);
	if (ret < 0)
		return ret;
	c->cred = cred;
	ret = gnutls_psk_set_client_credentials(cred, "vireo", &key, GNUTLS_PSK_KEY_RAW);
	return ret < 0 ? ret : gnutls_credentials_set(s, GNUTLS_CRD_PSK, cred);
}

int mig_tls_start(struct mig_conn *c, const char *token, bool server)
{
	gnutls_session_t s;
	int ret;

	snprintf(c->key, sizeof(c->key), "%s", token);
	/* NO_SIGNAL: a peer gone is an error here, not a SIGPIPE. */
	ret = gnutls_init(&s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_SIGNAL);
	if (ret < 0)
		return err_set(-EIO, "TLS: %s", gnutls_strerror(ret));
	c->tls = s;
	c->cred = NULL;
	c->server = server;
	gnutls_session_set_ptr(s, c);
	ret = gnutls_priority_set_direct(s, MIG_TLS_PRIORITY, NULL);
	if (ret >= 0)
		ret = tls_credentials(c, server, s);
	if (ret >= 0) {
		gnutls_transport_set_int(s, c->fd);
		do
			ret = gnutls_handshake(s);
		while (ret < 0 && !gnutls_error_is_fatal(ret));
	}
	if (ret < 0)
		return err_set(-EPROTO, "TLS handshake: %s", gnutls_strerror(ret));
	/* After the handshake, whose messages must go at once. */
	c->io = calloc(1, sizeof(*c->io));
	if (!c->io)
		return err_set(-ENOMEM, "out of memory");
	gnutls_transport_set_ptr(s, c);
	gnutls_transport_set_push_function(s, tls_push);
	gnutls_transport_set_pull_function(s, tls_pull);
	return 0;
}

const char *mig_tls_cipher(const struct mig_conn *c)
{
	return c->tls ? gnutls_cipher_get_name(gnutls_cipher_get(c->tls)) : NULL;
}

void mig_close(struct mig_conn *c)
{
	if (c->tls)
		gnutls_deinit(c->tls);
	if (c->cred && c->server)
		gnutls_psk_free_server_credentials(c->cred);
	else if (c->cred)
		gnutls_psk_free_client_credentials(c->cred);
	c->tls = c->cred = NULL;
	free(c->wbuf);
	c->wbuf = NULL;
	free(c->io);
	c->io = NULL;
	c->wlen = 0;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* flags: MSG_MORE when more follows at once (plain only). */
static int send_now(struct mig_conn *c, const void *buf, size_t len, int flags)
{
	const uint8_t *p = buf;

	if (c->tls)
		return tls_send(c, p, len);
	while (len) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | flags);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return err_set(-errno, "migration stream: %m");
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int mig_buffer(struct mig_conn *c)
{
	c->wlen = 0;
	c->wbuf = malloc(MIG_WBUF_SIZE);
	return c->wbuf ? 0 : err_set(-ENOMEM, "out of memory");
}

void mig_nodelay(int fd)
{
	int one = 1;

	/* Not TCP (a passed Unix socket): nothing to turn off. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int flush(struct mig_conn *c, int flags)
{
	size_t n = c->wlen;

	c->wlen = 0;
	return n ? send_now(c, c->wbuf, n, flags) : 0;
}

int mig_flush(struct mig_conn *c)
{
	return flush(c, 0);
}

int mig_send(struct mig_conn *c, const void *buf, size_t len)
{
	int ret;

	if (!c->wbuf)
		return send_now(c, buf, len, 0);
	if (c->wlen + len > MIG_WBUF_SIZE) {
		/* A big send follows: the two in the same segments. */
		ret = flush(c, len >= MIG_WBUF_SIZE ? MSG_MORE : 0);
		if (ret || len >= MIG_WBUF_SIZE)
			return ret ? ret : send_now(c, buf, len, 0);
	}
	memcpy(c->wbuf + c->wlen, buf, len);
	c->wlen += len;
	return 0;
}

int mig_recv(struct mig_conn *c, void *buf, size_t len)
{
	uint8_t *p = buf;
	int ret = mig_flush(c);

	if (ret)
		return ret;
	if (c->tls)
		return tls_recv(c, p, len);
	while (len) {
		ssize_t n = recv(c->fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return err_set(errno == EAGAIN ? -ETIMEDOUT : -errno,
				       "migration stream: %s",
				       errno == EAGAIN ? "the peer stopped answering" : strerror(errno));
		if (n == 0)
			return err_set(-EPIPE, "migration stream: the peer closed the connection");
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int mig_mac(const char *token, const char *label, const uint8_t *a, const uint8_t *b,
	    uint8_t out[MIG_MAC])
{
	uint8_t msg[3 + 2 * MIG_NONCE];
	/* HMAC takes an empty key; gnutls wants a pointer all the same. */
	static const char none[1];
	int ret;

	memcpy(msg, label, 3);
	memcpy(msg + 3, a, MIG_NONCE);
	memcpy(msg + 3 + MIG_NONCE, b, MIG_NONCE);
	ret = gnutls_hmac_fast(GNUTLS_MAC_SHA256, token[0] ? token : none, strlen(token),
			       msg, sizeof(msg), out);
	return ret < 0 ? err_set(-EIO, "HMAC-SHA256: %s", gnutls_strerror(ret)) : 0;
}

int mig_mac_cmp(const uint8_t *a, const uint8_t *b)
{
	uint8_t d = 0;

	for (unsigned int i = 0; i < MIG_MAC; i++)
		d |= a[i] ^ b[i];
	return d;
}

void mig_hello(uint8_t out[MIG_HELLO_SIZE], const uint8_t nonce[MIG_NONCE])
{
	memcpy(out, MIG_MAGIC, 8);
	mig_put32(out + 8, MIG_VERSION);
	memcpy(out + 12, nonce, MIG_NONCE);
}

int mig_hello_check(const uint8_t in[MIG_HELLO_SIZE], const uint8_t **nonce)
{
	if (memcmp(in, MIG_MAGIC, 8))
		return err_set(-EPROTO, "not a vireo migration stream");
	if (mig_get32(in + 8) != MIG_VERSION)
		return err_set(-EPROTO, "migration protocol version %u: this vireo speaks %u",
			       mig_get32(in + 8), MIG_VERSION);
	*nonce = in + 12;
	return 0;
}

void mig_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

void mig_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

uint32_t mig_get32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

uint64_t mig_get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

uint64_t mig_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* "tcp:HOST:PORT"; HOST may be "[v6]". */
int migrate_parse_uri(const char *uri, char *host, size_t hsize, char *port, size_t psize)
{
	const char *h, *colon;
	size_t hlen;

	if (strncmp(uri, "tcp:", 4))
		return err_set(-EINVAL, "migration uri '%.64s': only tcp:HOST:PORT", uri);
	h = uri + 4;
	colon = strrchr(h, ':');
	if (!colon || colon == h || !colon[1] || strlen(colon + 1) >= psize)
		return err_set(-EINVAL, "migration uri '%.64s': tcp:HOST:PORT expected", uri);
	hlen = (size_t)(colon - h);
	if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
		h++;
		hlen -= 2;
	}
	if (hlen >= hsize)
		return err_set(-EINVAL, "migration uri: host name too long");
	memcpy(host, h, hlen);
	host[hlen] = 0;
	snprintf(port, psize, "%s", colon + 1);
	return 0;
}

/* The addresses of a "tcp:HOST:PORT" to connect to: numeric only (a name
 * lookup would reach for what the VMM's sandbox forbids, nscd's socket,
 * and would not keep to a deadline); "localhost" is 127.0.0.1. */
int migrate_resolve(const char *uri, struct addrinfo **ai)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST |
				  AI_NUMERICSERV };
	char host[256], port[32];
	int ret = migrate_parse_uri(uri, host, sizeof(host), port, sizeof(port));

	if (ret)
		return ret;
	if (!strcmp(host, "localhost"))
		snprintf(host, sizeof(host), "127.0.0.1");
	ret = getaddrinfo(host, port, &hints, ai);
	if (ret)
		return err_set(-EINVAL, "%s: %s (an IP address and a port number are needed)",
			       uri, gai_strerror(ret));
	return 0;
}

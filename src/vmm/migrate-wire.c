/* Wire helpers shared by the migration source and destination. */
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "migrate-wire.h"
#include "vireo/log.h"
#include "vireo/migrate.h"

int mig_send(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return err_set(-errno, "migration stream: %m");
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int mig_recv(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, 0);

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

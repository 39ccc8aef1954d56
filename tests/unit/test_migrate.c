/* Live migration's pure parts: the migration URI, the dirty bitmap count,
 * and the token proof both ends compute. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../src/vmm/migrate-wire.h"
#include "vireo/dirty.h"
#include "vireo/migrate.h"

static void uris(void **state)
{
	char host[64], port[16];

	(void)state;
	assert_int_equal(migrate_parse_uri("tcp:10.1.2.3:4444", host, sizeof(host), port,
					   sizeof(port)), 0);
	assert_string_equal(host, "10.1.2.3");
	assert_string_equal(port, "4444");
	assert_int_equal(migrate_parse_uri("tcp:[::1]:7", host, sizeof(host), port,
					   sizeof(port)), 0);
	assert_string_equal(host, "::1");
	assert_string_equal(port, "7");
	assert_int_equal(migrate_parse_uri("unix:/x", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
	assert_int_equal(migrate_parse_uri("tcp:host", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
	assert_int_equal(migrate_parse_uri("tcp::1", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
	assert_int_equal(migrate_parse_uri("tcp:h:", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
}

static void bitmap_count(void **state)
{
	uint64_t bits[3] = { 0x1, 0xffffffffffffffffull, 0x8000000000000001ull };

	(void)state;
	assert_int_equal(dirty_bitmap_count(bits, 3), 67);
	assert_int_equal(dirty_bitmap_count(bits, 0), 0);
}

static void token_proofs(void **state)
{
	uint8_t a[MIG_NONCE], b[MIG_NONCE], m1[MIG_MAC], m2[MIG_MAC];

	(void)state;
	memset(a, 1, sizeof(a));
	memset(b, 2, sizeof(b));
	assert_int_equal(mig_mac("tok", "src", a, b, m1), 0);
	assert_int_equal(mig_mac("tok", "src", a, b, m2), 0);
	assert_int_equal(mig_mac_cmp(m1, m2), 0);
	/* Another token, label or nonce order proves nothing. */
	assert_int_equal(mig_mac("tok2", "src", a, b, m2), 0);
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
	assert_int_equal(mig_mac("tok", "dst", a, b, m2), 0);
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
	assert_int_equal(mig_mac("tok", "src", b, a, m2), 0);
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
	assert_int_equal(mig_mac("", "src", a, b, m2), 0); /* no token: still a MAC */
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
}

static void hello(void **state)
{
	uint8_t buf[MIG_HELLO_SIZE], nonce[MIG_NONCE];
	const uint8_t *got;

	(void)state;
	memset(nonce, 7, sizeof(nonce));
	mig_hello(buf, nonce);
	assert_int_equal(mig_hello_check(buf, &got), 0);
	assert_memory_equal(got, nonce, MIG_NONCE);
	buf[8]++;
	assert_int_equal(mig_hello_check(buf, &got), -EPROTO);
	memcpy(buf, "GET / HT", 8);
	assert_int_equal(mig_hello_check(buf, &got), -EPROTO);
}

static size_t pending(int fd)
{
	char buf[256];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_PEEK);

	return n < 0 ? 0 : (size_t)n;
}

/* Small records wait in the buffer until a flush, a receive (the peer's
 * answer is awaited: all must be out) or a full buffer; big ones go. */
static void buffered_stream(void **state)
{
	struct mig_conn c = { .fd = -1 };
	static uint8_t big[MIG_WBUF_SIZE];
	uint8_t got[64];
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	c.fd = sv[0];
	assert_int_equal(mig_buffer(&c), 0);
	assert_int_equal(mig_send(&c, "hdr1", 4), 0);
	assert_int_equal(mig_send(&c, "hdr2", 4), 0);
	assert_int_equal(pending(sv[1]), 0);
	assert_int_equal(mig_flush(&c), 0);
	assert_int_equal(pending(sv[1]), 8);
	assert_int_equal(recv(sv[1], got, 8, 0), 8);
	assert_memory_equal(got, "hdr1hdr2", 8);
	assert_int_equal(mig_send(&c, "S", 1), 0);
	assert_int_equal(write(sv[1], "R", 1), 1);
	assert_int_equal(mig_recv(&c, got, 1), 0);
	assert_int_equal(pending(sv[1]), 1);
	assert_int_equal(recv(sv[1], got, 1, 0), 1);
	assert_int_equal(mig_send(&c, "x", 1), 0);
	assert_int_equal(mig_send(&c, big, 4096), 0);
	assert_int_equal(pending(sv[1]), 0);
	mig_close(&c);
	close(sv[1]);
}

static void no_nagle(void **state)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0), s = socket(AF_INET, SOCK_STREAM, 0), v = 0;
	socklen_t vlen = sizeof(v);

	(void)state;
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
	assert_int_equal(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
	mig_nodelay(s);
	assert_int_equal(getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &vlen), 0);
	assert_int_equal(v, 1);
	close(s);
	close(l);
}

static void *tls_server(void *arg)
{
	struct mig_conn *c = arg;

	return (void *)(intptr_t)mig_tls_start(c, "a token", true);
}

/* Two ends of a socket pair, TLS set up between them with one token. */
static void tls_pair(struct mig_conn *cl, struct mig_conn *sv)
{
	pthread_t t;
	void *ret;
	int fds[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	cl->fd = fds[0];
	sv->fd = fds[1];
	assert_int_equal(pthread_create(&t, NULL, tls_server, sv), 0);
	assert_int_equal(mig_tls_start(cl, "a token", false), 0);
	assert_int_equal(pthread_join(t, &ret), 0);
	assert_int_equal((intptr_t)ret, 0);
}

/* gnutls alone read a record's header and its body with a recv() each;
 * the stream's pull takes what has arrived in one: after the first bytes
 * of four records nothing waits in the socket. And what the records carry
 * arrives whole. */
static void tls_reads_ahead(void **state)
{
	struct mig_conn cl = { .fd = -1 }, sv = { .fd = -1 };
	static uint8_t out[64 << 10], in[64 << 10];
	int queued = -1;

	(void)state;
	tls_pair(&cl, &sv);
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(mig_send(&cl, out, sizeof(out)), 0);
	assert_int_equal(mig_recv(&sv, in, 16), 0);
	assert_int_equal(ioctl(sv.fd, FIONREAD, &queued), 0);
	assert_int_equal(queued, 0);
	assert_int_equal(mig_recv(&sv, in + 16, sizeof(in) - 16), 0);
	assert_memory_equal(in, out, sizeof(out));
	mig_close(&cl);
	mig_close(&sv);
}

/* A peer that stops reading: the send timeout ends the stream with an
 * error, where gnutls would retry a timed-out push for ever (the alarm
 * fails the test instead of hanging it). */
static void tls_send_times_out(void **state)
{
	struct mig_conn cl = { .fd = -1 }, sv = { .fd = -1 };
	struct timeval tv = { 0, 100000 };
	static uint8_t out[4 << 20];

	(void)state;
	tls_pair(&cl, &sv);
	assert_int_equal(setsockopt(cl.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)), 0);
	alarm(20);
	assert_true(mig_send(&cl, out, sizeof(out)) < 0);
	alarm(0);
	mig_close(&cl);
	mig_close(&sv);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(uris),
		cmocka_unit_test(bitmap_count),
		cmocka_unit_test(token_proofs),
		cmocka_unit_test(hello),
		cmocka_unit_test(buffered_stream),
		cmocka_unit_test(no_nagle),
		cmocka_unit_test(tls_reads_ahead),
		cmocka_unit_test(tls_send_times_out),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

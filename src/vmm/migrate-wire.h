/* Private to src/vmm/migrate*.c: the wire helpers both ends share
 * (protocol in include/vireo/migrate.h). */
#ifndef VIREO_MIGRATE_WIRE_H
#define VIREO_MIGRATE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_MAGIC "VIREOMIG"
#define MIG_VERSION 1
#define MIG_NONCE 32
#define MIG_MAC 32
#define MIG_HELLO_SIZE (8 + 4 + MIG_NONCE)

enum { MIG_REC_HELLO = 1, MIG_REC_PAGES = 2, MIG_REC_ZERO = 3, MIG_REC_STATE = 4 };
#define MIG_MAX_RUN 256u   /* pages in one record */

/* A migration connection: a TCP socket, and once mig_tls_start() has
 * run, the TLS session over it that carries everything after. */
struct mig_conn {
	int fd;
	void *tls;   /* gnutls_session_t, NULL: plain */
	void *cred;  /* its PSK credentials */
	bool server;
	char key[256];
};

/* 0, or -errno (-EPIPE at end of stream) with err_set(). */
int mig_send(struct mig_conn *c, const void *buf, size_t len);
int mig_recv(struct mig_conn *c, void *buf, size_t len);
/* TLS 1.3 (or 1.2) with the token as pre-shared key, both ends proving it
 * again and every record encrypted and integrity-protected. */
int mig_tls_start(struct mig_conn *c, const char *token, bool server);
/* Ends the TLS session (if any) and closes the socket. */
void mig_close(struct mig_conn *c);
/* HMAC-SHA256(token, label || a || b) of two nonces. */
int mig_mac(const char *token, const char *label, const uint8_t *a, const uint8_t *b,
	    uint8_t out[MIG_MAC]);
/* Compares in constant time: 0 if equal. */
int mig_mac_cmp(const uint8_t *a, const uint8_t *b);
void mig_hello(uint8_t out[MIG_HELLO_SIZE], const uint8_t nonce[MIG_NONCE]);
/* Checks a peer's hello and returns its nonce. 0 or -EPROTO. */
int mig_hello_check(const uint8_t in[MIG_HELLO_SIZE], const uint8_t **nonce);
void mig_put32(uint8_t *p, uint32_t v);
void mig_put64(uint8_t *p, uint64_t v);
uint32_t mig_get32(const uint8_t *p);
uint64_t mig_get64(const uint8_t *p);
uint64_t mig_now_us(void);

#endif

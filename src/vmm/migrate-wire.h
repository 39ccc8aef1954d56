/* Private to src/vmm/migrate*.c: the wire helpers both ends share
 * (protocol in include/vireo/migrate.h). */
#ifndef VIREO_MIGRATE_WIRE_H
#define VIREO_MIGRATE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vireo/migrate.h"

#define MIG_MAGIC "VIREOMIG"
#define MIG_VERSION 1
#define MIG_NONCE 32
#define MIG_MAC 32
#define MIG_HELLO_SIZE (8 + 4 + MIG_NONCE)

enum { MIG_REC_HELLO = 1, MIG_REC_PAGES = 2, MIG_REC_ZERO = 3, MIG_REC_STATE = 4,
       MIG_REC_DISKS = 5, MIG_REC_DISK_DATA = 6, MIG_REC_DISK_ZERO = 7 };
#define MIG_MAX_RUN 256u   /* pages in one record */
#define MIG_DISK_CHUNK (1u << 20) /* bytes of disk data in one record */
#define MIG_DISK_DATA_HDR 20      /* u32 type, u32 disk, u64 offset, u32 length */
#define MIG_DISK_ZERO_HDR 24      /* u32 type, u32 disk, u64 offset, u64 length */

/* ---- copied storage, the source's side (src/vmm/migrate-disk.c) ---- */

struct blockdev;
struct snapshot_target;

/* Sends bytes on the migration stream (paced, counted): 0 or -errno. */
typedef int mig_send_fn(void *ctx, const void *buf, size_t len);

/* The VM's disks, copied to the destination's own images. */
struct mig_disks {
	unsigned int n;
	struct blockdev *bd[MIGRATE_MAX_DISKS];
	uint64_t *bits[MIGRATE_MAX_DISKS];   /* grains written and not sent yet */
	uint8_t *buf;                        /* one chunk plus its record header */
	uint64_t left;                       /* of the first pass, for the progress */
	bool tracking;
	mig_send_fn *send;
	void *ctx;
};

/* Finds the disks and allocates; 0 or -errno with err_set(). */
int mig_disks_init(struct mig_disks *d, const struct snapshot_target *t, mig_send_fn *send,
		   void *ctx);
/* The DISKS record, then tracking on, then every disk's data (zeroes and
 * holes skipped: the destination's images start empty) while the VM runs. */
int mig_disks_copy(struct mig_disks *d);
/* Adds the grains written since the last call to what is to be sent;
 * returns the bytes now to be sent. */
uint64_t mig_disks_collect(struct mig_disks *d);
/* Sends what mig_disks_collect() gathered (zero grains as zero records). */
int mig_disks_send_dirty(struct mig_disks *d);
/* Tracking off, memory freed (the disks themselves are untouched). */
void mig_disks_free(struct mig_disks *d);

/* A migration connection: a TCP socket, and once mig_tls_start() has
 * run, the TLS session over it that carries everything after. */
struct mig_conn {
	int fd;
	void *tls;   /* gnutls_session_t, NULL: plain */
	void *cred;  /* its PSK credentials */
	bool server;
	char key[256];
	uint8_t *wbuf;  /* mig_buffer(): small records gathered, NULL: none */
	size_t wlen;
	struct mig_tls_io *io;  /* TLS records to and from the socket */
};

/* Without a buffer every small record (a zero run's header, the state's)
 * would be a TCP segment, or a TLS record, of its own. */
#define MIG_WBUF_SIZE (64u << 10)

/* 0, or -errno (-EPIPE at end of stream) with err_set(). */
int mig_send(struct mig_conn *c, const void *buf, size_t len);
int mig_recv(struct mig_conn *c, void *buf, size_t len);
/* From now on mig_send() gathers what is smaller than MIG_WBUF_SIZE; it
 * goes at mig_flush(), before mig_recv() waits for the peer, or when the
 * buffer is full. 0 or -ENOMEM with err_set(). */
int mig_buffer(struct mig_conn *c);
/* TCP_NODELAY on the stream's socket (both ends): the source gathers its
 * records itself, and the few small ones at the switch (the state's end,
 * 'R', 'G') must go at once; Nagle's algorithm held them until the peer's
 * delayed ACK, ~40 ms of downtime. */
void mig_nodelay(int fd);
int mig_flush(struct mig_conn *c);
/* TLS 1.3 (or 1.2) with the token as pre-shared key, both ends proving it
 * again and every record encrypted and integrity-protected. */
int mig_tls_start(struct mig_conn *c, const char *token, bool server);
/* Ends the TLS session (if any) and closes the socket. */
void mig_close(struct mig_conn *c);
/* The TLS session's cipher ("AES-128-GCM"), NULL for a plain stream. */
const char *mig_tls_cipher(const struct mig_conn *c);
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

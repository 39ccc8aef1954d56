/* Live migration (src/vmm/migrate*.c, docs/run.md "Live migration"):
 * pre-copy over TCP between two VMMs.
 *
 * Source: the control socket's `migrate` starts a thread that sends all
 * guest RAM, then the pages dirtied meanwhile (include/vireo/dirty.h) in
 * rounds until the rest fits the downtime limit at the measured bandwidth,
 * throttling the vCPUs more each round that does not converge; then pauses
 * the VM, sends the last pages and the state (include/vireo/state.h bytes)
 * and waits for the destination. Until the destination says it is ready to
 * run, any failure resumes the VM here; once the source has told it to go,
 * the source never resumes (never two running copies) and its VMM ends with
 * status 0, reason "migrated".
 *
 * Wire (all integers little-endian), after a TCP connect (the source's
 * own, or the one its caller made and passed it, as the daemon does for a
 * jailed VMM):
 *   D→S  "VIREOMIG" u32 version, 32-byte nonce Nd
 *   S→D  "VIREOMIG" u32 version, 32-byte nonce Ns, HMAC-SHA256(token, "src" Nd Ns)
 *   D→S  u8 1, HMAC-SHA256(token, "dst" Ns Nd)   (or u8 0 and close: refused)
 *   with a token: a TLS handshake (PSK = the token), and all that follows
 *   inside TLS records
 *   S→D  records: u32 type, then
 *        MIG_REC_HELLO  u64 RAM bytes, u32 vCPUs
 *        MIG_REC_PAGES  u64 RAM offset, u32 pages, the pages
 *        MIG_REC_ZERO   u64 RAM offset, u32 pages (now all zero)
 *        MIG_REC_STATE  u32 length, the state file's bytes (VM paused)
 *      copied storage (copy_storage) adds, first after the hello:
 *        MIG_REC_DISKS      u32 disks (1..MIGRATE_MAX_DISKS), u64 virtual size each
 *      and, among the page records, in every round and in the pause:
 *        MIG_REC_DISK_DATA  u32 disk, u64 offset, u32 length (<= 1 MiB), the data
 *        MIG_REC_DISK_ZERO  u32 disk, u64 offset, u64 length (now all zero)
 *      (the destination's images start empty: holes and zeroes are not sent
 *      in the first pass; grains the guest writes meanwhile are sent again)
 *   D→S  'R' (built, ready to run) or 'E' u32 length, message
 *   S→D  'G'     (go: from here the source never resumes)
 *   D→S  'U'     (running)
 *   S→D  u64 downtime in µs (pause on the source to 'U')
 * With a token, everything after the handshake goes through TLS with the
 * token as pre-shared key (gnutls: encrypted and integrity-protected);
 * without one, the caller asked for a plain stream (trusted networks). */
#ifndef VIREO_MIGRATE_H
#define VIREO_MIGRATE_H

#include <stdbool.h>
#include <stdint.h>

#define MIGRATE_URI_MAX 256
#define MIGRATE_TOKEN_MAX 256
#define MIGRATE_DEFAULT_DOWNTIME_MS 300
#define MIGRATE_MAX_DISKS 8

struct vm;
struct vcpu;
struct snapshot;
struct snapshot_target;
struct machine_config;
struct json_object;

struct migrate_params {
	char uri[MIGRATE_URI_MAX];     /* "tcp:HOST:PORT"; with fd, where it leads */
	int fd;                        /* a connected TCP stream to use, or -1:
					* connect to uri */
	char token[MIGRATE_TOKEN_MAX]; /* "" : none */
	uint64_t max_downtime_ms;
	uint64_t bandwidth;            /* bytes/s, 0: unlimited */
	bool copy_storage;             /* the disks go too, into the destination's
					* own images (else: shared storage) */
};

/* The destination's own images for copied storage (`vireo run
 * --incoming-disk`), in the VM's disk order: empty images of the source
 * disks' virtual sizes, created beforehand (as for QEMU's
 * --copy-storage-all). ndisks 0: shared storage. */
struct block_policy;
struct migrate_storage {
	unsigned int ndisks;
	const char *path[MIGRATE_MAX_DISKS];
	const char *format[MIGRATE_MAX_DISKS];   /* NULL: probed */
	const struct block_policy *policy;       /* NULL: none */
};

struct migration;

/* The VMM's migration record (source or destination); NULL if no memory. */
struct migration *migration_create(const struct snapshot_target *t);
/* Cancels a running migration (the VM stays here) and frees it. */
void migration_destroy(struct migration *m);
/* Starts migrating in the background: 0, or -EBUSY / -EINVAL / -ENOTSUP
 * with err_set(). It owns p->fd (if >= 0) from then on, whatever it returns. */
int migration_start(struct migration *m, const struct migrate_params *p);
/* Asks a running migration to stop: 0, or -ENOENT (none running) or -EBUSY
 * (past the point of no return). */
int migration_cancel(struct migration *m);
/* True while the migration has the VM paused for the switch-over (or has
 * handed it over): a resume then would make two running copies. */
bool migration_holds_pause(struct migration *m);
/* The figures for `info` ("migration"), or NULL if there never was one. */
struct json_object *migration_info(struct migration *m);

/* Auto-converge: called by a vCPU thread kicked out of KVM_RUN; sleeps
 * its share of the throttle. */
void vcpu_throttle(struct vcpu *vcpu);

/* ---- destination (src/vmm/migrate-in.c) ---- */

struct migrate_incoming;
/* Called once the stream's hello has said the guest's memory size and
 * vCPUs, before any memory arrives: the caller builds what needs no more
 * (the KVM VM, its memory slot over mem_fd, the vCPUs) while the memory
 * streams in, not in the downtime. mem_fd stays the stream's (dup it to
 * keep it). 0, or -errno with err_set(): the migration is refused. */
typedef int migrate_hello_fn(void *ctx, int mem_fd, uint64_t size, unsigned int ncpus);
/* Listens on uri ("fd:N": on inherited socket N, bound already), takes one authenticated stream (token_file: NULL for
 * none), receives the memory into a memfd and the state, and opens it as a
 * snapshot: *snap and *m as snapshot_open() gives them, the memfd in the
 * snapshot. With st (copied storage), the disks go into st's images, which
 * are flushed and closed before this returns, and m names them instead of
 * the source's. 0 or -errno with err_set(). */
int migrate_incoming_receive(const char *uri, const char *token_file,
			     const struct migrate_storage *st, migrate_hello_fn *hello,
			     void *ctx, struct migrate_incoming **out, struct snapshot **snap,
			     struct machine_config *m);
/* The machine is built and restored: tells the source and waits for its
 * go. Anything but 0 means the VM must not run. */
int migrate_incoming_ready(struct migrate_incoming *in);
/* The vCPUs run: tells the source, waits briefly for the downtime it
 * measured, and records the outcome in m (for info). */
void migrate_incoming_running(struct migrate_incoming *in, struct migration *m);
void migrate_incoming_free(struct migrate_incoming *in);
/* The guest runs here now (src/vmm/migrate-announce.c): each vNIC sends a
 * RARP frame with its MAC into its tap at once and four more at growing
 * gaps (50 to 350 ms, on the loop's timer), so that bridges and switches
 * learn the VM's new port without waiting for the guest to send. nics
 * must outlive the loop. 0 or -errno with err_set(). */
struct loop;
struct virtio_net;
int migrate_announce_start(struct loop *loop, struct virtio_net *const *nics,
			   unsigned int nnics);

/* Shared by both ends (src/vmm/migrate-wire.c). */
int migrate_parse_uri(const char *uri, char *host, size_t hsize, char *port, size_t psize);
/* Its numeric addresses to connect to (freeaddrinfo them); 0 or -errno
 * with err_set(). */
struct addrinfo;
int migrate_resolve(const char *uri, struct addrinfo **ai);
/* cipher: the TLS cipher's name, NULL for a plain stream. */
void migration_set_incoming(struct migration *m, uint64_t bytes, uint64_t downtime_us,
			    const char *cipher);

#endif

/* Token buckets (src/util/ratelimit.c): the one rate limiter that disks,
 * vNICs and the rng share (DESIGN §3.10). A limiter has a bandwidth bucket
 * (bytes/s) and an operations bucket (ops/s); a zero rate means unlimited.
 * A request may take a bucket into debt, so one large request is never
 * refused; the next one then waits until the debt is paid. */
#ifndef VIREO_RATELIMIT_H
#define VIREO_RATELIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct token_bucket {
	uint64_t rate;   /* tokens per second; 0: unlimited */
	uint64_t burst;  /* bucket capacity; 0: 100 ms worth */
	double tokens;
	uint64_t last_ns;
};

struct ratelimit {
	pthread_mutex_t lock;
	struct token_bucket bytes;
	struct token_bucket ops;
	uint64_t throttled_ns; /* total time requests waited */
	/* Totals of what was charged or consumed: what the daemon's I/O
	 * policy reads as the device's demand (docs/api.md). */
	uint64_t charged_bytes, charged_ops;
};

void ratelimit_init(struct ratelimit *rl);
/* Changes the limits at any time (from the control plane); 0: unlimited. A
 * bucket that had a rate keeps its tokens or its debt; one that had none
 * starts full. */
void ratelimit_set(struct ratelimit *rl, uint64_t bytes_per_s, uint64_t ops_per_s);
/* The same at now_ns (ratelimit_now_ns's clock). */
void ratelimit_set_at(struct ratelimit *rl, uint64_t bytes_per_s, uint64_t ops_per_s,
		      uint64_t now_ns);
/* Nanoseconds to wait before the next request may start; 0 = now. */
uint64_t ratelimit_delay_ns(struct ratelimit *rl, uint64_t now_ns);
/* Firecracker's order, for requests whose cost is known before they run:
 * takes one operation of `bytes` and returns 0 if both buckets hold it;
 * else takes nothing and returns the nanoseconds until they will (the
 * caller puts the request back and asks again then). A request larger than
 * a bucket's capacity is taken when that bucket is full, into debt. */
uint64_t ratelimit_consume(struct ratelimit *rl, uint64_t bytes, uint64_t now_ns);
/* Charges one operation of `bytes`. */
void ratelimit_charge(struct ratelimit *rl, uint64_t bytes, uint64_t now_ns);
uint64_t ratelimit_now_ns(void);

#endif

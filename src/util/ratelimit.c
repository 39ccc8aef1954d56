#include <time.h>

#include "vireo/ratelimit.h"

uint64_t ratelimit_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Default burst: 100 ms worth, so a limit holds within a few percent over
 * a few seconds while short bursts still go at full speed. */
static uint64_t bucket_capacity(const struct token_bucket *b)
{
	return b->burst ? b->burst : b->rate / 10;
}

static void bucket_refill(struct token_bucket *b, uint64_t now_ns)
{
	double cap = (double)bucket_capacity(b);

	if (now_ns > b->last_ns)
		b->tokens += (double)(now_ns - b->last_ns) * (double)b->rate / 1e9;
	b->last_ns = now_ns;
	if (b->tokens > cap)
		b->tokens = cap;
}

static uint64_t bucket_delay(struct token_bucket *b, uint64_t now_ns)
{
	if (!b->rate)
		return 0;
	bucket_refill(b, now_ns);
	if (b->tokens >= 0)
		return 0;
	return (uint64_t)(-b->tokens * 1e9 / (double)b->rate) + 1;
}

void ratelimit_init(struct ratelimit *rl)
{
	*rl = (struct ratelimit){ 0 };
	pthread_mutex_init(&rl->lock, NULL);
}

/* A limit where there was none starts with a full bucket. A new rate for a
 * limited bucket keeps what it holds, tokens earned at the old rate until
 * now (at most the new capacity) or a debt: refilling it at every change
 * would hand out a burst per change, and the I/O policy changes limits
 * every interval (at 500 ms, up to 20 % over the limits). */
static void bucket_set(struct token_bucket *b, uint64_t rate, uint64_t now_ns)
{
	bool was_limited = b->rate != 0;

	if (was_limited)
		bucket_refill(b, now_ns);
	b->rate = rate;
	b->burst = 0;
	if (!was_limited || b->tokens > (double)bucket_capacity(b))
		b->tokens = (double)bucket_capacity(b);
	b->last_ns = now_ns;
}

void ratelimit_set_at(struct ratelimit *rl, uint64_t bytes_per_s, uint64_t ops_per_s,
		      uint64_t now_ns)
{
	pthread_mutex_lock(&rl->lock);
	bucket_set(&rl->bytes, bytes_per_s, now_ns);
	bucket_set(&rl->ops, ops_per_s, now_ns);
	pthread_mutex_unlock(&rl->lock);
}

void ratelimit_set(struct ratelimit *rl, uint64_t bytes_per_s, uint64_t ops_per_s)
{
	ratelimit_set_at(rl, bytes_per_s, ops_per_s, ratelimit_now_ns());
}

uint64_t ratelimit_delay_ns(struct ratelimit *rl, uint64_t now_ns)
{
	uint64_t a, b;

	pthread_mutex_lock(&rl->lock);
	a = bucket_delay(&rl->bytes, now_ns);
	b = bucket_delay(&rl->ops, now_ns);
	if (a < b)
		a = b;
	/* Callers wait exactly this long before asking again (a timer), so
	 * the sum of the delays handed out is the time spent throttled. */
	rl->throttled_ns += a;
	pthread_mutex_unlock(&rl->lock);
	return a;
}

void ratelimit_charge(struct ratelimit *rl, uint64_t bytes, uint64_t now_ns)
{
	pthread_mutex_lock(&rl->lock);
	rl->charged_bytes += bytes;
	rl->charged_ops++;
	if (rl->bytes.rate) {
		bucket_refill(&rl->bytes, now_ns);
		rl->bytes.tokens -= (double)bytes;
	}
	if (rl->ops.rate) {
		bucket_refill(&rl->ops, now_ns);
		rl->ops.tokens -= 1;
	}
	pthread_mutex_unlock(&rl->lock);
}

/* 0 if `cost` may be taken from b now; else how long until it may. */
static uint64_t bucket_wait(struct token_bucket *b, double cost, uint64_t now_ns)
{
	double cap = (double)bucket_capacity(b), need;

	if (!b->rate)
		return 0;
	bucket_refill(b, now_ns);
	need = cost < cap ? cost : cap;	/* larger: a full bucket, then debt */
	if (b->tokens >= need)
		return 0;
	return (uint64_t)((need - b->tokens) * 1e9 / (double)b->rate) + 1;
}

uint64_t ratelimit_consume(struct ratelimit *rl, uint64_t bytes, uint64_t now_ns)
{
	uint64_t a, b;

	pthread_mutex_lock(&rl->lock);
	a = bucket_wait(&rl->bytes, (double)bytes, now_ns);
	b = bucket_wait(&rl->ops, 1, now_ns);
	if (a < b)
		a = b;
	if (a) {
		rl->throttled_ns += a;	/* the caller waits exactly this long */
	} else {
		rl->charged_bytes += bytes;
		rl->charged_ops++;
		if (rl->bytes.rate)
			rl->bytes.tokens -= (double)bytes;
		if (rl->ops.rate)
			rl->ops.tokens -= 1;
	}
	pthread_mutex_unlock(&rl->lock);
	return a;
}

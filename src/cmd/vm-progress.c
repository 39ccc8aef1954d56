/* A daemon request that can take long (snapshot, rollback, migration), with
 * a progress line on stderr while it waits (include/vireo/cmd.h). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "vireo/cmd.h"

struct ticker {
	vm_api_tick_fn *tick;
	void *arg;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
};

/* Each second until done: tick() draws the line; on a terminal the line is
 * erased at the end, so that the command's own answer stands alone. */
static void *ticker_run(void *opaque)
{
	struct ticker *t = opaque;
	bool tty = isatty(2), shown = false;
	struct timespec until;
	unsigned int s = 0;

	pthread_mutex_lock(&t->lock);
	clock_gettime(CLOCK_MONOTONIC, &until);
	while (!t->done) {
		until.tv_sec++;
		if (pthread_cond_timedwait(&t->cond, &t->lock, &until) != ETIMEDOUT || t->done)
			continue;
		pthread_mutex_unlock(&t->lock);
		shown |= t->tick(t->arg, ++s, tty, shown);
		pthread_mutex_lock(&t->lock);
	}
	if (shown && tty)
		fputs("\r\033[K", stderr);
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

struct json_object *vm_api_call_ticking(const char *socket, bool json, const char *method,
					const char *path, const char *body, bool *ok,
					vm_api_tick_fn *tick, void *arg)
{
	struct ticker t = { .tick = tick, .arg = arg };
	pthread_condattr_t attr;
	struct json_object *o;
	pthread_t thread;
	bool started;

	pthread_mutex_init(&t.lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&t.cond, &attr);
	pthread_condattr_destroy(&attr);
	/* Without the thread, the request goes on without a progress line. */
	started = !pthread_create(&thread, NULL, ticker_run, &t);
	o = vm_api_call(socket, json, method, path, body, ok);
	if (started) {
		pthread_mutex_lock(&t.lock);
		t.done = true;
		pthread_cond_signal(&t.cond);
		pthread_mutex_unlock(&t.lock);
		pthread_join(thread, NULL);
	}
	pthread_cond_destroy(&t.cond);
	pthread_mutex_destroy(&t.lock);
	return o;
}

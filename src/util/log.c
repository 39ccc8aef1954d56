#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "vireo/log.h"

static enum log_level current_level = LOG_WARN;
static __thread char last_error[512];

void log_set_level(enum log_level level)
{
	current_level = level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	char line[1024];
	va_list ap;

	if (level > current_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* One write per line, so lines from vCPU threads do not interleave. */
	fprintf(stderr, "vireo: %s: %s\n", names[level], line);
}

bool log_ratelimit_ok(struct log_ratelimit *rl)
{
	enum { BURST = 5 };
	long now = (long)time(NULL);

	if (now != rl->window) {
		rl->window = now;
		rl->count = 0;
	}
	return rl->count++ < BURST;
}

int err_set(int errnum, const char *fmt, ...)
{
	char msg[sizeof(last_error)];
	va_list ap;

	/* Through a copy: callers prefix a message with err_get() as an
	 * argument, which is last_error itself. */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	memcpy(last_error, msg, sizeof(msg));
	return errnum;
}

const char *err_get(void)
{
	return last_error[0] ? last_error : "unknown error";
}

void err_clear(void)
{
	last_error[0] = '\0';
}

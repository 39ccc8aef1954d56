/* Logging and the one error-message convention (DESIGN §3.7).
 *
 * Functions return 0 or -errno; the detail for the caller goes into an error
 * message with err_set(), and the top level (CLI or API reply) prints it once
 * with err_get(). log_*() are for diagnostics, not for reporting errors. */
#ifndef VIREO_LOG_H
#define VIREO_LOG_H

#include <stdbool.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Rate-limited warning for hostile guest or client input (DESIGN §3.8): at
 * most a few lines per second per call site; the rest are only counted. */
#define log_ratelimited(...) do { \
		static struct log_ratelimit rl__; \
		if (log_ratelimit_ok(&rl__)) log_warn(__VA_ARGS__); \
	} while (0)

struct log_ratelimit { long window; unsigned int count; };
bool log_ratelimit_ok(struct log_ratelimit *rl);

/* Thread-local last error message. err_set() returns -errnum so that callers
 * can write `return err_set(-EINVAL, "bad size %s", s);`; err_get() may be
 * one of its arguments, to prefix the message: `err_set(ret, "disk %s: %s",
 * path, err_get())`. */
int err_set(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *err_get(void);
void err_clear(void);

#endif

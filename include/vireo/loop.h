/* The event loop (src/util/loop.c): one epoll set, one callback per fd.
 * Runs on the VMM's main thread and owns the devices' host side. */
#ifndef VIREO_LOOP_H
#define VIREO_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct loop;
typedef void (*loop_fn)(struct loop *loop, int fd, uint32_t events, void *opaque);

struct loop *loop_create(void);
void loop_destroy(struct loop *loop);
/* events: EPOLLIN etc. Returns 0 or -errno. */
int loop_add(struct loop *loop, int fd, uint32_t events, loop_fn fn, void *opaque);
int loop_del(struct loop *loop, int fd);
/* Dispatches until loop_stop(); returns 0 or -errno on an epoll failure. */
int loop_run(struct loop *loop);
void loop_stop(struct loop *loop);

#endif

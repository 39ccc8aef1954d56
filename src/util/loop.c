#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "vireo/loop.h"

struct loop_handler {
	int fd;
	loop_fn fn;
	void *opaque;
	struct loop_handler *next;
};

struct loop {
	int epfd;
	bool stopping;
	struct loop_handler *handlers;
};

struct loop *loop_create(void)
{
	struct loop *loop = calloc(1, sizeof(*loop));

	if (!loop)
		return NULL;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		free(loop);
		return NULL;
	}
	return loop;
}

void loop_destroy(struct loop *loop)
{
	if (!loop)
		return;
	while (loop->handlers) {
		struct loop_handler *h = loop->handlers;

		loop->handlers = h->next;
		free(h);
	}
	close(loop->epfd);
	free(loop);
}

int loop_add(struct loop *loop, int fd, uint32_t events, loop_fn fn, void *opaque)
{
	struct loop_handler *h = calloc(1, sizeof(*h));
	struct epoll_event ev = { .events = events };

	if (!h)
		return -ENOMEM;
	*h = (struct loop_handler){ fd, fn, opaque, loop->handlers };
	ev.data.ptr = h;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int ret = -errno;

		free(h);
		return ret;
	}
	loop->handlers = h;
	return 0;
}

int loop_del(struct loop *loop, int fd)
{
	for (struct loop_handler **p = &loop->handlers; *p; p = &(*p)->next) {
		if ((*p)->fd == fd) {
			struct loop_handler *h = *p;

			epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
			/* Deferred free would be needed if a callback deleted a
			 * handler still pending in this batch; callbacks only
			 * delete their own fd, whose event was already taken. */
			h->fn = NULL;
			*p = h->next;
			free(h);
			return 0;
		}
	}
	return -ENOENT;
}

int loop_run(struct loop *loop)
{
	struct epoll_event events[16];

	loop->stopping = false;
	while (!loop->stopping) {
		int n = epoll_wait(loop->epfd, events, 16, -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < n && !loop->stopping; i++) {
			struct loop_handler *h = events[i].data.ptr;

			h->fn(loop, h->fd, events[i].events, h->opaque);
		}
	}
	return 0;
}

void loop_stop(struct loop *loop)
{
	loop->stopping = true;
}

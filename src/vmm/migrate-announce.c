/* Live migration, after the switch (include/vireo/migrate.h): the
 * destination tells the network where the VM is now. Bridges and switches
 * still send its MAC to the source's port until they see a frame from it
 * on the new one; an idle guest may send none for minutes. So, as QEMU's
 * qemu_announce_self does, each vNIC sends a RARP frame at once and a few
 * more at growing gaps (one can be lost while a port comes up). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/loop.h"
#include "vireo/migrate.h"
#include "vireo/virtio.h"

/* QEMU's defaults (announce-initial 50 ms, -step 100 ms, -rounds 5). */
#define ANNOUNCE_ROUNDS 5
#define ANNOUNCE_FIRST_MS 50
#define ANNOUNCE_STEP_MS 100

struct migrate_announce {
	struct virtio_net *const *nics;
	unsigned int nnics, round;
	int timer;
};

static void announce_round(struct migrate_announce *a)
{
	for (unsigned int i = 0; i < a->nnics; i++)
		if (virtio_net_announce(a->nics[i]))
			log_warn("%s", err_get()); /* a full tap queue: the next round */
	a->round++;
}

static int arm(struct migrate_announce *a)
{
	long ms = ANNOUNCE_FIRST_MS + (long)(a->round - 1) * ANNOUNCE_STEP_MS;
	struct itimerspec t = { .it_value = { ms / 1000, ms % 1000 * 1000000L } };

	return timerfd_settime(a->timer, 0, &t, NULL) < 0 ? -errno : 0;
}

static void announce_due(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct migrate_announce *a = opaque;
	uint64_t n;

	(void)events;
	if (read(fd, &n, sizeof(n)) < 0 && errno == EAGAIN)
		return;
	announce_round(a);
	if (a->round < ANNOUNCE_ROUNDS && !arm(a))
		return;
	loop_del(loop, fd);
	close(fd);
	free(a);
}

int migrate_announce_start(struct loop *loop, struct virtio_net *const *nics,
			   unsigned int nnics)
{
	struct migrate_announce *a;
	int ret;

	if (!nnics)
		return 0;
	a = calloc(1, sizeof(*a));
	if (!a)
		return err_set(-ENOMEM, "out of memory");
	*a = (struct migrate_announce){ .nics = nics, .nnics = nnics };
	announce_round(a);
	a->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	ret = a->timer < 0 ? -errno : arm(a);
	if (!ret)
		ret = loop_add(loop, a->timer, EPOLLIN, announce_due, a);
	if (ret) {
		if (a->timer >= 0)
			close(a->timer);
		free(a);
		return err_set(ret, "announcing the vNICs: %s", strerror(-ret));
	}
	return 0;
}

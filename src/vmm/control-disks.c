/* The control socket's disk snapshots: qcow2 internal snapshots of the
 * disks a VMM holds open (it is their only writer, so the daemon asks it).
 * A paused VM's disks change only by requests already queued; each step
 * runs under the image's lock, between two of them. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/block.h"
#include "vireo/control.h"
#include "vireo/log.h"
#include "vireo/virtio.h"

/* The writable top image of disk i, or NULL. */
static struct image *disk_image(const struct control_target *t, unsigned int i)
{
	struct blockdev *bd = virtio_blk_blockdev(t->disks[i]);

	return blockdev_readonly(bd) ? NULL : blockdev_image(bd);
}

/* Whether img has a snapshot named exactly `name` (the format's own
 * lookup would match an id too). Under img->lock. */
static int has_snapshot(struct image *img, const char *name, bool *has)
{
	struct image_snapshot *sn = NULL;
	size_t n = 0;
	int ret = img->fmt->snapshot_list(img, &sn, &n);

	*has = false;
	for (size_t i = 0; !ret && i < n; i++)
		*has |= !strcmp(sn[i].name, name);
	free(sn);
	return ret;
}

static int disk_snapshot(struct image *img, const char *name, bool del, const char *path)
{
	bool has = false;
	int ret;

	if (!img->fmt->snapshot_list || !img->fmt->snapshot_create || !img->fmt->snapshot_delete)
		return del ? 0 : err_set(-ENOTSUP, "disk %s is %s, which has no internal snapshots",
					 path, img->fmt->name);
	pthread_mutex_lock(&img->lock);
	ret = has_snapshot(img, name, &has);
	if (!ret && !del && has)
		ret = err_set(-EEXIST, "disk %s already has an internal snapshot '%s'", path, name);
	else if (!ret && !del)
		ret = img->fmt->snapshot_create(img, name);
	else if (!ret && has)
		ret = img->fmt->snapshot_delete(img, name);
	pthread_mutex_unlock(&img->lock);
	if (ret && ret != -EEXIST)
		ret = err_set(ret, "disk %s: %s", path, err_get());
	return ret;
}

int control_disks_snapshot(const struct control_target *t, const char *name, bool del)
{
	unsigned int i;
	int ret = 0;

	for (i = 0; i < t->ndisks && !ret; i++) {
		struct image *img = disk_image(t, i);

		if (img && !del)
			ret = blockdev_flush(virtio_blk_blockdev(t->disks[i]));
		if (img && !ret)
			ret = disk_snapshot(img, name, del, t->disk_paths ? t->disk_paths[i] : "?");
	}
	/* All or none. */
	while (ret && !del && --i > 0) {
		struct image *img = disk_image(t, i - 1);

		if (img)
			disk_snapshot(img, name, true, "");
	}
	return ret;
}

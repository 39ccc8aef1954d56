/* Storage the operator named (`vireo daemon --storage DIR`, docs/api.md):
 * every disk of a VM and every file of its backing chain must lie in one of
 * those directories, and a VMM that runs as its own uid gets access to
 * exactly its VM's files, for its lifetime, through POSIX ACL entries
 * (libvirt's DAC relabelling, without changing owners: a backing file
 * shared by several VMs carries one entry per VMM uid). The VMM itself
 * opens the files as that uid (`vireo run --storage --user`).
 *
 * DIR/run/NAME.grants records what was granted, before it is: the entries
 * are removed when the VMM ends, by this daemon or the next one. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/log.h"
#include "vireo/mgr.h"

/* ---- POSIX access ACLs, as the kernel stores them (little-endian) ---- */

#define ACL_XATTR "system.posix_acl_access"
enum { ACL_USER_OBJ = 1, ACL_USER = 2, ACL_GROUP_OBJ = 4, ACL_GROUP = 8, ACL_MASK = 0x10,
       ACL_OTHER = 0x20 };
#define ACL_MAX 64

struct acl_entry {
	uint16_t tag, perm;
	uint32_t id;
};

struct acl {
	uint32_t version;		/* 2 */
	struct acl_entry e[ACL_MAX];
};

/* The file's ACL, or the three entries its mode stands for. */
static int acl_read(int fd, struct acl *a, int *n)
{
	ssize_t len = fgetxattr(fd, ACL_XATTR, a, sizeof(*a));
	struct stat st;

	if (len >= 4) {
		*n = (int)((size_t)(len - 4) / sizeof(struct acl_entry));
		return 0;
	}
	if ((len >= 0 || errno != ENODATA) || fstat(fd, &st) < 0)
		return len >= 0 ? -EINVAL : -errno;
	a->version = 2;
	a->e[0] = (struct acl_entry){ ACL_USER_OBJ, (st.st_mode >> 6) & 7, (uint32_t)-1 };
	a->e[1] = (struct acl_entry){ ACL_GROUP_OBJ, (st.st_mode >> 3) & 7, (uint32_t)-1 };
	a->e[2] = (struct acl_entry){ ACL_OTHER, st.st_mode & 7, (uint32_t)-1 };
	*n = 3;
	return 0;
}

static int acl_cmp(const void *a, const void *b)
{
	const struct acl_entry *x = a, *y = b;

	return x->tag != y->tag ? x->tag - y->tag : (x->id > y->id) - (x->id < y->id);
}

/* Without named entries the ACL is the mode again: drop it and give the
 * group bits back their own permissions (the mask had taken their place). */
static int acl_drop(int fd, const struct acl *a, int n)
{
	struct stat st;

	if (fremovexattr(fd, ACL_XATTR) < 0 && errno != ENODATA)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	for (int i = 0; i < n; i++)
		if (a->e[i].tag == ACL_GROUP_OBJ)
			st.st_mode = (st.st_mode & ~(mode_t)070) | (mode_t)(a->e[i].perm << 3);
	return fchmod(fd, st.st_mode & 07777) < 0 ? -errno : 0;
}

/* Sets uid's named entry to perm (0: removes it), keeping the mask the
 * union of the group class, as the kernel requires. */
static int acl_set_user(const char *path, unsigned int uid, unsigned int perm)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC), n = 0, k = 0, ret;
	unsigned int mask = 0, named = 0;
	struct acl a;

	if (fd < 0)
		return -errno;
	ret = acl_read(fd, &a, &n);
	for (int i = 0; !ret && i < n; i++)
		if (!((a.e[i].tag == ACL_USER && a.e[i].id == uid) || a.e[i].tag == ACL_MASK))
			a.e[k++] = a.e[i];
	if (!ret && perm && k < ACL_MAX - 1)
		a.e[k++] = (struct acl_entry){ ACL_USER, (uint16_t)perm, uid };
	for (int i = 0; !ret && i < k; i++) {
		named += a.e[i].tag == ACL_USER || a.e[i].tag == ACL_GROUP;
		if (a.e[i].tag & (ACL_USER | ACL_GROUP | ACL_GROUP_OBJ))
			mask |= a.e[i].perm;
	}
	if (!ret && !named) {
		ret = acl_drop(fd, &a, k);
	} else if (!ret) {
		a.e[k++] = (struct acl_entry){ ACL_MASK, (uint16_t)mask, (uint32_t)-1 };
		qsort(a.e, (size_t)k, sizeof(a.e[0]), acl_cmp);
		if (fsetxattr(fd, ACL_XATTR, &a, 4 + (size_t)k * sizeof(a.e[0]), 0) < 0)
			ret = -errno;
	}
	close(fd);
	return ret;
}

/* ---- the files of a VM's disks ---- */

struct grant {
	unsigned int perm;		/* 1 search (directories), 4 read, 6 read-write */
	char *path;
};

struct grants {
	struct grant *g;
	size_t n;
	bool writable;			/* the disk being walked */
	int err;
};

static void grants_add(struct grants *gs, const char *path, unsigned int perm)
{
	struct grant *g;

	for (size_t i = 0; i < gs->n; i++)
		if (!strcmp(gs->g[i].path, path)) {
			gs->g[i].perm |= perm;
			return;
		}
	g = realloc(gs->g, (gs->n + 1) * sizeof(*g));
	if (!g || !(path = strdup(path))) {
		gs->err = -ENOMEM;
		if (g)
			gs->g = g;
		return;
	}
	gs->g = g;
	g[gs->n++] = (struct grant){ perm, (char *)path };
}

static void grants_free(struct grants *gs)
{
	for (size_t i = 0; i < gs->n; i++)
		free(gs->g[i].path);
	free(gs->g);
}

struct walk {
	struct mgr *m;
	struct grants *gs;
};

/* block_policy.seen: the file, and search on each directory between it and
 * its storage directory (the VMM opens beneath the storage directory, so
 * the directories above it need nothing). */
static void walk_seen(void *ctx, const char *real, int depth)
{
	struct walk *w = ctx;
	char dir[PATH_MAX];

	grants_add(w->gs, real, depth == 0 && w->gs->writable ? 6 : 4);
	snprintf(dir, sizeof(dir), "%s", real);
	for (char *slash = strrchr(dir, '/'); slash && slash != dir; slash = strrchr(dir, '/')) {
		bool storage = false;

		*slash = '\0';
		for (unsigned int i = 0; i < w->m->nstorage; i++)
			storage |= !strcmp(dir, w->m->storage[i]);
		grants_add(w->gs, dir, 1);
		if (storage)
			break;
	}
}

/* Opens every disk's chain under the storage policy (read-only, as the
 * daemon); gs (may be NULL) collects its files. */
static int walk_disks(struct mgr *m, const struct vm_def *def, struct grants *gs)
{
	struct walk w = { m, gs };
	struct block_policy p = { .dirs = (const char *const *)m->storage, .ndirs = m->nstorage,
				  .seen = gs ? walk_seen : NULL, .ctx = &w };
	int ret = 0;

	for (unsigned int i = 0; i < def->ndisks && !ret; i++) {
		struct image *img;

		if (gs)
			gs->writable = !def->disks[i].readonly;
		ret = image_open_policy(def->disks[i].path, def->disks[i].format, 0, &p, &img);
		if (!ret)
			image_close(img);
		else if (ret == -EPERM)
			ret = err_set(ret, "disk %u: %s", i, err_get());
		else
			ret = 0;	/* missing, broken: the VMM says so when it starts */
	}
	return ret ? ret : gs ? gs->err : 0;
}

int storage_check(struct mgr *m, const struct vm_def *def)
{
	return walk_disks(m, def, NULL);
}

/* ---- grants and their record ---- */

static int grants_path(struct mgr *m, const char *name, char *buf, size_t size)
{
	return store_path(m, buf, size, "run", name, ".grants");
}

/* "UID PERM PATH\0" per entry, on disk before the first ACL changes. */
static int grants_record(struct mgr *m, const char *name, const struct grants *gs,
			 unsigned int uid)
{
	char path[PATH_MAX];
	FILE *f;
	int ret = grants_path(m, name, path, sizeof(path));

	if (ret)
		return ret;
	f = fopen(path, "we");
	if (!f)
		return err_set(-errno, "cannot create %s: %m", path);
	for (size_t i = 0; i < gs->n; i++)
		fprintf(f, "%u %u %s%c", uid, gs->g[i].perm, gs->g[i].path, '\0');
	ret = fflush(f) || fsync(fileno(f)) ? err_set(-errno, "cannot write %s: %m", path) : 0;
	fclose(f);
	return ret;
}

void storage_revoke(struct mgr *m, const char *name)
{
	char path[PATH_MAX], *buf = NULL;
	size_t cap = 0;
	FILE *f;

	if (grants_path(m, name, path, sizeof(path)) || !(f = fopen(path, "re")))
		return;
	while (getdelim(&buf, &cap, '\0', f) > 0) {
		unsigned int uid, perm;
		int off = 0, ret;

		if (sscanf(buf, "%u %u %n", &uid, &perm, &off) != 2 || !off || !uid)
			continue;
		ret = acl_set_user(buf + off, uid, 0);
		if (ret && ret != -ENOENT)
			log_warn("VM %s: cannot take back uid %u's access to %s: %s", name, uid,
				 buf + off, strerror(-ret));
	}
	free(buf);
	fclose(f);
	unlink(path);
}

int storage_grant(struct mgr *m, const struct vm_def *def, unsigned int uid)
{
	struct grants gs = { 0 };
	int ret;

	storage_revoke(m, def->name);	/* a previous VMM's, if it was never taken back */
	ret = walk_disks(m, def, &gs);
	if (!ret)
		ret = grants_record(m, def->name, &gs, uid);
	for (size_t i = 0; !ret && i < gs.n; i++) {
		ret = acl_set_user(gs.g[i].path, uid, gs.g[i].perm);
		if (ret)
			ret = err_set(ret, "cannot give uid %u access to %s: %s", uid, gs.g[i].path,
				      strerror(-ret));
	}
	grants_free(&gs);
	if (ret)
		storage_revoke(m, def->name);
	return ret;
}

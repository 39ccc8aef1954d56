/* The storage policy (include/vireo/block.h): every file of an image chain
 * resolved inside an allowed directory, opened beneath it with openat2
 * (RESOLVE_BENEATH), as the VM's user when asked, and only if it is a
 * regular file or a block device. QEMU-style backing names are hostile
 * input (issue 10: a backing file "/etc/shadow" was opened by a root VMM),
 * so the check is on the path the kernel opens, not on the name. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/log.h"

int block_storage_dir(const char *dir, char **out)
{
	char real[PATH_MAX];
	struct stat st;

	if (!realpath(dir, real) || stat(real, &st) < 0)
		return err_set(-errno, "storage directory %s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return err_set(-ENOTDIR, "storage directory %s: not a directory", dir);
	*out = strdup(real);
	return *out ? 0 : err_set(-ENOMEM, "out of memory");
}

/* Length of dir as a prefix of real ("/" counts 0), or -1 if real is not
 * dir itself or below it. */
static int dir_prefix(const char *dir, const char *real)
{
	size_t n = strcmp(dir, "/") ? strlen(dir) : 0;

	if (strncmp(real, dir, n) || (real[n] != '/' && real[n] != '\0'))
		return -1;
	return (int)n;
}

static int refuse(const struct block_policy *p, const char *path, const char *real)
{
	char dirs[512] = "";
	size_t n = 0;

	for (unsigned int i = 0; i < p->ndirs && n < sizeof(dirs); i++)
		n += (size_t)snprintf(dirs + n, sizeof(dirs) - n, "%s%s", i ? ", " : "", p->dirs[i]);
	if (strcmp(path, real))
		return err_set(-EPERM, "%s (%s): outside the storage directories (%s)", path, real,
			       dirs);
	return err_set(-EPERM, "%s: outside the storage directories (%s)", path, dirs);
}

/* Opens real (which lies in the directory dfd) from that descriptor:
 * nothing in the path can lead out of it any more, whatever was swapped in
 * since the check. Returns the fd or -errno. */
static int open_beneath(int dfd, int prefix, const char *real, int oflags)
{
	struct open_how how = { .flags = (uint64_t)oflags,
				.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS };
	const char *rel = real[prefix] ? real + prefix + 1 : ".";
	int fd = (int)syscall(SYS_openat2, dfd, rel, &how, sizeof(how));

	return fd < 0 ? -errno : fd;
}

/* The open itself, with the thread's filesystem ids switched to the
 * user's for its duration (setfsuid is per thread). The storage directory
 * is opened before, with our own rights: the user needs search permission
 * below it only, not on the directories above it. */
static int open_as(const struct block_policy *p, const char *dir, int prefix, const char *real,
		   int oflags)
{
	int old_uid = 0, old_gid = 0, fd, dfd = -1;

	if (dir && (dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
		return -errno;
	if (p->as_user) {
		old_gid = setfsgid(p->gid);
		old_uid = setfsuid(p->uid);
	}
	if (p->as_user && (setfsuid((uid_t)-1) != (int)p->uid || setfsgid((gid_t)-1) != (int)p->gid))
		fd = -EPERM;
	else if (dir)
		fd = open_beneath(dfd, prefix, real, oflags);
	else if ((fd = open(real, oflags)) < 0)
		fd = -errno;
	if (p->as_user) {
		setfsuid((uid_t)old_uid);
		setfsgid((gid_t)old_gid);
	}
	if (dfd >= 0)
		close(dfd);
	return fd;
}

/* An image is a file or a disk: a FIFO or a device must not block or
 * surprise the reader (opened O_NONBLOCK, which is then cleared). */
static int check_type(int fd, const char *path)
{
	struct stat st;
	int fl;

	if (fstat(fd, &st) < 0)
		return err_set(-errno, "%s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return err_set(-EPERM, "%s: not a regular file or block device", path);
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return err_set(-errno, "%s: %s", path, strerror(errno));
	return 0;
}

int block_policy_open(const struct block_policy *p, const char *path, int oflags, int depth,
		      int *out)
{
	char real[PATH_MAX];
	const char *dir = NULL;
	int prefix = -1, fd, ret;

	if (oflags & O_CREAT)
		return err_set(-EINVAL, "%s: files are not created under a storage policy", path);
	if (!realpath(path, real))
		return err_set(-errno, "%s: %s", path, strerror(errno));
	for (unsigned int i = 0; i < p->ndirs && prefix < 0; i++)
		if ((prefix = dir_prefix(p->dirs[i], real)) >= 0)
			dir = p->dirs[i];
	if (p->ndirs && !dir)
		return refuse(p, path, real);
	fd = open_as(p, dir, prefix, real, oflags | O_NONBLOCK | O_CLOEXEC);
	if (fd == -EXDEV || fd == -ELOOP)	/* RESOLVE_BENEATH: moved out since */
		return refuse(p, path, real);
	if (fd < 0)
		return err_set(fd, "%s: %s%s", path, strerror(-fd),
			       p->as_user && (fd == -EACCES || fd == -EPERM) ?
			       " (opened as the VM's user: see docs/api.md, storage)" : "");
	ret = check_type(fd, path);
	if (ret) {
		close(fd);
		return ret;
	}
	if (p->seen)
		p->seen(p->ctx, real, depth);
	*out = fd;
	return 0;
}

/* Opening files from outside without blocking on them (include/vireo/fileopen.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/fileopen.h"
#include "vireo/log.h"

static const char *type_name(mode_t mode)
{
	if (S_ISFIFO(mode))
		return "a FIFO";
	if (S_ISDIR(mode))
		return "a directory";
	if (S_ISSOCK(mode))
		return "a socket";
	if (S_ISCHR(mode))
		return "a character device";
	if (S_ISBLK(mode))
		return "a block device";
	return "not a regular file";
}

static bool type_ok(mode_t mode, unsigned int types)
{
	return ((types & FILE_REG) && S_ISREG(mode)) || ((types & FILE_BLK) && S_ISBLK(mode));
}

static int type_error(const char *path, const char *what, mode_t mode, unsigned int types)
{
	return err_set(-EINVAL, "%s%s%s is %s, not %s", what ? what : "", what ? " " : "", path,
		       type_name(mode), types & FILE_BLK ? "a regular file or a block device" :
		       "a regular file");
}

int file_open_checked(const char *path, int flags, mode_t mode, const char *what,
		      unsigned int types)
{
	struct stat st;
	int fd, ret;

	fd = open(path, flags | O_NONBLOCK | O_CLOEXEC, mode);
	if (fd < 0)
		return err_set(-errno, "%s%s%s: %m", what ? what : "", what ? " " : "", path);
	if (fstat(fd, &st) < 0) {
		ret = err_set(-errno, "%s: %m", path);
		goto fail;
	}
	if (!type_ok(st.st_mode, types)) {
		ret = type_error(path, what, st.st_mode, types);
		goto fail;
	}
	/* Regular files and block devices ignore O_NONBLOCK; cleared anyway,
	 * so that the descriptor is what a plain open() would give. */
	if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		ret = err_set(-errno, "%s: %m", path);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return ret;
}

int file_check_path(const char *path, const char *what, unsigned int types)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return err_set(-errno, "%s%s%s: %m", what ? what : "", what ? " " : "", path);
	return type_ok(st.st_mode, types) ? 0 : type_error(path, what, st.st_mode, types);
}

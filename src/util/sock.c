/* Listening Unix sockets that appear only once they accept (vireo/sock.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/sock.h"

#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path))

/* A temporary name beside path: "DIR/.NAME.PID.N~", or, when that would not
 * fit in sun_path, the shorter "DIR/.PID.N~". */
static int temp_name(const char *path, char *tmp, size_t len)
{
	static unsigned int serial;
	const char *slash = strrchr(path, '/');
	int dir_len = slash ? (int)(slash - path + 1) : 0;
	unsigned int n = __atomic_add_fetch(&serial, 1, __ATOMIC_RELAXED);
	int w;

	w = snprintf(tmp, len, "%.*s.%s.%d.%u~", dir_len, path, path + dir_len, (int)getpid(), n);
	if (w > 0 && (size_t)w < len)
		return 0;
	w = snprintf(tmp, len, "%.*s.%d.%u~", dir_len, path, (int)getpid(), n);
	return w > 0 && (size_t)w < len ? 0 : -ENAMETOOLONG;
}

/* Refuses to replace anything at path but a socket. */
static int check_target(const char *path)
{
	struct stat st;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : err_set(-errno, "%s: %m", path);
	if (!S_ISSOCK(st.st_mode))
		return err_set(-EEXIST, "%s exists and is not a socket", path);
	return 0;
}

int unix_listen(const char *path, int backlog, mode_t mode, int nonblock)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, ret;

	if (strlen(path) >= SUN_PATH_MAX)
		return err_set(-ENAMETOOLONG, "%s: socket path longer than %zu bytes", path,
			       SUN_PATH_MAX - 1);
	ret = check_target(path);
	if (ret)
		return ret;
	if (temp_name(path, addr.sun_path, sizeof(addr.sun_path)))
		return err_set(-ENAMETOOLONG, "%s: no room for a temporary socket name", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		return err_set(-errno, "socket: %m");
	unlink(addr.sun_path); /* a leftover of a crashed process with our pid */
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		ret = err_set(-errno, "cannot bind %s: %m", path);
		goto close_fd;
	}
	if (chmod(addr.sun_path, mode) < 0 || listen(fd, backlog) < 0) {
		ret = err_set(-errno, "cannot listen on %s: %m", path);
		goto unlink_tmp;
	}
	if (rename(addr.sun_path, path) < 0) {
		ret = err_set(-errno, "cannot create %s: %m", path);
		goto unlink_tmp;
	}
	return fd;
unlink_tmp:
	unlink(addr.sun_path);
close_fd:
	close(fd);
	return ret;
}

void unix_unlink(const char *path)
{
	struct stat st;

	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
}

/* The state directory (layout in include/vireo/mgr.h). Every file is
 * written whole to NAME.tmp, fsynced, and renamed over the old one, and the
 * directory is fsynced: a crash leaves the old or the new file, never half
 * of one. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/fileopen.h"
#include "vireo/log.h"
#include "vireo/mgr.h"

int store_path(const struct mgr *m, char *buf, size_t size, const char *sub,
	       const char *name, const char *ext)
{
	int n = snprintf(buf, size, "%s/%s%s%s%s", m->state_dir, sub, name ? "/" : "",
			 name ? name : "", ext ? ext : "");

	if (n < 0 || (size_t)n >= size)
		return err_set(-ENAMETOOLONG, "state path too long");
	return 0;
}

static int fsync_dir_of(const char *path)
{
	char dir[PATH_MAX];
	char *slash;
	int fd;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*slash = '\0';
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	fsync(fd);
	close(fd);
	return 0;
}

int store_write_file(const char *path, const char *data, size_t len)
{
	char tmp[PATH_MAX + 8];
	int fd, ret = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	unlink(tmp);	/* a leftover, or something planted: never written through */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(-errno, "cannot create %s: %m", tmp);
	for (size_t off = 0; off < len && !ret; ) {
		ssize_t w = write(fd, data + off, len - off);

		if (w < 0 && errno != EINTR)
			ret = err_set(-errno, "cannot write %s: %m", tmp);
		else if (w > 0)
			off += (size_t)w;
	}
	if (!ret && fsync(fd) < 0)
		ret = err_set(-errno, "cannot write %s: %m", tmp);
	close(fd);
	if (!ret && rename(tmp, path) < 0)
		ret = err_set(-errno, "cannot rename %s: %m", tmp);
	if (ret)
		unlink(tmp);
	else
		fsync_dir_of(path);
	return ret;
}

int store_write_json(const char *path, struct json_object *obj)
{
	size_t len;
	const char *text = json_object_to_json_string_length(obj, JSON_C_TO_STRING_PRETTY |
							     JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	char *line = malloc(len + 1);
	int ret;

	if (!line)
		return err_set(-ENOMEM, "%s: out of memory", path);
	memcpy(line, text, len);
	line[len] = '\n';
	ret = store_write_file(path, line, len + 1);
	free(line);
	return ret;
}

struct json_object *store_read_json(const char *path)
{
	/* Checked before it is read: a FIFO here would block the daemon. */
	int fd = file_open_checked(path, O_RDONLY, 0, NULL, FILE_REG);
	struct json_object *obj;

	if (fd < 0)
		return NULL;
	obj = json_object_from_fd(fd);
	close(fd);
	if (!obj)
		err_set(-EINVAL, "cannot read %s: %s", path, json_util_get_last_err());
	return obj;
}

int store_save_def(struct mgr *m, const struct vm_def *def)
{
	char path[PATH_MAX];
	struct json_object *obj;
	int ret = store_path(m, path, sizeof(path), "vms", def->name, ".json");

	if (ret)
		return ret;
	obj = vm_def_to_json(def);
	ret = store_write_json(path, obj);
	json_object_put(obj);
	return ret;
}

int store_save_run(struct mgr *m, const struct mgr_vm *vm)
{
	char path[PATH_MAX];
	struct json_object *obj;
	int ret = store_path(m, path, sizeof(path), "run", vm->def.name, ".json");

	if (ret)
		return ret;
	obj = json_object_new_object();
	json_object_object_add(obj, "state", json_object_new_string(mgr_state_name(vm->state)));
	json_object_object_add(obj, "reason", json_object_new_string(vm->reason));
	json_object_object_add(obj, "pid", json_object_new_int(vm->pid));
	json_object_object_add(obj, "starttime", json_object_new_int64((int64_t)vm->starttime));
	json_object_object_add(obj, "vmm_uid", json_object_new_int64(vm->vmm_uid));
	if (vm->state == MGR_STOPPING) {
		json_object_object_add(obj, "stop_deadline_ms",
				       json_object_new_uint64(vm->stop_deadline_ms));
		json_object_object_add(obj, "stop_timeout_s", json_object_new_int((int)vm->stop_timeout_s));
	}
	ret = store_write_json(path, obj);
	json_object_put(obj);
	return ret;
}

static int copy_fd(int in, int out)
{
	char buf[65536];
	ssize_t n;

	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			return -1;
	return n < 0 ? -1 : 0;
}

/* Copy-truncate (as logrotate's copytruncate): the VMM keeps writing to
 * its O_APPEND descriptor, which lands at the start of the emptied file.
 * Output written between the copy and the truncation is lost; one old
 * generation is kept. */
void store_rotate_log(struct mgr *m, const char *name)
{
	char path[PATH_MAX], old[PATH_MAX];
	struct stat st;
	int in, out = -1;

	if (!m->log_max || store_path(m, path, sizeof(path), "logs", name, ".log") ||
	    store_path(m, old, sizeof(old), "logs", name, ".log.1") ||
	    stat(path, &st) || (uint64_t)st.st_size <= m->log_max)
		return;
	in = open(path, O_RDWR | O_CLOEXEC);
	if (in >= 0)
		out = open(old, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out >= 0 && copy_fd(in, out) == 0 && ftruncate(in, 0) == 0)
		log_info("VM %s: log rotated at %lld bytes", name, (long long)st.st_size);
	else
		log_warn("VM %s: cannot rotate %s: %s", name, path, strerror(errno));
	if (out >= 0)
		close(out);
	if (in >= 0)
		close(in);
}

/* DIR/run/NAME.lock: an OFD write lock on the whole file, taken before
 * the VMM is forked and held through the descriptor the VMM inherits, for
 * as long as it lives. OFD locks belong to the open file, so a second open
 * in this process conflicts too, and the lock goes only with the last
 * process holding it: the daemon, a child not yet exec'd, or the VMM. */
int store_lock_vm(struct mgr *m, const char *name, int *out)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	char path[PATH_MAX];
	int fd, ret = store_path(m, path, sizeof(path), "run", name, ".lock");

	if (ret)
		return ret;
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(-errno, "cannot open %s: %m", path);
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
		ret = errno == EAGAIN || errno == EACCES ?
		      err_set(-EBUSY, "a VMM of VM '%s' still runs (it holds %s)", name, path) :
		      err_set(-errno, "cannot lock %s: %m", path);
		close(fd);
		return ret;
	}
	*out = fd;
	return 0;
}

bool store_vm_locked(struct mgr *m, const char *name)
{
	int fd, ret = store_lock_vm(m, name, &fd);

	if (!ret)
		close(fd);
	return ret == -EBUSY;
}

void store_remove(struct mgr *m, const char *name)
{
	static const char *const files[][2] = {
		{ "vms", ".json" }, { "run", ".json" }, { "run", ".sock" }, { "logs", ".log" },
		{ "logs", ".log.1" },
	};
	char path[PATH_MAX];

	int lock;

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		if (!store_path(m, path, sizeof(path), files[i][0], name, files[i][1]))
			unlink(path);
	/* The lock file only when no VMM holds it: a new one, on a new file,
	 * would not see a VMM still holding the old one. */
	if (!store_lock_vm(m, name, &lock) &&
	    !store_path(m, path, sizeof(path), "run", name, ".lock")) {
		unlink(path);
		close(lock);
	}
}

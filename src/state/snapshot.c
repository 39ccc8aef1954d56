/* Whole-VM snapshots: the state file and the memory file of a paused VM,
 * and their restore into a freshly built one (include/vireo/state.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vireo/acpipm.h"
#include "vireo/firmware.h"
#include "vireo/ged.h"
#include "vireo/log.h"
#include "vireo/rtc.h"
#include "vireo/machine.h"
#include "vireo/serial.h"
#include "vireo/state.h"
#include "vireo/virtio.h"
#include "vireo/vmm.h"
#include "snapshot-int.h"

#define STATE_NAME "state"
#define MEMORY_NAME "memory"

static int path_in(char *out, size_t size, const char *dir, const char *name)
{
	if ((size_t)snprintf(out, size, "%s/%s", dir, name) >= size)
		return err_set(-ENAMETOOLONG, "snapshot directory path too long");
	return 0;
}

/* STATE_SEC_MEMORY: u64 RAM bytes, u32 regions, then (u64 gpa, u64 size,
 * u64 file offset) each. */
static void memory_save_layout(const struct guest_memory *mem, struct state_writer *w)
{
	state_begin(w, STATE_SEC_MEMORY, 0, STATE_SECTION_CRITICAL);
	state_put_u64(w, mem->size);
	state_put_u32(w, mem->nregions);
	for (unsigned int i = 0; i < mem->nregions; i++) {
		state_put_u64(w, mem->regions[i].gpa);
		state_put_u64(w, mem->regions[i].size);
		state_put_u64(w, mem->regions[i].offset);
	}
	state_end(w);
}

/* The layout must be the one this build gives a guest of that size. */
static int memory_check_layout(const struct state_reader *r, const struct guest_memory *mem)
{
	struct state_cursor c;
	int ret = state_section(r, STATE_SEC_MEMORY, 0, &c);
	bool same;

	if (ret)
		return ret;
	same = state_get_u64(&c) == mem->size && state_get_u32(&c) == mem->nregions;
	for (unsigned int i = 0; same && i < mem->nregions; i++)
		same = state_get_u64(&c) == mem->regions[i].gpa &&
		       state_get_u64(&c) == mem->regions[i].size &&
		       state_get_u64(&c) == mem->regions[i].offset;
	if (!same)
		return err_set(-EINVAL, "state file: guest memory layout differs from this vireo's");
	return state_done(&c);
}

static int write_all(int fd, const uint8_t *buf, size_t len)
{
	for (size_t off = 0; off < len; ) {
		ssize_t n = pwrite(fd, buf + off, len - off, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return err_set(n < 0 ? -errno : -EIO, "cannot write the state file: %s",
				       n < 0 ? strerror(errno) : "short write");
		off += (size_t)n;
	}
	return 0;
}

static int open_new(const char *dir, const char *name, char *path, size_t size)
{
	int fd, ret = path_in(path, size, dir, name);

	if (ret)
		return ret;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(-errno, "cannot create %s: %m", path);
	return fd;
}

/* Writes `name`.tmp with fill(), syncs it and renames it to `name`. */
static int write_file(const char *dir, const char *name,
		      int (*fill)(int fd, void *opaque), void *opaque)
{
	char tmp[4096], final[4096], tmpname[64];
	int fd, ret;

	snprintf(tmpname, sizeof(tmpname), ".%s.tmp", name);
	fd = open_new(dir, tmpname, tmp, sizeof(tmp));
	if (fd < 0)
		return fd;
	ret = fill(fd, opaque);
	if (!ret && fsync(fd) < 0)
		ret = err_set(-errno, "cannot sync %s: %m", tmp);
	close(fd);
	if (!ret)
		ret = path_in(final, sizeof(final), dir, name);
	if (!ret && rename(tmp, final) < 0)
		ret = err_set(-errno, "cannot rename %s: %m", tmp);
	if (ret)
		unlink(tmp);
	return ret;
}

struct fill_memory {
	const struct snapshot_target *t;
	uint64_t written, pages;
};
struct fill_state { const uint8_t *buf; size_t len; };

static int fill_memory(int fd, void *opaque)
{
	struct fill_memory *f = opaque;

	if (f->t->incremental)
		return snapshot_inc_fill(f->t, fd, &f->written, &f->pages);
	return guest_memory_save(&f->t->vm->mem, fd, &f->written);
}

static int fill_state(int fd, void *opaque)
{
	struct fill_state *f = opaque;

	return write_all(fd, f->buf, f->len);
}

/* A virtio device's section id: its index among those of its kind. */
static uint32_t virtio_index(const struct snapshot_target *t, unsigned int i)
{
	uint32_t id = 0;

	for (unsigned int j = 0; j < i; j++)
		id += t->virtio[j]->ops->state_type == t->virtio[i]->ops->state_type;
	return id;
}

/* Requests in flight finish before anything is saved, and no new one
 * starts until the snapshot is written (nor does a vNIC receive). */
int snapshot_quiesce(const struct snapshot_target *t)
{
	for (unsigned int i = 0; i < t->nvirtio; i++) {
		int ret = virtio_quiesce(t->virtio[i]);

		if (ret) {
			while (i--)
				virtio_unquiesce(t->virtio[i]);
			return ret;
		}
	}
	return 0;
}

void snapshot_unquiesce(const struct snapshot_target *t)
{
	for (unsigned int i = 0; i < t->nvirtio; i++)
		virtio_unquiesce(t->virtio[i]);
}

static int collect_state(const struct snapshot_target *t, struct state_writer *w, uint64_t id)
{
	int ret;

	machine_save(t->machine, w);
	snapshot_inc_sections(t, id, w);
	memory_save_layout(&t->vm->mem, w);
	ret = vm_save_state(t->vm, w);
	if (!ret)
		serial_save(t->serial, w);
	if (!ret)
		ged_save(t->ged, w);
	if (!ret && t->rtc)
		rtc_save(t->rtc, w);
	/* A restore could not build this machine without them. */
	if (!ret && t->machine->firmware && (!t->fw || !t->pm))
		ret = err_set(-EINVAL, "the machine boots through firmware, this VMM has none");
	if (!ret && t->fw)
		ret = firmware_save(t->fw, w);
	if (!ret && t->pm)
		acpipm_save(t->pm, w);
	for (unsigned int i = 0; i < t->nvirtio && !ret; i++)
		virtio_save(t->virtio[i], w, virtio_index(t, i));
	return ret;
}

int snapshot_state_build(const struct snapshot_target *t, struct state_writer **out,
			 const uint8_t **buf, size_t *len)
{
	struct state_header h = { .ncpus = t->vm->ncpus, .mem_size = t->vm->mem.size,
				  .created = (uint64_t)time(NULL) };
	struct state_writer *w;
	int ret;

	*out = NULL;
	w = state_writer_new(&h);
	if (!w)
		return err_set(-ENOMEM, "out of memory");
	ret = collect_state(t, w, snapshot_new_id());
	if (!ret)
		ret = state_writer_finish(w, buf, len);
	if (ret)
		state_writer_free(w);
	else
		*out = w;
	return ret;
}

/* Fills fd (given, not named: nothing to rename) from empty and syncs it. */
static int write_fd(int fd, const char *what, int (*fill)(int fd, void *opaque), void *opaque)
{
	int ret = ftruncate(fd, 0) < 0 ? err_set(-errno, "cannot truncate the %s file: %m", what) :
		  fill(fd, opaque);

	if (!ret && fsync(fd) < 0)
		ret = err_set(-errno, "cannot sync the %s file: %m", what);
	return ret;
}

/* Quiesces the devices, collects the state and writes memory, then state:
 * into files in dir, or (dir NULL) into the given descriptors. */
static int save(const struct snapshot_target *t, const char *dir, int mem_fd, int state_fd,
		struct snapshot_stats *stats)
{
	struct state_header h = { .ncpus = t->vm->ncpus, .mem_size = t->vm->mem.size,
				  .created = (uint64_t)time(NULL) };
	struct fill_memory fm = { .t = t };
	struct fill_state fs;
	struct state_writer *w = NULL;
	uint64_t id = snapshot_new_id();
	int ret = snapshot_quiesce(t);

	if (ret)
		return ret;
	ret = snapshot_inc_prepare(t);
	if (!ret && !(w = state_writer_new(&h)))
		ret = err_set(-ENOMEM, "out of memory");
	if (!ret)
		ret = collect_state(t, w, id);
	if (!ret)
		ret = state_writer_finish(w, &fs.buf, &fs.len);
	/* Memory first: "state" appears only once all of it is on disk. */
	if (!ret)
		ret = dir ? write_file(dir, MEMORY_NAME, fill_memory, &fm) :
		      write_fd(mem_fd, "memory", fill_memory, &fm);
	if (!ret)
		ret = dir ? write_file(dir, STATE_NAME, fill_state, &fs) :
		      write_fd(state_fd, "state", fill_state, &fs);
	if (!ret && stats)
		*stats = (struct snapshot_stats){ .state_bytes = fs.len,
						  .memory_bytes = fm.written, .id = id,
						  .dirty_pages = fm.pages };
	/* The VM's memory is this snapshot's now: the next increment's base. */
	if (!ret)
		snapshot_base_set(t, id, dir);
	snapshot_unquiesce(t);
	state_writer_free(w);
	return ret;
}

int snapshot_save_fds(int mem_fd, int state_fd, const struct snapshot_target *t,
		      struct snapshot_stats *stats)
{
	return save(t, NULL, mem_fd, state_fd, stats);
}

int snapshot_save(const char *dir, const struct snapshot_target *t,
		  struct snapshot_stats *stats)
{
	/* Its files would replace the parent's that it needs. */
	if (t->incremental && t->base && !strcmp(dir, t->base->dir))
		return err_set(-EINVAL, "an incremental snapshot cannot go into the directory of "
			       "its parent (%s)", dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return err_set(-errno, "cannot create %s: %m", dir);
	return save(t, dir, -1, -1, stats);
}

static int open_file(const char *dir, const char *name, int *fd)
{
	char path[4096];
	struct stat st;
	int ret = path_in(path, sizeof(path), dir, name);

	if (ret)
		return ret;
	*fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (*fd < 0)
		return err_set(-errno, "%s: %m", path);
	if (fstat(*fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(*fd);
		*fd = -1;
		return err_set(-EINVAL, "%s: not a regular file", path);
	}
	return 0;
}

int snapshot_check(const char *dir, struct snapshot *s, struct machine_config *m,
		   unsigned int depth)
{
	struct stat st;
	int fd, ret = open_file(dir, STATE_NAME, &fd);

	if (ret)
		return ret;
	/* Its increments name their parents relative to it. */
	if (!realpath(dir, s->dir))
		return err_set(-errno, "%s: %m", dir);
	ret = state_reader_open_fd(fd, &s->r);
	close(fd);
	if (ret)
		return err_set(ret, "%s/%s: %s", dir, STATE_NAME, err_get());
	ret = machine_load(s->r, m);
	if (!ret)
		ret = open_file(dir, MEMORY_NAME, &s->mem_fd);
	if (!ret)
		ret = snapshot_inc_open(s, m, depth);
	if (!ret && !s->bits && fstat(s->mem_fd, &st) == 0 && (uint64_t)st.st_size != m->mem_size)
		ret = err_set(-EINVAL, "%s/%s is %llu bytes, the snapshot's guest has %llu",
			      dir, MEMORY_NAME, (unsigned long long)st.st_size,
			      (unsigned long long)m->mem_size);
	return ret;
}

int snapshot_open(const char *dir, struct snapshot **out, struct machine_config *m)
{
	struct snapshot *s = calloc(1, sizeof(*s));
	int ret;

	*out = NULL;
	if (!s)
		return err_set(-ENOMEM, "out of memory");
	s->mem_fd = -1;
	ret = snapshot_check(dir, s, m, 0);
	if (ret) {
		snapshot_close(s);
		return ret;
	}
	*out = s;
	return 0;
}

int snapshot_open_buffer(const void *state, size_t len, int mem_fd, struct snapshot **out,
			 struct machine_config *m)
{
	struct snapshot *s = calloc(1, sizeof(*s));
	struct stat st;
	int ret;

	*out = NULL;
	if (!s) {
		close(mem_fd);
		return err_set(-ENOMEM, "out of memory");
	}
	s->mem_fd = mem_fd;
	ret = state_reader_open(state, len, &s->r);
	if (!ret)
		ret = machine_load(s->r, m);
	if (!ret && (fstat(mem_fd, &st) < 0 || (uint64_t)st.st_size != m->mem_size))
		ret = err_set(-EINVAL, "the memory received is not the size of the guest's");
	if (ret) {
		snapshot_close(s);
		return ret;
	}
	*out = s;
	return 0;
}

static int rewrite_disks(const struct state_reader *r, struct machine_config *m,
			 const char *const *paths, unsigned int n, const char *dir)
{
	struct state_writer *w;
	struct fill_state fs;
	int ret = machine_load(r, m);

	if (!ret && m->ndisks != n)
		ret = err_set(-EINVAL, "the snapshot's machine has %u disks, not %u", m->ndisks, n);
	for (unsigned int i = 0; !ret && i < n; i++)
		if ((size_t)snprintf(m->disks[i].path, sizeof(m->disks[i].path), "%s", paths[i]) >=
		    sizeof(m->disks[i].path))
			ret = err_set(-ENAMETOOLONG, "disk path too long");
	if (ret)
		return ret;
	w = state_writer_new(state_reader_header(r));
	if (!w)
		return err_set(-ENOMEM, "out of memory");
	machine_save(m, w);
	state_copy_sections(r, w, STATE_SEC_MACHINE);
	ret = state_writer_finish(w, &fs.buf, &fs.len);
	if (!ret)
		ret = write_file(dir, STATE_NAME, fill_state, &fs);
	state_writer_free(w);
	return ret;
}

int snapshot_set_disk_paths(const char *dir, const char *const *paths, unsigned int n)
{
	struct machine_config *m = calloc(1, sizeof(*m));
	struct state_reader *r = NULL;
	int fd = -1, ret = m ? open_file(dir, STATE_NAME, &fd) : err_set(-ENOMEM, "out of memory");

	if (!ret)
		ret = state_reader_open_fd(fd, &r);
	if (fd >= 0)
		close(fd);
	if (!ret)
		ret = rewrite_disks(r, m, paths, n, dir);
	state_reader_free(r);
	free(m);
	return ret ? err_set(ret, "%s/%s: %s", dir, STATE_NAME, err_get()) : 0;
}

const struct state_reader *snapshot_state(const struct snapshot *s)
{
	return s->r;
}

int snapshot_take_memory_fd(struct snapshot *s)
{
	/* An increment's pages go over its full snapshot's memory, in
	 * snapshot_restore(). */
	int fd = snapshot_root(s)->mem_fd;

	snapshot_root(s)->mem_fd = -1;
	return fd;
}

int snapshot_restore(struct snapshot *s, const struct snapshot_target *t)
{
	int ret = memory_check_layout(s->r, &t->vm->mem);

	if (!ret)
		ret = snapshot_inc_apply(s, &t->vm->mem);
	if (!ret)
		ret = vm_restore_state(t->vm, s->r);
	if (!ret)
		ret = serial_restore(t->serial, s->r);
	if (!ret)
		ret = ged_restore(t->ged, s->r);
	if (!ret && t->rtc && state_has_section(s->r, STATE_SEC_RTC, 0))
		ret = rtc_restore(t->rtc, s->r);
	/* The firmware itself is restored first, by firmware_restore(). */
	if (!ret && t->machine->firmware && (!t->fw || !t->pm))
		ret = err_set(-EINVAL, "the machine boots through firmware, this VMM has none");
	if (!ret && t->pm)
		ret = acpipm_restore(t->pm, s->r);
	if (!ret && t->nvirtio != t->machine->ndisks + t->machine->nnics + t->machine->rng +
				    t->machine->balloon)
		ret = err_set(-EINVAL, "%u virtio devices built, the machine has more", t->nvirtio);
	for (unsigned int i = 0; i < t->nvirtio && !ret; i++)
		ret = virtio_restore(t->virtio[i], s->r, virtio_index(t, i));
	if (ret)
		return err_set(ret, "cannot restore the snapshot: %s", err_get());
	/* The guest's memory is the snapshot's: the next increment's base. */
	snapshot_base_set(t, s->id, s->dir[0] ? s->dir : NULL);
	return 0;
}

void snapshot_close(struct snapshot *s)
{
	while (s) {
		struct snapshot *parent = s->parent;

		state_reader_free(s->r);
		if (s->mem_fd >= 0)
			close(s->mem_fd);
		free(s->bits);
		free(s);
		s = parent;
	}
}

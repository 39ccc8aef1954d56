/* Incremental snapshots (include/vireo/state.h): the VMM's base and its
 * dirty log, the STATE_SEC_SNAPID / STATE_SEC_DIFF sections, an
 * increment's packed memory file, and the restore of a chain. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/dirty.h"
#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/vmm.h"
#include "snapshot-int.h"

/* ---- the base ---- */

int snapshot_incremental_supported(const struct snapshot_target *t)
{
	if (!t->base)
		return err_set(-ENOTSUP, "this VMM takes no incremental snapshots");
	if (t->base->disabled)
		return err_set(-ENOTSUP, "incremental snapshots are off in this VMM since a "
			       "migration took over the dirty log: take a full snapshot");
	/* The device models' writes into guest RAM are in the log too
	 * (dirty_mark, include/vireo/dirty.h). */
	return 0;
}

void snapshot_base_drop(struct snapshot_base *b)
{
	free(b->bits);
	b->bits = NULL;
	b->words = 0;
	b->id = 0;
	b->dir[0] = '\0';
}

void snapshot_base_free(struct snapshot_base *b)
{
	snapshot_base_drop(b);
}

/* From here the log counts from zero: what KVM has is collected away. */
static int base_reset(const struct snapshot_target *t)
{
	struct snapshot_base *b = t->base;
	int ret;

	if (!b->bits) {
		b->words = dirty_bitmap_words(t->vm);
		b->bits = calloc(b->words ? b->words : 1, sizeof(*b->bits));
		if (!b->bits)
			return err_set(-ENOMEM, "out of memory");
	}
	ret = dirty_log_start(t->vm);
	if (!ret)
		ret = dirty_log_collect(t->vm, b->bits);
	memset(b->bits, 0, b->words * sizeof(*b->bits));
	return ret;
}

void snapshot_base_set(const struct snapshot_target *t, uint64_t id, const char *dir)
{
	struct snapshot_base *b = t->base;

	if (!b)
		return;
	b->untracked = 0;
	if (!t->track_dirty) {
		/* Nothing can be incremental to it: no log (bits: ours runs;
		 * a migration's, after it took over, is not ours to stop). */
		if (b->bits)
			dirty_log_stop(t->vm);
		snapshot_base_drop(b);
		b->untracked = id;
		return;
	}
	if (!id || snapshot_incremental_supported(t) || base_reset(t)) {
		snapshot_base_drop(b);
		return;
	}
	b->id = id;
	snprintf(b->dir, sizeof(b->dir), "%s", dir ? dir : "");
}

/* ---- saving ---- */

uint64_t snapshot_new_id(void)
{
	uint64_t id = 0;

	while (!id)
		if (getrandom(&id, sizeof(id), 0) != sizeof(id))
			id = 0;
	return id;
}

int snapshot_inc_prepare(const struct snapshot_target *t)
{
	struct snapshot_base *b = t->base;
	int ret;

	if (!t->incremental) {
		/* A full one: the pages since the base are in it too. */
		return b && b->bits ? dirty_log_collect(t->vm, b->bits) : 0;
	}
	ret = snapshot_incremental_supported(t);
	if (ret)
		return ret;
	if (!b->id && b->untracked)
		return err_set(-ENOENT, "dirty tracking is off since snapshot %016llx (taken or "
			       "restored without \"track_dirty\": true): an incremental snapshot "
			       "needs it; take a full one with \"track_dirty\": true first",
			       (unsigned long long)b->untracked);
	if (!b->id)
		return err_set(-ENOENT, "no snapshot to be incremental to: this VM has taken or "
			       "been restored from none since it started; take a full one first");
	if (t->parent_id && t->parent_id != b->id)
		return err_set(-ENOENT, "the VM's memory does not descend from that parent "
			       "(its base is snapshot %016llx): take a full snapshot",
			       (unsigned long long)b->id);
	if (!(t->parent && t->parent[0]) && !b->dir[0])
		return err_set(-EINVAL, "an incremental snapshot needs 'parent', the directory "
			       "of snapshot %016llx", (unsigned long long)b->id);
	/* Paused: nothing is written between this and the save. */
	return dirty_log_collect(t->vm, b->bits);
}

void snapshot_inc_sections(const struct snapshot_target *t, uint64_t id, struct state_writer *w)
{
	const struct snapshot_base *b = t->base;
	const char *parent = t->parent && t->parent[0] ? t->parent : b ? b->dir : "";

	state_begin(w, STATE_SEC_SNAPID, 0, 0);
	state_put_u64(w, id);
	state_end(w);
	if (!t->incremental)
		return;
	state_begin(w, STATE_SEC_DIFF, 0, STATE_SECTION_CRITICAL);
	state_put_u64(w, b->id);
	state_put_blob(w, parent, strlen(parent));
	state_put_u64(w, dirty_bitmap_count(b->bits, b->words));
	state_put_blob(w, b->bits, b->words * sizeof(*b->bits));
	state_end(w);
}

static bool page_zero(const uint8_t *p)
{
	const uint64_t *q = (const uint64_t *)p;

	for (size_t i = 0; i < DIRTY_PAGE_SIZE / 8; i++)
		if (q[i])
			return false;
	return true;
}

static int write_page(int fd, const uint8_t *p, uint64_t k)
{
	for (size_t off = 0; off < DIRTY_PAGE_SIZE; ) {
		ssize_t n = pwrite(fd, p + off, DIRTY_PAGE_SIZE - off,
				   (off_t)(k * DIRTY_PAGE_SIZE + off));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return err_set(n < 0 ? -errno : -EIO, "cannot write the memory file: %s",
				       n < 0 ? strerror(errno) : "short write");
		off += (size_t)n;
	}
	return 0;
}

int snapshot_inc_fill(const struct snapshot_target *t, int fd, uint64_t *written,
		      uint64_t *pages)
{
	const struct snapshot_base *b = t->base;
	const struct guest_memory *mem = &t->vm->mem;
	uint64_t k = 0, n = dirty_bitmap_count(b->bits, b->words);

	*written = 0;
	if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)(n * DIRTY_PAGE_SIZE)) < 0)
		return err_set(-errno, "cannot size the memory file: %m");
	for (uint64_t w = 0; w < b->words; w++) {
		for (uint64_t v = b->bits[w]; v; v &= v - 1, k++) {
			uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(v);
			const uint8_t *p = mem->host + page * DIRTY_PAGE_SIZE;
			int ret;

			if (page * DIRTY_PAGE_SIZE >= mem->size || page_zero(p))
				continue;       /* a hole reads as zeros */
			ret = write_page(fd, p, k);
			if (ret)
				return ret;
			*written += DIRTY_PAGE_SIZE;
		}
	}
	*pages = n;
	return 0;
}

/* ---- restoring ---- */

static int read_ids(struct snapshot *s, uint64_t *parent_id, char *parent, size_t size)
{
	struct state_cursor c;
	size_t len;
	int ret;

	if (state_has_section(s->r, STATE_SEC_SNAPID, 0)) {
		ret = state_section(s->r, STATE_SEC_SNAPID, 0, &c);
		s->id = state_get_u64(&c);
		if (ret || (ret = state_done(&c)))
			return ret;
	}
	if (!state_has_section(s->r, STATE_SEC_DIFF, 0))
		return 0;
	ret = state_section(s->r, STATE_SEC_DIFF, 0, &c);
	if (ret)
		return ret;
	*parent_id = state_get_u64(&c);
	len = state_get_blob_max(&c, parent, size - 1);
	parent[len] = '\0';
	s->npages = state_get_u64(&c);
	s->bits = calloc(s->words, sizeof(*s->bits));
	if (!s->bits)
		return err_set(-ENOMEM, "out of memory");
	state_get_blob(&c, s->bits, s->words * sizeof(*s->bits));
	ret = state_done(&c);
	if (!ret && (!*parent_id || !len || memchr(parent, '\0', len) ||
		     dirty_bitmap_count(s->bits, s->words) != s->npages))
		ret = err_set(-EINVAL, "state file: a malformed incremental section");
	return ret;
}

/* The parent's directory: relative paths are relative to s's. */
static int parent_dir(const struct snapshot *s, const char *parent, char *out, size_t size)
{
	int n = parent[0] == '/' ? snprintf(out, size, "%s", parent) :
		snprintf(out, size, "%s/%s", s->dir, parent);

	return n < 0 || (size_t)n >= size ? err_set(-ENAMETOOLONG, "parent path too long") : 0;
}

static int open_parent(struct snapshot *s, const char *parent, uint64_t parent_id,
		       const struct machine_config *m, unsigned int depth)
{
	struct machine_config *pm = calloc(1, sizeof(*pm));
	char dir[PATH_MAX];
	int ret;

	s->parent = calloc(1, sizeof(*s->parent));
	if (!pm || !s->parent) {
		free(pm);
		return err_set(-ENOMEM, "out of memory");
	}
	s->parent->mem_fd = -1;
	ret = parent_dir(s, parent, dir, sizeof(dir));
	if (!ret)
		ret = snapshot_check(dir, s->parent, pm, depth + 1);
	if (ret)
		ret = err_set(ret, "its parent: %s", err_get());
	else if (s->parent->id != parent_id)
		ret = err_set(-EINVAL, "%s is not its parent (snapshot %016llx, not %016llx)",
			      dir, (unsigned long long)s->parent->id,
			      (unsigned long long)parent_id);
	else if (pm->mem_size != m->mem_size || pm->ncpus != m->ncpus)
		ret = err_set(-EINVAL, "its parent %s is of another machine", dir);
	free(pm);
	return ret;
}

int snapshot_inc_open(struct snapshot *s, const struct machine_config *m, unsigned int depth)
{
	char parent[PATH_MAX];
	uint64_t parent_id = 0;
	struct stat st;
	int ret;

	s->words = (m->mem_size / DIRTY_PAGE_SIZE + 63) / 64;
	ret = read_ids(s, &parent_id, parent, sizeof(parent));
	if (ret || !s->bits)
		return ret;
	if (fstat(s->mem_fd, &st) < 0 || (uint64_t)st.st_size != s->npages * DIRTY_PAGE_SIZE)
		return err_set(-EINVAL, "%s/memory is %llu bytes, the increment has %llu pages",
			       s->dir, (unsigned long long)st.st_size,
			       (unsigned long long)s->npages);
	if (depth + 1 >= SNAPSHOT_MAX_CHAIN)
		return err_set(-EINVAL, "a chain of more than %u incremental snapshots",
			       SNAPSHOT_MAX_CHAIN);
	return open_parent(s, parent, parent_id, m, depth);
}

struct snapshot *snapshot_root(struct snapshot *s)
{
	while (s->parent)
		s = s->parent;
	return s;
}

static int read_page(int fd, uint8_t *p, uint64_t k)
{
	for (size_t off = 0; off < DIRTY_PAGE_SIZE; ) {
		ssize_t n = pread(fd, p + off, DIRTY_PAGE_SIZE - off,
				  (off_t)(k * DIRTY_PAGE_SIZE + off));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return err_set(n < 0 ? -errno : -EIO, "cannot read an increment's memory: %s",
				       n < 0 ? strerror(errno) : "short file");
		off += (size_t)n;
	}
	return 0;
}

/* A page that is zero in the increment and already zero below (a page the
 * balloon gave back, say) is not written: it stays unbacked. */
static int apply_page(int fd, uint8_t *host, uint64_t k)
{
	uint8_t buf[DIRTY_PAGE_SIZE];
	int ret = read_page(fd, buf, k);

	if (!ret && !(page_zero(buf) && page_zero(host)))
		memcpy(host, buf, sizeof(buf));
	return ret;
}

int snapshot_inc_apply(const struct snapshot *s, const struct guest_memory *mem)
{
	uint64_t k = 0;
	int ret;

	if (!s->bits)
		return 0;
	ret = snapshot_inc_apply(s->parent, mem);
	for (uint64_t w = 0; !ret && w < s->words; w++) {
		for (uint64_t v = s->bits[w]; !ret && v; v &= v - 1, k++) {
			uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(v);

			if (page * DIRTY_PAGE_SIZE >= mem->size)
				return err_set(-EINVAL, "an increment's page %llu is past guest RAM",
					       (unsigned long long)page);
			ret = apply_page(s->mem_fd, mem->host + page * DIRTY_PAGE_SIZE, k);
		}
	}
	return ret;
}

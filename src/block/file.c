/* The lower file layer (DESIGN §3.4): host files and in-memory files behind
 * one ops table, with exact-length helpers and write-error injection. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/fileopen.h"
#include "vireo/log.h"

/* ---- host files ---- */

static int64_t posix_length_of(int fd)
{
	struct stat st;

	return fstat(fd, &st) ? -1 : st.st_size;
}

/* O_DIRECT needs aligned buffers, offsets and lengths; formats issue small
 * unaligned metadata I/O (qcow2 headers, L2 entries, refcounts) and guests
 * may hand sector-aligned buffers, which go through an aligned bounce
 * buffer (read-modify-write for writes). The alignment is the device's
 * logical block size for block devices; for files the page size, a
 * multiple of every logical block size up to 4 KiB. */
#define DIRECT_ALIGN_FILE 4096u

static bool direct_unaligned(struct bfile *f, const void *buf, size_t len, uint64_t off)
{
	return f->direct_align && (((uintptr_t)buf | len | off) & (f->direct_align - 1));
}

static ssize_t bounce_io(struct bfile *f, void *buf, size_t len, uint64_t off, bool wr)
{
	uint64_t a = f->direct_align, start = off & ~(a - 1);
	uint64_t end = (off + len + a - 1) & ~(a - 1);
	ssize_t n;
	void *b;

	if (posix_memalign(&b, a, end - start))
		return -ENOMEM;
	memset(b, 0, end - start);
	n = pread(f->fd, b, end - start, (off_t)start);
	if (n >= 0 && wr) {
		/* The aligned write must not grow the file past what was
		 * asked: a raw image's size is the disk's. */
		int64_t flen = posix_length_of(f->fd);

		memcpy((uint8_t *)b + (off - start), buf, len);
		n = pwrite(f->fd, b, end - start, (off_t)start);
		if (n >= 0 && flen >= 0 && (uint64_t)flen < end &&
		    ftruncate(f->fd, (off_t)((uint64_t)flen > off + len ? (uint64_t)flen : off + len)))
			n = -1;
		n = n < 0 ? n : (ssize_t)len;
	} else if (n >= 0) {
		n = (uint64_t)n <= off - start ? 0 :
		    (ssize_t)((uint64_t)n - (off - start) < len ? (uint64_t)n - (off - start) : len);
		memcpy(buf, (uint8_t *)b + (off - start), (size_t)n);
	}
	n = n < 0 ? -errno : n;
	free(b);
	return n;
}

static ssize_t posix_pread(struct bfile *f, void *buf, size_t len, uint64_t off)
{
	ssize_t n;

	if (direct_unaligned(f, buf, len, off))
		return bounce_io(f, buf, len, off, false);
	do
		n = pread(f->fd, buf, len, (off_t)off);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

static ssize_t posix_pwrite(struct bfile *f, const void *buf, size_t len, uint64_t off)
{
	ssize_t n;

	if (direct_unaligned(f, buf, len, off))
		return bounce_io(f, (void *)buf, len, off, true);
	do
		n = pwrite(f->fd, buf, len, (off_t)off);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

static int posix_flush(struct bfile *f)
{
	if (f->no_flush)
		return 0;
	return fdatasync(f->fd) ? -errno : 0;
}

static int64_t posix_length(struct bfile *f)
{
	struct stat st;

	if (fstat(f->fd, &st))
		return -errno;
	return st.st_size;
}

static int posix_truncate(struct bfile *f, uint64_t len)
{
	return ftruncate(f->fd, (off_t)len) ? -errno : 0;
}

static int posix_punch(struct bfile *f, uint64_t off, uint64_t len)
{
	if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)off, (off_t)len))
		return -errno;
	return 0;
}

static void posix_close(struct bfile *f)
{
	if (f->fd >= 0)
		close(f->fd);
}

static const struct bfile_ops posix_ops = {
	.name = "file",
	.pread = posix_pread,
	.pwrite = posix_pwrite,
	.flush = posix_flush,
	.length = posix_length,
	.truncate = posix_truncate,
	.punch = posix_punch,
	.close = posix_close,
};

static struct bfile *bfile_alloc(const struct bfile_ops *ops, const char *path, bool ro)
{
	struct bfile *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->path = strdup(path ? path : "");
	if (!f->path) {
		free(f);
		return NULL;
	}
	f->ops = ops;
	f->readonly = ro;
	f->fd = -1;
	f->fail_writes_after = -1;
	return f;
}

/* ---- image locking (QEMU's scheme, include/vireo/block.h) ---- */

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200
#define PERM_READ        (1u << 0)	/* consistent read */
#define PERM_WRITE       (1u << 1)
#define PERM_WRITE_SAME  (1u << 2)	/* write unchanged */
#define PERM_RESIZE      (1u << 3)
#define PERM_BITS        4

static const char *const perm_names[PERM_BITS] = {
	"consistent read", "write", "write unchanged", "resize",
};

/* One byte: F_OFD_SETLK of a read lock, or F_OFD_GETLK of a write lock,
 * which reports a lock another open file holds (never our own). */
static int lock_byte(int fd, int cmd, off_t off, bool *taken)
{
	struct flock fl = { .l_type = cmd == F_OFD_GETLK ? F_WRLCK : F_RDLCK,
			    .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };

	if (fcntl(fd, cmd, &fl) < 0)
		return -errno;
	*taken = cmd == F_OFD_GETLK && fl.l_type != F_UNLCK;
	return 0;
}

/* Takes our bytes first and checks the others' second, as QEMU does: two
 * openers racing then both see each other (both fail) rather than neither. */
static int lock_apply(int fd, unsigned int perm, unsigned int shared, const char **conflict)
{
	bool taken = false;
	int ret = 0;

	for (unsigned int i = 0; i < PERM_BITS && !ret; i++) {
		if (perm & (1u << i))
			ret = lock_byte(fd, F_OFD_SETLK, LOCK_PERM_BASE + i, &taken);
		if (!ret && !(shared & (1u << i)))
			ret = lock_byte(fd, F_OFD_SETLK, LOCK_SHARED_BASE + i, &taken);
		if (ret == -EAGAIN || ret == -EACCES)
			*conflict = perm_names[i];	/* someone write-locked it */
	}
	for (unsigned int i = 0; i < PERM_BITS && !ret && !*conflict; i++) {
		if (perm & (1u << i))
			ret = lock_byte(fd, F_OFD_GETLK, LOCK_SHARED_BASE + i, &taken);
		if (!ret && !taken && !(shared & (1u << i)))
			ret = lock_byte(fd, F_OFD_GETLK, LOCK_PERM_BASE + i, &taken);
		if (taken)
			*conflict = perm_names[i];
	}
	return *conflict ? -EBUSY : ret;
}

static int bfile_lock(struct bfile *f, bool writable)
{
	unsigned int perm = PERM_READ | (writable ? PERM_WRITE | PERM_RESIZE : 0);
	unsigned int shared = PERM_READ | PERM_WRITE_SAME;
	const char *conflict = NULL;
	int ret = lock_apply(f->fd, perm, shared, &conflict);

	if (ret == -EBUSY)
		return err_set(-EBUSY, "image is in use by another process: %s (its \"%s\" "
			       "lock is taken)", f->path, conflict);
	if (ret == -EINVAL || ret == -ENOLCK || ret == -EOPNOTSUPP) {
		/* A file system without OFD locks (QEMU's locking=auto also goes
		 * on): the image is used unprotected, and we say so. */
		log_warn("%s: no image locking on this file system (%s)", f->path,
			 strerror(-ret));
		return 0;
	}
	return ret ? err_set(ret, "%s: cannot lock: %s", f->path, strerror(-ret)) : 0;
}

int bfile_set_locked(struct bfile *f, bool locked)
{
	struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = LOCK_PERM_BASE,
			    .l_len = LOCK_SHARED_BASE + PERM_BITS - LOCK_PERM_BASE };

	if (f->fd < 0 || f->force_share)
		return 0;
	if (locked)
		return bfile_lock(f, !f->readonly);
	if (fcntl(f->fd, F_OFD_SETLK, &fl) < 0 && errno != EINVAL && errno != ENOLCK &&
	    errno != EOPNOTSUPP)
		return err_set(-errno, "%s: cannot unlock: %m", f->path);
	return 0;
}

/* open() says EINVAL for O_DIRECT on a file system without direct I/O
 * (older tmpfs, procfs, some FUSE): one message that names the way out. */
static int direct_refused(const char *path, int oflags, int ret)
{
	if (ret != -EINVAL || !(oflags & O_DIRECT))
		return ret;
	return err_set(ret, "%s: the file system refuses O_DIRECT (cache=none and "
		       "cache=directsync need it); use cache=writeback", path);
}

static unsigned int direct_align(int fd)
{
	struct stat st;
	int ssz;

	if (!fstat(fd, &st) && S_ISBLK(st.st_mode) && !ioctl(fd, BLKSSZGET, &ssz) &&
	    ssz >= 512 && !(ssz & (ssz - 1)))
		return (unsigned int)ssz;
	return DIRECT_ALIGN_FILE;
}

int bfile_open(const char *path, int flags, struct bfile **out)
{
	return bfile_open_policy(path, flags, NULL, 0, out);
}

int bfile_open_policy(const char *path, int flags, const struct block_policy *p, int depth,
		      struct bfile **out)
{
	int oflags = O_CLOEXEC | ((flags & BFILE_RDWR) ? O_RDWR : O_RDONLY);
	struct bfile *f;
	int fd, ret;

	/* No O_TRUNC: an image in use must not be emptied before the lock
	 * check refuses to touch it. */
	if (flags & BFILE_CREATE)
		oflags |= O_CREAT | O_RDWR;
	if (flags & BFILE_DIRECT)
		oflags |= O_DIRECT;
	if (flags & BFILE_DSYNC)
		oflags |= O_DSYNC;
	/* An image is a regular file or a block device, checked before any
	 * read: a FIFO would block its reader (the policy checks the same). */
	if (p && (ret = block_policy_open(p, path, oflags, depth, &fd)))
		return direct_refused(path, oflags, ret);
	if (!p && (fd = file_open_checked(path, oflags & ~O_CLOEXEC, 0644, NULL,
					  FILE_REG | FILE_BLK)) < 0)
		return direct_refused(path, oflags, fd);
	f = bfile_alloc(&posix_ops, path, !(oflags & O_RDWR));
	if (!f) {
		close(fd);
		return err_set(-ENOMEM, "%s: out of memory", path);
	}
	f->fd = fd;
	f->policy = p;
	f->depth = depth;
	f->direct_align = (flags & BFILE_DIRECT) ? direct_align(fd) : 0;
	f->no_flush = (flags & BFILE_NO_FLUSH) != 0;
	f->force_share = (flags & BFILE_FORCE_SHARE) != 0;
	ret = f->force_share ? 0 : bfile_lock(f, !f->readonly);
	if (!ret && (flags & BFILE_CREATE) && ftruncate(fd, 0) < 0)
		ret = err_set(-errno, "%s: truncate: %s", path, strerror(errno));
	if (ret) {
		bfile_close(f);
		return ret;
	}
	*out = f;
	return 0;
}

int bfile_resolve(const char *base, const char *name, char *out)
{
	const char *slash = strrchr(base, '/');
	size_t dirlen = slash ? (size_t)(slash - base) + 1 : 0;

	if (name[0] == '/' || dirlen == 0) {
		if (strlen(name) >= BLOCK_PATH_MAX)
			return err_set(-ENAMETOOLONG, "%s: file name too long", base);
		strcpy(out, name);
		return 0;
	}
	if (dirlen + strlen(name) >= BLOCK_PATH_MAX)
		return err_set(-ENAMETOOLONG, "%s: file name too long", base);
	memcpy(out, base, dirlen);
	strcpy(out + dirlen, name);
	return 0;
}

int bfile_open_relative(const struct bfile *base, const char *name, int flags,
			struct bfile **out)
{
	char path[BLOCK_PATH_MAX];
	int ret = bfile_resolve(base->path, name, path);

	if (base->force_share)
		flags |= BFILE_FORCE_SHARE;
	return ret ? ret : bfile_open_policy(path, flags, base->policy, base->depth, out);
}

/* ---- memory files ---- */

struct memfile {
	uint8_t *data;
	size_t len, cap;
};

static ssize_t mem_pread(struct bfile *f, void *buf, size_t len, uint64_t off)
{
	struct memfile *m = f->priv;

	if (off >= m->len)
		return 0;
	if (len > m->len - off)
		len = m->len - off;
	memcpy(buf, m->data + off, len);
	return (ssize_t)len;
}

static int mem_reserve(struct memfile *m, uint64_t end)
{
	size_t cap = m->cap ? m->cap : 4096;
	uint8_t *p;

	if (end > (1ull << 30))
		return -EFBIG;	/* memory files are for tests and fuzzers */
	if (end <= m->cap)
		return 0;
	while (cap < end)
		cap *= 2;
	p = realloc(m->data, cap);
	if (!p)
		return -ENOMEM;
	memset(p + m->cap, 0, cap - m->cap);
	m->data = p;
	m->cap = cap;
	return 0;
}

static ssize_t mem_pwrite(struct bfile *f, const void *buf, size_t len, uint64_t off)
{
	struct memfile *m = f->priv;
	int ret = mem_reserve(m, off + len);

	if (ret)
		return ret;
	memcpy(m->data + off, buf, len);
	if (off + len > m->len)
		m->len = off + len;
	return (ssize_t)len;
}

static int mem_flush(struct bfile *f)
{
	(void)f;
	return 0;
}

static int64_t mem_length(struct bfile *f)
{
	return (int64_t)((struct memfile *)f->priv)->len;
}

static int mem_truncate(struct bfile *f, uint64_t len)
{
	struct memfile *m = f->priv;
	int ret = mem_reserve(m, len);

	if (ret)
		return ret;
	if (len < m->len)
		memset(m->data + len, 0, m->len - len);
	m->len = len;
	return 0;
}

static int mem_punch(struct bfile *f, uint64_t off, uint64_t len)
{
	struct memfile *m = f->priv;

	if (off >= m->len)
		return 0;
	if (len > m->len - off)
		len = m->len - off;
	memset(m->data + off, 0, len);
	return 0;
}

static void mem_close(struct bfile *f)
{
	struct memfile *m = f->priv;

	free(m->data);
	free(m);
}

static const struct bfile_ops mem_ops = {
	.name = "memory",
	.pread = mem_pread,
	.pwrite = mem_pwrite,
	.flush = mem_flush,
	.length = mem_length,
	.truncate = mem_truncate,
	.punch = mem_punch,
	.close = mem_close,
};

int bfile_mem_open(const char *name, const void *data, size_t len, bool readonly,
		   struct bfile **out)
{
	struct memfile *m = calloc(1, sizeof(*m));
	struct bfile *f = bfile_alloc(&mem_ops, name, readonly);

	if (!m || !f || mem_reserve(m, len)) {
		free(m ? m->data : NULL);
		free(m);
		if (f)
			free(f->path);
		free(f);
		return err_set(-ENOMEM, "%s: out of memory", name);
	}
	if (data && len)
		memcpy(m->data, data, len);
	m->len = len;
	f->priv = m;
	*out = f;
	return 0;
}

const uint8_t *bfile_mem_data(struct bfile *f, size_t *len)
{
	struct memfile *m = f->priv;

	*len = m->len;
	return m->data;
}

void bfile_close(struct bfile *f)
{
	if (!f)
		return;
	if (f->ops->close)
		f->ops->close(f);
	free(f->path);
	free(f);
}

/* ---- exact-length helpers ---- */

int bfile_pread(struct bfile *f, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	if (off > INT64_MAX || len > INT64_MAX - off)
		return err_set(-EINVAL, "%s: read at %llu past any file end", f->path,
			       (unsigned long long)off);
	while (len) {
		ssize_t n = f->ops->pread(f, p, len, off);

		if (n < 0)
			return err_set((int)n, "%s: read at %llu: %s", f->path,
				       (unsigned long long)off, strerror((int)-n));
		if (n == 0) {
			memset(p, 0, len);	/* past the end of file */
			return 0;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int bfile_pwrite(struct bfile *f, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	if (f->readonly)
		return err_set(-EROFS, "%s: file is read-only", f->path);
	if (f->fail_writes_after == 0)
		return err_set(-EIO, "%s: write at %llu: injected I/O error", f->path,
			       (unsigned long long)off);
	if (f->fail_writes_after > 0)
		f->fail_writes_after--;
	while (len) {
		ssize_t n = f->ops->pwrite(f, p, len, off);

		if (n <= 0)
			return err_set(n ? (int)n : -EIO, "%s: write at %llu: %s", f->path,
				       (unsigned long long)off, strerror(n ? (int)-n : EIO));
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int bfile_pwrite_zeroes(struct bfile *f, uint64_t off, uint64_t len)
{
	/* aligned: with O_DIRECT it is written without a bounce */
	static const uint8_t zeroes[65536] __attribute__((aligned(4096)));

	while (len) {
		size_t n = len < sizeof(zeroes) ? (size_t)len : sizeof(zeroes);
		int ret = bfile_pwrite(f, zeroes, n, off);

		if (ret)
			return ret;
		off += n;
		len -= n;
	}
	return 0;
}

int bfile_flush(struct bfile *f)
{
	int ret;

	if (f->readonly)
		return 0;
	ret = f->ops->flush(f);
	return ret ? err_set(ret, "%s: flush: %s", f->path, strerror(-ret)) : 0;
}

int64_t bfile_length(struct bfile *f)
{
	int64_t ret = f->ops->length(f);

	return ret < 0 ? err_set((int)ret, "%s: stat: %s", f->path, strerror((int)-ret)) : ret;
}

int bfile_truncate(struct bfile *f, uint64_t len)
{
	int ret;

	if (f->readonly)
		return err_set(-EROFS, "%s: file is read-only", f->path);
	ret = f->ops->truncate(f, len);
	return ret ? err_set(ret, "%s: truncate: %s", f->path, strerror(-ret)) : 0;
}

int bfile_punch(struct bfile *f, uint64_t off, uint64_t len)
{
	if (f->readonly)
		return err_set(-EROFS, "%s: file is read-only", f->path);
	if (!f->ops->punch)
		return -EOPNOTSUPP;
	return f->ops->punch(f, off, len);
}

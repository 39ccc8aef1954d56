/* The one-file form of an export (docs/api.md "Export and import"): the
 * export directory as a POSIX tar archive (pax, as GNU tar and bsdtar
 * read it): manifest.json, manifest.sha256, then the files in the
 * manifest's order, sparse files (memory) with pax sparse maps so that
 * their holes cost nothing.
 *
 * Reading goes through libarchive, which parses tar headers of every
 * dialect and has been fuzzed for years: an archive comes from anywhere.
 * On top of it this file accepts regular files only (a directory entry
 * is skipped; links, devices and FIFOs are refused), with relative paths
 * without "." or ".." parts, and hands each file's data out in order
 * with its holes; export.c checks names, sizes and hashes against the
 * manifest. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/log.h"
#include "snapshot-int.h"

#define CHUNK (1u << 20)

/* ---- writing ---- */

static int ar_fail(struct archive *a, const char *what)
{
	return err_set(-EIO, "%s: %s", what, archive_error_string(a) ?: "archive error");
}

/* The data ranges of fd as a sparse map (none: a file without holes). */
static int sparse_map(int fd, uint64_t size, struct archive_entry *e)
{
	uint64_t off = 0;
	bool holes = false;

	while (off < size) {
		off_t data = lseek(fd, (off_t)off, SEEK_DATA), hole;

		if (data < 0 && errno == ENXIO)
			data = (off_t)size;
		if (data < 0)
			return 0;       /* no hole information: all data */
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0 || (uint64_t)hole > size)
			hole = (off_t)size;
		holes |= (uint64_t)data != off;
		if (hole > data)
			archive_entry_sparse_add_entry(e, data, hole - data);
		off = (uint64_t)hole;
	}
	if (!holes)
		archive_entry_sparse_clear(e);
	else if (!archive_entry_sparse_count(e))
		archive_entry_sparse_add_entry(e, 0, 0);        /* all hole */
	return 0;
}

/* The whole file goes to the writer, holes as zeroes: the pax writer
 * leaves out what its sparse map does not list. */
static int pack_one(struct archive *a, const char *dir, const char *rel, uint8_t *buf)
{
	char path[PATH_MAX];
	struct archive_entry *e;
	struct stat st;
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = err_set(-EIO, "%s: cannot read it", path);
		if (fd >= 0)
			close(fd);
		return ret;
	}
	e = archive_entry_new();
	archive_entry_set_pathname(e, rel);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0600);
	archive_entry_set_size(e, st.st_size);
	archive_entry_set_mtime(e, st.st_mtime, 0);
	sparse_map(fd, (uint64_t)st.st_size, e);
	if (archive_write_header(a, e) != ARCHIVE_OK)
		ret = ar_fail(a, rel);
	for (uint64_t off = 0; !ret && off < (uint64_t)st.st_size; ) {
		ssize_t n = pread(fd, buf, CHUNK, (off_t)off);

		if (n <= 0)
			ret = err_set(-EIO, "%s: %s", path, n < 0 ? strerror(errno) : "shorter");
		else if (archive_write_data(a, buf, (size_t)n) != n)
			ret = ar_fail(a, rel);
		off += n > 0 ? (uint64_t)n : 0;
	}
	archive_entry_free(e);
	close(fd);
	return ret;
}

int export_pack(const char *dir, const char *const *rels, unsigned int n, const char *path)
{
	struct archive *a = archive_write_new();
	uint8_t *buf = malloc(CHUNK);
	int ret = a && buf ? 0 : err_set(-ENOMEM, "out of memory");

	if (!ret && (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
		     archive_write_open_filename(a, path) != ARCHIVE_OK))
		ret = ar_fail(a, path);
	for (unsigned int i = 0; !ret && i < n; i++)
		ret = pack_one(a, dir, rels[i], buf);
	if (a && archive_write_close(a) != ARCHIVE_OK && !ret)
		ret = ar_fail(a, path);
	if (a)
		archive_write_free(a);
	free(buf);
	return ret;
}

/* ---- reading ---- */

struct export_reader {
	struct archive *a;
	int fd;
	char path[PATH_MAX];
};

int export_reader_open(const char *path, struct export_reader **out)
{
	struct export_reader *r = calloc(1, sizeof(*r));
	struct stat st;
	int fd;

	if (!r)
		return err_set(-ENOMEM, "out of memory");
	snprintf(r->path, sizeof(r->path), "%s", path);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int ret = err_set(fd < 0 ? -errno : -EINVAL, "%s: %s", path,
				  fd < 0 ? strerror(errno) : "not a regular file");

		if (fd >= 0)
			close(fd);
		free(r);
		return ret;
	}
	r->fd = fd;
	r->a = archive_read_new();
	/* tar only, no compression filters: nothing expands behind our back. */
	if (!r->a || archive_read_support_format_tar(r->a) != ARCHIVE_OK ||
	    archive_read_open_fd(r->a, fd, 65536) != ARCHIVE_OK) {
		int ret = r->a ? err_set(-EINVAL, "not a vireo export archive: %s",
					 archive_error_string(r->a) ?: "unreadable") :
				 err_set(-ENOMEM, "out of memory");

		export_reader_close(r);
		return ret;
	}
	*out = r;
	return 0;
}

void export_reader_close(struct export_reader *r)
{
	if (!r)
		return;
	if (r->a)
		archive_read_free(r->a);
	close(r->fd);
	free(r);
}

/* Relative, each part a plain name: no "", ".", ".." and no leading '/'. */
static bool plain_path(const char *p)
{
	if (!p || !*p || *p == '/' || strlen(p) >= 256)
		return false;
	for (const char *s = p; *s; ) {
		size_t n = strcspn(s, "/");

		if (!n || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		s += n;
		s += *s == '/';
		if (!*s && s[-1] == '/')
			return false;
	}
	return true;
}

/* A directory's name: a plain path, with or without a trailing '/'. */
static bool plain_dir(const char *p)
{
	char buf[256];
	size_t n = p ? strlen(p) : 0;

	if (!n || n >= sizeof(buf))
		return false;
	memcpy(buf, p, n + 1);
	if (buf[n - 1] == '/')
		buf[n - 1] = '\0';
	return plain_path(buf);
}

int export_reader_next(struct export_reader *r, char *rel, size_t size, uint64_t *len)
{
	struct archive_entry *e;

	for (;;) {
		int st = archive_read_next_header(r->a, &e);
		const char *p;

		if (st == ARCHIVE_EOF)
			return 0;
		if (st != ARCHIVE_OK)
			return err_set(-EINVAL, "damaged archive: %s", archive_error_string(r->a) ?:
				       "bad header");
		p = archive_entry_pathname(e);
		if (archive_entry_filetype(e) == AE_IFDIR && !archive_entry_hardlink(e) &&
		    plain_dir(p))
			continue;       /* tar -c writes "disks/" and the like: no use here */
		if (!plain_path(p))
			return err_set(-EINVAL, "archive entry '%.80s': not a plain relative path",
				       p ? p : "");
		if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e) ||
		    archive_entry_symlink(e))
			return err_set(-EINVAL, "archive entry '%.80s': not a regular file", p);
		if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0 ||
		    strlen(p) >= size)
			return err_set(-EINVAL, "archive entry '%.80s': bad size or name", p);
		strcpy(rel, p);
		*len = (uint64_t)archive_entry_size(e);
		return 1;
	}
}

static int hash_zero(gnutls_hash_hd_t h, const uint8_t *zero, uint64_t n)
{
	for (; n; ) {
		size_t k = n < CHUNK ? (size_t)n : CHUNK;

		if (gnutls_hash(h, zero, k) < 0)
			return err_set(-EIO, "SHA-256 failed");
		n -= k;
	}
	return 0;
}

static int put(int out, const void *buf, size_t len, uint64_t off)
{
	for (size_t done = 0; done < len; ) {
		ssize_t w = pwrite(out, (const uint8_t *)buf + done, len - done, (off_t)(off + done));

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return err_set(w < 0 ? -errno : -EIO, "write: %s",
				       w < 0 ? strerror(errno) : "short write");
		done += (size_t)w;
	}
	return 0;
}

/* The entry's blocks, in order, each within its declared size; what
 * lies between them is a hole, hashed as zeroes and left unwritten. */
static int copy_blocks(struct export_reader *r, int out, uint64_t size, gnutls_hash_hd_t h,
		       const uint8_t *zero)
{
	uint64_t pos = 0;
	int ret = 0;

	while (!ret) {
		const void *buf;
		size_t n;
		la_int64_t off;
		int st = archive_read_data_block(r->a, &buf, &n, &off);

		if (st == ARCHIVE_EOF)
			break;
		if (st != ARCHIVE_OK)
			return err_set(-EINVAL, "damaged archive: %s", archive_error_string(r->a) ?:
				       "truncated");
		if (off < 0 || (uint64_t)off < pos || (uint64_t)off > size || n > size - (uint64_t)off)
			return err_set(-EINVAL, "damaged archive: data outside its entry");
		ret = hash_zero(h, zero, (uint64_t)off - pos);
		if (!ret && n && gnutls_hash(h, buf, n) < 0)
			ret = err_set(-EIO, "SHA-256 failed");
		if (!ret)
			ret = put(out, buf, n, (uint64_t)off);
		pos = (uint64_t)off + n;
	}
	return ret ? ret : hash_zero(h, zero, size - pos);
}

int export_reader_copy(struct export_reader *r, int out, uint64_t size, char hex[65])
{
	uint8_t *zero = calloc(1, CHUNK), digest[32];
	gnutls_hash_hd_t h;
	int ret;

	if (!zero || gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0) {
		free(zero);
		return err_set(-ENOMEM, "out of memory");
	}
	ret = ftruncate(out, (off_t)size) < 0 ? err_set(-errno, "cannot size the copy: %m") : 0;
	if (!ret)
		ret = copy_blocks(r, out, size, h, zero);
	gnutls_hash_deinit(h, digest);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);
	free(zero);
	return ret;
}

int export_reader_text(struct export_reader *r, const char *want, char **text, size_t max)
{
	char rel[256];
	uint64_t len;
	int ret = export_reader_next(r, rel, sizeof(rel), &len);
	ssize_t n;

	if (ret == 0 || (ret > 0 && strcmp(rel, want)))
		return err_set(-EINVAL, "not a vireo export archive: '%s' is not where it belongs",
			       want);
	if (ret < 0)
		return ret;
	if (len > max)
		return err_set(-EINVAL, "%s: larger than %zu bytes", want, max);
	*text = malloc(len + 1);
	if (!*text)
		return err_set(-ENOMEM, "out of memory");
	n = archive_read_data(r->a, *text, len);
	if (n < 0 || (uint64_t)n != len) {
		free(*text);
		*text = NULL;
		return err_set(-EINVAL, "damaged archive: %s: %s", want,
			       n < 0 ? archive_error_string(r->a) ?: "unreadable" : "truncated");
	}
	(*text)[len] = '\0';
	return 0;
}

/* The state file format: writer and validating reader
 * (include/vireo/state.h has the layout). The reader checks the whole file
 * before it hands out any section, so that a restore either has all of a
 * good file or nothing. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "vireo/log.h"
#include "vireo/state.h"

static uint32_t crc(const void *p, size_t n)
{
	return (uint32_t)crc32(0, p, (uInt)n);
}

static void le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

const char *state_section_name(uint32_t type)
{
	static const char *const names[STATE_SEC_COUNT] = {
		[STATE_SEC_END] = "end", [STATE_SEC_MACHINE] = "machine",
		[STATE_SEC_VCPU] = "vcpu", [STATE_SEC_IRQCHIP] = "irqchip",
		[STATE_SEC_PIT] = "pit", [STATE_SEC_CLOCK] = "clock",
		[STATE_SEC_SERIAL] = "serial", [STATE_SEC_GED] = "ged",
		[STATE_SEC_MEMORY] = "memory", [STATE_SEC_RTC] = "rtc",
		[STATE_SEC_VIRTIO_BLK] = "virtio-blk", [STATE_SEC_VIRTIO_NET] = "virtio-net",
		[STATE_SEC_VIRTIO_RNG] = "virtio-rng",
		[STATE_SEC_VIRTIO_BALLOON] = "virtio-balloon",
		[STATE_SEC_FIRMWARE] = "firmware", [STATE_SEC_FWCFG] = "fw_cfg",
		[STATE_SEC_ACPIPM] = "acpi-pm",
	};

	return type < STATE_SEC_COUNT ? names[type] : "unknown";
}

/* ---- writer ---- */

struct state_writer {
	uint8_t *buf;
	size_t len, cap;
	size_t section;   /* offset of the open section's header; 0: none */
	int error;        /* sticky: the first failure */
	const char *why;
};

static void w_fail(struct state_writer *w, int err, const char *why)
{
	if (!w->error) {
		w->error = err;
		w->why = why;
	}
}

static uint8_t *w_room(struct state_writer *w, size_t n)
{
	size_t cap = w->cap ? w->cap : 4096;
	uint8_t *p;

	if (w->error)
		return NULL;
	if (n > STATE_MAX_FILE || w->len > STATE_MAX_FILE - n) {
		w_fail(w, -EFBIG, "larger than the format allows");
		return NULL;
	}
	while (cap < w->len + n)
		cap *= 2;
	if (cap != w->cap) {
		p = realloc(w->buf, cap);
		if (!p) {
			w_fail(w, -ENOMEM, "out of memory");
			return NULL;
		}
		w->buf = p;
		w->cap = cap;
	}
	p = w->buf + w->len;
	w->len += n;
	return p;
}

struct state_writer *state_writer_new(const struct state_header *h)
{
	struct state_writer *w = calloc(1, sizeof(*w));
	uint8_t *p;

	if (!w)
		return NULL;
	p = w_room(w, STATE_HEADER_SIZE);
	if (!p) {
		free(w);
		return NULL;
	}
	memset(p, 0, STATE_HEADER_SIZE);
	memcpy(p, STATE_MAGIC, 8);
	le32(p + 8, STATE_VERSION);
	le32(p + 12, STATE_HEADER_SIZE);
	le32(p + 16, h->ncpus);
	le64(p + 24, h->mem_size);
	le64(p + 32, h->created);
	le32(p + 44, crc(p, 44));
	return w;
}

void state_writer_free(struct state_writer *w)
{
	if (!w)
		return;
	free(w->buf);
	free(w);
}

void state_begin(struct state_writer *w, uint32_t type, uint32_t id, uint32_t flags)
{
	uint8_t *p;

	if (w->section)
		w_fail(w, -EINVAL, "a section begun inside another");
	p = w_room(w, STATE_SECTION_HEADER_SIZE);
	if (!p)
		return;
	memset(p, 0, STATE_SECTION_HEADER_SIZE);
	le32(p, type);
	le32(p + 4, id);
	le32(p + 8, flags);
	w->section = (size_t)(p - w->buf);
}

void state_put_bytes(struct state_writer *w, const void *src, size_t n)
{
	uint8_t *p;

	if (!w->section)
		w_fail(w, -EINVAL, "data outside a section");
	p = w_room(w, n);
	if (p && n)
		memcpy(p, src, n);
}

void state_put_u8(struct state_writer *w, uint8_t v)
{
	state_put_bytes(w, &v, 1);
}

void state_put_u32(struct state_writer *w, uint32_t v)
{
	uint8_t b[4];

	le32(b, v);
	state_put_bytes(w, b, 4);
}

void state_put_u64(struct state_writer *w, uint64_t v)
{
	uint8_t b[8];

	le64(b, v);
	state_put_bytes(w, b, 8);
}

void state_put_blob(struct state_writer *w, const void *p, size_t n)
{
	if (n > STATE_MAX_SECTION) {
		w_fail(w, -EFBIG, "a blob larger than a section may be");
		return;
	}
	state_put_u32(w, (uint32_t)n);
	state_put_bytes(w, p, n);
}

void state_end(struct state_writer *w)
{
	uint8_t *h;
	size_t len;

	if (!w->section) {
		w_fail(w, -EINVAL, "a section ended that was not begun");
		return;
	}
	if (w->error)
		return;
	h = w->buf + w->section;
	len = w->len - w->section - STATE_SECTION_HEADER_SIZE;
	if (len > STATE_MAX_SECTION) {
		w_fail(w, -EFBIG, "a section larger than the format allows");
		return;
	}
	le32(h + 12, crc(h + STATE_SECTION_HEADER_SIZE, len));
	le32(h + 16, (uint32_t)len);
	le32(h + 20, crc(h, 20));
	w->section = 0;
}

int state_writer_finish(struct state_writer *w, const uint8_t **buf, size_t *len)
{
	if (w->section)
		w_fail(w, -EINVAL, "a section was not ended");
	state_begin(w, STATE_SEC_END, 0, STATE_SECTION_CRITICAL);
	state_end(w);
	if (w->error)
		return err_set(w->error, "cannot write the state: %s", w->why);
	*buf = w->buf;
	*len = w->len;
	return 0;
}

/* ---- reader ---- */

struct state_section_ref {
	uint32_t type, id;
	size_t off, len;    /* payload */
};

struct state_reader {
	struct state_header hdr;
	uint8_t *buf;
	size_t len;
	struct state_section_ref *sec;
	size_t nsec;
};

static int check_header(const uint8_t *b, size_t len, struct state_header *h)
{
	if (len < 8 || memcmp(b, STATE_MAGIC, 8))
		return err_set(-EINVAL, len < 8 ? "truncated state file (%zu bytes)" :
			       "not a vireo state file (bad magic)", len);
	if (len < STATE_HEADER_SIZE)
		return err_set(-EINVAL, "truncated state file (%zu bytes, header incomplete)", len);
	if (rd32(b + 44) != crc(b, 44))
		return err_set(-EINVAL, "damaged state file: header checksum mismatch");
	h->version = rd32(b + 8);
	if (h->version != STATE_VERSION)
		return err_set(-EINVAL, "state file format version %u: this vireo reads version %u",
			       h->version, STATE_VERSION);
	if (rd32(b + 12) != STATE_HEADER_SIZE || rd32(b + 20) || rd32(b + 40))
		return err_set(-EINVAL, "damaged state file: bad header fields");
	h->ncpus = rd32(b + 16);
	h->mem_size = rd64(b + 24);
	h->created = rd64(b + 32);
	return 0;
}

/* One section at `off`; sets *next past it. */
static int check_section(struct state_reader *r, size_t off, size_t *next, bool *end)
{
	const uint8_t *h = r->buf + off;
	uint32_t type, id, len;

	if (r->len - off < STATE_SECTION_HEADER_SIZE)
		return err_set(-EINVAL, "truncated state file (a section header at byte %zu is incomplete)",
			       off);
	if (rd32(h + 20) != crc(h, 20))
		return err_set(-EINVAL, "damaged state file: section header checksum mismatch at byte %zu",
			       off);
	type = rd32(h);
	id = rd32(h + 4);
	len = rd32(h + 16);
	if (len > STATE_MAX_SECTION || r->len - off - STATE_SECTION_HEADER_SIZE < len)
		return err_set(-EINVAL, "truncated state file (section %s %u wants %u bytes, %zu left)",
			       state_section_name(type), id, len,
			       r->len - off - STATE_SECTION_HEADER_SIZE);
	if (rd32(h + 12) != crc(h + STATE_SECTION_HEADER_SIZE, len))
		return err_set(-EINVAL, "damaged state file: section %s %u checksum mismatch",
			       state_section_name(type), id);
	if (type >= STATE_SEC_COUNT && (rd32(h + 8) & STATE_SECTION_CRITICAL))
		return err_set(-EINVAL, "state file has a section this vireo does not know "
			       "(type %u) and may not skip: it needs a newer vireo", type);
	*end = type == STATE_SEC_END;
	*next = off + STATE_SECTION_HEADER_SIZE + len;
	if (type >= STATE_SEC_COUNT || *end)
		return 0;
	/* A bound, so that the duplicate check stays cheap on any file. */
	if (r->nsec == STATE_MAX_SECTIONS)
		return err_set(-EINVAL, "damaged state file: more than %d sections",
			       STATE_MAX_SECTIONS);
	r->sec[r->nsec++] = (struct state_section_ref){ type, id,
		off + STATE_SECTION_HEADER_SIZE, len };
	return 0;
}

static int check_sections(struct state_reader *r)
{
	size_t off = STATE_HEADER_SIZE, next;
	bool end = false;
	int ret;

	r->sec = calloc(STATE_MAX_SECTIONS, sizeof(*r->sec));
	if (!r->sec)
		return err_set(-ENOMEM, "out of memory");
	while (!end) {
		if (off == r->len)
			return err_set(-EINVAL, "truncated state file (no end marker after %zu bytes)",
				       off);
		ret = check_section(r, off, &next, &end);
		if (ret)
			return ret;
		for (size_t i = 0; i + 1 < r->nsec; i++)
			if (r->nsec && r->sec[i].type == r->sec[r->nsec - 1].type &&
			    r->sec[i].id == r->sec[r->nsec - 1].id)
				return err_set(-EINVAL, "damaged state file: section %s %u twice",
					       state_section_name(r->sec[i].type), r->sec[i].id);
		off = next;
	}
	if (off != r->len)
		return err_set(-EINVAL, "damaged state file: %zu bytes after the end marker",
			       r->len - off);
	return 0;
}

int state_reader_open(const void *buf, size_t len, struct state_reader **out)
{
	struct state_reader *r;
	int ret;

	*out = NULL;
	if (len > STATE_MAX_FILE)
		return err_set(-EINVAL, "state file larger than %u bytes", STATE_MAX_FILE);
	r = calloc(1, sizeof(*r));
	if (!r || !(r->buf = malloc(len ? len : 1))) {
		free(r);
		return err_set(-ENOMEM, "out of memory");
	}
	memcpy(r->buf, buf, len);
	r->len = len;
	ret = check_header(r->buf, len, &r->hdr);
	if (!ret)
		ret = check_sections(r);
	if (ret) {
		state_reader_free(r);
		return ret;
	}
	*out = r;
	return 0;
}

int state_reader_open_fd(int fd, struct state_reader **out)
{
	struct stat st;
	uint8_t *buf;
	size_t got = 0;
	int ret;

	*out = NULL;
	if (fstat(fd, &st) < 0)
		return err_set(-errno, "%m");
	if (!S_ISREG(st.st_mode))
		return err_set(-EINVAL, "not a regular file");
	if ((uint64_t)st.st_size > STATE_MAX_FILE)
		return err_set(-EINVAL, "state file larger than %u bytes", STATE_MAX_FILE);
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return err_set(-ENOMEM, "out of memory");
	while (got < (size_t)st.st_size) {
		ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	ret = state_reader_open(buf, got, out);
	free(buf);
	return ret;
}

void state_reader_free(struct state_reader *r)
{
	if (!r)
		return;
	free(r->sec);
	free(r->buf);
	free(r);
}

const struct state_header *state_reader_header(const struct state_reader *r)
{
	return &r->hdr;
}

static const struct state_section_ref *find(const struct state_reader *r, uint32_t type,
					    uint32_t id)
{
	for (size_t i = 0; i < r->nsec; i++)
		if (r->sec[i].type == type && r->sec[i].id == id)
			return &r->sec[i];
	return NULL;
}

bool state_has_section(const struct state_reader *r, uint32_t type, uint32_t id)
{
	return find(r, type, id) != NULL;
}

void state_copy_sections(const struct state_reader *r, struct state_writer *w, uint32_t skip)
{
	for (size_t i = 0; i < r->nsec; i++) {
		const struct state_section_ref *s = &r->sec[i];
		const uint8_t *h = r->buf + s->off - STATE_SECTION_HEADER_SIZE;

		if (s->type == skip)
			continue;
		state_begin(w, s->type, s->id, rd32(h + 8));
		state_put_bytes(w, r->buf + s->off, s->len);
		state_end(w);
	}
}

int state_section(const struct state_reader *r, uint32_t type, uint32_t id,
		  struct state_cursor *c)
{
	const struct state_section_ref *s = find(r, type, id);

	if (!s)
		return err_set(-ENOENT, "state file has no %s %u section",
			       state_section_name(type), id);
	*c = (struct state_cursor){ .p = r->buf + s->off, .len = s->len, .type = type, .id = id };
	return 0;
}

void state_get_bytes(struct state_cursor *c, void *p, size_t n)
{
	if (c->bad || c->len - c->pos < n) {
		c->bad = true;
		memset(p, 0, n);
		return;
	}
	memcpy(p, c->p + c->pos, n);
	c->pos += n;
}

uint8_t state_get_u8(struct state_cursor *c)
{
	uint8_t v;

	state_get_bytes(c, &v, 1);
	return v;
}

uint32_t state_get_u32(struct state_cursor *c)
{
	uint8_t b[4];

	state_get_bytes(c, b, 4);
	return rd32(b);
}

uint64_t state_get_u64(struct state_cursor *c)
{
	uint8_t b[8];

	state_get_bytes(c, b, 8);
	return rd64(b);
}

size_t state_get_blob_max(struct state_cursor *c, void *p, size_t max)
{
	uint32_t n = state_get_u32(c);

	if (n > max) {
		c->bad = true;
		memset(p, 0, max);
		return 0;
	}
	state_get_bytes(c, p, n);
	return c->bad ? 0 : n;
}

void state_get_blob(struct state_cursor *c, void *p, size_t n)
{
	if (state_get_blob_max(c, p, n) != n)
		c->bad = true;
}

int state_done(struct state_cursor *c)
{
	if (c->bad || c->pos != c->len)
		return err_set(-EINVAL, "state file: section %s %u has the wrong length or layout "
			       "(from another version of vireo?)", state_section_name(c->type), c->id);
	return 0;
}

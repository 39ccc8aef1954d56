/* vireo img verbs that move data: convert, commit, rebase, map, compare. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "img.h"
#include "vireo/cmd.h"
#include "vireo/log.h"

#define CHUNK (2u << 20)

bool img_is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	if (len < 16)
		return len == 0 || (p[0] == 0 && !memcmp(p, p + 1, len - 1));
	for (size_t i = 0; i < 16; i++)
		if (p[i])
			return false;
	return !memcmp(p, p + 16, len - 16);
}

int img_chain_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		     int *depth, uint64_t *host_off)
{
	int ret;

	for (*depth = 0; img; img = img->backing, ++*depth) {
		if (off >= img->size) {
			*pnum = len;
			return BLOCK_ZERO;
		}
		if (len > img->size - off)
			len = img->size - off;
		ret = image_block_status(img, off, len, pnum, host_off);
		if (ret < 0 || (ret & BLOCK_ALLOCATED))
			return ret;
		len = *pnum;
	}
	--*depth;	/* as qemu-img: the deepest layer decides unallocated ranges */
	*pnum = len;
	return BLOCK_ZERO;
}

#include <pthread.h>

static void progress(bool on, uint64_t done, uint64_t total)
{
	if (on)
		fprintf(stderr, "    (%.2f/100%%)\r", total ? 100.0 * (double)done / (double)total
						     : 100.0);
}

struct copy {
	struct image *in, *out;
	bool compress, progress;
	uint32_t cluster;
	uint8_t *buf;
	/* convert -c: worker threads take data ranges from a shared cursor */
	pthread_mutex_t lock;
	uint64_t cursor;
	int error;
};

static int write_out(struct copy *c, const uint8_t *buf, uint64_t off, uint64_t n)
{
	if (!c->compress)
		return img_is_zero(buf, n) ? 0 : image_write(c->out, off, buf, n);
	for (uint64_t p = 0; p < n; p += c->cluster) {
		size_t len = n - p < c->cluster ? (size_t)(n - p) : c->cluster;
		int ret;

		if (img_is_zero(buf + p, len))
			continue;
		ret = image_write_compressed(c->out, off + p, buf + p, len);
		if (ret)
			return ret;
	}
	return 0;
}

/* Copies every range that isn't zero through the whole input chain. The
 * output is new, so zero ranges are left unwritten. Status is asked for the
 * whole rest of the disk, so that a huge empty image takes few steps. With
 * -c, off stays cluster-aligned: data is read in whole clusters. */
static int copy_data(struct copy *c)
{
	uint64_t off = 0, size = c->in->size;

	while (off < size) {
		uint64_t rest = size - off, cap = rest < CHUNK ? rest : CHUNK, n, host;
		int depth, st = img_chain_status(c->in, off, rest, &n, &depth, &host);

		if (st < 0)
			return st;
		if (c->compress && (st & BLOCK_ZERO) && n >= c->cluster && n < rest)
			n -= n % c->cluster;
		else if (c->compress && !((st & BLOCK_ZERO) && n == rest))
			st = 0, n = cap;
		else if (n > cap)
			n = (st & BLOCK_ZERO) ? n : cap;
		if (!(st & BLOCK_ZERO)) {
			int ret = image_read(c->in, off, c->buf, n);

			if (!ret)
				ret = write_out(c, c->buf, off, n);
			if (ret)
				return ret;
		}
		off += n;
		progress(c->progress, off, size);
	}
	return 0;
}

/* Under c->lock: the next cluster-aligned data range (at most CHUNK) after
 * the cursor, skipping what reads as zero. Returns 0 when done, 1 with the range set. */
static int next_range(struct copy *c, uint64_t *off, uint64_t *n)
{
	uint64_t size = c->in->size;

	while (c->cursor < size && !c->error) {
		uint64_t rest = size - c->cursor, host, len;
		int depth, st = img_chain_status(c->in, c->cursor, rest, &len, &depth, &host);

		if (st < 0)
			return st;
		if ((st & BLOCK_ZERO) && (len >= c->cluster || len == rest)) {
			c->cursor += len < rest ? len - len % c->cluster : len;
			continue;
		}
		*off = c->cursor;
		*n = rest < CHUNK ? rest : CHUNK;
		c->cursor += *n;
		progress(c->progress, c->cursor, size);
		return 1;
	}
	return 0;
}

static void *compress_worker(void *arg)
{
	struct copy *c = arg;
	uint8_t *buf = malloc(CHUNK);
	uint64_t off = 0, n = 0;
	int ret = buf ? 0 : -ENOMEM;

	while (!ret) {
		pthread_mutex_lock(&c->lock);
		ret = c->error ? c->error : next_range(c, &off, &n);
		pthread_mutex_unlock(&c->lock);
		if (ret != 1)
			break;
		ret = image_read(c->in, off, buf, n) ?: write_out(c, buf, off, n);
	}
	if (ret < 0) {
		pthread_mutex_lock(&c->lock);
		if (!c->error)
			c->error = ret;
		pthread_mutex_unlock(&c->lock);
	}
	free(buf);
	return NULL;
}

/* convert -c: compression is CPU-bound, so one worker per CPU (up to 8). */
static int copy_compressed(struct copy *c)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int nr = cpus < 1 ? 1 : cpus > 8 ? 8 : (int)cpus, started = 0;
	pthread_t t[8];

	pthread_mutex_init(&c->lock, NULL);
	for (int i = 0; i < nr; i++)
		started += pthread_create(&t[started], NULL, compress_worker, c) == 0;
	if (!started)
		compress_worker(c);
	for (int i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	pthread_mutex_destroy(&c->lock);
	return c->error;
}

int img_copy(struct image *in, struct image *out, bool compress, bool show_progress)
{
	struct copy c = { .in = in, .out = out, .compress = compress,
			  .progress = show_progress };
	struct image_info info;
	int ret = 0;

	image_get_info(out, &info);
	c.cluster = info.cluster_size ? (uint32_t)info.cluster_size : 65536;
	if (compress && !out->fmt->write_compressed)
		ret = err_set(-ENOTSUP, "format %s does not support compression", out->fmt->name);
	c.buf = malloc(CHUNK);
	if (!ret && !c.buf)
		ret = err_set(-ENOMEM, "out of memory");
	if (!ret)
		ret = compress ? copy_compressed(&c) : copy_data(&c);
	if (!ret)
		ret = image_flush(out);
	if (show_progress)
		fprintf(stderr, "\n");
	free(c.buf);
	return ret;
}

int img_convert(int argc, char **argv)
{
	struct image_create_opts o = { 0 };
	const char *ifmt = NULL, *ofmt = "raw", *snap = NULL;
	struct image *in, *out;
	bool no_create = false;	/* -n: the output exists already */
	bool compress = false, show = false;
	int opt, ret, share = 0;

	while ((opt = getopt(argc, argv, "f:O:o:l:cpqUn")) != -1) {
		switch (opt) {
		case 'f': ifmt = optarg; break;
		case 'O': ofmt = optarg; break;
		case 'o': if (img_parse_opts(optarg, &o)) return img_fail(NULL); break;
		case 'l': snap = strncmp(optarg, "snapshot.name=", 14) ? optarg : optarg + 14; break;
		case 'c': compress = true; break;
		case 'p': show = isatty(STDERR_FILENO); break;
		case 'n': no_create = true; break;
		case 'U': share = IMAGE_FORCE_SHARE; break;	/* the input */
		case 'q': break;
		default: return img_fail("convert: bad option");
		}
	}
	if (optind + 2 != argc) {
		fprintf(stderr, "vireo img: convert needs IN and OUT\n");
		return 1;
	}
	if (image_open(argv[optind], ifmt, share, &in))
		return img_fail(NULL);
	ret = snap ? image_snapshot_load(in, snap) : 0;
	o.size = in->size;
	if (!ret && !no_create)
		ret = image_create(argv[optind + 1], ofmt, &o);
	if (!ret)
		ret = image_open(argv[optind + 1], ofmt, IMAGE_RDWR, &out);
	if (ret) {
		image_close(in);
		return img_fail("convert");
	}
	ret = img_copy(in, out, compress, show);
	image_close(out);
	image_close(in);
	return ret ? img_fail("convert") : 0;
}

/* ---- commit ---- */

static int open_backing_rw(struct image *top, struct image **out)
{
	char path[BLOCK_PATH_MAX];
	int ret;

	if (!top->backing_name[0])
		return err_set(-EINVAL, "%s has no backing file", top->filename);
	ret = bfile_resolve(top->filename, top->backing_name, path);
	if (!ret)
		ret = image_open(path, top->backing_fmt[0] ? top->backing_fmt : NULL, IMAGE_RDWR,
				 out);
	return ret;
}

int img_commit(int argc, char **argv)
{
	const char *fmt = NULL;
	struct image *top, *base = NULL;
	uint8_t *buf = malloc(CHUNK);
	uint64_t off = 0;
	int c, ret;

	while ((c = getopt(argc, argv, "f:qpdU")) != -1)
		if (c == 'f')
			fmt = optarg;
	if (optind >= argc || !buf) {
		free(buf);
		return img_fail("commit: FILE required");
	}
	/* Without its chain: the base is opened for writing next, which our
	 * own read-only open of it would refuse (image locks). Only ranges
	 * this layer allocates are read from it. */
	ret = image_open(argv[optind], fmt, IMAGE_RDWR | IMAGE_NO_BACKING, &top);
	if (ret) {
		free(buf);
		return img_fail(NULL);
	}
	ret = open_backing_rw(top, &base);
	if (!ret && base->size < top->size)
		ret = image_resize(base, top->size);
	while (!ret && off < top->size) {
		uint64_t n, host;
		int st = image_block_status(top, off, top->size - off, &n, &host);

		if (st >= 0 && (st & BLOCK_ALLOCATED) && !(st & BLOCK_ZERO) && n > CHUNK)
			n = CHUNK;
		if (st < 0)
			ret = st;
		else if (st & BLOCK_ALLOCATED)
			ret = (st & BLOCK_ZERO) ? image_write_zeroes(base, off, n)
				: image_read(top, off, buf, n) ?: image_write(base, off, buf, n);
		off += n;
	}
	if (!ret)
		ret = image_flush(base);
	image_close(base);
	if (!ret && top->fmt->make_empty) {
		pthread_mutex_lock(&top->lock);
		ret = top->fmt->make_empty(top);
		pthread_mutex_unlock(&top->lock);
	}
	image_close(top);
	free(buf);
	if (ret)
		return img_fail("commit");
	printf("Image committed.\n");
	return 0;
}

/* ---- rebase ---- */

/* Safe rebase: where FILE doesn't allocate data and the old and new backing
 * files differ, copy the old backing data into FILE first. */
static int rebase_copy(struct image *img, struct image *newb)
{
	uint8_t *a = malloc(CHUNK), *b = malloc(CHUNK);
	uint64_t off = 0;
	int ret = a && b ? 0 : err_set(-ENOMEM, "out of memory");

	while (!ret && off < img->size) {
		uint64_t n, host;
		int st = image_block_status(img, off, img->size - off, &n, &host);

		if (st < 0) {
			ret = st;
			break;
		}
		if (!(st & BLOCK_ALLOCATED) && n > CHUNK)
			n = CHUNK;
		if (!(st & BLOCK_ALLOCATED)) {
			ret = image_read(img, off, a, n);
			memset(b, 0, n);
			if (!ret && newb && off < newb->size)
				ret = image_read(newb, off, b, newb->size - off < n ?
						 newb->size - off : n);
			if (!ret && memcmp(a, b, n))
				ret = image_write(img, off, a, n);
		}
		off += n;
	}
	free(a);
	free(b);
	return ret;
}

int img_rebase(int argc, char **argv)
{
	const char *fmt = NULL, *nb = NULL, *nbfmt = NULL;
	struct image *img, *newb = NULL;
	bool unsafe = false;
	int c, ret = 0;

	while ((c = getopt(argc, argv, "f:b:F:uqpU")) != -1) {
		if (c == 'f')
			fmt = optarg;
		else if (c == 'b')
			nb = optarg;
		else if (c == 'F')
			nbfmt = optarg;
		else if (c == 'u')
			unsafe = true;
	}
	if (optind >= argc || !nb)
		return img_fail("rebase: -b NEW and FILE required");
	if (image_open(argv[optind], fmt, IMAGE_RDWR | (unsafe ? IMAGE_NO_BACKING : 0), &img))
		return img_fail(NULL);
	if (!img->fmt->set_backing)
		ret = err_set(-ENOTSUP, "format %s has no backing files", img->fmt->name);
	if (!ret && nb[0]) {
		char path[BLOCK_PATH_MAX];

		ret = bfile_resolve(img->filename, nb, path);
		if (!ret)
			ret = image_open(path, nbfmt, 0, &newb);
		if (!ret && !nbfmt)
			nbfmt = newb->fmt->name;
	}
	if (!ret && !unsafe)
		ret = rebase_copy(img, newb);
	if (!ret) {
		pthread_mutex_lock(&img->lock);
		ret = img->fmt->set_backing(img, nb[0] ? nb : NULL, nbfmt);
		pthread_mutex_unlock(&img->lock);
	}
	image_close(newb);
	image_close(img);
	return ret ? img_fail("rebase") : 0;
}

/* ---- map ---- */

struct extent {
	uint64_t start, length, offset;
	int depth, flags;
};

static void map_print(const struct extent *e, bool json, bool *first, struct image *img)
{
	bool data = e->flags & BLOCK_DATA, zero = e->flags & BLOCK_ZERO;
	bool present = (e->flags & BLOCK_ALLOCATED) != 0;

	if (json) {
		printf("%s{ \"start\": %llu, \"length\": %llu, \"depth\": %d, \"present\": %s, "
		       "\"zero\": %s, \"data\": %s", *first ? "" : ",\n",
		       (unsigned long long)e->start, (unsigned long long)e->length, e->depth,
		       present ? "true" : "false", zero ? "true" : "false", data ? "true" : "false");
		if (e->flags & BLOCK_OFFSET)
			printf(", \"offset\": %llu", (unsigned long long)e->offset);
		printf("}");
	} else if (data && (e->flags & BLOCK_OFFSET)) {
		struct image *l = img;

		for (int i = 0; i < e->depth && l->backing; i++)
			l = l->backing;
		printf("%#-16llx%#-16llx%#-16llx%s\n", (unsigned long long)e->start,
		       (unsigned long long)e->length, (unsigned long long)e->offset, l->filename);
	}
	*first = false;
}

static bool mergeable(const struct extent *a, const struct extent *b)
{
	if (a->flags != b->flags || a->depth != b->depth)
		return false;
	return !(a->flags & BLOCK_OFFSET) || a->offset + a->length == b->offset;
}

int img_map(int argc, char **argv)
{
	static const struct option lo[] = { { "output", required_argument, NULL, 'O' },
					    { NULL, 0, NULL, 0 } };
	const char *fmt = NULL, *out = "human";
	struct extent cur = { 0 }, e;
	bool json, first = true, have = false;
	struct image *img;
	int c, share = 0;

	while ((c = getopt_long(argc, argv, "f:U", lo, NULL)) != -1) {
		if (c == 'f')
			fmt = optarg;
		else if (c == 'O')
			out = optarg;
		else if (c == 'U')
			share = IMAGE_FORCE_SHARE;
	}
	if (optind >= argc)
		return img_fail("map: FILE required");
	json = !strcmp(out, "json");
	if (image_open(argv[optind], fmt, share, &img))
		return img_fail(NULL);
	if (json)
		printf("[");
	else
		printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
	for (uint64_t off = 0; off < img->size; off += e.length) {
		e.start = off;
		e.flags = img_chain_status(img, off, img->size - off, &e.length, &e.depth, &e.offset);
		if (e.flags < 0) {
			image_close(img);
			return img_fail("map");
		}
		if (!(e.flags & BLOCK_ALLOCATED))
			e.flags |= e.flags & BLOCK_ZERO ? 0 : 0;
		if (have && mergeable(&cur, &e)) {
			cur.length += e.length;
			continue;
		}
		if (have)
			map_print(&cur, json, &first, img);
		cur = e;
		have = true;
	}
	if (have)
		map_print(&cur, json, &first, img);
	if (json)
		printf("]\n");
	image_close(img);
	return 0;
}

/* ---- compare ---- */

/* Bytes from off that read as zeroes in both images (0 if not known). */
static uint64_t zero_in_both(struct image *a, struct image *b, uint64_t off, uint64_t len)
{
	uint64_t na, nb, host;
	int depth, sa = img_chain_status(a, off, len, &na, &depth, &host);
	int sb = sa >= 0 && (sa & BLOCK_ZERO) ? img_chain_status(b, off, len, &nb, &depth, &host)
					    : -1;

	if (sb < 0 || !(sb & BLOCK_ZERO))
		return 0;
	return na < nb ? na : nb;
}

static int compare_tail(struct image *big, uint64_t from, uint8_t *buf, uint64_t *at)
{
	for (uint64_t off = from; off < big->size;) {
		uint64_t n = zero_in_both(big, big, off, big->size - off);
		int ret;

		if (n) {
			off += n;
			continue;
		}
		n = big->size - off < CHUNK ? big->size - off : CHUNK;
		ret = image_read(big, off, buf, n);

		if (ret)
			return ret;
		for (uint64_t i = 0; i < n; i++)
			if (buf[i]) {
				*at = off + i;
				return 1;
			}
		off += n;
	}
	return 0;
}

int img_compare(int argc, char **argv)
{
	const char *fa = NULL, *fb = NULL;
	struct image *a, *b;
	uint8_t *x = malloc(CHUNK), *y = malloc(CHUNK);
	uint64_t off = 0, min, at = 0;
	int c, ret = 0, diff = 0, share = 0;

	while ((c = getopt(argc, argv, "f:F:qpsU")) != -1) {
		if (c == 'f')
			fa = optarg;
		else if (c == 'F')
			fb = optarg;
		else if (c == 'U')
			share = IMAGE_FORCE_SHARE;
	}
	if (optind + 2 != argc || !x || !y) {
		fprintf(stderr, "vireo img: compare needs two images\n");
		free(x);
		free(y);
		return 2;
	}
	if (image_open(argv[optind], fa, share, &a)) {
		img_fail(NULL);
		return 2;
	}
	if (image_open(argv[optind + 1], fb ? fb : fa, share, &b)) {
		img_fail(NULL);
		image_close(a);
		return 2;
	}
	min = a->size < b->size ? a->size : b->size;
	while (!ret && !diff && off < min) {
		uint64_t n = zero_in_both(a, b, off, min - off);

		if (n) {	/* both read as zeroes: nothing to compare */
			off += n;
			continue;
		}
		n = min - off < CHUNK ? min - off : CHUNK;
		ret = image_read(a, off, x, n) ?: image_read(b, off, y, n);
		for (uint64_t i = 0; !ret && i < n; i++)
			if (x[i] != y[i]) {
				diff = 1;
				at = off + i;
				break;
			}
		off += n;
	}
	if (!ret && !diff && a->size != b->size)
		ret = compare_tail(a->size > b->size ? a : b, min, x, &at), diff = ret == 1,
		ret = ret == 1 ? 0 : ret;
	if (ret)
		img_fail("compare");
	else if (diff)
		printf("Content mismatch at offset %llu!\n", (unsigned long long)at);
	else
		printf("Images are identical.\n");
	image_close(a);
	image_close(b);
	free(x);
	free(y);
	return ret ? 2 : diff;
}

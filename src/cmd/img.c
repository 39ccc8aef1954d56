/* vireo img: qemu-img's verbs and flags for the common cases (create, info,
 * check, convert, snapshot, commit, rebase, resize, map, compare). */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "img.h"
#include "vireo/cmd.h"
#include "vireo/log.h"
#include "vireo/size.h"

int img_fail(const char *what)
{
	fprintf(stderr, "vireo img: %s%s%s\n", what ? what : "", what ? ": " : "", err_get());
	return 1;
}

static void print_fmt(const struct image_format *f, void *ctx)
{
	fprintf(ctx, " %s", f->name);
}

static int usage_to(FILE *out)
{
	fprintf(out,
		"usage: vireo img COMMAND [ARGS]\n"
		"  create [-f fmt] [-o opt=val,...] [-b backing [-F fmt]] FILE [SIZE]\n"
		"  info [-f fmt] [--output=human|json] [--backing-chain] FILE\n"
		"  check [-f fmt] [-r leaks|all] [--output=human|json] FILE\n"
		"  convert [-f fmt] -O fmt [-o opts] [-l SNAP] [-c] [-p] [-n] [-U] IN OUT\n"
		"  snapshot -c|-l|-a|-d [NAME] FILE\n"
		"  commit [-f fmt] FILE\n"
		"  rebase [-f fmt] [-u] -b NEW [-F fmt] FILE\n"
		"  resize [-f fmt] [--shrink] FILE [+-]SIZE\n"
		"  map [-f fmt] [--output=human|json] FILE\n"
		"  compare [-f fmt] [-F fmt] A B\n"
		"  bench [-f fmt] [-c count] [-s size] [-w] [-F] [-t none] FILE\n"
		"--backing-confine (with any command): refuse backing files, VMDK extents\n"
		"and parents, VHD parents that resolve outside the image's directory\n"
		"sizes take K, M, G, T suffixes; formats:");
	image_format_foreach(print_fmt, out);
	fprintf(out, "\n");
	return out == stdout ? 0 : 1;
}

static int usage(void)
{
	return usage_to(stderr);
}

static bool opt_on(const char *v)
{
	return !strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "1");
}

int img_parse_opts(const char *text, struct image_create_opts *o)
{
	static char *copies[8];	/* the options point into these until exit */
	static const char *extra[16];
	static size_t ncopies;
	char *copy, *save = NULL, *kv;
	size_t nextra = 0;

	if (ncopies >= 8 || !(copy = copies[ncopies++] = strdup(text)))
		return err_set(-ENOMEM, "too many -o options");
	for (kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
		char *v = strchr(kv, '=');
		uint64_t n;

		if (!v)
			return err_set(-EINVAL, "option '%s' needs a value", kv);
		*v++ = '\0';
		if (!strcmp(kv, "cluster_size")) {
			if (size_parse(v, &n) || n > UINT32_MAX)
				return err_set(-EINVAL, "invalid cluster_size '%s'", v);
			o->cluster_size = (uint32_t)n;
		} else if (!strcmp(kv, "compat")) {
			o->compat = v;
		} else if (!strcmp(kv, "refcount_bits")) {
			o->refcount_bits = atoi(v);
		} else if (!strcmp(kv, "compression_type")) {
			o->compression_type = v;
		} else if (!strcmp(kv, "lazy_refcounts")) {
			o->lazy_refcounts = opt_on(v);
		} else if (!strcmp(kv, "backing_file")) {
			o->backing = v;
		} else if (!strcmp(kv, "backing_fmt")) {
			o->backing_fmt = v;
		} else if (!strcmp(kv, "subformat")) {
			o->subformat = v;
		} else if (!strcmp(kv, "size")) {
			if (size_parse(v, &o->size))
				return err_set(-EINVAL, "invalid size '%s'", v);
		} else if (!strcmp(kv, "preallocation") && !strcmp(v, "off")) {
			continue;	/* the default: thin */
		} else if (nextra < 15) {
			v[-1] = '=';
			extra[nextra++] = kv;
		}
	}
	extra[nextra] = NULL;
	o->extra = extra;
	return 0;
}

/* ---- create ---- */

static int img_create(int argc, char **argv)
{
	struct image_create_opts o = { 0 };
	const char *fmt = "raw";
	int c;

	while ((c = getopt(argc, argv, "f:o:b:F:uq")) != -1) {
		switch (c) {
		case 'f': fmt = optarg; break;
		case 'o': if (img_parse_opts(optarg, &o)) return img_fail(NULL); break;
		case 'b': o.backing = optarg; break;
		case 'F': o.backing_fmt = optarg; break;
		case 'u': case 'q': break;
		default: return usage();
		}
	}
	if (optind >= argc)
		return usage();
	if (optind + 1 < argc && size_parse(argv[optind + 1], &o.size)) {
		fprintf(stderr, "vireo img: invalid size '%s'\n", argv[optind + 1]);
		return 1;
	}
	if (optind + 1 >= argc && o.backing) {
		char path[BLOCK_PATH_MAX];
		struct image *b;

		if (bfile_resolve(argv[optind], o.backing, path) ||
		    image_open(path, o.backing_fmt, 0, &b))
			return img_fail("backing file");
		o.size = b->size;
		if (!o.backing_fmt)
			o.backing_fmt = b->fmt->name;
		image_close(b);
	} else if (optind + 1 >= argc && !o.size) {
		fprintf(stderr, "vireo img: create: SIZE is required\n");
		return 1;
	}
	if (image_create(argv[optind], fmt, &o))
		return img_fail("create");
	printf("Formatting '%s', fmt=%s size=%llu\n", argv[optind], fmt,
	       (unsigned long long)o.size);
	return 0;
}

/* ---- info ---- */

static int64_t disk_usage(const char *path)
{
	struct stat st;

	return stat(path, &st) ? 0 : (int64_t)st.st_blocks * 512;
}

static json_object *snapshots_json(const struct image_snapshot *sn, size_t nsn)
{
	json_object *arr = json_object_new_array();

	for (size_t i = 0; i < nsn; i++) {
		json_object *e = json_object_new_object();

		json_object_object_add(e, "id", json_object_new_string(sn[i].id));
		json_object_object_add(e, "name", json_object_new_string(sn[i].name));
		json_object_object_add(e, "vm-state-size",
				       json_object_new_int64((int64_t)sn[i].vm_state_size));
		json_object_object_add(e, "date-sec", json_object_new_int64(sn[i].date_sec));
		json_object_object_add(e, "date-nsec", json_object_new_int64(sn[i].date_nsec));
		json_object_object_add(e, "vm-clock-sec", json_object_new_int64(
			(int64_t)(sn[i].vm_clock_nsec / 1000000000)));
		json_object_object_add(e, "vm-clock-nsec", json_object_new_int64(
			(int64_t)(sn[i].vm_clock_nsec % 1000000000)));
		if (sn[i].icount != UINT64_MAX)
			json_object_object_add(e, "icount", json_object_new_int64((int64_t)sn[i].icount));
		json_object_array_add(arr, e);
	}
	return arr;
}

static json_object *info_json(struct image *img)
{
	json_object *o = json_object_new_object(), *fs = json_object_new_object();
	json_object *data = json_object_new_object();
	struct image_snapshot *sn = NULL;
	struct image_info info;
	size_t nsn = 0;

	image_get_info(img, &info);
	json_object_object_add(o, "virtual-size", json_object_new_int64((int64_t)img->size));
	json_object_object_add(o, "filename", json_object_new_string(img->filename));
	if (info.cluster_size)
		json_object_object_add(o, "cluster-size",
				       json_object_new_int64((int64_t)info.cluster_size));
	json_object_object_add(o, "format", json_object_new_string(img->fmt->name));
	json_object_object_add(o, "actual-size", json_object_new_int64(disk_usage(img->filename)));
	json_object_object_add(o, "dirty-flag", json_object_new_boolean(info.dirty));
	if (img->backing_name[0]) {
		char full[BLOCK_PATH_MAX];

		json_object_object_add(o, "backing-filename",
				       json_object_new_string(img->backing_name));
		if (!bfile_resolve(img->filename, img->backing_name, full))
			json_object_object_add(o, "full-backing-filename",
					       json_object_new_string(full));
		if (img->backing_fmt[0])
			json_object_object_add(o, "backing-filename-format",
					       json_object_new_string(img->backing_fmt));
	}
	if (img->fmt->snapshot_list && !img->fmt->snapshot_list(img, &sn, &nsn) && nsn)
		json_object_object_add(o, "snapshots", snapshots_json(sn, nsn));
	free(sn);
	for (size_t i = 0; i < info.nr_items; i++) {
		struct image_info_item *it = &info.items[i];

		json_object_object_add(data, it->key,
			it->type == INFO_STR ? json_object_new_string(it->str) :
			it->type == INFO_INT ? json_object_new_int64(it->num) :
					       json_object_new_boolean((int)it->num));
	}
	json_object_object_add(fs, "type", json_object_new_string(img->fmt->name));
	json_object_object_add(fs, "data", data);
	if (info.nr_items)
		json_object_object_add(o, "format-specific", fs);
	else
		json_object_put(fs);
	return o;
}

static void print_snapshots(struct image *img)
{
	struct image_snapshot *sn = NULL;
	size_t n = 0;

	if (!img->fmt->snapshot_list || img->fmt->snapshot_list(img, &sn, &n) || !n) {
		free(sn);
		return;
	}
	printf("Snapshot list:\nID        TAG               VM SIZE                DATE     "
	       "VM CLOCK     ICOUNT\n");
	for (size_t i = 0; i < n; i++) {
		char date[32], vms[32];
		time_t t = sn[i].date_sec;
		uint64_t ms = sn[i].vm_clock_nsec / 1000000;

		strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", localtime(&t));
		size_format(sn[i].vm_state_size, vms, sizeof(vms));
		printf("%-9s %-17s %7s %s %02llu:%02llu:%02llu.%03llu %10lld\n", sn[i].id,
		       sn[i].name, vms, date, (unsigned long long)(ms / 3600000),
		       (unsigned long long)(ms / 60000 % 60), (unsigned long long)(ms / 1000 % 60),
		       (unsigned long long)(ms % 1000),
		       sn[i].icount == UINT64_MAX ? 0LL : (long long)sn[i].icount);
	}
	free(sn);
}

static void info_human(struct image *img)
{
	struct image_info info;
	char a[32], b[32];

	image_get_info(img, &info);
	printf("image: %s\nfile format: %s\nvirtual size: %s (%llu bytes)\ndisk size: %s\n",
	       img->filename, img->fmt->name, size_format(img->size, a, sizeof(a)),
	       (unsigned long long)img->size,
	       size_format((uint64_t)disk_usage(img->filename), b, sizeof(b)));
	if (info.cluster_size)
		printf("cluster_size: %llu\n", (unsigned long long)info.cluster_size);
	if (img->backing_name[0])
		printf("backing file: %s\n", img->backing_name);
	if (img->backing_fmt[0])
		printf("backing file format: %s\n", img->backing_fmt);
	if (info.dirty)
		printf("dirty flag: true\n");
	print_snapshots(img);
	if (info.nr_items)
		printf("Format specific information:\n");
	for (size_t i = 0; i < info.nr_items; i++) {
		struct image_info_item *it = &info.items[i];
		char key[32];

		snprintf(key, sizeof(key), "%s", it->key);
		for (char *p = key; *p; p++)
			*p = *p == '-' ? ' ' : *p;
		if (it->type == INFO_STR)
			printf("    %s: %s\n", key, it->str);
		else if (it->type == INFO_INT)
			printf("    %s: %lld\n", key, (long long)it->num);
		else
			printf("    %s: %s\n", key, it->num ? "true" : "false");
	}
}

static const struct option long_opts[] = {
	{ "output", required_argument, NULL, 'O' },
	{ "backing-chain", no_argument, NULL, 'B' },
	{ "shrink", no_argument, NULL, 'S' },
	{ "force-share", no_argument, NULL, 'U' },
	{ NULL, 0, NULL, 0 },
};

static int img_info(int argc, char **argv)
{
	const char *fmt = NULL, *out = "human";
	bool chain = false, json;
	struct image *img, *l;
	json_object *arr;
	int c, share = 0;

	while ((c = getopt_long(argc, argv, "f:U", long_opts, NULL)) != -1) {
		if (c == 'f')
			fmt = optarg;
		else if (c == 'O')
			out = optarg;
		else if (c == 'B')
			chain = true;
		else if (c == 'U')
			share = IMAGE_FORCE_SHARE;
		else
			return usage();
	}
	if (optind >= argc)
		return usage();
	json = !strcmp(out, "json");
	if (image_open(argv[optind], fmt, (chain ? 0 : IMAGE_NO_BACKING) | share, &img))
		return img_fail(NULL);
	arr = json_object_new_array();
	for (l = img; l; l = chain ? l->backing : NULL) {
		if (json)
			json_object_array_add(arr, info_json(l));
		else
			info_human(l);
		if (!json && chain && l->backing)
			printf("\n");
	}
	if (json)
		printf("%s\n", json_object_to_json_string_ext(chain ? arr :
			json_object_array_get_idx(arr, 0), JSON_C_TO_STRING_PRETTY |
			JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(arr);
	image_close(img);
	return 0;
}

/* ---- check ---- */

static void check_human(const struct image_check *r)
{
	for (size_t i = 0; i < r->nr_messages; i++)
		fprintf(stderr, "%s\n", r->messages[i]);
	if (r->leaks_fixed || r->corruptions_fixed)
		printf("The following inconsistencies were found and repaired:\n\n"
		       "    %llu leaked clusters\n    %llu corruptions\n\n"
		       "Double checking the fixed image now...\n",
		       (unsigned long long)r->leaks_fixed, (unsigned long long)r->corruptions_fixed);
	if (!r->corruptions && !r->leaks && !r->check_errors)
		printf("No errors were found on the image.\n");
	if (r->corruptions)
		printf("\n%llu errors were found on the image.\nData may be corrupted, or further "
		       "writes to the image may corrupt it.\n", (unsigned long long)r->corruptions);
	if (r->leaks)
		printf("\n%llu leaked clusters were found on the image.\nThis means waste of disk "
		       "space, but no harm to data.\n", (unsigned long long)r->leaks);
	if (r->check_errors)
		printf("\n%llu internal errors have occurred during the check.\n",
		       (unsigned long long)r->check_errors);
	if (r->total_clusters)
		printf("%llu/%llu = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed "
		       "clusters\n", (unsigned long long)r->allocated_clusters,
		       (unsigned long long)r->total_clusters,
		       100.0 * (double)r->allocated_clusters / (double)r->total_clusters,
		       r->allocated_clusters ? 100.0 * (double)r->fragmented_clusters /
					       (double)r->allocated_clusters : 0.0,
		       r->allocated_clusters ? 100.0 * (double)r->compressed_clusters /
					       (double)r->allocated_clusters : 0.0);
	if (r->image_end_offset)
		printf("Image end offset: %llu\n", (unsigned long long)r->image_end_offset);
}

static void check_json(struct image *img, const struct image_check *r)
{
	json_object *o = json_object_new_object();

#define ADD(k, v) json_object_object_add(o, k, json_object_new_int64((int64_t)(v)))
#define ADD_NZ(k, v) do { if (v) ADD(k, v); } while (0)	/* qemu-img omits zeroes */
	ADD("image-end-offset", r->image_end_offset);
	ADD("total-clusters", r->total_clusters);
	ADD("check-errors", r->check_errors);
	ADD_NZ("leaks", r->leaks);
	ADD_NZ("corruptions", r->corruptions);
	ADD_NZ("leaks-fixed", r->leaks_fixed);
	ADD_NZ("corruptions-fixed", r->corruptions_fixed);
	ADD("allocated-clusters", r->allocated_clusters);
	ADD_NZ("fragmented-clusters", r->fragmented_clusters);
	ADD_NZ("compressed-clusters", r->compressed_clusters);
#undef ADD_NZ
#undef ADD
	json_object_object_add(o, "filename", json_object_new_string(img->filename));
	json_object_object_add(o, "format", json_object_new_string(img->fmt->name));
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
						      JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

/* Exit codes as qemu-img: 0 clean, 1 check not completed, 2 corruption,
 * 3 leaks only, 63 format can't be checked. */
static int img_check(int argc, char **argv)
{
	const char *fmt = NULL, *out = "human";
	struct image_check r;
	struct image *img;
	int c, fix = 0, ret, share = 0;

	while ((c = getopt_long(argc, argv, "f:r:qU", long_opts, NULL)) != -1) {
		if (c == 'f')
			fmt = optarg;
		else if (c == 'O')
			out = optarg;
		else if (c == 'r' && !strcmp(optarg, "leaks"))
			fix = IMAGE_FIX_LEAKS;
		else if (c == 'r' && !strcmp(optarg, "all"))
			fix = IMAGE_FIX_LEAKS | IMAGE_FIX_ERRORS;
		else if (c == 'U')
			share = IMAGE_FORCE_SHARE;	/* read-only checks only */
		else if (c != 'q')
			return usage();
	}
	if (optind >= argc)
		return usage();
	if (image_open(argv[optind], fmt, (fix ? IMAGE_RDWR : share) | IMAGE_NO_BACKING, &img))
		return img_fail(NULL);
	ret = image_check(img, &r, fix);
	if (ret == -ENOTSUP) {
		fprintf(stderr, "vireo img: this image format does not support checks\n");
		image_close(img);
		return 63;
	}
	if (ret) {
		img_fail("check");
		image_close(img);
		image_check_free(&r);
		return 1;
	}
	if (!strcmp(out, "json"))
		check_json(img, &r);
	else
		check_human(&r);
	image_close(img);
	image_check_free(&r);
	if (r.check_errors)
		return 1;
	return r.corruptions ? 2 : r.leaks ? 3 : 0;
}

/* ---- snapshot, resize ---- */

static int img_snapshot(int argc, char **argv)
{
	const char *name = NULL;
	struct image_snapshot *sn = NULL;
	struct image *img;
	size_t n;
	int c, op = 0, ret = 0, share = 0;

	while ((c = getopt(argc, argv, "c:a:d:lqU")) != -1) {
		if (c == 'c' || c == 'a' || c == 'd') {
			op = c;
			name = optarg;
		} else if (c == 'l') {
			op = 'l';
		} else if (c == 'U') {
			share = IMAGE_FORCE_SHARE;	/* -l only */
		} else if (c != 'q') {
			return usage();
		}
	}
	if (!op || optind >= argc)
		return usage();
	if (image_open(argv[optind], NULL, (op == 'l' ? share : IMAGE_RDWR) | IMAGE_NO_BACKING, &img))
		return img_fail(NULL);
	if (op == 'l') {
		print_snapshots(img);
	} else {
		int (*fn)(struct image *, const char *) =
			op == 'c' ? img->fmt->snapshot_create :
			op == 'a' ? img->fmt->snapshot_apply : img->fmt->snapshot_delete;

		if (!fn) {
			ret = err_set(-ENOTSUP, "format %s has no internal snapshots", img->fmt->name);
		} else {
			pthread_mutex_lock(&img->lock);
			ret = fn(img, name);
			pthread_mutex_unlock(&img->lock);
		}
	}
	free(sn);
	(void)n;
	if (ret)
		img_fail("snapshot");
	image_close(img);
	return ret ? 1 : 0;
}

static int img_resize(int argc, char **argv)
{
	const char *fmt = NULL, *arg;
	struct image *img;
	uint64_t n, size;
	int c, sign = 0;

	while ((c = getopt_long(argc, argv, "f:qU", long_opts, NULL)) != -1)
		if (c == 'f')
			fmt = optarg;
		else if (c != 'S' && c != 'q' && c != 'U')
			return usage();
	if (optind + 2 != argc)
		return usage();
	arg = argv[optind + 1];
	if (*arg == '+' || *arg == '-')
		sign = *arg++ == '+' ? 1 : -1;
	if (size_parse(arg, &n)) {
		fprintf(stderr, "vireo img: invalid size '%s'\n", argv[optind + 1]);
		return 1;
	}
	if (image_open(argv[optind], fmt, IMAGE_RDWR | IMAGE_NO_BACKING, &img))
		return img_fail(NULL);
	size = sign > 0 ? img->size + n : sign < 0 ? img->size - n : n;
	if (sign < 0 && n > img->size) {
		image_close(img);
		fprintf(stderr, "vireo img: new size would be negative\n");
		return 1;
	}
	if (image_resize(img, size)) {
		img_fail("resize");
		image_close(img);
		return 1;
	}
	image_close(img);
	printf("Image resized.\n");
	return 0;
}

struct verb {
	const char *name;
	int (*fn)(int argc, char **argv);
};

static const struct verb verbs[] = {
	{ "create", img_create }, { "info", img_info }, { "check", img_check },
	{ "convert", img_convert }, { "snapshot", img_snapshot }, { "commit", img_commit },
	{ "rebase", img_rebase }, { "resize", img_resize }, { "map", img_map },
	{ "compare", img_compare }, { "bench", img_bench },
};

/* --backing-confine, anywhere on the line: every file an image names
 * (backing files, VMDK extents and parents, VHD parents) must resolve
 * inside that image's own directory (docs/images.md). */
static int take_global_opts(int argc, char **argv)
{
	static const struct block_policy confine = { .own_dir = true };
	int n = 0;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--backing-confine"))
			image_set_default_policy(&confine);
		else
			argv[n++] = argv[i];
	}
	argv[n] = NULL;
	return n;
}

int cmd_img(int argc, char **argv)
{
	argc = take_global_opts(argc, argv);
	if (argc < 2)
		return usage();
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return usage_to(stdout);
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (!strcmp(argv[1], verbs[i].name)) {
			optind = 1;
			return verbs[i].fn(argc - 1, argv + 1);
		}
	fprintf(stderr, "vireo img: unknown command '%s'\n", argv[1]);
	return usage();
}

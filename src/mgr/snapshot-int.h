/* What src/mgr/snapshot.c shares with export.c (not public). */
#ifndef VIREO_MGR_SNAPSHOT_INT_H
#define VIREO_MGR_SNAPSHOT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vireo/mgr.h"

struct json_object;

/* A snapshot's meta.json (docs/api.md "Snapshots"). */
struct snap_meta {
	char name[MGR_NAME_MAX + 1];
	char parent[MGR_NAME_MAX + 1];   /* "": none */
	int64_t time_ns;                 /* when taken, CLOCK_REALTIME */
	bool memory;
	bool incremental;                /* memory holds only what changed since parent's */
	char memory_id[17];              /* the VMM's id of the memory snapshot; "": none */
	char vm_state[16];
	unsigned int ndisks;
	struct {
		unsigned int index;
		char *path;
	} disks[MGR_MAX_DISKS];
};

void meta_free(struct snap_meta *s);
struct json_object *meta_to_json(const struct snap_meta *s);
/* 0 or -EINVAL with err_set(); s is freed on failure. */
int meta_from_json(struct json_object *o, struct snap_meta *s);
/* -ENOENT: no such snapshot; -EINVAL: damaged (err_set() says how). */
int meta_load(struct mgr *m, const char *vm, const char *snap, struct snap_meta *s);
/* DIR/snapshots/VM[/SNAP[/FILE]]. */
int snap_path(struct mgr *m, char *buf, size_t size, const char *vm, const char *snap,
	      const char *file);
void current_set(struct mgr *m, const char *vm, const char *snap);
/* A snapshot directory (flat) and its files. */
int remove_dir(const char *path);
/* Every writable disk of d has (want) or lacks an internal snapshot name. */
int disks_check(const struct vm_def *d, bool vmm, const char *name, bool want);

/* An export as one tar archive (export-archive.c). export_pack writes
 * dir's files rels[] (relative paths), in that order, into the new file
 * path. A reader hands out an archive's regular files in order: next
 * gives 1 with the entry's path and size (0: the end; a link, device or
 * unsafe path: -EINVAL), copy writes its data into out (an empty file,
 * holes left holes) with their SHA-256 in hex, text reads an entry that
 * must be named want and be at most max bytes. 0 or -errno, err_set(). */
struct export_reader;
int export_pack(const char *dir, const char *const *rels, unsigned int n, const char *path);
int export_reader_open(const char *path, struct export_reader **out);
int export_reader_next(struct export_reader *r, char *rel, size_t size, uint64_t *len);
int export_reader_copy(struct export_reader *r, int out, uint64_t size, char hex[65]);
int export_reader_text(struct export_reader *r, const char *want, char **text, size_t max);
void export_reader_close(struct export_reader *r);

#endif

/* What export.c shares with import.c: the format's name and bounds, and
 * the file helpers both use. */
#define EXPORT_FORMAT "vireo-export"
#define EXPORT_VERSION 1
#define MANIFEST_MAX (1u << 20)
#define MAX_CHAIN SNAPSHOT_MAX_CHAIN
/* Files of an export: state and memory per snapshot, disks, kernel, initrd. */
#define MAX_FILES (2 * MAX_CHAIN + MGR_MAX_DISKS + 2)
int export_copy_hashed(int in, int out, uint64_t size, char hex[65]);
void export_remove_tree(const char *path);
int export_fmt_path(char *out, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int export_mkdir_in(const char *base, const char *sub);
void export_sha256_hex(const char *text, char hex[65]);
struct json_object;
int export_body_path(struct mgr *m, struct json_object *body, char *out, size_t size,
		     bool *archive);

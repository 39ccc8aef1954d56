/* What src/state/snapshot.c and snapshot-inc.c share (not public). */
#ifndef VIREO_STATE_SNAPSHOT_INT_H
#define VIREO_STATE_SNAPSHOT_INT_H

#include <limits.h>
#include <stdint.h>

#include "vireo/state.h"

struct guest_memory;
struct machine_config;

struct snapshot {
	struct state_reader *r;
	int mem_fd;
	uint64_t id;            /* 0: none recorded (taken by an older vireo) */
	char dir[PATH_MAX];     /* its directory, absolute; "": from a buffer */
	/* An incremental snapshot: the pages of its memory file and the
	 * snapshot they go over. */
	struct snapshot *parent;
	uint64_t *bits, words, npages;
};

/* Checks and opens dir's snapshot into s (s->mem_fd -1 on entry), its
 * chain too; depth: how many increments were opened above it. */
int snapshot_check(const char *dir, struct snapshot *s, struct machine_config *m,
		   unsigned int depth);

/* snapshot-inc.c */
/* Reads STATE_SEC_SNAPID and STATE_SEC_DIFF of an opened state file; for
 * an increment, checks its memory file's size and opens its parents. */
int snapshot_inc_open(struct snapshot *s, const struct machine_config *m, unsigned int depth);
/* The full snapshot at the root of s's chain. */
struct snapshot *snapshot_root(struct snapshot *s);
/* Writes the increments' pages over guest RAM mapped from the root's
 * memory file, oldest first. */
int snapshot_inc_apply(const struct snapshot *s, const struct guest_memory *mem);

/* Saving: the sections of a snapshot with id `id` (incremental if t says
 * so), after the checks and the dirty-log collection of
 * snapshot_inc_prepare(). */
int snapshot_inc_prepare(const struct snapshot_target *t);
uint64_t snapshot_new_id(void);
void snapshot_inc_sections(const struct snapshot_target *t, uint64_t id,
			   struct state_writer *w);
/* Writes the increment's memory file (t->base->bits' pages, packed). */
int snapshot_inc_fill(const struct snapshot_target *t, int fd, uint64_t *written,
		      uint64_t *pages);

#endif

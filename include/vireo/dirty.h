/* Dirty page logging (src/vmm/dirty.c, dirty-track.c): which guest pages were written
 * since the last look. Used by live migration (src/vmm/migrate.c) and meant
 * for incremental snapshots too.
 *
 * Pages are numbered by their offset in guest RAM's memfd (struct
 * guest_memory), 4 KiB each; a bitmap has one bit per page, bit (n % 64)
 * of word n / 64. Two sources are merged: the guest's own writes (KVM's
 * dirty log) and the VMM's writes into guest RAM, which KVM does not see
 * (virtio used rings and avail_event, data the devices put into the
 * guest's buffers, balloon discards, fw_cfg DMA): every such write goes
 * through dirty_mark(), which costs one predictable branch while no log
 * runs. */
#ifndef VIREO_DIRTY_H
#define VIREO_DIRTY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vireo/vmm.h"

#define DIRTY_PAGE_SIZE 4096u

struct vm;

/* Words of a bitmap covering the VM's RAM. */
uint64_t dirty_bitmap_words(const struct vm *vm);
/* Turns logging on for every memory slot and for the VMM's writes
 * (dirty_track_start): from here every page the guest or the VMM writes
 * is recorded. 0 or -errno with err_set(). */
int dirty_log_start(struct vm *vm);
/* Turns both off again (not an error if they were off). */
void dirty_log_stop(struct vm *vm);
/* ORs the pages written since the start or the previous call into bits
 * (dirty_bitmap_words() words), the guest's (KVM's log, cleared) and the
 * VMM's (dirty_track_collect). 0 or -errno. */
int dirty_log_collect(struct vm *vm, uint64_t *bits);
/* Set bits in a bitmap of n words. */
uint64_t dirty_bitmap_count(const uint64_t *bits, uint64_t n);

/* The VMM's side alone (dirty_log_* call these; tests may too).
 * dirty_track_start allocates mem's bitmap once (kept until
 * guest_memory_free, so a device thread that saw tracking on never
 * touches freed memory), clears it and turns marking on: 0 or -ENOMEM;
 * while on already it does nothing (the bits stay, as KVM's do).
 * dirty_track_stop turns it off. dirty_track_collect moves the marked
 * bits into bits (dirty_bitmap_words() words) and clears them, atomically
 * per word: a page marked during the call is in this result or the
 * next, never lost. */
int dirty_track_start(struct guest_memory *mem);
void dirty_track_stop(struct guest_memory *mem);
void dirty_track_collect(struct guest_memory *mem, uint64_t *bits);

/* Records that the VMM wrote [host, host + len), a pointer into guest RAM
 * (a part outside it is ignored). Call it after the write, from any
 * thread: a collect that sees the mark then reads the new bytes. */
void dirty_mark_range(const struct guest_memory *mem, const void *host, size_t len);

static inline void dirty_mark(const struct guest_memory *mem, const void *host, size_t len)
{
	if (__builtin_expect(__atomic_load_n(&mem->vmm_tracking, __ATOMIC_ACQUIRE), 0))
		dirty_mark_range(mem, host, len);
}

#endif

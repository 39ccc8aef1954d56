/* KVM dirty page logging (src/vmm/dirty.c): which guest pages were written
 * since the last look. Used by live migration (src/vmm/migrate.c) and meant
 * for incremental snapshots too.
 *
 * Pages are numbered by their offset in guest RAM's memfd (struct
 * guest_memory), 4 KiB each; a bitmap has one bit per page, bit (n % 64)
 * of word n / 64. Only the guest's own writes are logged (KVM sees those):
 * writes the VMM makes into guest RAM (virtio devices) are not. */
#ifndef VIREO_DIRTY_H
#define VIREO_DIRTY_H

#include <stdbool.h>
#include <stdint.h>

#define DIRTY_PAGE_SIZE 4096u

struct vm;

/* Words of a bitmap covering the VM's RAM. */
uint64_t dirty_bitmap_words(const struct vm *vm);
/* Turns logging on for every memory slot: from here every page the guest
 * writes is recorded. 0 or -errno with err_set(). */
int dirty_log_start(struct vm *vm);
/* Turns it off again (not an error if it was off). */
void dirty_log_stop(struct vm *vm);
/* ORs the pages written since the start or the previous call into bits
 * (dirty_bitmap_words() words), and clears KVM's log. 0 or -errno. */
int dirty_log_collect(struct vm *vm, uint64_t *bits);
/* Set bits in a bitmap of n words. */
uint64_t dirty_bitmap_count(const uint64_t *bits, uint64_t n);

#endif

/* Dirty page logging (include/vireo/dirty.h): KVM_MEM_LOG_DIRTY_PAGES on
 * the memory slots, KVM_GET_DIRTY_LOG to read and clear the log, merged
 * with the VMM's own writes (dirty-track.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vireo/dirty.h"
#include "vireo/log.h"
#include "vireo/vmm.h"

uint64_t dirty_bitmap_words(const struct vm *vm)
{
	uint64_t pages = vm->mem.size / DIRTY_PAGE_SIZE;

	return (pages + 63) / 64;
}

static int set_slot_flags(struct vm *vm, unsigned int i, uint32_t flags)
{
	const struct mem_region *r = &vm->mem.regions[i];
	struct kvm_userspace_memory_region slot = {
		.slot = i, .flags = flags, .guest_phys_addr = r->gpa, .memory_size = r->size,
		.userspace_addr = (uint64_t)(uintptr_t)(vm->mem.host + r->offset),
	};

	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
		return err_set(-errno, "cannot %s dirty logging on memory slot %u: %m",
			       flags ? "start" : "stop", i);
	return 0;
}

int dirty_log_start(struct vm *vm)
{
	int ret = vm_memory_ready(vm);

	if (!ret)
		ret = dirty_track_start(&vm->mem);
	for (unsigned int i = 0; !ret && i < vm->mem.nregions; i++)
		ret = set_slot_flags(vm, i, KVM_MEM_LOG_DIRTY_PAGES);
	if (ret)
		dirty_log_stop(vm);
	else
		__atomic_store_n(&vm->dirty_logging, true, __ATOMIC_RELAXED);
	return ret;
}

void dirty_log_stop(struct vm *vm)
{
	bool all = true;

	dirty_track_stop(&vm->mem);
	for (unsigned int i = 0; i < vm->mem.nregions; i++)
		if (set_slot_flags(vm, i, 0))
			all = false;
	/* info says what the slots carry: a slot left logging shows. */
	if (all)
		__atomic_store_n(&vm->dirty_logging, false, __ATOMIC_RELAXED);
}

/* ORs one slot's log (bit i: page i of the slot) in at page `first`. */
static void merge(uint64_t *bits, const uint64_t *log, uint64_t words, uint64_t first)
{
	for (uint64_t w = 0; w < words; w++) {
		for (uint64_t v = log[w]; v; v &= v - 1) {
			uint64_t page = first + w * 64 + (uint64_t)__builtin_ctzll(v);

			bits[page / 64] |= 1ull << (page % 64);
		}
	}
}

int dirty_log_collect(struct vm *vm, uint64_t *bits)
{
	for (unsigned int i = 0; i < vm->mem.nregions; i++) {
		const struct mem_region *r = &vm->mem.regions[i];
		uint64_t words = (r->size / DIRTY_PAGE_SIZE + 63) / 64;
		uint64_t *log = calloc(words, sizeof(*log));
		struct kvm_dirty_log d = { .slot = i, .dirty_bitmap = log };

		if (!log)
			return err_set(-ENOMEM, "out of memory");
		if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &d) < 0) {
			int err = errno;

			free(log);
			return err_set(-err, "KVM_GET_DIRTY_LOG (slot %u): %s", i, strerror(err));
		}
		merge(bits, log, words, r->offset / DIRTY_PAGE_SIZE);
		free(log);
	}
	dirty_track_collect(&vm->mem, bits);
	return 0;
}

uint64_t dirty_bitmap_count(const uint64_t *bits, uint64_t n)
{
	uint64_t c = 0;

	for (uint64_t i = 0; i < n; i++)
		c += (uint64_t)__builtin_popcountll(bits[i]);
	return c;
}

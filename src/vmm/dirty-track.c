/* The VMM's own writes into guest RAM, which KVM's dirty log does not see
 * (include/vireo/dirty.h): a bitmap kept with the guest memory. Apart from
 * dirty.c because it needs only struct guest_memory: the device models
 * (and their fuzz targets) link it without the VM. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/dirty.h"
#include "vireo/log.h"

static uint64_t mem_words(const struct guest_memory *mem)
{
	return (mem->size / DIRTY_PAGE_SIZE + 63) / 64;
}

int dirty_track_start(struct guest_memory *mem)
{
	/* On already: a no-op, as for KVM's log (its bits stay). */
	if (__atomic_load_n(&mem->vmm_tracking, __ATOMIC_SEQ_CST))
		return 0;
	if (!mem->vmm_dirty) {
		mem->vmm_dirty = calloc(mem_words(mem), sizeof(*mem->vmm_dirty));
		if (!mem->vmm_dirty)
			return err_set(-ENOMEM, "out of memory");
	} else {
		memset(mem->vmm_dirty, 0, mem_words(mem) * sizeof(*mem->vmm_dirty));
	}
	/* Release: a thread that sees tracking on sees the bitmap. */
	__atomic_store_n(&mem->vmm_tracking, true, __ATOMIC_SEQ_CST);
	return 0;
}

void dirty_track_stop(struct guest_memory *mem)
{
	__atomic_store_n(&mem->vmm_tracking, false, __ATOMIC_SEQ_CST);
}

void dirty_track_collect(struct guest_memory *mem, uint64_t *bits)
{
	uint64_t n = mem_words(mem);

	if (!mem->vmm_dirty)
		return;
	for (uint64_t w = 0; w < n; w++)
		/* Look before the exchange: most words are clear, and a
		 * locked write to each would cost every cache line. */
		if (__atomic_load_n(&mem->vmm_dirty[w], __ATOMIC_RELAXED))
			bits[w] |= __atomic_exchange_n(&mem->vmm_dirty[w], 0, __ATOMIC_ACQ_REL);
}

void dirty_mark_range(const struct guest_memory *mem, const void *host, size_t len)
{
	uintptr_t base = (uintptr_t)mem->host, p = (uintptr_t)host;
	uint64_t off, end;

	/* Integer compares: host may point anywhere (a device's own buffer). */
	if (!len || !mem->vmm_dirty || p < base || p - base >= mem->size)
		return;
	off = p - base;
	end = len > mem->size - off ? mem->size : off + len;
	for (uint64_t page = off / DIRTY_PAGE_SIZE; page <= (end - 1) / DIRTY_PAGE_SIZE; page++)
		__atomic_fetch_or(&mem->vmm_dirty[page / 64], 1ull << (page % 64),
				  __ATOMIC_SEQ_CST);
}

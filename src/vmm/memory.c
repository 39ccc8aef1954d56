/* Guest RAM: a memfd mapped once into the VMM, split into a region below
 * the 32-bit MMIO gap and, for large guests, one above 4 GiB (--hugepages:
 * a hugetlbfs memfd).
 *
 * Tried and taken back (2026-12-06): private anonymous memory with
 * MADV_HUGEPAGE, as QEMU's default backend, which cut a Linux guest's nested
 * page faults from ~28 k to ~60 (a memfd gets no transparent huge pages
 * under Debian's shmem_enabled=never). In the nested test host, 2 of 5 test
 * batches then had one Linux VM stall at start with both L1 CPUs busy and
 * no console output, which never happened with the memfd; the cause is not
 * found (direct compaction under TCG is a suspect). See docs/benchmarks.md. */
#include <errno.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/vmm.h"

static int map_memfd(struct guest_memory *mem, uint64_t size, bool hugepages)
{
	int ret;

	mem->fd = memfd_create("vireo-ram", MFD_CLOEXEC | (hugepages ? MFD_HUGETLB : 0));
	if (mem->fd < 0)
		return err_set(-errno, "cannot create guest memory%s: %m",
			       hugepages ? " (hugepages)" : "");
	if (ftruncate(mem->fd, (off_t)size) < 0) {
		ret = err_set(-errno, "cannot size guest memory to %llu bytes: %m",
			      (unsigned long long)size);
		goto close_fd;
	}
	/* MAP_NORESERVE: RAM the guest never touches costs the host nothing. */
	mem->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
			 mem->fd, 0);
	if (mem->host == MAP_FAILED) {
		ret = err_set(-errno, "cannot map guest memory: %m");
		goto close_fd;
	}
	return 0;
close_fd:
	close(mem->fd);
	mem->fd = -1;
	mem->host = NULL;
	return ret;
}

int guest_memory_init(struct guest_memory *mem, uint64_t size, bool hugepages)
{
	uint64_t low = size < LAYOUT_MMIO_GAP_START ? size : LAYOUT_MMIO_GAP_START;
	int ret;

	mem->fd = -1;
	ret = map_memfd(mem, size, hugepages);
	if (ret)
		return ret;
	mem->size = size;
	mem->regions[0] = (struct mem_region){ 0, low, 0 };
	mem->nregions = 1;
	if (size > low)
		mem->regions[mem->nregions++] = (struct mem_region){ LAYOUT_4G, size - low, low };
	return 0;
}

int guest_memory_discard(const struct guest_memory *mem, void *host, uint64_t len)
{
	/* The backing decides how; a memfd keeps its pages until a hole is
	 * punched (MADV_DONTNEED would only unmap them). */
	(void)mem;
	if (madvise(host, len, MADV_REMOVE) < 0)
		return -errno;
	return 0;
}

void guest_memory_free(struct guest_memory *mem)
{
	if (mem->host && mem->host != MAP_FAILED)
		munmap(mem->host, mem->size);
	if (mem->fd >= 0)
		close(mem->fd);
	mem->host = NULL;
	mem->fd = -1;
}

void *guest_ptr(const struct guest_memory *mem, uint64_t gpa, uint64_t len)
{
	for (unsigned int i = 0; i < mem->nregions; i++) {
		const struct mem_region *r = &mem->regions[i];

		if (gpa >= r->gpa && len <= r->size && gpa - r->gpa <= r->size - len)
			return mem->host + r->offset + (gpa - r->gpa);
	}
	return NULL;
}

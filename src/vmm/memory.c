/* Guest RAM: one mapping in the VMM, split into a region below the 32-bit
 * MMIO gap and, for large guests, one above 4 GiB. It is private anonymous
 * memory with transparent huge pages (as QEMU's default backend): KVM then
 * maps the guest with 2 MiB pages where the host has them, and a booting
 * guest takes far fewer nested page faults than with 4 KiB pages (shmem,
 * a memfd, gets huge pages only if the host's shmem_enabled allows, which
 * Debian's default does not). --hugepages takes a hugetlbfs memfd. */
#include <errno.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/vmm.h"

#define HUGE_PAGE (2ULL << 20)

/* Anonymous memory whose start is 2 MiB aligned, so that guest-physical
 * huge pages line up with the host's. MAP_NORESERVE: RAM the guest never
 * touches costs the host nothing. */
static int map_anonymous(struct guest_memory *mem, uint64_t size)
{
	uint8_t *p = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint64_t head;

	if (p == MAP_FAILED)
		return err_set(-errno, "cannot map guest memory: %m");
	head = (HUGE_PAGE - ((uintptr_t)p & (HUGE_PAGE - 1))) & (HUGE_PAGE - 1);
	if (head)
		munmap(p, head);
	munmap(p + head + size, HUGE_PAGE - head);
	mem->host = p + head;
	/* Only a hint: without THP the guest still runs, on 4 KiB pages. */
	madvise(mem->host, size, MADV_HUGEPAGE);
	return 0;
}

static int map_hugetlb(struct guest_memory *mem, uint64_t size)
{
	int ret;

	mem->fd = memfd_create("vireo-ram", MFD_CLOEXEC | MFD_HUGETLB);
	if (mem->fd < 0)
		return err_set(-errno, "cannot create guest memory (hugepages): %m");
	if (ftruncate(mem->fd, (off_t)size) < 0) {
		ret = err_set(-errno, "cannot size guest memory to %llu bytes: %m",
			      (unsigned long long)size);
		goto close_fd;
	}
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
	ret = hugepages ? map_hugetlb(mem, size) : map_anonymous(mem, size);
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
	/* A hugetlbfs memfd keeps its pages until a hole is punched; private
	 * anonymous pages are freed by dropping them (they read as zeros). */
	if (madvise(host, len, mem->fd >= 0 ? MADV_REMOVE : MADV_DONTNEED) < 0)
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

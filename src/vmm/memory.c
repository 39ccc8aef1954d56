/* Guest RAM: a file mapped once into the VMM, split into a region below
 * the 32-bit MMIO gap and, for large guests, one above 4 GiB.
 *
 * The file is on a tmpfs of the VMM's own, mounted with huge=within_size
 * and never attached anywhere (fsopen/fsmount: no path, nothing to clean
 * up), so that guest RAM comes in 2 MiB pages where the host has them free,
 * as QEMU's THP-backed RAM does: one TLB and nested-table entry per 2 MiB,
 * and a guest's 1 MiB disk transfer one contiguous segment that the host's
 * block layer merges into its largest requests (a memfd has 4 KiB pages
 * under Debian's shmem_enabled=never: 256 segments, and sequential
 * O_DIRECT reads at 0.57x QEMU's; docs/benchmarks.md). A fault takes a
 * huge page only if one is free (no MADV_HUGEPAGE, so no direct
 * compaction in the vCPU's fault path with the default defrag=madvise).
 * Without the privilege to mount (not root), a memfd. --hugepages: a
 * hugetlbfs memfd.
 *
 * Tried and taken back (2026-12-06): private anonymous memory with
 * MADV_HUGEPAGE, as QEMU's default backend. In the nested test host, 2 of
 * 5 test batches then had one Linux VM stall at start with both L1 CPUs
 * busy and no console output (direct compaction under TCG is a suspect).
 * Also tried: collapsing filled chunks of the memfd in the background with
 * MADV_COLLAPSE; pages under I/O are pinned and never collapsed. */
#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h>
#include <linux/mount.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/vmm.h"

#define HUGE_PAGE (2ull << 20)

/* An unnamed file on a fresh tmpfs with huge=within_size, sized to hold
 * size bytes: -errno where the kernel or our privilege does not allow it. */
static int huge_tmpfs_file(uint64_t size)
{
	char limit[32];
	int fs, mnt, fd;

	fs = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
	if (fs < 0)
		return -errno;
	snprintf(limit, sizeof(limit), "%llu",
		 (unsigned long long)((size + 2 * HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)));
	if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "huge", "within_size", NULL, 0) < 0 ||
	    syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "size", limit, NULL, 0) < 0 ||
	    syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		fd = -errno;
		close(fs);
		return fd;
	}
	mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC,
			   MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
	close(fs);
	if (mnt < 0)
		return -errno;
	/* The open file keeps the detached mount alive; nothing else does. */
	fd = openat(mnt, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	fd = fd < 0 ? -errno : fd;
	close(mnt);
	return fd;
}

int guest_memory_create_fd(uint64_t size, bool hugepages)
{
	int fd = hugepages ? -EINVAL : huge_tmpfs_file(size);

	if (fd < 0) {
		if (!hugepages)
			log_debug("guest memory: no huge-page tmpfs (%s): a memfd", strerror(-fd));
		fd = memfd_create("vireo-ram", MFD_CLOEXEC | (hugepages ? MFD_HUGETLB : 0));
	}
	if (fd < 0)
		return err_set(-errno, "cannot create guest memory%s: %m",
			       hugepages ? " (hugepages)" : "");
	if (ftruncate(fd, (off_t)size) < 0) {
		int ret = err_set(-errno, "cannot size guest memory to %llu bytes: %m",
				  (unsigned long long)size);

		close(fd);
		return ret;
	}
	return fd;
}

/* Maps fd shared at a 2 MiB-aligned address, so that each 2 MiB of the
 * file can be one huge page in the VMM's tables and in KVM's, which
 * follow them. MAP_NORESERVE: RAM the guest never touches costs the host
 * nothing. */
static void *map_aligned(int fd, uint64_t size)
{
	uint8_t *area = mmap(NULL, size + HUGE_PAGE, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint8_t *at;

	if (area == MAP_FAILED)
		return MAP_FAILED;
	at = (uint8_t *)(((uintptr_t)area + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
	if (mmap(at, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE | MAP_FIXED, fd,
		 0) == MAP_FAILED) {
		int err = errno;

		munmap(area, size + HUGE_PAGE);
		errno = err;
		return MAP_FAILED;
	}
	if (at > area)
		munmap(area, (size_t)(at - area));
	if (area + size + HUGE_PAGE > at + size)
		munmap(at + size, (size_t)(area + size + HUGE_PAGE - (at + size)));
	return at;
}

static int map_memfd(struct guest_memory *mem, uint64_t size, bool hugepages)
{
	mem->fd = guest_memory_create_fd(size, hugepages);
	if (mem->fd < 0)
		return mem->fd;
	mem->host = map_aligned(mem->fd, size);
	if (mem->host == MAP_FAILED) {
		int ret = err_set(-errno, "cannot map guest memory: %m");

		close(mem->fd);
		mem->fd = -1;
		mem->host = NULL;
		return ret;
	}
	return 0;
}

static void set_regions(struct guest_memory *mem, uint64_t size)
{
	uint64_t low = size < LAYOUT_MMIO_GAP_START ? size : LAYOUT_MMIO_GAP_START;

	mem->size = size;
	mem->regions[0] = (struct mem_region){ 0, low, 0 };
	mem->nregions = 1;
	if (size > low)
		mem->regions[mem->nregions++] = (struct mem_region){ LAYOUT_4G, size - low, low };
}

int guest_memory_init(struct guest_memory *mem, uint64_t size, bool hugepages)
{
	int ret;

	mem->vmm_dirty = NULL;
	mem->vmm_tracking = false;
	mem->fd = -1;
	mem->from_file = false;
	ret = map_memfd(mem, size, hugepages);
	if (ret)
		return ret;
	set_regions(mem, size);
	return 0;
}

/* Restore maps the snapshot's memory file privately (Firecracker's file
 * backend): a page is read from the file when the guest first touches it,
 * and a guest write copies it, so the file stays as it was and restore
 * time does not grow with memory size. */
int guest_memory_init_file(struct guest_memory *mem, uint64_t size, int fd)
{
	struct stat st;

	mem->vmm_dirty = NULL;
	mem->vmm_tracking = false;
	mem->fd = fd;
	mem->from_file = true;
	mem->host = NULL;
	if (fstat(fd, &st) < 0)
		return err_set(-errno, "memory file: %m");
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size)
		return err_set(-EINVAL, "memory file is %llu bytes, the snapshot's guest has %llu",
			       (unsigned long long)st.st_size, (unsigned long long)size);
	mem->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
	if (mem->host == MAP_FAILED) {
		mem->host = NULL;
		return err_set(-errno, "cannot map the memory file: %m");
	}
	set_regions(mem, size);
	return 0;
}

int guest_memory_init_memfd(struct guest_memory *mem, uint64_t size, int fd)
{
	struct stat st;

	mem->vmm_dirty = NULL;
	mem->vmm_tracking = false;
	mem->fd = fd;
	mem->from_file = false;
	mem->host = NULL;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != size)
		return err_set(-EINVAL, "guest memory: the memfd is not %llu bytes",
			       (unsigned long long)size);
	mem->host = map_aligned(fd, size);
	if (mem->host == MAP_FAILED) {
		mem->host = NULL;
		return err_set(-errno, "cannot map guest memory: %m");
	}
	set_regions(mem, size);
	return 0;
}

static bool page_is_zero(const uint8_t *p, size_t n)
{
	const uint64_t *q = (const uint64_t *)p;

	for (size_t i = 0; i < n / 8; i++)
		if (q[i])
			return false;
	return true;
}

/* Writes the non-zero pages of [off, end) at the same offsets of fd. */
static int save_range(const struct guest_memory *mem, int fd, uint64_t off, uint64_t end,
		      uint64_t *written)
{
	const size_t page = 4096;

	while (off < end) {
		uint64_t run = off;

		while (run < end && !page_is_zero(mem->host + run, page))
			run += page;
		for (uint64_t p = off; p < run; ) {
			ssize_t n = pwrite(fd, mem->host + p, run - p, (off_t)p);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return err_set(n < 0 ? -errno : -EIO, "cannot write the memory file: %s",
					       n < 0 ? strerror(errno) : "short write");
			p += (uint64_t)n;
			*written += (uint64_t)n;
		}
		off = run;
		while (off < end && page_is_zero(mem->host + off, page))
			off += page;
	}
	return 0;
}

int guest_memory_next_data(const struct guest_memory *mem, uint64_t off, uint64_t *start,
			   uint64_t *end)
{
	off_t data, hole;

	if (off >= mem->size)
		return -ENXIO;
	/* A memfd knows which pages were never touched (holes); a restored
	 * guest's private mapping does not: all of it may hold data. */
	if (mem->from_file) {
		*start = off;
		*end = mem->size;
		return 0;
	}
	data = lseek(mem->fd, (off_t)off, SEEK_DATA);
	if (data < 0)
		return errno == ENXIO ? -ENXIO : err_set(-errno, "guest memory: SEEK_DATA: %m");
	hole = lseek(mem->fd, data, SEEK_HOLE);
	if (hole < 0)
		return err_set(-errno, "guest memory: SEEK_HOLE: %m");
	*start = (uint64_t)data & ~4095ull;
	*end = ((uint64_t)hole + 4095) & ~4095ull;
	if (*end > mem->size)
		*end = mem->size;
	return 0;
}

int guest_memory_save(const struct guest_memory *mem, int fd, uint64_t *written)
{
	uint64_t off = 0, start, end;
	int ret;

	*written = 0;
	if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)mem->size) < 0)
		return err_set(-errno, "cannot size the memory file: %m");
	while (!(ret = guest_memory_next_data(mem, off, &start, &end))) {
		ret = save_range(mem, fd, start, end, written);
		if (ret)
			return ret;
		off = end;
	}
	return ret == -ENXIO ? 0 : ret;
}

int guest_memory_discard(const struct guest_memory *mem, void *host, uint64_t len)
{
	/* The backing decides how; a memfd keeps its pages until a hole is
	 * punched (MADV_DONTNEED would only unmap them), a private file
	 * mapping drops its copies (the file's contents show again). */
	if (madvise(host, len, mem->from_file ? MADV_DONTNEED : MADV_REMOVE) < 0)
		return -errno;
	return 0;
}

void guest_memory_free(struct guest_memory *mem)
{
	if (mem->host && mem->host != MAP_FAILED)
		munmap(mem->host, mem->size);
	if (mem->fd >= 0)
		close(mem->fd);
	free(mem->vmm_dirty);
	mem->vmm_dirty = NULL;
	mem->vmm_tracking = false;
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

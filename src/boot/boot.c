/* Kernel format detection, the memory map, and file loading into guest RAM. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/boot.h"
#include "vireo/fileopen.h"
#include "vireo/layout.h"
#include "vireo/log.h"

unsigned int boot_memory_map(const struct vm *vm, struct e820_entry *out)
{
	const struct mem_region *low = &vm->mem.regions[0];
	unsigned int n = 0;

	out[n++] = (struct e820_entry){ 0, LAYOUT_EBDA_START, E820_RAM };
	out[n++] = (struct e820_entry){ LAYOUT_EBDA_START, LAYOUT_HIGH_RAM_START - LAYOUT_EBDA_START,
					E820_RESERVED };
	out[n++] = (struct e820_entry){ LAYOUT_HIGH_RAM_START, low->size - LAYOUT_HIGH_RAM_START,
					E820_RAM };
	/* Linux only trusts an MCFG area that the firmware reserved. */
	out[n++] = (struct e820_entry){ LAYOUT_ECAM_BASE, LAYOUT_ECAM_SIZE, E820_RESERVED };
	if (vm->mem.nregions > 1)
		out[n++] = (struct e820_entry){ vm->mem.regions[1].gpa, vm->mem.regions[1].size,
						E820_RAM };
	return n;
}

int boot_file_size(const char *path, uint64_t *size)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return err_set(-errno, "%s: %m", path);
	if (!S_ISREG(st.st_mode))
		return err_set(-EINVAL, "%s: not a regular file", path);
	*size = (uint64_t)st.st_size;
	return 0;
}

int boot_read_file_into(struct vm *vm, const char *path, uint64_t gpa, uint64_t size)
{
	uint8_t *dst = guest_ptr(&vm->mem, gpa, size);
	uint64_t done = 0;
	int fd, ret = 0;

	if (!dst)
		return err_set(-ENOSPC, "%s does not fit in guest memory", path);
	fd = file_open_checked(path, O_RDONLY, 0, NULL, FILE_REG);
	if (fd < 0)
		return fd;
	while (done < size) {
		ssize_t n = read(fd, dst + done, size - done);

		if (n <= 0) {
			ret = err_set(n < 0 ? -errno : -EIO, "%s: short read", path);
			break;
		}
		done += (uint64_t)n;
	}
	close(fd);
	return ret;
}

static int boot_map_kernel(const char *path, struct kernel_image *img)
{
	struct stat st;
	void *p;
	int fd;

	/* Not blocking on a FIFO: it fails here, at once. */
	fd = file_open_checked(path, O_RDONLY, 0, "kernel", FILE_REG);
	if (fd < 0)
		return err_set(fd, "cannot open %s", err_get());
	if (fstat(fd, &st) < 0 || st.st_size < 1024) {
		close(fd);
		return err_set(-ENOEXEC, "%s is not a Linux kernel (bzImage or ELF)", path);
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return err_set(-errno, "cannot map kernel %s: %m", path);
	img->data = p;
	img->size = (size_t)st.st_size;
	img->path = path;
	return 0;
}

static int boot_elf(struct vm *vm, const struct kernel_image *img, const struct boot_config *cfg,
		    uint64_t rsdp)
{
	uint64_t entry, pvh_entry, end;
	int ret = elf_load(vm, img, &entry, &pvh_entry, &end);

	if (ret)
		return ret;
	if (pvh_entry)
		return pvh_boot(vm, pvh_entry, end, cfg, rsdp);
	return boot_linux64(vm, entry, NULL, end, cfg, rsdp);
}

/* What the BIOS reset vector (f000:fff0) holds without firmware: a hard
 * reset through port 0xcf9, as the chipset would do. Linux's reboot=b (and
 * reboot=e without EFI, and the default on hardware-reduced ACPI, which
 * tries EFI first) jumps there in real mode; without it the vCPU runs
 * whatever the zeroed memory decodes to, forever. */
static int boot_write_reset_vector(struct vm *vm)
{
	static const uint8_t stub[] = {
		0xb0, 0x06,             /* mov al, 6: SYS_RST | RST_CPU */
		0xba, 0xf9, 0x0c,       /* mov dx, 0xcf9 */
		0xee,                   /* out dx, al */
		0xf4,                   /* hlt */
		0xeb, 0xfd,             /* jmp back to hlt */
	};
	uint8_t *p = guest_ptr(&vm->mem, LAYOUT_RESET_VECTOR, sizeof(stub));

	if (!p)
		return err_set(-EINVAL, "no guest memory at the reset vector");
	memcpy(p, stub, sizeof(stub));
	return 0;
}

int boot_load(struct vm *vm, const struct boot_config *cfg)
{
	static const uint8_t elf_magic[4] = { 0x7f, 'E', 'L', 'F' };
	struct kernel_image img;
	uint64_t rsdp;
	int ret;

	ret = boot_map_kernel(cfg->kernel, &img);
	if (ret)
		return ret;
	rsdp = acpi_build_tables(vm, ACPI_PLATFORM_REDUCED);
	if (!rsdp) {
		ret = -EINVAL;
		goto unmap;
	}
	ret = boot_write_reset_vector(vm);
	if (ret)
		goto unmap;
	if (!memcmp(img.data, elf_magic, 4))
		ret = boot_elf(vm, &img, cfg, rsdp);
	else if (!memcmp(img.data + 0x202, "HdrS", 4))
		ret = bzimage_load(vm, &img, cfg, rsdp);
	else
		ret = err_set(-ENOEXEC, "%s is not a Linux kernel (bzImage or ELF)", cfg->kernel);
unmap:
	munmap((void *)img.data, img.size);
	return ret;
}

int boot_place_initrd(struct vm *vm, const char *path, uint64_t kernel_end, uint64_t max_end,
		      uint64_t *addr, uint64_t *size)
{
	uint64_t top = vm->mem.regions[0].size;
	int ret;

	*addr = *size = 0;
	if (!path)
		return 0;
	ret = boot_file_size(path, size);
	if (ret)
		return ret;
	if (max_end && max_end < top)
		top = max_end;
	top &= ~0xfffULL;
	if (*size > top || ((top - *size) & ~0xfffULL) < ((kernel_end + 0xfff) & ~0xfffULL))
		return err_set(-ENOSPC, "initrd %s (%llu bytes) does not fit in guest memory above the kernel",
			       path, (unsigned long long)*size);
	*addr = (top - *size) & ~0xfffULL;
	return boot_read_file_into(vm, path, *addr, *size);
}

int boot_write_cmdline(struct vm *vm, const char *cmdline, uint64_t max_len)
{
	size_t len = cmdline ? strlen(cmdline) : 0;
	char *dst;

	if (max_len > LAYOUT_CMDLINE_MAX)
		max_len = LAYOUT_CMDLINE_MAX;
	if (len + 1 > max_len)
		return err_set(-E2BIG, "kernel command line is too long (%zu bytes, limit %llu)",
			       len, (unsigned long long)max_len - 1);
	dst = guest_ptr(&vm->mem, LAYOUT_CMDLINE, len + 1);
	memcpy(dst, cmdline ? cmdline : "", len + 1);
	return 0;
}

/* A Linux kernel through fw_cfg, as QEMU's pc machine gives it to
 * linuxboot_dma.bin (include/vireo/firmware.h): the real-mode setup at
 * 0x10000, the command line at 0x20000, the kernel at 1 MiB, the initrd
 * page-aligned below the lower of the kernel's limit and the top of low
 * RAM less the area the firmware keeps there. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/fileopen.h"
#include "vireo/firmware.h"
#include "vireo/log.h"

#define REAL_ADDR     0x10000u
#define CMDLINE_ADDR  0x20000u
#define PROT_ADDR     0x100000u
/* SeaBIOS takes up to 256 KiB at the top of low RAM for its tables; QEMU
 * keeps the initrd below a little more. */
#define FIRMWARE_HIGH_RESERVE (1u << 20)

/* Offsets in the bzImage setup header (Documentation/x86/boot.rst). */
#define HDR_SETUP_SECTS   0x1f1
#define HDR_MAGIC         0x202
#define HDR_VERSION       0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS     0x211
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE  0x21c
#define HDR_HEAP_END_PTR  0x224
#define HDR_CMD_LINE_PTR  0x228
#define HDR_INITRD_MAX    0x22c
#define LOADED_HIGH       0x01
#define CAN_USE_HEAP      0x80

/* For the fw_cfg calls, which say nothing themselves. */
static int fwcfg_err(int ret)
{
	return ret ? err_set(ret, "cannot give the kernel to the firmware: %s", strerror(-ret)) : 0;
}

struct mapped_file {
	uint8_t *data;
	size_t size;
};

static int map_file(const char *path, const char *what, struct mapped_file *m)
{
	struct stat st;
	int fd = file_open_checked(path, O_RDONLY, 0, what, FILE_REG);

	m->data = NULL;
	if (fd < 0)
		return err_set(fd, "cannot open %s", err_get());
	if (fstat(fd, &st) < 0 || st.st_size == 0) {
		close(fd);
		return err_set(-EINVAL, "%s %s is empty", what, path);
	}
	m->size = (size_t)st.st_size;
	m->data = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m->data == MAP_FAILED) {
		m->data = NULL;
		return err_set(-errno, "cannot map %s %s: %m", what, path);
	}
	return 0;
}

static void unmap_file(struct mapped_file *m)
{
	if (m->data)
		munmap(m->data, m->size);
}

static int add_initrd(struct fwcfg *f, const struct vm *vm, const char *path, uint8_t *hdr,
		      uint64_t kernel_end)
{
	uint32_t max = 0x37ffffff, addr, size;
	uint64_t top = vm->mem.regions[0].size - FIRMWARE_HIGH_RESERVE;
	struct mapped_file m;
	int ret;

	if (!path)
		return 0;
	ret = map_file(path, "initrd", &m);
	if (ret)
		return ret;
	if (bus_get(hdr + HDR_VERSION, 2) >= 0x203)
		max = (uint32_t)bus_get(hdr + HDR_INITRD_MAX, 4);
	if (max > top - 1)
		max = (uint32_t)(top - 1);
	if (m.size > max || ((max - m.size) & ~4095ULL) < kernel_end) {
		ret = err_set(-ENOSPC, "initrd %s does not fit in guest memory below %#x", path, max);
		goto out;
	}
	size = (uint32_t)m.size;
	addr = (uint32_t)((max - size) & ~4095u);
	bus_put(hdr + HDR_RAMDISK_IMAGE, 4, addr);
	bus_put(hdr + HDR_RAMDISK_SIZE, 4, size);
	ret = fwcfg_add_u32(f, FW_CFG_INITRD_ADDR, addr);
	if (!ret)
		ret = fwcfg_add_u32(f, FW_CFG_INITRD_SIZE, size);
	if (!ret)
		ret = fwcfg_add_item(f, FW_CFG_INITRD_DATA, m.data, size);
	ret = fwcfg_err(ret);
out:
	unmap_file(&m);
	return ret;
}

static int add_cmdline(struct fwcfg *f, const char *cmdline, uint8_t *hdr)
{
	const char *c = cmdline ? cmdline : "";
	size_t len = strlen(c) + 1;
	int ret;

	/* It lies between the setup's heap and the 640 KiB line. */
	if (len > 0x10000)
		return err_set(-E2BIG, "kernel command line is too long (%zu bytes)", len - 1);
	bus_put(hdr + HDR_CMD_LINE_PTR, 4, CMDLINE_ADDR);
	ret = fwcfg_add_u32(f, FW_CFG_CMDLINE_ADDR, CMDLINE_ADDR);
	if (!ret)
		ret = fwcfg_add_u32(f, FW_CFG_KERNEL_CMDLINE, CMDLINE_ADDR);
	if (!ret)
		ret = fwcfg_add_u32(f, FW_CFG_CMDLINE_SIZE, (uint32_t)len);
	if (!ret)
		ret = fwcfg_add_item(f, FW_CFG_CMDLINE_DATA, c, len);
	return fwcfg_err(ret);
}

static int add_option_rom(struct fwcfg *f)
{
	struct mapped_file m;
	int ret = map_file(FIRMWARE_LINUXBOOT_ROM, "option ROM", &m);

	if (ret)
		return err_set(ret, "%s (package qemu-system-data): it loads --kernel for the "
			       "firmware", err_get());
	ret = fwcfg_add_file(f, "genroms/linuxboot_dma.bin", m.data, m.size);
	unmap_file(&m);
	return fwcfg_err(ret);
}

int firmware_add_kernel(struct fwcfg *f, const struct vm *vm, const struct boot_config *cfg)
{
	struct mapped_file k;
	size_t setup_size;
	uint8_t *hdr;
	int ret = map_file(cfg->kernel, "kernel", &k);

	if (ret)
		return ret;
	hdr = k.data;
	if (k.size < 0x1000 || memcmp(hdr + HDR_MAGIC, "HdrS", 4) ||
	    bus_get(hdr + HDR_VERSION, 2) < 0x202 || !(hdr[HDR_LOADFLAGS] & LOADED_HIGH)) {
		ret = err_set(-ENOEXEC, "with --firmware, --kernel must be a bzImage (boot "
			      "protocol 2.02 or later): %s", cfg->kernel);
		goto out;
	}
	setup_size = ((size_t)(hdr[HDR_SETUP_SECTS] ? hdr[HDR_SETUP_SECTS] : 4) + 1) * 512;
	if (setup_size >= k.size || k.size - setup_size > vm->mem.regions[0].size / 2) {
		ret = err_set(-ENOEXEC, "%s: bad setup size or too big for guest memory",
			      cfg->kernel);
		goto out;
	}
	hdr[HDR_TYPE_OF_LOADER] = 0xb0; /* QEMU's id: the kernel may know it */
	hdr[HDR_LOADFLAGS] |= CAN_USE_HEAP;
	bus_put(hdr + HDR_HEAP_END_PTR, 2, CMDLINE_ADDR - REAL_ADDR - 0x200);
	ret = add_cmdline(f, cfg->cmdline, hdr);
	if (!ret)
		ret = add_initrd(f, vm, cfg->initrd, hdr, PROT_ADDR + (k.size - setup_size));
	if (!ret)
		ret = add_option_rom(f);
	if (ret)
		goto out;
	ret = fwcfg_add_u32(f, FW_CFG_SETUP_ADDR, REAL_ADDR);
	if (!ret)
		ret = fwcfg_add_u32(f, FW_CFG_SETUP_SIZE, (uint32_t)setup_size);
	if (!ret)
		ret = fwcfg_add_item(f, FW_CFG_SETUP_DATA, hdr, setup_size);
	if (!ret)
		ret = fwcfg_add_u32(f, FW_CFG_KERNEL_ADDR, PROT_ADDR);
	if (!ret)
		ret = fwcfg_add_u32(f, FW_CFG_KERNEL_SIZE, (uint32_t)(k.size - setup_size));
	if (!ret)
		ret = fwcfg_add_item(f, FW_CFG_KERNEL_DATA, k.data + setup_size, k.size - setup_size);
	ret = fwcfg_err(ret);
out:
	unmap_file(&k);
	return ret;
}

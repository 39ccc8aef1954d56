/* The 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst): bzImage
 * with its setup header, or an ELF vmlinux without a PVH note. The kernel
 * starts in long mode at its 64-bit entry with %rsi = &boot_params (the
 * "zero page"), identity-mapped page tables and __BOOT_CS/__BOOT_DS.
 *
 * Zero-page offsets used (little-endian):
 *   0x070 acpi_rsdp_addr u64       0x1e8 e820_entries u8
 *   0x1f1 setup header start       0x1fa vid_mode u16
 *   0x202 "HdrS"  0x206 version u16  0x210 type_of_loader u8  0x211 loadflags u8
 *   0x218 ramdisk_image u32  0x21c ramdisk_size u32  0x224 heap_end_ptr u16
 *   0x228 cmd_line_ptr u32  0x22c initrd_addr_max u32  0x230 kernel_alignment u32
 *   0x234 relocatable_kernel u8  0x236 xloadflags u16  0x238 cmdline_size u32
 *   0x258 pref_address u64  0x260 init_size u32  0x2d0 e820_table[128] (20 bytes each) */
#include <errno.h>
#include <string.h>

#include "vireo/boot.h"
#include "vireo/layout.h"
#include "vireo/log.h"

#define BP_ACPI_RSDP      0x070
#define BP_E820_ENTRIES   0x1e8
#define BP_SETUP_SECTS    0x1f1
#define BP_VID_MODE       0x1fa
#define BP_JUMP           0x200
#define BP_VERSION        0x206
#define BP_LOADER_TYPE    0x210
#define BP_LOADFLAGS      0x211
#define BP_RAMDISK_IMAGE  0x218
#define BP_RAMDISK_SIZE   0x21c
#define BP_HEAP_END       0x224
#define BP_CMD_LINE_PTR   0x228
#define BP_INITRD_MAX     0x22c
#define BP_KERNEL_ALIGN   0x230
#define BP_RELOCATABLE    0x234
#define BP_XLOADFLAGS     0x236
#define BP_CMDLINE_SIZE   0x238
#define BP_PREF_ADDRESS   0x258
#define BP_INIT_SIZE      0x260
#define BP_E820_TABLE     0x2d0
#define BP_SIZE           0x1000

#define LOADFLAG_LOADED_HIGH  0x01
#define LOADFLAG_CAN_USE_HEAP 0x80
#define XLF_KERNEL_64         0x01

/* bzImage protected-mode code goes at 1 MiB, as kvmtool does; the kernel
 * relocates itself to where it wants to run. */
#define BZIMAGE_LOAD_ADDR LAYOUT_HIGH_RAM_START

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void write_e820(struct vm *vm, uint8_t *bp)
{
	struct e820_entry map[BOOT_MAX_E820];
	unsigned int n = boot_memory_map(vm, map);

	bp[BP_E820_ENTRIES] = (uint8_t)n;
	for (unsigned int i = 0; i < n; i++) {
		uint8_t *e = bp + BP_E820_TABLE + 20 * i;

		put64(e, map[i].addr);
		put64(e + 8, map[i].size);
		put32(e + 16, map[i].type);
	}
}

int boot_linux64(struct vm *vm, uint64_t entry, const struct kernel_image *setup,
		 uint64_t kernel_end, const struct boot_config *cfg, uint64_t rsdp)
{
	uint8_t *bp = guest_ptr(&vm->mem, LAYOUT_BOOT_PARAMS, BP_SIZE);
	uint64_t cmdline_max = LAYOUT_CMDLINE_MAX;
	uint32_t initrd_max = 0x37ffffff;
	uint64_t initrd, initrd_size;
	int ret;

	memset(bp, 0, BP_SIZE);
	if (setup) {
		/* Copy the kernel's setup header; its length is in the jump's offset byte. */
		size_t hdr_end = BP_JUMP + 2 + setup->data[BP_JUMP + 1];

		memcpy(bp + BP_SETUP_SECTS, setup->data + BP_SETUP_SECTS, hdr_end - BP_SETUP_SECTS);
		if (get16(bp + BP_VERSION) >= 0x206)
			cmdline_max = (uint64_t)get32(bp + BP_CMDLINE_SIZE) + 1; /* no wrap at ~0 */
		if (get32(bp + BP_INITRD_MAX))
			initrd_max = get32(bp + BP_INITRD_MAX);
	} else {
		memcpy(bp + 0x202, "HdrS", 4);
		put16(bp + BP_VERSION, 0x20f);
	}
	ret = boot_write_cmdline(vm, cfg->cmdline, cmdline_max);
	if (ret)
		return ret;
	ret = boot_place_initrd(vm, cfg->initrd, kernel_end, (uint64_t)initrd_max + 1, &initrd,
				&initrd_size);
	if (ret)
		return ret;
	put16(bp + BP_VID_MODE, 0xffff);
	bp[BP_LOADER_TYPE] = 0xff;
	bp[BP_LOADFLAGS] |= LOADFLAG_LOADED_HIGH | LOADFLAG_CAN_USE_HEAP;
	put16(bp + BP_HEAP_END, 0xfe00);
	put32(bp + BP_CMD_LINE_PTR, (uint32_t)LAYOUT_CMDLINE);
	put32(bp + BP_RAMDISK_IMAGE, (uint32_t)initrd);
	put32(bp + BP_RAMDISK_SIZE, (uint32_t)initrd_size);
	put64(bp + BP_ACPI_RSDP, rsdp);
	write_e820(vm, bp);
	return regs_setup_long_mode(vm, entry, LAYOUT_BOOT_PARAMS);
}

/* Where the kernel runs and needs init_size bytes before it reads the memory
 * map (boot.rst, init_size): a relocatable kernel at its load address raised
 * to pref_address and aligned up to kernel_alignment, any other at
 * pref_address. Linux (pref_address 16 MiB) copies itself there first. */
static uint64_t bzimage_runtime_start(const uint8_t *d, uint64_t load)
{
	uint64_t pref = get64(d + BP_PREF_ADDRESS), align = get32(d + BP_KERNEL_ALIGN);

	if (!d[BP_RELOCATABLE])
		return pref ? pref : load;
	if (load < pref)
		load = pref;
	if (!align || (align & (align - 1)) || load > UINT64_MAX - align)
		return load;
	return (load + align - 1) & ~(align - 1);
}

int bzimage_load(struct vm *vm, const struct kernel_image *img, const struct boot_config *cfg,
		 uint64_t rsdp)
{
	const uint8_t *d = img->data;
	unsigned int setup_sects = d[BP_SETUP_SECTS] ? d[BP_SETUP_SECTS] : 4;
	uint64_t code_off = (setup_sects + 1ULL) * 512, code_size, runtime, init_size, end;
	uint16_t version = get16(d + BP_VERSION);
	uint8_t *dst;

	if (version < 0x20c || !(get16(d + BP_XLOADFLAGS) & XLF_KERNEL_64))
		return err_set(-ENOEXEC, "%s: bzImage has no 64-bit entry (boot protocol %x.%02x)",
			       img->path, version >> 8, version & 0xff);
	if (code_off >= img->size || (uint64_t)BP_JUMP + 2 + d[BP_JUMP + 1] > code_off)
		return err_set(-ENOEXEC, "%s: truncated bzImage", img->path);
	code_size = img->size - code_off;
	/* The kernel decompresses at its runtime start: reserve init_size
	 * there, and the file where it is loaded. */
	runtime = bzimage_runtime_start(d, BZIMAGE_LOAD_ADDR);
	init_size = get32(d + BP_INIT_SIZE);
	end = BZIMAGE_LOAD_ADDR + code_size;
	if (runtime <= UINT64_MAX - init_size && runtime + init_size > end)
		end = runtime + init_size;
	dst = guest_ptr(&vm->mem, BZIMAGE_LOAD_ADDR, code_size);
	if (!dst || !guest_ptr(&vm->mem, runtime, init_size) || end > vm->mem.regions[0].size)
		return err_set(-ENOSPC, "%s: kernel needs %llu MiB (runtime start 0x%llx + init_size), "
			       "more than guest memory below the PCI hole", img->path,
			       (unsigned long long)(end >> 20) + 1, (unsigned long long)runtime);
	memcpy(dst, d + code_off, code_size);
	return boot_linux64(vm, BZIMAGE_LOAD_ADDR + 0x200, img, end, cfg, rsdp);
}

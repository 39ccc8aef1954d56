/* What the loader passed, whichever boot protocol it used: the PVH start
 * info (pvh_start) or the Linux boot_params "zero page" (startup_64,
 * startup_32). Read at CPL3, where it costs nothing (DESIGN §5).
 *
 * boot_params offsets used (Documentation/arch/x86/zero-page.rst), LE:
 *   0x070 acpi_rsdp_addr u64      0x0c0 ext_ramdisk_image u32
 *   0x0c4 ext_ramdisk_size u32    0x0c8 ext_cmd_line_ptr u32
 *   0x1e8 e820_entries u8         0x202 "HdrS"  0x206 version u16
 *   0x218 ramdisk_image u32       0x21c ramdisk_size u32
 *   0x228 cmd_line_ptr u32        0x2d0 e820_table[128], 20 bytes each */
#include "probe.h"

#define BP_ACPI_RSDP	0x070
#define BP_EXT_RAMDISK	0x0c0
#define BP_EXT_RDSIZE	0x0c4
#define BP_EXT_CMDLINE	0x0c8
#define BP_E820_ENTRIES	0x1e8
#define BP_HDRS		0x202
#define BP_VERSION	0x206
#define BP_RAMDISK	0x218
#define BP_RDSIZE	0x21c
#define BP_CMDLINE	0x228
#define BP_E820_TABLE	0x2d0
#define BP_E820_MAX	128

#define LIMIT_4G	0x100000000ull	/* the probe maps 4 GiB only */

struct boot_info boot = { .cmdline = "" };

static uint16_t rd16(const uint8_t *p) { uint16_t v; probe_memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; probe_memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; probe_memcpy(&v, p, 8); return v; }

static int from_start_info(void)
{
	const struct hvm_start_info *si = (const void *)(uintptr_t)start_info_paddr;

	boot.entry = "pvh";
	boot.rsdp_from = "start_info";
	if (si->magic != HVM_START_MAGIC) {
		probe_printf("PROBE error=bad-start-info magic=0x%x\n", si->magic);
		return -1;
	}
	boot.start_info_version = si->version;
	if (si->cmdline_paddr)
		boot.cmdline = (const char *)(uintptr_t)si->cmdline_paddr;
	boot.rsdp = si->rsdp_paddr;
	if (si->nr_modules && si->modlist_paddr) {	/* the first module is the initrd */
		const uint64_t *mod = (const void *)(uintptr_t)si->modlist_paddr;

		boot.initrd_addr = mod[0];
		boot.initrd_size = mod[1];
	}
	if (si->version >= 1 && si->memmap_paddr) {
		const struct hvm_memmap_entry *e = (const void *)(uintptr_t)si->memmap_paddr;

		for (uint32_t i = 0; i < si->memmap_entries && boot.nmem < BOOT_MAX_MEM; i++)
			boot.mem[boot.nmem++] = e[i];
	}
	return 0;
}

static int from_boot_params(void)
{
	const uint8_t *bp = (const void *)(uintptr_t)boot_params_paddr;
	uint64_t cmdline, n;

	boot.entry = boot_entry == BOOT_ENTRY_LINUX32 ? "linux32" : "linux64";
	boot.rsdp_from = "boot_params";
	if (boot_params_paddr >= LIMIT_4G - 4096 || probe_memcmp(bp + BP_HDRS, "HdrS", 4)) {
		probe_printf("PROBE error=bad-boot-params addr=0x%lx\n", boot_params_paddr);
		return -1;
	}
	boot.protocol = rd16(bp + BP_VERSION);
	cmdline = rd32(bp + BP_CMDLINE) | (uint64_t)rd32(bp + BP_EXT_CMDLINE) << 32;
	if (cmdline >= LIMIT_4G)
		probe_printf("PROBE error=cmdline-above-4g addr=0x%lx\n", cmdline);
	else if (cmdline)
		boot.cmdline = (const char *)(uintptr_t)cmdline;
	boot.rsdp = rd64(bp + BP_ACPI_RSDP);
	boot.initrd_addr = rd32(bp + BP_RAMDISK) | (uint64_t)rd32(bp + BP_EXT_RAMDISK) << 32;
	boot.initrd_size = rd32(bp + BP_RDSIZE) | (uint64_t)rd32(bp + BP_EXT_RDSIZE) << 32;
	n = bp[BP_E820_ENTRIES] < BP_E820_MAX ? bp[BP_E820_ENTRIES] : BP_E820_MAX;
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *e = bp + BP_E820_TABLE + 20 * i;

		boot.mem[boot.nmem++] = (struct hvm_memmap_entry){ rd64(e), rd64(e + 8), rd32(e + 16), 0 };
	}
	return 0;
}

/* Fills boot from the structure the loader passed; -1 (reported) if it is
 * not what the entry point promises. */
int bootinfo_init(void)
{
	if (boot_entry == BOOT_ENTRY_PVH)
		return from_start_info();
	return from_boot_params();
}

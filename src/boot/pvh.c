/* PVH boot (Xen's x86 direct-boot ABI, used by QEMU, Firecracker and Cloud
 * Hypervisor): the kernel starts in 32-bit protected mode with paging off
 * and %ebx pointing at struct hvm_start_info. Layout (little-endian):
 *   start_info: magic u32, version u32, flags u32, nr_modules u32,
 *               modlist_paddr u64, cmdline_paddr u64, rsdp_paddr u64,
 *               memmap_paddr u64, memmap_entries u32, reserved u32
 *   modlist entry: paddr u64, size u64, cmdline_paddr u64, reserved u64
 *   memmap entry:  addr u64, size u64, type u32, reserved u32 */
#include <string.h>

#include "vireo/boot.h"
#include "vireo/layout.h"
#include "vireo/log.h"

#define PVH_MAGIC 0x336ec578

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};

struct hvm_modlist_entry {
	uint64_t paddr, size, cmdline_paddr, reserved;
};

struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

struct pvh_area {
	struct hvm_start_info info;
	struct hvm_modlist_entry module;
	struct hvm_memmap_entry memmap[BOOT_MAX_E820];
};

int pvh_boot(struct vm *vm, uint64_t entry, uint64_t kernel_end,
	     const struct boot_config *cfg, uint64_t rsdp)
{
	struct pvh_area *area = guest_ptr(&vm->mem, LAYOUT_PVH_START_INFO, sizeof(*area));
	struct e820_entry map[BOOT_MAX_E820];
	uint64_t initrd, initrd_size;
	unsigned int n;
	int ret;

	ret = boot_write_cmdline(vm, cfg->cmdline, LAYOUT_CMDLINE_MAX);
	if (ret)
		return ret;
	ret = boot_place_initrd(vm, cfg->initrd, kernel_end, 0, &initrd, &initrd_size);
	if (ret)
		return ret;
	memset(area, 0, sizeof(*area));
	n = boot_memory_map(vm, map);
	for (unsigned int i = 0; i < n; i++)
		area->memmap[i] = (struct hvm_memmap_entry){ map[i].addr, map[i].size, map[i].type, 0 };
	area->info = (struct hvm_start_info){
		.magic = PVH_MAGIC,
		.version = 1,
		.cmdline_paddr = LAYOUT_CMDLINE,
		.rsdp_paddr = rsdp,
		.memmap_paddr = LAYOUT_PVH_START_INFO + offsetof(struct pvh_area, memmap),
		.memmap_entries = n,
	};
	if (initrd_size) {
		area->module = (struct hvm_modlist_entry){ initrd, initrd_size, 0, 0 };
		area->info.nr_modules = 1;
		area->info.modlist_paddr = LAYOUT_PVH_START_INFO + offsetof(struct pvh_area, module);
	}
	return regs_setup_pvh(vm, entry, LAYOUT_PVH_START_INFO);
}

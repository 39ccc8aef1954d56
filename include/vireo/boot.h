/* Loading a guest kernel (src/boot/): ELF with a PVH note (the probe guest,
 * vmlinux built with CONFIG_PVH), ELF vmlinux through its 64-bit entry, and
 * bzImage through the 64-bit Linux boot protocol. Also the memory map and
 * the ACPI tables every guest gets. */
#ifndef VIREO_BOOT_H
#define VIREO_BOOT_H

#include <stddef.h>
#include <stdint.h>

#include "vireo/vmm.h"

struct boot_config {
	const char *kernel;  /* path */
	const char *initrd;  /* path or NULL */
	const char *cmdline; /* may be NULL */
};

/* Loads kernel (and initrd) into guest memory, writes the ACPI tables and
 * the boot structures, and sets the BSP's registers. Returns 0 or -errno
 * with err_set() detail ("... is not a Linux kernel", "initrd does not fit"). */
int boot_load(struct vm *vm, const struct boot_config *cfg);

/* The guest memory map in E820 terms. */
enum e820_type { E820_RAM = 1, E820_RESERVED = 2 };
struct e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
};
#define BOOT_MAX_E820 8
unsigned int boot_memory_map(const struct vm *vm, struct e820_entry *out);

/* Writes RSDP, XSDT, FADT, MADT, MCFG and DSDT at LAYOUT_ACPI_TABLES.
 * Returns the RSDP's guest address, or 0 with err_set() detail.
 * REDUCED (direct kernel boot): hardware-reduced, power button through the
 * GED. PC (firmware boot): PM1 blocks and an SCI (vireo/acpipm.h), a FACS,
 * the fixed-feature power button: a guest then takes over the 8259 PIC the
 * firmware left programmed, as on a PC. */
enum acpi_platform { ACPI_PLATFORM_REDUCED, ACPI_PLATFORM_PC };
uint64_t acpi_build_tables(struct vm *vm, enum acpi_platform platform);

/* Loaded kernel image in memory (whole file) and what the format loaders
 * found in it. Internal to src/boot/, declared here for the unit tests. */
struct kernel_image {
	const uint8_t *data;
	size_t size;
	const char *path;
};
int elf_load(struct vm *vm, const struct kernel_image *img, uint64_t *entry,
	     uint64_t *pvh_entry, uint64_t *end);
int bzimage_load(struct vm *vm, const struct kernel_image *img, const struct boot_config *cfg,
		 uint64_t rsdp);
int boot_linux64(struct vm *vm, uint64_t entry, const struct kernel_image *setup,
		 uint64_t kernel_end, const struct boot_config *cfg, uint64_t rsdp);
int pvh_boot(struct vm *vm, uint64_t entry, uint64_t kernel_end,
	     const struct boot_config *cfg, uint64_t rsdp);

/* Register set-up for the BSP (src/boot/regs.c). */
int regs_setup_pvh(struct vm *vm, uint64_t entry, uint64_t start_info);
int regs_setup_long_mode(struct vm *vm, uint64_t entry, uint64_t boot_params);

/* Reads a whole file (the initrd) into guest memory at gpa; *size_out gets
 * its size. Fails if it does not fit in [gpa, limit). */
int boot_file_size(const char *path, uint64_t *size);
int boot_read_file_into(struct vm *vm, const char *path, uint64_t gpa, uint64_t size);



/* Places the initrd (if path) page-aligned at the top of low RAM, below
 * max_end when non-zero and above kernel_end. */
int boot_place_initrd(struct vm *vm, const char *path, uint64_t kernel_end, uint64_t max_end,
		      uint64_t *addr, uint64_t *size);
/* Writes the command line at LAYOUT_CMDLINE; max_len counts the NUL. */
int boot_write_cmdline(struct vm *vm, const char *cmdline, uint64_t max_len);
#endif

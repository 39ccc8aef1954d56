/* QEMU's firmware configuration device, fw_cfg (src/hw/fwcfg.c), as
 * unmodified firmware (SeaBIOS, OVMF, qboot) expects it on x86: the
 * selector at port 0x510 (16 bits), the data port 0x511 (bytes, in order,
 * zeros past the end) and the DMA address register at 0x514 (64 bits, big
 * endian: writing its low half at 0x518 starts the transfer). Layout of
 * the items and of the DMA descriptor: QEMU's docs/specs/fw_cfg.txt.
 *
 * Items are read-only for the guest; a DMA write is refused with the
 * descriptor's error bit. Every guest address of a DMA transfer is checked
 * against guest RAM (guest_ptr): a descriptor or a buffer outside it, or a
 * length that runs past it, ends the transfer with the error bit and
 * changes nothing outside RAM. */
#ifndef VIREO_FWCFG_H
#define VIREO_FWCFG_H

#include <stdint.h>

#include "vireo/vmm.h"

#define PORT_FWCFG_SELECTOR 0x0510
#define PORT_FWCFG_DATA     0x0511
#define PORT_FWCFG_DMA      0x0514

/* Selector keys (QEMU's names). */
enum fwcfg_key {
	FW_CFG_SIGNATURE = 0x00,
	FW_CFG_ID = 0x01,
	FW_CFG_RAM_SIZE = 0x03,
	FW_CFG_NB_CPUS = 0x05,
	FW_CFG_KERNEL_ADDR = 0x07,
	FW_CFG_KERNEL_SIZE = 0x08,
	FW_CFG_KERNEL_CMDLINE = 0x09,
	FW_CFG_INITRD_ADDR = 0x0a,
	FW_CFG_INITRD_SIZE = 0x0b,
	FW_CFG_BOOT_DEVICE = 0x0c,
	FW_CFG_NUMA = 0x0d,
	FW_CFG_BOOT_MENU = 0x0e,
	FW_CFG_MAX_CPUS = 0x0f,
	FW_CFG_KERNEL_ENTRY = 0x10,
	FW_CFG_KERNEL_DATA = 0x11,
	FW_CFG_INITRD_DATA = 0x12,
	FW_CFG_CMDLINE_ADDR = 0x13,
	FW_CFG_CMDLINE_SIZE = 0x14,
	FW_CFG_CMDLINE_DATA = 0x15,
	FW_CFG_SETUP_ADDR = 0x16,
	FW_CFG_SETUP_SIZE = 0x17,
	FW_CFG_SETUP_DATA = 0x18,
	FW_CFG_FILE_DIR = 0x19,
	FW_CFG_FILE_FIRST = 0x20,
	FW_CFG_IRQ0_OVERRIDE = 0x8002,
};

#define FW_CFG_VERSION_TRADITIONAL 0x01
#define FW_CFG_VERSION_DMA         0x02

/* DMA descriptor control bits (big endian in guest memory). */
#define FW_CFG_DMA_ERROR  0x01
#define FW_CFG_DMA_READ   0x02
#define FW_CFG_DMA_SKIP   0x04
#define FW_CFG_DMA_SELECT 0x08
#define FW_CFG_DMA_WRITE  0x10

#define FWCFG_MAX_FILES    64
#define FWCFG_NAME_MAX     56   /* with the NUL */
/* The biggest item vireo accepts (an initrd can be large). */
#define FWCFG_ITEM_MAX     (1ULL << 31)

struct fwcfg;

struct fwcfg_stats {
	uint64_t dma_transfers;
	uint64_t dma_errors;   /* refused: bad descriptor, buffer or a write */
};

/* The model, doing DMA into `mem` (may be NULL: no DMA). */
struct fwcfg *fwcfg_create_model(const struct guest_memory *mem);
/* The model on vm->pio, with vm's RAM for DMA. NULL with err_set(). */
struct fwcfg *fwcfg_create(struct vm *vm);
void fwcfg_destroy(struct fwcfg *f);

/* Adds (or replaces) an item; the data are copied. Returns 0 or -errno
 * (-EINVAL: a reserved key or too big, -ENOMEM). */
int fwcfg_add_item(struct fwcfg *f, uint16_t key, const void *data, uint64_t len);
/* Adds a named file at the next free key and lists it in the directory
 * (sorted by name, as QEMU lists them). -EEXIST for a name given twice,
 * -ENOSPC past FWCFG_MAX_FILES, -EINVAL for a name too long. */
int fwcfg_add_file(struct fwcfg *f, const char *name, const void *data, uint64_t len);
/* Convenience: a little-endian integer item of 2, 4 or 8 bytes. */
int fwcfg_add_u16(struct fwcfg *f, uint16_t key, uint16_t v);
int fwcfg_add_u32(struct fwcfg *f, uint16_t key, uint32_t v);
int fwcfg_add_u64(struct fwcfg *f, uint16_t key, uint64_t v);

/* The guest's accesses, as the port handlers make them (unit tests). */
void fwcfg_select(struct fwcfg *f, uint16_t key);
uint8_t fwcfg_read_byte(struct fwcfg *f);
/* Runs the DMA descriptor at guest address gpa. */
void fwcfg_dma(struct fwcfg *f, uint64_t gpa);
void fwcfg_get_stats(struct fwcfg *f, struct fwcfg_stats *out);

/* Snapshots (vireo/state.h). A restore rebuilds the items from the machine
 * description, except those added while boot_only is set (the kernel's:
 * a restored VM that reboots ends, `run --reboot=exit`), and the directory
 * once it lists such a file.
 * STATE_SEC_FWCFG: u32 selected key (FWCFG_KEY_NONE: none, or an item read
 * to its end), u64 offset in it, 8 bytes of the DMA address register.
 * fwcfg_save: -EBUSY with err_set() while a boot-only item is half read;
 * fwcfg_restore: the selection must be a rebuilt item, the offset in it. */
#define FWCFG_KEY_NONE 0xffffffffu
struct state_writer;
struct state_reader;
void fwcfg_set_boot_only(struct fwcfg *f, bool on);
int fwcfg_save(struct fwcfg *f, struct state_writer *w);
int fwcfg_restore(struct fwcfg *f, const struct state_reader *r);

#endif

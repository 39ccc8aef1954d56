/* vireo's ACPI tables for the firmware, through QEMU's table loader
 * (include/vireo/firmware.h): the tables are built as for a direct boot
 * (but for a PC, ACPI_PLATFORM_PC),
 * taken out of guest RAM before the firmware's shadow covers them, their
 * absolute addresses turned into offsets, and etc/table-loader tells the
 * firmware where to put them (RSDP in the F segment, the rest in high
 * memory), which pointers to relocate and which checksums to fix. Command
 * layout: QEMU's hw/acpi/bios-linker-loader.c (128 bytes each). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/firmware.h"
#include "vireo/layout.h"
#include "vireo/log.h"

#define LOADER_ALLOCATE     1
#define LOADER_ADD_POINTER  2
#define LOADER_ADD_CHECKSUM 3
#define LOADER_ZONE_HIGH    1
#define LOADER_ZONE_FSEG    2
#define LOADER_FILE         56
#define LOADER_MAX_CMDS     64

#define FILE_RSDP   "etc/acpi/rsdp"
#define FILE_TABLES "etc/acpi/tables"
#define RSDP_LEN    36
#define ACPI_HDR    36

struct loader_cmd {
	uint32_t command;
	union {
		struct { char file[LOADER_FILE]; uint32_t align; uint8_t zone; }
			__attribute__((packed)) alloc;
		struct { char dest[LOADER_FILE]; char src[LOADER_FILE]; uint32_t offset;
			 uint8_t size; } __attribute__((packed)) pointer;
		struct { char file[LOADER_FILE]; uint32_t offset, start, length; }
			__attribute__((packed)) cksum;
		uint8_t pad[124];
	};
} __attribute__((packed));

_Static_assert(sizeof(struct loader_cmd) == 128, "a table-loader command is 128 bytes");

struct loader {
	struct loader_cmd cmds[LOADER_MAX_CMDS];
	unsigned int n;
	uint8_t *tables;        /* FILE_TABLES: guest [LAYOUT_ACPI_TABLES, +len) */
	uint64_t len;
	uint8_t rsdp[RSDP_LEN];
	int bad;
};

static struct loader_cmd *loader_add(struct loader *l, uint32_t command)
{
	if (l->n == LOADER_MAX_CMDS) {
		l->bad = -ENOSPC;
		return &l->cmds[0]; /* harmless scratch: the result is refused */
	}
	l->cmds[l->n].command = command;
	return &l->cmds[l->n++];
}

static void loader_alloc(struct loader *l, const char *file, uint32_t align, uint8_t zone)
{
	struct loader_cmd *c = loader_add(l, LOADER_ALLOCATE);

	strncpy(c->alloc.file, file, LOADER_FILE - 1);
	c->alloc.align = align;
	c->alloc.zone = zone;
}

static void loader_checksum(struct loader *l, const char *file, uint32_t offset, uint32_t start,
			    uint32_t length)
{
	struct loader_cmd *c = loader_add(l, LOADER_ADD_CHECKSUM);

	strncpy(c->cksum.file, file, LOADER_FILE - 1);
	c->cksum.offset = offset;
	c->cksum.start = start;
	c->cksum.length = length;
}

/* The pointer of `size` bytes at dest+offset holds an absolute address in
 * the tables; it becomes an offset, which the firmware relocates. */
static void loader_pointer(struct loader *l, uint8_t *dest_data, const char *dest,
			   uint32_t offset, uint8_t size)
{
	struct loader_cmd *c = loader_add(l, LOADER_ADD_POINTER);
	uint64_t v = bus_get(dest_data + offset, size);

	if (v < LAYOUT_ACPI_TABLES || v - LAYOUT_ACPI_TABLES >= l->len)
		l->bad = -EINVAL;
	bus_put(dest_data + offset, size, v - LAYOUT_ACPI_TABLES);
	strncpy(c->pointer.dest, dest, LOADER_FILE - 1);
	strncpy(c->pointer.src, FILE_TABLES, LOADER_FILE - 1);
	c->pointer.offset = offset;
	c->pointer.size = size;
}

/* Offset in the tables of the table at absolute address `at`, with its
 * length; -1 if it is not inside them. */
static int64_t table_at(const struct loader *l, uint64_t at, uint32_t *len)
{
	uint64_t off = at - LAYOUT_ACPI_TABLES;

	if (at < LAYOUT_ACPI_TABLES || off > l->len || l->len - off < ACPI_HDR)
		return -1;
	*len = (uint32_t)bus_get(l->tables + off + 4, 4);
	return *len >= ACPI_HDR && *len <= l->len - off ? (int64_t)off : -1;
}

static void loader_table(struct loader *l, uint64_t at)
{
	uint32_t len;
	int64_t off = table_at(l, at, &len);

	if (off < 0) {
		l->bad = -EINVAL;
		return;
	}
	/* The FADT's DSDT pointers (32 and 64 bits) and the DSDT itself; its
	 * FACS pointer (32 bits, the FACS has no checksum). The FACS's 64-byte
	 * alignment survives: FILE_TABLES is allocated 64-byte aligned. */
	if (!memcmp(l->tables + off, "FACP", 4) && len >= 148) {
		loader_table(l, bus_get(l->tables + off + 140, 8));
		loader_pointer(l, l->tables, FILE_TABLES, (uint32_t)off + 40, 4);
		loader_pointer(l, l->tables, FILE_TABLES, (uint32_t)off + 140, 8);
		if (bus_get(l->tables + off + 36, 4))
			loader_pointer(l, l->tables, FILE_TABLES, (uint32_t)off + 36, 4);
	}
	loader_checksum(l, FILE_TABLES, (uint32_t)off + 9, (uint32_t)off, len);
}

static int loader_build(struct loader *l, const struct vm *vm, uint64_t rsdp_gpa)
{
	const uint8_t *area = guest_ptr(&vm->mem, LAYOUT_ACPI_TABLES,
					LAYOUT_ACPI_TABLES_END - LAYOUT_ACPI_TABLES);
	uint64_t xsdt;
	uint32_t xlen;
	int64_t xoff;

	if (!area || rsdp_gpa < LAYOUT_ACPI_TABLES || rsdp_gpa + RSDP_LEN > LAYOUT_ACPI_TABLES_END)
		return -EINVAL;
	/* The area up to the end of the last table (the RSDP at its start
	 * comes along unused). */
	l->len = LAYOUT_ACPI_TABLES_END - LAYOUT_ACPI_TABLES;
	while (l->len && !area[l->len - 1])
		l->len--;
	l->len = (l->len + 15) & ~15ULL;
	l->tables = malloc(l->len ? l->len : 1);
	if (!l->tables)
		return -ENOMEM;
	memcpy(l->tables, area, l->len);
	memcpy(l->rsdp, area + (rsdp_gpa - LAYOUT_ACPI_TABLES), RSDP_LEN);
	loader_alloc(l, FILE_RSDP, 16, LOADER_ZONE_FSEG);
	loader_alloc(l, FILE_TABLES, 64, LOADER_ZONE_HIGH);
	xsdt = bus_get(l->rsdp + 24, 8);
	xoff = table_at(l, xsdt, &xlen);
	if (xoff < 0)
		return -EINVAL;
	for (uint32_t e = ACPI_HDR; e + 8 <= xlen; e += 8) {
		loader_table(l, bus_get(l->tables + xoff + e, 8));
		loader_pointer(l, l->tables, FILE_TABLES, (uint32_t)xoff + e, 8);
	}
	loader_checksum(l, FILE_TABLES, (uint32_t)xoff + 9, (uint32_t)xoff, xlen);
	loader_pointer(l, l->rsdp, FILE_RSDP, 24, 8);
	loader_checksum(l, FILE_RSDP, 8, 0, 20);
	loader_checksum(l, FILE_RSDP, 32, 0, RSDP_LEN);
	return l->bad;
}

int firmware_add_acpi(struct fwcfg *f, struct vm *vm)
{
	struct loader *l = calloc(1, sizeof(*l));
	uint64_t rsdp;
	int ret;

	if (!l)
		return err_set(-ENOMEM, "out of memory");
	rsdp = acpi_build_tables(vm, ACPI_PLATFORM_PC);
	ret = rsdp ? loader_build(l, vm, rsdp) : -EINVAL;
	if (!ret)
		ret = fwcfg_add_file(f, FILE_RSDP, l->rsdp, RSDP_LEN);
	if (!ret)
		ret = fwcfg_add_file(f, FILE_TABLES, l->tables, l->len);
	if (!ret)
		ret = fwcfg_add_file(f, "etc/table-loader", l->cmds, l->n * sizeof(l->cmds[0]));
	if (ret)
		err_set(ret, "cannot give the ACPI tables to the firmware%s%s",
			rsdp ? "" : ": ", rsdp ? "" : err_get());
	free(l->tables);
	free(l);
	return ret;
}

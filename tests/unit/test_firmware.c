/* Firmware boot without KVM: the ACPI tables handed over through
 * etc/table-loader, run here the way SeaBIOS runs it (allocate, relocate
 * pointers, fix checksums), must give the same linked, summed tables at
 * the addresses the firmware picked; and the etc/e820 file. */
#include <endian.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vireo/acpi.h"
#include "vireo/firmware.h"
#include "vireo/fwcfg.h"
#include "vireo/layout.h"
#include "vireo/state.h"

#define RSDP_AT   0xf5a10ULL    /* where a firmware might put them */
#define TABLES_AT 0x1ff0000ULL

static struct vm *fake_vm(unsigned int ncpus, uint64_t size)
{
	struct vm *vm = calloc(1, sizeof(*vm));

	assert_int_equal(guest_memory_init(&vm->mem, size, false), 0);
	vm->ncpus = ncpus;
	return vm;
}

static void free_vm(struct vm *vm)
{
	guest_memory_free(&vm->mem);
	free(vm);
}

/* A fw_cfg file by name, through the directory, as firmware reads it. */
static uint8_t *read_file(struct fwcfg *f, const char *name, uint32_t *size)
{
	uint8_t count[4], e[64], *data;
	uint32_t n;

	fwcfg_select(f, FW_CFG_FILE_DIR);
	for (int i = 0; i < 4; i++)
		count[i] = fwcfg_read_byte(f);
	n = be32toh(*(uint32_t *)count);
	for (uint32_t i = 0; i < n; i++) {
		for (int j = 0; j < 64; j++)
			e[j] = fwcfg_read_byte(f);
		if (strcmp((char *)e + 8, name))
			continue;
		*size = be32toh(*(uint32_t *)e);
		data = malloc(*size);
		fwcfg_select(f, be16toh(*(uint16_t *)(e + 4)));
		for (uint32_t j = 0; j < *size; j++)
			data[j] = fwcfg_read_byte(f);
		return data;
	}
	fail_msg("no fw_cfg file %s", name);
	return NULL;
}

static uint64_t file_addr(const char *name)
{
	return !strcmp(name, "etc/acpi/rsdp") ? RSDP_AT : TABLES_AT;
}

/* SeaBIOS's romfile_loader_execute, for these three commands. */
static void run_loader(struct vm *vm, struct fwcfg *f, const uint8_t *cmds, uint32_t len)
{
	for (uint32_t at = 0; at + 128 <= len; at += 128) {
		const uint8_t *c = cmds + at + 4;
		uint32_t command = le32toh(*(const uint32_t *)(cmds + at)), size, off, start, n;
		uint8_t *dst, *data, sum = 0;
		uint64_t v = 0;

		switch (command) {
		case 1:
			data = read_file(f, (const char *)c, &size);
			memcpy(guest_ptr(&vm->mem, file_addr((const char *)c), size), data, size);
			free(data);
			break;
		case 2:
			off = le32toh(*(const uint32_t *)(c + 112));
			dst = guest_ptr(&vm->mem, file_addr((const char *)c) + off, c[116]);
			assert_non_null(dst);
			memcpy(&v, dst, c[116]);
			v += file_addr((const char *)c + 56);
			memcpy(dst, &v, c[116]);
			break;
		case 3:
			off = le32toh(*(const uint32_t *)(c + 56));
			start = le32toh(*(const uint32_t *)(c + 60));
			n = le32toh(*(const uint32_t *)(c + 64));
			data = guest_ptr(&vm->mem, file_addr((const char *)c) + start, n);
			assert_non_null(data);
			for (uint32_t i = 0; i < n; i++)
				sum += data[i];
			*(uint8_t *)guest_ptr(&vm->mem, file_addr((const char *)c) + off, 1) -= sum;
			break;
		default:
			fail_msg("unknown loader command %u", command);
		}
	}
}

static const uint8_t *table(struct vm *vm, uint64_t gpa, const char *sig)
{
	const uint8_t *t = guest_ptr(&vm->mem, gpa, 36);
	uint32_t len;

	assert_non_null(t);
	assert_memory_equal(t, sig, 4);
	memcpy(&len, t + 4, 4);
	assert_non_null(guest_ptr(&vm->mem, gpa, len));
	assert_int_equal(acpi_checksum(t, len), 0);
	return t;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

static void table_loader_relocates_the_tables(void **state)
{
	struct vm *vm = fake_vm(2, 32 << 20);
	struct fwcfg *f = fwcfg_create_model(&vm->mem);
	const uint8_t *r, *x, *fadt = NULL;
	uint32_t len, xlen, dsdt32;
	uint8_t *cmds;

	(void)state;
	assert_int_equal(firmware_add_acpi(f, vm), 0);
	/* The firmware's shadow will cover the direct-boot copy. */
	memset(guest_ptr(&vm->mem, LAYOUT_ACPI_TABLES, 0x10000), 0xff, 0x10000);
	cmds = read_file(f, "etc/table-loader", &len);
	assert_int_equal(len % 128, 0);
	run_loader(vm, f, cmds, len);
	free(cmds);
	r = guest_ptr(&vm->mem, RSDP_AT, 36);
	assert_memory_equal(r, "RSD PTR ", 8);
	assert_int_equal(acpi_checksum(r, 20), 0);
	assert_int_equal(acpi_checksum(r, 36), 0);
	assert_true(rd64(r + 24) >= TABLES_AT);
	x = table(vm, rd64(r + 24), "XSDT");
	memcpy(&xlen, x + 4, 4);
	for (uint32_t e = 36; e < xlen; e += 8) {
		const uint8_t *t = guest_ptr(&vm->mem, rd64(x + e), 36);

		assert_non_null(t);
		table(vm, rd64(x + e), (const char *)t); /* summed and whole */
		if (!memcmp(t, "FACP", 4))
			fadt = t;
	}
	assert_non_null(fadt);
	memcpy(&dsdt32, fadt + 40, 4);
	assert_int_equal(dsdt32, rd64(fadt + 140));
	table(vm, rd64(fadt + 140), "DSDT");
	/* The PC's FACS (no checksum): relocated, still 64-byte aligned. */
	memcpy(&dsdt32, fadt + 36, 4);
	assert_true(dsdt32 >= TABLES_AT);
	assert_int_equal(dsdt32 % 64, 0);
	assert_memory_equal(guest_ptr(&vm->mem, dsdt32, 4), "FACS", 4);
	fwcfg_destroy(f);
	free_vm(vm);
}

static void e820_file_has_ram_and_the_ecam(void **state)
{
	struct vm *vm = fake_vm(1, 64 << 20);
	uint8_t e[4 * FIRMWARE_E820_ENTRY];
	uint64_t addr, size;
	uint32_t type;
	unsigned int n = firmware_e820(vm, e, 4);

	(void)state;
	assert_int_equal(n, 2);
	memcpy(&addr, e, 8), memcpy(&size, e + 8, 8), memcpy(&type, e + 16, 4);
	assert_int_equal(addr, 0);
	assert_int_equal(size, 64 << 20);
	assert_int_equal(type, 1);
	memcpy(&addr, e + 20, 8), memcpy(&size, e + 28, 8), memcpy(&type, e + 36, 4);
	assert_int_equal(addr, LAYOUT_ECAM_BASE);
	assert_int_equal(type, 2);
	assert_int_equal(firmware_e820(vm, e, 1), 1);
	free_vm(vm);
}

/* A state file whose firmware section holds len bytes (none: no section). */
static struct state_reader *rom_state(size_t len, bool section)
{
	struct state_header h = { .ncpus = 1, .mem_size = 16 << 20 };
	struct state_writer *w = state_writer_new(&h);
	uint8_t *rom = calloc(1, len ? len : 1);
	struct state_reader *r;
	const uint8_t *buf;
	size_t n;

	assert_non_null(w);
	assert_non_null(rom);
	if (section) {
		state_begin(w, STATE_SEC_FIRMWARE, 0, STATE_SECTION_CRITICAL);
		state_put_bytes(w, rom, len);
		state_end(w);
	}
	assert_int_equal(state_writer_finish(w, &buf, &n), 0);
	assert_int_equal(state_reader_open(buf, n, &r), 0);
	state_writer_free(w);
	free(rom);
	return r;
}

/* The ROM a restore maps comes from the (hostile) state: an image of a
 * size no BIOS has, or none, is refused before anything is built; a good
 * one is read whole (this fake VM then stops at its missing hardware
 * virtualization). */
static void restore_checks_the_rom(void **unused)
{
	static const struct { size_t len; bool section; int ret; } cases[] = {
		{ 0, false, -ENOENT }, { 0, true, -EINVAL }, { 4096, true, -EINVAL },
		{ (64 << 10) + 512, true, -EINVAL }, { 64 << 10, true, -ENOTSUP },
		{ 256 << 10, true, -ENOTSUP },
	};
	struct vm *vm = fake_vm(1, 16 << 20);
	struct firmware *fw = (struct firmware *)vm;

	(void)unused;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct state_reader *r = rom_state(cases[i].len, cases[i].section);

		assert_int_equal(firmware_restore(vm, NULL, r, false, false, &fw), cases[i].ret);
		assert_null(fw);
		state_reader_free(r);
	}
	guest_memory_free(&vm->mem);
	free(vm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(table_loader_relocates_the_tables),
		cmocka_unit_test(e820_file_has_ram_and_the_ecam),
		cmocka_unit_test(restore_checks_the_rom),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

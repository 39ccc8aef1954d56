/* ACPI tables and the AML encoder: checksums, table links, the DSDT's _S5_
 * package and GED, and PkgLength/EISAID/statement encodings (the expected
 * bytes are what iasl 20200925 compiles the same ASL to). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vireo/acpi.h"
#include "vireo/boot.h"
#include "vireo/ged.h"
#include "vireo/layout.h"

static struct vm *fake_vm(unsigned int ncpus)
{
	struct vm *vm = calloc(1, sizeof(*vm));

	assert_int_equal(guest_memory_init(&vm->mem, 32 << 20, false), 0);
	vm->ncpus = ncpus;
	return vm;
}

static void free_vm(struct vm *vm)
{
	guest_memory_free(&vm->mem);
	free(vm);
}

static const uint8_t *table_at(struct vm *vm, uint64_t gpa, const char *sig)
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

static void tables_link_and_sum(void **state)
{
	struct vm *vm = fake_vm(3);
	uint64_t rsdp = acpi_build_tables(vm, ACPI_PLATFORM_REDUCED), xsdt, fadt_dsdt;
	const uint8_t *r, *x, *fadt = NULL, *madt = NULL, *dsdt;
	uint32_t xlen;

	(void)state;
	assert_int_equal(rsdp, LAYOUT_ACPI_TABLES);
	r = guest_ptr(&vm->mem, rsdp, 36);
	assert_memory_equal(r, "RSD PTR ", 8);
	assert_int_equal(acpi_checksum(r, 20), 0);
	assert_int_equal(acpi_checksum(r, 36), 0);
	xsdt = rd64(r + 24);
	x = table_at(vm, xsdt, "XSDT");
	memcpy(&xlen, x + 4, 4);
	assert_int_equal(xlen, 36 + 3 * 8);
	for (unsigned int i = 0; i < 3; i++) {
		uint64_t gpa = rd64(x + 36 + 8 * i);
		const uint8_t *t = guest_ptr(&vm->mem, gpa, 4);

		if (!memcmp(t, "FACP", 4))
			fadt = table_at(vm, gpa, "FACP");
		else if (!memcmp(t, "APIC", 4))
			madt = table_at(vm, gpa, "APIC");
		else
			table_at(vm, gpa, "MCFG");
	}
	assert_non_null(fadt);
	assert_non_null(madt);
	fadt_dsdt = rd64(fadt + 140);
	dsdt = table_at(vm, fadt_dsdt, "DSDT");
	/* _S5_ as NameOp "_S5_" PackageOp PkgLength(5) 2 elements: 5, 0. */
	{
		static const uint8_t s5[] = { 0x08, '_', 'S', '5', '_', 0x12, 0x05, 0x02, 0x0a,
					      ACPI_S5_SLP_TYP, 0x00 };
		uint32_t len;
		int found = 0;

		memcpy(&len, dsdt + 4, 4);
		for (uint32_t i = 36; i + sizeof(s5) <= len; i++)
			found |= !memcmp(dsdt + i, s5, sizeof(s5));
		assert_true(found);
	}
	free_vm(vm);
}

static void pkglength_encodings(void **state)
{
	struct aml a = { 0 };

	(void)state;
	aml_pkglength(&a, 10);          /* 11 fits one byte */
	assert_int_equal(a.len, 1);
	assert_int_equal(a.data[0], 11);
	a.len = 0;
	aml_pkglength(&a, 100);         /* 102 needs two bytes */
	assert_int_equal(a.len, 2);
	assert_int_equal(a.data[0], 0x40 | (102 & 0xf));
	assert_int_equal(a.data[1], 102 >> 4);
	a.len = 0;
	aml_pkglength(&a, 5000);        /* 5003 needs three */
	assert_int_equal(a.len, 3);
	assert_int_equal((a.data[0] & 0xf) | a.data[1] << 4 | a.data[2] << 12, 5003);
	aml_free(&a);
}

static void eisaid_matches_iasl(void **state)
{
	(void)state;
	/* iasl encodes EISAID("PNP0A03") as 0x030AD041. */
	assert_int_equal(aml_eisaid("PNP0A03"), 0x030ad041);
	assert_int_equal(aml_eisaid("PNP0501"), 0x0105d041);
}

static void expect_bytes(struct aml *a, const uint8_t *want, size_t n)
{
	assert_false(a->failed);
	assert_int_equal(a->len, n);
	assert_memory_equal(a->data, want, n);
	aml_free(a);
}

/* Name (_HID, "ACPI0013"); Interrupt (ResourceConsumer, Edge, ActiveHigh,
 * Exclusive) {16}; OperationRegion (EREG, SystemIO, 0x0604, 4);
 * Field (EREG, DWordAcc, NoLock, WriteAsZeros) { ESEL, 32 } */
static void ged_declarations_match_iasl(void **state)
{
	static const uint8_t hid[] = { 0x08, '_', 'H', 'I', 'D', 0x0d, 'A', 'C', 'P', 'I', '0',
				       '0', '1', '3', 0x00 };
	static const uint8_t irq[] = { 0x89, 0x06, 0x00, 0x03, 0x01, 0x10, 0x00, 0x00, 0x00 };
	static const uint8_t region[] = { 0x5b, 0x80, 'E', 'R', 'E', 'G', 0x01, 0x0b, 0x04, 0x06,
					  0x0a, 0x04 };
	static const uint8_t field[] = { 0x5b, 0x81, 0x0b, 'E', 'R', 'E', 'G', 0x43, 'E', 'S',
					 'E', 'L', 0x20 };
	struct aml a = { 0 };

	(void)state;
	aml_name_string(&a, "_HID", "ACPI0013");
	expect_bytes(&a, hid, sizeof(hid));
	aml_res_ext_irq(&a, 16, AML_IRQ_CONSUMER | AML_IRQ_EDGE);
	expect_bytes(&a, irq, sizeof(irq));
	aml_operation_region(&a, "EREG", AML_SPACE_IO, 0x604, 4);
	expect_bytes(&a, region, sizeof(region));
	aml_field(&a, "EREG", AML_FIELD_DWORD_ACC | AML_FIELD_WRITE_AS_ZEROS, "ESEL", 32);
	expect_bytes(&a, field, sizeof(field));
}

/* Method (_EVT, 1, Serialized) { Local0 = ESEL
 *   If ((Local0 & 0x02)) { Notify (PWRB, 0x80) } } */
static void evt_method_matches_iasl(void **state)
{
	static const uint8_t want[] = {
		0x14, 0x1a, '_', 'E', 'V', 'T', 0x09,
		0x70, 'E', 'S', 'E', 'L', 0x60,
		0xa0, 0x0d, 0x7b, 0x60, 0x0a, 0x02, 0x00,
		0x86, 'P', 'W', 'R', 'B', 0x0a, 0x80,
	};
	struct aml body = { 0 }, pred = { 0 }, then = { 0 }, m = { 0 };

	(void)state;
	aml_store_local(&body, "ESEL", 0);
	aml_and_local(&pred, 0, 2);
	aml_notify(&then, "PWRB", 0x80);
	aml_if(&body, &pred, &then);
	aml_method(&m, "_EVT", 1, true, &body);
	expect_bytes(&m, want, sizeof(want));
	aml_free(&body);
	aml_free(&pred);
	aml_free(&then);
}

static bool contains(const uint8_t *hay, size_t n, const void *needle, size_t m)
{
	for (size_t i = 0; i + m <= n; i++)
		if (!memcmp(hay + i, needle, m))
			return true;
	return false;
}

/* What the probe guest and Linux look for: the GED's _HID, its interrupt
 * (IRQ_GED, edge, active-high, exclusive), _EVT and the PNP0C0C button. */
static void dsdt_has_ged_and_power_button(void **state)
{
	struct vm *vm = fake_vm(1);
	uint64_t rsdp = acpi_build_tables(vm, ACPI_PLATFORM_REDUCED);
	const uint8_t *x = guest_ptr(&vm->mem, rd64(guest_ptr(&vm->mem, rsdp, 36) + 24), 60);
	const uint8_t *fadt = NULL, *dsdt;
	uint32_t pnp0c0c = aml_eisaid("PNP0C0C"), len;
	uint8_t irq[9] = { 0x89, 6, 0, 0x03, 1, IRQ_GED, 0, 0, 0 };

	(void)state;
	for (unsigned int i = 0; i < 3 && !fadt; i++)
		if (!memcmp(guest_ptr(&vm->mem, rd64(x + 36 + 8 * i), 4), "FACP", 4))
			fadt = guest_ptr(&vm->mem, rd64(x + 36 + 8 * i), 148);
	assert_non_null(fadt);
	dsdt = table_at(vm, rd64(fadt + 140), "DSDT");
	memcpy(&len, dsdt + 4, 4);
	assert_true(contains(dsdt, len, "\x0d" "ACPI0013", 9));
	assert_true(contains(dsdt, len, irq, sizeof(irq)));
	assert_true(contains(dsdt, len, "_EVT", 4));
	assert_true(contains(dsdt, len, &pnp0c0c, 4));
	free_vm(vm);
}

/* The CMOS RTC for Linux's rtc_cmos: PNP0B00 with its two ports and no
 * IRQ, the FADT no longer saying "no CMOS", and its century register. */
static void dsdt_has_rtc_and_fadt_allows_cmos(void **state)
{
	struct vm *vm = fake_vm(1);
	uint64_t rsdp = acpi_build_tables(vm, ACPI_PLATFORM_REDUCED);
	const uint8_t *x = guest_ptr(&vm->mem, rd64(guest_ptr(&vm->mem, rsdp, 36) + 24), 60);
	const uint8_t *fadt = NULL, *dsdt;
	uint32_t pnp0b00 = aml_eisaid("PNP0B00"), len;
	uint8_t io[8] = { 0x47, 1, 0x70, 0, 0x70, 0, 1, 2 };
	uint16_t boot_arch;

	(void)state;
	for (unsigned int i = 0; i < 3 && !fadt; i++)
		if (!memcmp(guest_ptr(&vm->mem, rd64(x + 36 + 8 * i), 4), "FACP", 4))
			fadt = guest_ptr(&vm->mem, rd64(x + 36 + 8 * i), 148);
	assert_non_null(fadt);
	memcpy(&boot_arch, fadt + 109, 2);
	assert_int_equal(boot_arch & (1u << 5), 0);
	assert_int_equal(fadt[108], 0x32);
	dsdt = table_at(vm, rd64(fadt + 140), "DSDT");
	memcpy(&len, dsdt + 4, 4);
	assert_true(contains(dsdt, len, &pnp0b00, 4));
	assert_true(contains(dsdt, len, io, sizeof(io)));
	free_vm(vm);
}

static const uint8_t *find_fadt(struct vm *vm, uint64_t rsdp)
{
	const uint8_t *x = guest_ptr(&vm->mem, rd64(guest_ptr(&vm->mem, rsdp, 36) + 24), 60);

	for (unsigned int i = 0; i < 3; i++)
		if (!memcmp(guest_ptr(&vm->mem, rd64(x + 36 + 8 * i), 4), "FACP", 4))
			return table_at(vm, rd64(x + 36 + 8 * i), "FACP");
	fail_msg("no FADT");
	return NULL;
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

/* A firmware boot's PC (include/vireo/acpipm.h): not hardware-reduced, PM1
 * blocks where the device is, SCI 9 (level, active high in the MADT), a
 * 64-byte aligned FACS, the fixed power button and no GED. */
static void pc_tables_have_pm1_sci_and_facs(void **state)
{
	struct vm *vm = fake_vm(2);
	const uint8_t *fadt = find_fadt(vm, acpi_build_tables(vm, ACPI_PLATFORM_PC));
	const uint8_t *x, *madt = NULL, *dsdt, *facs;
	uint8_t iso[10] = { 2, 10, 0, IRQ_SCI, IRQ_SCI, 0, 0, 0, 0x0d, 0 };
	uint32_t flags = rd32(fadt + 112), len;

	(void)state;
	assert_int_equal(flags & (1u << 20), 0);  /* HW_REDUCED */
	assert_int_equal(flags & (1u << 4), 0);   /* fixed power button */
	assert_int_equal(fadt[46] | fadt[47] << 8, IRQ_SCI);
	assert_int_equal(rd32(fadt + 48), 0);     /* SMI_CMD */
	assert_int_equal(rd32(fadt + 56), PORT_ACPI_PM1A_EVT);
	assert_int_equal(rd32(fadt + 64), PORT_ACPI_PM1A_CNT);
	assert_int_equal(PORT_ACPI_PM1A_CNT, PORT_ACPI_PM1A_EVT + 4); /* one device range */
	assert_int_equal(fadt[88], 4);
	assert_int_equal(fadt[89], 2);
	assert_int_equal(rd64(fadt + 148 + 4), PORT_ACPI_PM1A_EVT);
	assert_int_equal(rd64(fadt + 172 + 4), PORT_ACPI_PM1A_CNT);
	assert_int_equal(rd32(fadt + 36) % 64, 0);
	facs = guest_ptr(&vm->mem, rd32(fadt + 36), 64);
	assert_memory_equal(facs, "FACS", 4);
	assert_int_equal(rd32(facs + 4), 64);
	x = guest_ptr(&vm->mem, rd64(guest_ptr(&vm->mem, LAYOUT_ACPI_TABLES, 36) + 24), 60);
	for (unsigned int i = 0; i < 3; i++)
		if (!memcmp(guest_ptr(&vm->mem, rd64(x + 36 + 8 * i), 4), "APIC", 4))
			madt = table_at(vm, rd64(x + 36 + 8 * i), "APIC");
	assert_non_null(madt);
	assert_true(contains(madt, rd32(madt + 4), iso, sizeof(iso)));
	dsdt = table_at(vm, rd64(fadt + 140), "DSDT");
	len = rd32(dsdt + 4);
	assert_false(contains(dsdt, len, "ACPI0013", 8));
	assert_true(contains(dsdt, len, "_S5_", 4));
	free_vm(vm);
}

/* A direct boot keeps the hardware-reduced tables: no PM1 blocks, SCI or
 * FACS, the GED's button, no override for IRQ 9. */
static void reduced_tables_have_no_pm1(void **state)
{
	struct vm *vm = fake_vm(2);
	const uint8_t *fadt = find_fadt(vm, acpi_build_tables(vm, ACPI_PLATFORM_REDUCED));
	uint32_t flags = rd32(fadt + 112);

	(void)state;
	assert_int_equal(flags & ((1u << 20) | (1u << 4)), (1u << 20) | (1u << 4));
	assert_int_equal(rd32(fadt + 36), 0);
	assert_int_equal(rd32(fadt + 56), 0);
	assert_int_equal(rd32(fadt + 64), 0);
	assert_int_equal(fadt[46] | fadt[47] << 8, 0);
	assert_int_equal(rd64(fadt + 244 + 4), PORT_ACPI_SLEEP_CONTROL);
	free_vm(vm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tables_link_and_sum),
		cmocka_unit_test(pkglength_encodings),
		cmocka_unit_test(eisaid_matches_iasl),
		cmocka_unit_test(ged_declarations_match_iasl),
		cmocka_unit_test(evt_method_matches_iasl),
		cmocka_unit_test(dsdt_has_ged_and_power_button),
		cmocka_unit_test(dsdt_has_rtc_and_fadt_allows_cmos),
		cmocka_unit_test(pc_tables_have_pm1_sci_and_facs),
		cmocka_unit_test(reduced_tables_have_no_pm1),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

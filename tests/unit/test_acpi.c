/* ACPI tables and the AML encoder: checksums, table links, the DSDT's _S5_
 * package and PkgLength/EISAID encodings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vireo/acpi.h"
#include "vireo/boot.h"
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
	uint64_t rsdp = acpi_build_tables(vm), xsdt, fadt_dsdt;
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tables_link_and_sum),
		cmocka_unit_test(pkglength_encodings),
		cmocka_unit_test(eisaid_matches_iasl),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

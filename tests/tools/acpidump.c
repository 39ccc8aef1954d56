/* Writes the ACPI tables vireo builds for a VM to files, for tools that
 * check them from outside (tests/integration/test_acpi_iasl.py runs
 * `iasl -d` on them):
 *
 *   acpidump [--pc] OUTDIR [NCPUS]
 *       -> OUTDIR/dsdt.dat, facp.dat, apic.dat, mcfg.dat (--pc: the tables
 *          of a firmware boot, ACPI_PLATFORM_PC, and facs.dat)
 *
 * The tables are built in a guest memory of 32 MiB, exactly as `vireo run`
 * builds them (acpi_build_tables), and found through RSDP -> XSDT -> FADT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/acpi.h"
#include "vireo/boot.h"
#include "vireo/log.h"

static int write_table(struct vm *vm, const char *dir, uint64_t gpa)
{
	const uint8_t *t = guest_ptr(&vm->mem, gpa, 36);
	char path[4096], sig[5] = { 0 };
	uint32_t len;
	FILE *f;

	if (!t)
		return -1;
	memcpy(&len, t + 4, 4);
	if (len < 36)
		return -1;
	if (!guest_ptr(&vm->mem, gpa, len))
		return -1;
	for (int i = 0; i < 4; i++)
		sig[i] = (char)(t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 'a' - 'A' : t[i]);
	snprintf(path, sizeof(path), "%s/%s.dat", dir, sig);
	f = fopen(path, "wb");
	if (!f || fwrite(t, 1, len, f) != len || fclose(f)) {
		perror(path);
		return -1;
	}
	printf("%s %u\n", path, len);
	return 0;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

int main(int argc, char **argv)
{
	struct vm vm = { 0 };
	enum acpi_platform platform = ACPI_PLATFORM_REDUCED;
	uint64_t rsdp, xsdt;
	const uint8_t *x;
	uint32_t xlen;
	int ret = 0;

	if (argc > 1 && !strcmp(argv[1], "--pc")) {
		platform = ACPI_PLATFORM_PC;
		argc--, argv++;
	}
	if (argc < 2) {
		fprintf(stderr, "usage: acpidump [--pc] OUTDIR [NCPUS]\n");
		return 2;
	}
	vm.ncpus = argc > 2 ? (unsigned int)atoi(argv[2]) : 1;
	if (guest_memory_init(&vm.mem, 32 << 20, false) ||
	    !(rsdp = acpi_build_tables(&vm, platform))) {
		fprintf(stderr, "acpidump: %s\n", err_get());
		return 1;
	}
	xsdt = rd64(guest_ptr(&vm.mem, rsdp, 36) + 24);
	x = guest_ptr(&vm.mem, xsdt, 36);
	memcpy(&xlen, x + 4, 4);
	for (uint32_t off = 36; off + 8 <= xlen && !ret; off += 8) {
		uint64_t gpa = rd64(x + off);
		const uint8_t *t = guest_ptr(&vm.mem, gpa, 148);

		ret = write_table(&vm, argv[1], gpa);
		if (!ret && t && !memcmp(t, "FACP", 4))
			ret = write_table(&vm, argv[1], rd64(t + 140)); /* X_DSDT */
		if (!ret && t && !memcmp(t, "FACP", 4) && platform == ACPI_PLATFORM_PC)
			ret = write_table(&vm, argv[1], (uint32_t)rd64(t + 36)); /* FACS */
	}
	guest_memory_free(&vm.mem);
	return ret ? 1 : 0;
}

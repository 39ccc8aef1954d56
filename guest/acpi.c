/* ACPI table walk at CPL3: RSDP -> RSDT/XSDT -> MADT (CPUs, IOAPIC), FADT
 * (sleep registers), DSDT (_S5_, the GED's interrupt), MCFG (ECAM). Tables
 * are read in place through the identity map; every checksum is verified and a bad table is
 * reported as "PROBE acpi_error=..." and skipped. */
#include "probe.h"

struct acpi_info acpi = { .slp_typ_s5 = -1, .com1_gsi = 4, .ged_gsi = -1 };

struct sdt_header {
	char sig[4];
	uint32_t length;
	uint8_t revision, checksum;
	char oem_id[6], oem_table_id[8];
	uint32_t oem_revision, creator_id, creator_revision;
} __attribute__((packed));

static uint8_t sum8(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint8_t s = 0;

	while (n--)
		s += *b++;
	return s;
}

static uint32_t rd32(const uint8_t *p) { uint32_t v; probe_memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; probe_memcpy(&v, p, 8); return v; }

static const uint8_t *rsdp_scan(void)
{
	for (uintptr_t a = 0xe0000; a < 0x100000; a += 16)
		if (!probe_memcmp((const void *)a, "RSD PTR ", 8))
			return (const uint8_t *)a;
	return NULL;
}

/* Table at paddr if its header and checksum are sane, else NULL (reported). */
static const struct sdt_header *sdt_get(uint64_t paddr)
{
	const struct sdt_header *h = (const void *)(uintptr_t)paddr;

	if (!paddr || paddr >= 0x100000000ull - 36) {
		probe_printf("PROBE acpi_error=bad-table-address addr=0x%lx\n", paddr);
		return NULL;
	}
	if (h->length < sizeof(*h) || paddr + h->length > 0x100000000ull) {
		probe_printf("PROBE acpi_error=bad-table-length sig=%.4s\n", h->sig);
		return NULL;
	}
	if (sum8(h, h->length)) {
		probe_printf("PROBE acpi_error=bad-checksum sig=%.4s\n", h->sig);
		return NULL;
	}
	return h;
}

static void madt_parse(const struct sdt_header *h)
{
	const uint8_t *p = (const uint8_t *)h + 44, *end = (const uint8_t *)h + h->length;

	for (; p + 2 <= end && p[1] >= 2 && p + p[1] <= end; p += p[1]) {
		uint32_t id, flags;

		if (p[0] == 0 && p[1] >= 8) {		/* Local APIC */
			id = p[3];
			flags = rd32(p + 4);
		} else if (p[0] == 9 && p[1] >= 16) {	/* Local x2APIC */
			id = rd32(p + 4);
			flags = rd32(p + 8);
		} else {
			if (p[0] == 1 && p[1] >= 12 && !acpi.ioapic_base)
				acpi.ioapic_base = rd32(p + 4);
			if (p[0] == 2 && p[1] >= 10 && p[3] == 4)	/* ISA IRQ 4 override */
				acpi.com1_gsi = rd32(p + 4);
			continue;
		}
		if (!(flags & 1))
			continue;
		if (acpi.ncpus < MAX_CPUS)
			acpi.apic_ids[acpi.ncpus] = id;
		acpi.ncpus++;
	}
}

/* _S5_ package: NameOp "_S5_" PackageOp PkgLength NumElements SLP_TYPa ... */
static void dsdt_parse(const struct sdt_header *h)
{
	const uint8_t *p = (const uint8_t *)(h + 1), *end = (const uint8_t *)h + h->length;

	for (; p + 10 <= end; p++) {	/* "_S5_" 0x12 len count prefix value */
		if (probe_memcmp(p, "_S5_", 4) || p[4] != 0x12)
			continue;
		const uint8_t *q = p + 5;

		q += 1 + (q[0] >> 6);			/* PkgLength */
		q++;					/* NumElements */
		if (*q == 0x0a)				/* BytePrefix */
			acpi.slp_typ_s5 = q[1];
		else if (*q == 0x00 || *q == 0x01)	/* ZeroOp, OneOp */
			acpi.slp_typ_s5 = *q;
		else
			acpi.slp_typ_s5 = *q;		/* bare byte (seen in the wild) */
		return;
	}
}

/* The Generic Event Device without an AML interpreter: after its _HID
 * string "ACPI0013", the first Extended Interrupt descriptor (0x89, 16-bit
 * length >= 6, flags, count >= 1, 32-bit GSIs) is taken as its _CRS. Both
 * vireo and QEMU declare _HID before _CRS. */
static void ged_scan(const uint8_t *p, const uint8_t *end)
{
	for (; p + 8 <= end && probe_memcmp(p, "ACPI0013", 8); p++)
		;
	for (; p + 9 <= end; p++) {
		uint16_t len = (uint16_t)(p[1] | p[2] << 8);

		if (p[0] != 0x89 || len < 6 || p[4] < 1 || len < 2 + 4 * p[4] || p + 3 + len > end)
			continue;
		acpi.ged_flags = p[3];
		acpi.ged_gsi = (int)rd32(p + 5);
		return;
	}
}

static void fadt_parse(const struct sdt_header *h)
{
	const uint8_t *f = (const uint8_t *)h;
	uint64_t dsdt = 0;

	if (h->length >= 44)
		dsdt = rd32(f + 40);
	if (h->length >= 68)
		acpi.pm1a_cnt = rd32(f + 64);
	if (h->length >= 116)
		acpi.hw_reduced = rd32(f + 112) & (1u << 20);
	if (h->length >= 148 && rd64(f + 140))
		dsdt = rd64(f + 140);			/* X_DSDT */
	if (h->length >= 184 && !acpi.pm1a_cnt && f[172] == 1)
		acpi.pm1a_cnt = (uint32_t)rd64(f + 176);	/* X_PM1a_CNT_BLK, I/O */
	if (h->length >= 256) {				/* SLEEP_CONTROL_REG */
		acpi.sleep_ctl.space = f[244];
		acpi.sleep_ctl.bit_width = f[245];
		acpi.sleep_ctl.bit_offset = f[246];
		acpi.sleep_ctl.access_size = f[247];
		acpi.sleep_ctl.addr = rd64(f + 248);
	}
	const struct sdt_header *d = sdt_get(dsdt);

	if (d) {
		dsdt_parse(d);
		ged_scan((const uint8_t *)(d + 1), (const uint8_t *)d + d->length);
	}
}

static void mcfg_parse(const struct sdt_header *h)
{
	const uint8_t *p = (const uint8_t *)h + 44;

	if (h->length < 44 + 16)
		return;
	acpi.ecam_base = rd64(p);
	acpi.bus_start = p[10];
	acpi.bus_end = p[11];
}

static void table_parse(uint64_t paddr)
{
	const struct sdt_header *h = sdt_get(paddr);

	if (!h)
		return;
	size_t n = probe_strlen(acpi.tables);

	if (n + 6 <= sizeof(acpi.tables)) {
		if (n)
			acpi.tables[n++] = ',';
		probe_memcpy(acpi.tables + n, h->sig, 4);
	}
	if (!probe_memcmp(h->sig, "APIC", 4))
		madt_parse(h);
	else if (!probe_memcmp(h->sig, "FACP", 4))
		fadt_parse(h);
	else if (!probe_memcmp(h->sig, "MCFG", 4))
		mcfg_parse(h);
}

/* Returns 0, or -1 when there is no usable RSDP or root table. */
int acpi_init(uint64_t rsdp_hint)
{
	const uint8_t *rsdp = rsdp_hint ? (const uint8_t *)(uintptr_t)rsdp_hint : rsdp_scan();
	const struct sdt_header *root;
	bool xsdt;

	if (!rsdp || probe_memcmp(rsdp, "RSD PTR ", 8)) {
		probe_printf("PROBE acpi_error=no-rsdp\n");
		return -1;
	}
	if (sum8(rsdp, 20)) {
		probe_printf("PROBE acpi_error=bad-checksum sig=RSDP\n");
		return -1;
	}
	acpi.rsdp = (uintptr_t)rsdp;
	acpi.rsdp_scanned = !rsdp_hint;
	/* ACPI 2.0+ RSDP (36 bytes, extended checksum) with an XSDT address */
	xsdt = rsdp[15] >= 2 && rd32(rsdp + 20) == 36 && !sum8(rsdp, 36) && rd64(rsdp + 24);
	root = sdt_get(xsdt ? rd64(rsdp + 24) : rd32(rsdp + 16));
	if (!root)
		return -1;
	size_t esz = xsdt ? 8 : 4;
	size_t n = (root->length - sizeof(*root)) / esz;
	const uint8_t *e = (const uint8_t *)(root + 1);

	for (size_t i = 0; i < n; i++)
		table_parse(xsdt ? rd64(e + i * esz) : rd32(e + i * esz));
	return 0;
}

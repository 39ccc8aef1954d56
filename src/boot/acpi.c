/* The ACPI tables every guest gets, written at LAYOUT_ACPI_TABLES:
 * RSDP (v2) -> XSDT -> { FADT -> DSDT, MADT, MCFG }. For a direct boot the
 * platform is "hardware-reduced" (no PM1 blocks, no SCI): power-off goes
 * through the FADT's sleep control register, and the power button is
 * signalled through a Generic Event Device. A firmware boot gets a PC
 * instead (vireo/boot.h): PM1 blocks, an SCI, a FACS and the fixed power
 * button. Reset goes through the i8042 port in both. Debian's kernel has
 * no MP-table support, so the MADT is how it finds its CPUs. */
#include <errno.h>
#include <string.h>

#include "vireo/acpi.h"
#include "vireo/acpipm.h"
#include "vireo/boot.h"
#include "vireo/ged.h"
#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/pci.h"
#include "vireo/rtc.h"

struct acpi_header {
	char signature[4];
	uint32_t length;
	uint8_t revision;
	uint8_t checksum;
	char oem_id[6];
	char oem_table_id[8];
	uint32_t oem_revision;
	char creator_id[4];
	uint32_t creator_revision;
} __attribute__((packed));

struct acpi_gas {
	uint8_t space_id; /* 0 memory, 1 I/O port */
	uint8_t bit_width;
	uint8_t bit_offset;
	uint8_t access_size; /* 1 byte */
	uint64_t address;
} __attribute__((packed));

struct acpi_rsdp {
	char signature[8];
	uint8_t checksum;
	char oem_id[6];
	uint8_t revision;
	uint32_t rsdt_address;
	uint32_t length;
	uint64_t xsdt_address;
	uint8_t extended_checksum;
	uint8_t reserved[3];
} __attribute__((packed));

/* FADT revision 6 (276 bytes); only the fields vireo sets are named. */
struct acpi_fadt {
	struct acpi_header h;
	uint32_t firmware_ctrl;
	uint32_t dsdt;
	uint8_t pad0[46 - 44];
	uint16_t sci_int;
	uint32_t smi_cmd;
	uint8_t pad1[56 - 52];
	uint32_t pm1a_evt_blk;
	uint32_t pm1b_evt_blk;
	uint32_t pm1a_cnt_blk;
	uint8_t pad2[88 - 68];
	uint8_t pm1_evt_len;
	uint8_t pm1_cnt_len;
	uint8_t pad3[96 - 90];
	uint16_t p_lvl2_lat;
	uint16_t p_lvl3_lat;
	uint8_t pad4[108 - 100];
	uint8_t century;      /* CMOS index of the century register */
	uint16_t iapc_boot_arch;
	uint8_t reserved;
	uint32_t flags;
	struct acpi_gas reset_reg;
	uint8_t reset_value;
	uint16_t arm_boot_arch;
	uint8_t minor_version;
	uint64_t x_firmware_ctrl;
	uint64_t x_dsdt;
	struct acpi_gas x_pm1a_evt_blk;
	uint8_t pad5[172 - 160];
	struct acpi_gas x_pm1a_cnt_blk;
	uint8_t pad6[244 - 184];
	struct acpi_gas sleep_control;
	struct acpi_gas sleep_status;
	uint64_t hypervisor_vendor;
} __attribute__((packed));

_Static_assert(sizeof(struct acpi_fadt) == 276, "FADT revision 6 is 276 bytes");

#define FADT_WBINVD         (1u << 0)
#define FADT_PWR_BUTTON     (1u << 4)
#define FADT_SLP_BUTTON     (1u << 5)
#define FADT_RESET_REG_SUP  (1u << 10)
#define FADT_HW_REDUCED     (1u << 20)
#define FADT_NO_C2_C3       0x0fff /* P_LVLx_LAT above 100/1000 us */
#define BOOT_ARCH_8042      (1u << 1)
#define BOOT_ARCH_NO_VGA    (1u << 2)

/* Bump allocator over the ACPI area of guest memory. */
struct acpi_area {
	struct vm *vm;
	uint64_t next;
};

static void *acpi_alloc(struct acpi_area *area, size_t len, uint64_t *gpa)
{
	void *p;

	if (area->next + len > LAYOUT_ACPI_TABLES_END)
		return NULL;
	p = guest_ptr(&area->vm->mem, area->next, len);
	if (!p)
		return NULL;
	memset(p, 0, len);
	*gpa = area->next;
	area->next = (area->next + len + 15) & ~15ULL;
	return p;
}

static void acpi_header_init(struct acpi_header *h, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(h->signature, sig, 4);
	h->length = len;
	h->revision = rev;
	memcpy(h->oem_id, "VIREO ", 6);
	memcpy(h->oem_table_id, "VIREOVM ", 8);
	h->oem_revision = 1;
	memcpy(h->creator_id, "VIRE", 4);
	h->creator_revision = 1;
}

static void acpi_finish(struct acpi_header *h)
{
	h->checksum = 0;
	h->checksum = acpi_checksum(h, h->length);
}

/* _PRT: INTA# of slots 1-31 (00.0 is the host bridge) to the GSIs that
 * pci_intx_gsi() drives; Source 0 means "a GSI, no link device". Linux
 * takes such a GSI as level-triggered, active-low; KVM's IOAPIC ignores the
 * polarity, so the VMM asserts with level 1. */
static void dsdt_pci_prt(struct aml *dev)
{
	uint64_t prt[PCI_SLOTS - 1][4];

	for (unsigned int slot = 1; slot < PCI_SLOTS; slot++) {
		prt[slot - 1][0] = ((uint64_t)slot << 16) | 0xffff; /* any function */
		prt[slot - 1][1] = 0;                               /* INTA# */
		prt[slot - 1][2] = 0;
		prt[slot - 1][3] = pci_intx_gsi(slot);
	}
	aml_name_table(dev, "_PRT", &prt[0][0], PCI_SLOTS - 1, 4);
}

static void dsdt_pci_root(struct aml *sb)
{
	struct aml dev = { 0 }, crs = { 0 };

	aml_name_eisaid(&dev, "_HID", "PNP0A08");
	aml_name_eisaid(&dev, "_CID", "PNP0A03");
	aml_name_integer(&dev, "_SEG", 0);
	aml_name_integer(&dev, "_BBN", 0);
	aml_name_integer(&dev, "_UID", 0);
	aml_res_bus(&crs, 0, (uint16_t)(LAYOUT_ECAM_SIZE >> 20) - 1);
	aml_res_io(&crs, PORT_PCI_CONFIG_ADDRESS, 8);
	aml_res_io_window(&crs, 0x1000, 0xffff);
	aml_res_mem32_window(&crs, (uint32_t)LAYOUT_PCI_MMIO_START,
			     (uint32_t)(LAYOUT_PCI_MMIO_START + LAYOUT_PCI_MMIO_SIZE - 1));
	/* Between the ECAM and the IOAPIC: where firmware puts BARs (SeaBIOS
	 * allocates downwards from 0xfec00000, as on QEMU's pc machine). */
	aml_res_mem32_window(&crs, (uint32_t)(LAYOUT_ECAM_BASE + LAYOUT_ECAM_SIZE),
			     (uint32_t)LAYOUT_IOAPIC_BASE - 1);
	aml_res_end(&crs);
	aml_name_buffer(&dev, "_CRS", &crs);
	dsdt_pci_prt(&dev);
	aml_device(sb, "PCI0", &dev);
	sb->failed |= dev.failed;
	aml_free(&crs);
	aml_free(&dev);
}

/* The MC146818 (vireo/rtc.h): ports only, no IRQ (it raises none). */
static void dsdt_rtc(struct aml *sb)
{
	struct aml dev = { 0 }, crs = { 0 };

	aml_name_eisaid(&dev, "_HID", "PNP0B00");
	aml_res_io(&crs, PORT_RTC_INDEX, 2);
	aml_res_end(&crs);
	aml_name_buffer(&dev, "_CRS", &crs);
	aml_device(sb, "RTC_", &dev);
	sb->failed |= dev.failed || crs.failed;
	aml_free(&crs);
	aml_free(&dev);
}

static void dsdt_com1(struct aml *sb)
{
	struct aml dev = { 0 }, crs = { 0 };

	aml_name_eisaid(&dev, "_HID", "PNP0501");
	aml_name_integer(&dev, "_UID", 1);
	aml_res_io(&crs, PORT_COM1, 8);
	aml_res_irq(&crs, IRQ_COM1);
	aml_res_end(&crs);
	aml_name_buffer(&dev, "_CRS", &crs);
	aml_device(sb, "COM1", &dev);
	aml_free(&crs);
	aml_free(&dev);
}

/* _EVT(gsi): the selector read clears it, so it is read once into Local0;
 * the argument (our only GSI) needs no test. */
static void dsdt_ged_evt(struct aml *dev)
{
	struct aml body = { 0 }, pred = { 0 }, then = { 0 };

	aml_store_local(&body, "ESEL", 0);
	aml_and_local(&pred, 0, GED_EVENT_POWER_BUTTON);
	aml_notify(&then, "\\_SB_PWRB", 0x80); /* 0x80: "button pressed" */
	aml_if(&body, &pred, &then);
	aml_method(dev, "_EVT", 1, true, &body);
	aml_free(&then);
	aml_free(&pred);
	aml_free(&body);
}

/* The Generic Event Device (vireo/ged.h) and the power button it notifies. */
static void dsdt_ged(struct aml *sb)
{
	struct aml dev = { 0 }, crs = { 0 }, pwrb = { 0 };

	aml_name_string(&dev, "_HID", "ACPI0013");
	aml_name_integer(&dev, "_UID", 0);
	aml_res_ext_irq(&crs, IRQ_GED, AML_IRQ_CONSUMER | AML_IRQ_EDGE);
	aml_res_end(&crs);
	aml_name_buffer(&dev, "_CRS", &crs);
	aml_operation_region(&dev, "EREG", AML_SPACE_IO, PORT_ACPI_GED, 4);
	aml_field(&dev, "EREG", AML_FIELD_DWORD_ACC | AML_FIELD_WRITE_AS_ZEROS, "ESEL", 32);
	dsdt_ged_evt(&dev);
	aml_device(sb, "GED0", &dev);
	aml_name_eisaid(&pwrb, "_HID", "PNP0C0C");
	aml_name_integer(&pwrb, "_UID", 0);
	aml_device(sb, "PWRB", &pwrb);
	aml_free(&pwrb);
	aml_free(&crs);
	aml_free(&dev);
}

static uint64_t acpi_build_dsdt(struct acpi_area *area, enum acpi_platform platform)
{
	static const uint64_t s5[] = { ACPI_S5_SLP_TYP, 0 };
	struct aml body = { 0 }, sb = { 0 };
	struct acpi_header *h;
	uint64_t gpa = 0;

	dsdt_pci_root(&sb);
	dsdt_com1(&sb);
	dsdt_rtc(&sb);
	/* PC: the fixed-feature power button (PM1 PWRBTN_STS) instead. */
	if (platform == ACPI_PLATFORM_REDUCED)
		dsdt_ged(&sb);
	aml_scope(&body, "\\_SB_", &sb);
	aml_name_package(&body, "_S5_", s5, 2);
	if (!body.failed && (h = acpi_alloc(area, sizeof(*h) + body.len, &gpa))) {
		acpi_header_init(h, "DSDT", (uint32_t)(sizeof(*h) + body.len), 2);
		memcpy(h + 1, body.data, body.len);
		acpi_finish(h);
	}
	aml_free(&sb);
	aml_free(&body);
	return gpa;
}

/* The FACS: 64 bytes, 64-byte aligned, no checksum. Only its existence
 * matters (the global lock lives there; no S3/S4, so no waking vector). */
static uint64_t acpi_build_facs(struct acpi_area *area)
{
	uint64_t gpa;
	uint8_t *t;
	uint32_t len = 64;

	area->next = (area->next + 63) & ~63ULL;
	t = acpi_alloc(area, len, &gpa);
	if (!t)
		return 0;
	memcpy(t, "FACS", 4);
	memcpy(t + 4, &len, 4);
	t[32] = 2; /* version */
	return gpa;
}

/* PC: the PM1 blocks of vireo/acpipm.h, SCI on IRQ_SCI; SMI_CMD 0 means
 * the platform is always in ACPI mode. */
static void fadt_pc(struct acpi_fadt *f, uint64_t facs)
{
	f->firmware_ctrl = (uint32_t)facs;
	f->sci_int = IRQ_SCI;
	f->smi_cmd = 0;
	f->pm1a_evt_blk = PORT_ACPI_PM1A_EVT;
	f->pm1a_cnt_blk = PORT_ACPI_PM1A_CNT;
	f->pm1_evt_len = 4;
	f->pm1_cnt_len = 2;
	f->x_pm1a_evt_blk = (struct acpi_gas){ 1, 32, 0, 2, PORT_ACPI_PM1A_EVT };
	f->x_pm1a_cnt_blk = (struct acpi_gas){ 1, 16, 0, 2, PORT_ACPI_PM1A_CNT };
	f->p_lvl2_lat = FADT_NO_C2_C3;
	f->p_lvl3_lat = FADT_NO_C2_C3;
	f->flags = FADT_WBINVD | FADT_SLP_BUTTON | FADT_RESET_REG_SUP;
}

static uint64_t acpi_build_fadt(struct acpi_area *area, uint64_t dsdt, uint64_t facs)
{
	uint64_t gpa;
	struct acpi_fadt *f = acpi_alloc(area, sizeof(*f), &gpa);

	if (!f)
		return 0;
	acpi_header_init(&f->h, "FACP", sizeof(*f), 6);
	f->minor_version = 3;
	f->dsdt = (uint32_t)dsdt;
	f->x_dsdt = dsdt;
	if (facs) {
		fadt_pc(f, facs);
	} else {
		f->flags = FADT_WBINVD | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP |
			   FADT_HW_REDUCED;
		f->sleep_control = (struct acpi_gas){ 1, 8, 0, 1, PORT_ACPI_SLEEP_CONTROL };
		f->sleep_status = (struct acpi_gas){ 1, 8, 0, 1, PORT_ACPI_SLEEP_STATUS };
	}
	/* No 8042 flag: vireo's i8042 has no keyboard behind it, and Linux
	 * told there is one probes it. The reset register goes through its port. */
	f->iapc_boot_arch = BOOT_ARCH_NO_VGA;
	f->century = RTC_REG_CENTURY;
	f->reset_reg = (struct acpi_gas){ 1, 8, 0, 1, PORT_I8042_CMD };
	f->reset_value = 0xfe;
	memcpy(&f->hypervisor_vendor, "VIREO\0\0\0", 8);
	acpi_finish(&f->h);
	return gpa;
}

/* PC: the SCI's pin is level-triggered, active high (the default for an
 * ISA IRQ would be edge; for the SCI, Linux's is active low). */
static void madt_sci_override(uint8_t *e)
{
	uint32_t gsi = IRQ_SCI;
	uint16_t flags = 0x1 | 0x3 << 2; /* active high, level */

	e[0] = 2; e[1] = 10; e[2] = 0; e[3] = IRQ_SCI;
	memcpy(e + 4, &gsi, 4);
	memcpy(e + 8, &flags, 2);
}

static uint64_t acpi_build_madt(struct acpi_area *area, unsigned int ncpus, bool pc)
{
	size_t len = sizeof(struct acpi_header) + 8 + 8 * ncpus + 12 + 10 + 6 + (pc ? 10 : 0);
	uint64_t gpa;
	uint8_t *t = acpi_alloc(area, len, &gpa), *e;
	uint32_t lapic = (uint32_t)LAYOUT_LAPIC_BASE, pcat = 1, ioapic = (uint32_t)LAYOUT_IOAPIC_BASE;
	uint32_t gsi2 = 2;

	if (!t)
		return 0;
	acpi_header_init((void *)t, "APIC", (uint32_t)len, 4);
	e = t + sizeof(struct acpi_header);
	memcpy(e, &lapic, 4);
	memcpy(e + 4, &pcat, 4);
	e += 8;
	for (unsigned int i = 0; i < ncpus; i++, e += 8) {
		/* Processor Local APIC: uid, APIC id, flags = enabled. */
		e[0] = 0; e[1] = 8; e[2] = (uint8_t)i; e[3] = (uint8_t)i; e[4] = 1;
	}
	e[0] = 1; e[1] = 12; e[2] = 0; memcpy(e + 4, &ioapic, 4); e += 12; /* IOAPIC, GSI base 0 */
	e[0] = 2; e[1] = 10; e[2] = 0; e[3] = 0; memcpy(e + 4, &gsi2, 4); e += 10; /* IRQ0 -> GSI2 */
	e[0] = 4; e[1] = 6; e[2] = 0xff; e[5] = 1; e += 6; /* LINT1 of every CPU is NMI */
	if (pc)
		madt_sci_override(e);
	acpi_finish((void *)t);
	return gpa;
}

static uint64_t acpi_build_mcfg(struct acpi_area *area)
{
	size_t len = sizeof(struct acpi_header) + 8 + 16;
	uint64_t gpa, base = LAYOUT_ECAM_BASE;
	uint8_t *t = acpi_alloc(area, len, &gpa), *e;

	if (!t)
		return 0;
	acpi_header_init((void *)t, "MCFG", (uint32_t)len, 1);
	e = t + sizeof(struct acpi_header) + 8;
	memcpy(e, &base, 8);
	e[10] = 0;                                             /* first bus */
	e[11] = (uint8_t)((LAYOUT_ECAM_SIZE >> 20) - 1);       /* last bus */
	acpi_finish((void *)t);
	return gpa;
}

static uint64_t acpi_build_xsdt(struct acpi_area *area, const uint64_t *tables, unsigned int n)
{
	size_t len = sizeof(struct acpi_header) + 8 * n;
	uint64_t gpa;
	struct acpi_header *h = acpi_alloc(area, len, &gpa);

	if (!h)
		return 0;
	acpi_header_init(h, "XSDT", (uint32_t)len, 1);
	memcpy(h + 1, tables, 8 * n);
	acpi_finish(h);
	return gpa;
}

uint64_t acpi_build_tables(struct vm *vm, enum acpi_platform platform)
{
	struct acpi_area area = { vm, LAYOUT_ACPI_TABLES };
	struct acpi_rsdp *rsdp;
	bool pc = platform == ACPI_PLATFORM_PC;
	uint64_t rsdp_gpa, dsdt, facs = 0, tables[3];

	rsdp = acpi_alloc(&area, sizeof(*rsdp), &rsdp_gpa);
	dsdt = acpi_build_dsdt(&area, platform);
	if (pc)
		facs = acpi_build_facs(&area);
	tables[0] = acpi_build_fadt(&area, dsdt, facs);
	tables[1] = acpi_build_madt(&area, vm->ncpus, pc);
	tables[2] = acpi_build_mcfg(&area);
	if (!rsdp || !dsdt || (pc && !facs) || !tables[0] || !tables[1] || !tables[2]) {
		err_set(-ENOSPC, "ACPI tables do not fit below 1 MiB");
		return 0;
	}
	memcpy(rsdp->signature, "RSD PTR ", 8);
	memcpy(rsdp->oem_id, "VIREO ", 6);
	rsdp->revision = 2;
	rsdp->length = sizeof(*rsdp);
	rsdp->xsdt_address = acpi_build_xsdt(&area, tables, 3);
	rsdp->checksum = acpi_checksum(rsdp, 20);
	rsdp->extended_checksum = acpi_checksum(rsdp, sizeof(*rsdp));
	return rsdp->xsdt_address ? rsdp_gpa : 0;
}

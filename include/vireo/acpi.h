/* ACPI tables built by vireo (src/boot/acpi.c) and the small AML encoder
 * the DSDT is written with (src/boot/aml.c). All multi-byte fields of the
 * tables are little-endian. */
#ifndef VIREO_ACPI_H
#define VIREO_ACPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Growable byte buffer; on allocation failure `failed` is set and further
 * appends are ignored, so callers check once at the end. */
struct aml {
	uint8_t *data;
	size_t len;
	size_t cap;
	bool failed;
};

void aml_free(struct aml *a);
void aml_bytes(struct aml *a, const void *p, size_t n);
void aml_byte(struct aml *a, uint8_t b);
/* PkgLength for a body of n bytes (the encoding counts its own bytes). */
void aml_pkglength(struct aml *a, size_t body_len);
/* Smallest integer encoding: ZeroOp, OneOp, Byte/Word/DWord/QWord prefix. */
void aml_integer(struct aml *a, uint64_t v);
/* Name string: "\\_SB_", "PCI0", "_HID" (segments of 4 characters). */
void aml_namestring(struct aml *a, const char *name);
/* Name(name, <integer>) and friends. */
void aml_name_integer(struct aml *a, const char *name, uint64_t v);
void aml_name_eisaid(struct aml *a, const char *name, const char *id);
/* Name(name, "string"). */
void aml_name_string(struct aml *a, const char *name, const char *str);
/* Name(name, Buffer) — used for ResourceTemplates. */
void aml_name_buffer(struct aml *a, const char *name, const struct aml *buf);
void aml_name_package(struct aml *a, const char *name, const uint64_t *v, uint8_t n);
/* Name(NAME, Package() { Package() { row 0 }, ... }): rows × cols integers
 * (cells row by row), e.g. a _PRT. */
void aml_name_table(struct aml *a, const char *name, const uint64_t *cells, uint8_t rows,
		    uint8_t cols);
void aml_scope(struct aml *a, const char *name, const struct aml *body);
void aml_device(struct aml *a, const char *name, const struct aml *body);
/* Method(name, nargs, Serialized|NotSerialized) { body }. */
void aml_method(struct aml *a, const char *name, uint8_t nargs, bool serialized,
		const struct aml *body);
/* OperationRegion(name, space, offset, len); space: AML_SPACE_*. */
void aml_operation_region(struct aml *a, const char *name, uint8_t space, uint64_t offset,
			  uint64_t len);
#define AML_SPACE_MEMORY 0
#define AML_SPACE_IO     1
/* Field(region, flags) { field, bits } — one field at offset 0. */
void aml_field(struct aml *a, const char *region, uint8_t flags, const char *field,
	       uint32_t bits);
#define AML_FIELD_DWORD_ACC      0x03
#define AML_FIELD_WRITE_AS_ZEROS 0x40
/* Statements: Store(name, LocalN); And(LocalN, mask) as an expression (no
 * target); If(predicate) { body }; Notify(target, value). */
void aml_store_local(struct aml *a, const char *name, unsigned int local);
void aml_and_local(struct aml *a, unsigned int local, uint64_t mask);
void aml_if(struct aml *a, const struct aml *predicate, const struct aml *body);
void aml_notify(struct aml *a, const char *target, uint64_t value);
/* EISA compressed id ("PNP0A08") as the 32-bit value AML stores. */
uint32_t aml_eisaid(const char *id);

/* Resource descriptors for _CRS buffers. */
void aml_res_io(struct aml *a, uint16_t base, uint8_t len);
void aml_res_irq(struct aml *a, uint8_t irq);
/* Extended Interrupt descriptor (§6.4.3.6) with one interrupt: flags are
 * AML_IRQ_* (active-high, exclusive = 0). */
void aml_res_ext_irq(struct aml *a, uint32_t gsi, uint8_t flags);
#define AML_IRQ_CONSUMER   0x01
#define AML_IRQ_EDGE       0x02
#define AML_IRQ_ACTIVE_LOW 0x04
#define AML_IRQ_SHARED     0x08
void aml_res_bus(struct aml *a, uint16_t first, uint16_t last);
void aml_res_io_window(struct aml *a, uint16_t first, uint16_t last);
void aml_res_mem32_window(struct aml *a, uint32_t first, uint32_t last);
void aml_res_end(struct aml *a);

/* Sum of bytes, for table checksums (the byte that makes the sum 0). */
uint8_t acpi_checksum(const void *p, size_t n);

/* The DSDT's S5 sleep type, which the sleep-control device expects. */
#define ACPI_S5_SLP_TYP 5

#endif

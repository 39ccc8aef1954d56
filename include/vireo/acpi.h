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
/* Name(name, Buffer) — used for ResourceTemplates. */
void aml_name_buffer(struct aml *a, const char *name, const struct aml *buf);
void aml_name_package(struct aml *a, const char *name, const uint64_t *v, uint8_t n);
void aml_scope(struct aml *a, const char *name, const struct aml *body);
void aml_device(struct aml *a, const char *name, const struct aml *body);
/* EISA compressed id ("PNP0A08") as the 32-bit value AML stores. */
uint32_t aml_eisaid(const char *id);

/* Resource descriptors for _CRS buffers. */
void aml_res_io(struct aml *a, uint16_t base, uint8_t len);
void aml_res_irq(struct aml *a, uint8_t irq);
void aml_res_bus(struct aml *a, uint16_t first, uint16_t last);
void aml_res_io_window(struct aml *a, uint16_t first, uint16_t last);
void aml_res_mem32_window(struct aml *a, uint32_t first, uint32_t last);
void aml_res_end(struct aml *a);

/* Sum of bytes, for table checksums (the byte that makes the sum 0). */
uint8_t acpi_checksum(const void *p, size_t n);

/* The DSDT's S5 sleep type, which the sleep-control device expects. */
#define ACPI_S5_SLP_TYP 5

#endif

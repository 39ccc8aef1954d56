/* A small encoder for the ACPI Machine Language subset the DSDT needs
 * (ACPI 6.x §20): names, integers, strings, packages, buffers, scopes,
 * devices, the resource descriptors of _CRS (§6.4), and the few statements
 * of the GED's _EVT method (operation region, field, method, store, and,
 * if, notify). */
#include <stdlib.h>
#include <string.h>

#include "vireo/acpi.h"

void aml_free(struct aml *a)
{
	free(a->data);
	memset(a, 0, sizeof(*a));
}

void aml_bytes(struct aml *a, const void *p, size_t n)
{
	if (a->failed)
		return;
	if (a->len + n > a->cap) {
		size_t cap = (a->len + n) * 2 + 64;
		uint8_t *grown = realloc(a->data, cap);

		if (!grown) {
			a->failed = true;
			return;
		}
		a->data = grown;
		a->cap = cap;
	}
	memcpy(a->data + a->len, p, n);
	a->len += n;
}

void aml_byte(struct aml *a, uint8_t b)
{
	aml_bytes(a, &b, 1);
}

/* PkgLength encoding of `value` (§20.2.4): one byte below 0x40, else a lead
 * byte with the count of following bytes and the low 4 bits. */
static bool pkg_fits(size_t value, unsigned int extra)
{
	return extra == 0 ? value < 0x40 : value < (1UL << (4 + 8 * extra));
}

static void pkg_put(struct aml *a, size_t value, unsigned int extra)
{
	if (extra == 0) {
		aml_byte(a, (uint8_t)value);
		return;
	}
	aml_byte(a, (uint8_t)((extra << 6) | (value & 0xf)));
	for (unsigned int i = 0; i < extra; i++)
		aml_byte(a, (uint8_t)(value >> (4 + 8 * i)));
}

void aml_pkglength(struct aml *a, size_t body_len)
{
	unsigned int extra = 0;

	/* The length counts its own encoding: find the smallest that fits. */
	while (extra < 3 && !pkg_fits(body_len + 1 + extra, extra))
		extra++;
	pkg_put(a, body_len + 1 + extra, extra);
}

void aml_integer(struct aml *a, uint64_t v)
{
	if (v <= 1) {
		aml_byte(a, (uint8_t)v); /* ZeroOp / OneOp */
		return;
	}
	unsigned int size = v <= 0xff ? 1 : v <= 0xffff ? 2 : v <= 0xffffffff ? 4 : 8;
	uint8_t prefix = size == 1 ? 0x0a : size == 2 ? 0x0b : size == 4 ? 0x0c : 0x0e;

	aml_byte(a, prefix);
	for (unsigned int i = 0; i < size; i++)
		aml_byte(a, (uint8_t)(v >> (8 * i)));
}

void aml_namestring(struct aml *a, const char *name)
{
	size_t segs;

	if (*name == '\\') {
		aml_byte(a, '\\');
		name++;
	}
	segs = strlen(name) / 4;
	if (segs == 2)
		aml_byte(a, 0x2e); /* DualNamePrefix */
	else if (segs > 2) {
		aml_byte(a, 0x2f); /* MultiNamePrefix */
		aml_byte(a, (uint8_t)segs);
	}
	aml_bytes(a, name, segs * 4);
}

void aml_name_integer(struct aml *a, const char *name, uint64_t v)
{
	aml_byte(a, 0x08); /* NameOp */
	aml_namestring(a, name);
	aml_integer(a, v);
}

uint32_t aml_eisaid(const char *id)
{
	uint32_t hex = (uint32_t)strtoul(id + 3, NULL, 16);
	uint8_t b0 = (uint8_t)(((id[0] & 0x1f) << 2) | ((id[1] & 0x1f) >> 3));
	uint8_t b1 = (uint8_t)(((id[1] & 0x1f) << 5) | (id[2] & 0x1f));

	return b0 | (uint32_t)b1 << 8 | ((hex >> 8) & 0xff) << 16 | (hex & 0xff) << 24;
}

void aml_name_eisaid(struct aml *a, const char *name, const char *id)
{
	uint32_t v = aml_eisaid(id);

	aml_byte(a, 0x08);
	aml_namestring(a, name);
	aml_byte(a, 0x0c); /* always DWord, as ASL's EISAID() does */
	aml_bytes(a, &v, 4);
}

void aml_name_string(struct aml *a, const char *name, const char *str)
{
	aml_byte(a, 0x08);
	aml_namestring(a, name);
	aml_byte(a, 0x0d); /* StringPrefix, then ASCII up to a NUL */
	aml_bytes(a, str, strlen(str) + 1);
}

void aml_name_buffer(struct aml *a, const char *name, const struct aml *buf)
{
	struct aml size = { 0 };

	aml_integer(&size, buf->len);
	aml_byte(a, 0x08);
	aml_namestring(a, name);
	aml_byte(a, 0x11); /* BufferOp */
	aml_pkglength(a, size.len + buf->len);
	aml_bytes(a, size.data, size.len);
	aml_bytes(a, buf->data, buf->len);
	a->failed |= size.failed || buf->failed;
	aml_free(&size);
}

/* PackageOp PkgLength NumElements followed by n integers. */
static void aml_package(struct aml *a, const uint64_t *v, uint8_t n)
{
	struct aml body = { 0 };

	aml_byte(&body, n);
	for (uint8_t i = 0; i < n; i++)
		aml_integer(&body, v[i]);
	aml_byte(a, 0x12); /* PackageOp */
	aml_pkglength(a, body.len);
	aml_bytes(a, body.data, body.len);
	a->failed |= body.failed;
	aml_free(&body);
}

void aml_name_package(struct aml *a, const char *name, const uint64_t *v, uint8_t n)
{
	aml_byte(a, 0x08);
	aml_namestring(a, name);
	aml_package(a, v, n);
}

void aml_name_table(struct aml *a, const char *name, const uint64_t *cells, uint8_t rows,
		    uint8_t cols)
{
	struct aml body = { 0 };

	aml_byte(&body, rows);
	for (uint8_t r = 0; r < rows; r++)
		aml_package(&body, cells + (size_t)r * cols, cols);
	aml_byte(a, 0x08);
	aml_namestring(a, name);
	aml_byte(a, 0x12); /* PackageOp */
	aml_pkglength(a, body.len);
	aml_bytes(a, body.data, body.len);
	a->failed |= body.failed;
	aml_free(&body);
}

static void aml_named_block(struct aml *a, const uint8_t *op, size_t oplen, const char *name,
			    const struct aml *body)
{
	struct aml head = { 0 };

	aml_namestring(&head, name);
	aml_bytes(a, op, oplen);
	aml_pkglength(a, head.len + body->len);
	aml_bytes(a, head.data, head.len);
	aml_bytes(a, body->data, body->len);
	a->failed |= head.failed || body->failed;
	aml_free(&head);
}

void aml_scope(struct aml *a, const char *name, const struct aml *body)
{
	static const uint8_t op[] = { 0x10 };

	aml_named_block(a, op, sizeof(op), name, body);
}

void aml_device(struct aml *a, const char *name, const struct aml *body)
{
	static const uint8_t op[] = { 0x5b, 0x82 }; /* ExtOpPrefix DeviceOp */

	aml_named_block(a, op, sizeof(op), name, body);
}

void aml_method(struct aml *a, const char *name, uint8_t nargs, bool serialized,
		const struct aml *body)
{
	uint8_t op[1] = { 0x14 }; /* MethodOp */
	struct aml head = { 0 };

	aml_namestring(&head, name);
	aml_byte(&head, (uint8_t)((nargs & 7) | (serialized ? 0x08 : 0)));
	aml_bytes(a, op, sizeof(op));
	aml_pkglength(a, head.len + body->len);
	aml_bytes(a, head.data, head.len);
	aml_bytes(a, body->data, body->len);
	a->failed |= head.failed || body->failed;
	aml_free(&head);
}

void aml_operation_region(struct aml *a, const char *name, uint8_t space, uint64_t offset,
			  uint64_t len)
{
	aml_byte(a, 0x5b);
	aml_byte(a, 0x80); /* OpRegionOp */
	aml_namestring(a, name);
	aml_byte(a, space);
	aml_integer(a, offset);
	aml_integer(a, len);
}

void aml_field(struct aml *a, const char *region, uint8_t flags, const char *field,
	       uint32_t bits)
{
	struct aml body = { 0 };
	unsigned int extra = 0;

	aml_namestring(&body, region);
	aml_byte(&body, flags);
	while (extra < 3 && !pkg_fits(bits, extra))
		extra++;
	aml_bytes(&body, field, 4); /* NamedField: NameSeg, width in bits as a PkgLength */
	pkg_put(&body, bits, extra);
	aml_byte(a, 0x5b);
	aml_byte(a, 0x81); /* FieldOp */
	aml_pkglength(a, body.len);
	aml_bytes(a, body.data, body.len);
	a->failed |= body.failed;
	aml_free(&body);
}

void aml_store_local(struct aml *a, const char *name, unsigned int local)
{
	aml_byte(a, 0x70); /* StoreOp */
	aml_namestring(a, name);
	aml_byte(a, (uint8_t)(0x60 + (local & 7)));
}

void aml_and_local(struct aml *a, unsigned int local, uint64_t mask)
{
	aml_byte(a, 0x7b); /* AndOp */
	aml_byte(a, (uint8_t)(0x60 + (local & 7)));
	aml_integer(a, mask);
	aml_byte(a, 0x00); /* no target: NullName */
}

void aml_if(struct aml *a, const struct aml *predicate, const struct aml *body)
{
	aml_byte(a, 0xa0); /* IfOp */
	aml_pkglength(a, predicate->len + body->len);
	aml_bytes(a, predicate->data, predicate->len);
	aml_bytes(a, body->data, body->len);
	a->failed |= predicate->failed || body->failed;
}

void aml_notify(struct aml *a, const char *target, uint64_t value)
{
	aml_byte(a, 0x86); /* NotifyOp */
	aml_namestring(a, target);
	aml_integer(a, value);
}

void aml_res_io(struct aml *a, uint16_t base, uint8_t len)
{
	uint8_t d[8] = { 0x47, 0x01, (uint8_t)base, (uint8_t)(base >> 8),
			 (uint8_t)base, (uint8_t)(base >> 8), 1, len };

	aml_bytes(a, d, sizeof(d));
}

void aml_res_irq(struct aml *a, uint8_t irq)
{
	uint16_t mask = (uint16_t)(1u << irq);
	uint8_t d[3] = { 0x22, (uint8_t)mask, (uint8_t)(mask >> 8) };

	aml_bytes(a, d, sizeof(d));
}

void aml_res_ext_irq(struct aml *a, uint32_t gsi, uint8_t flags)
{
	uint8_t d[9] = { 0x89, 6, 0, flags, 1, (uint8_t)gsi, (uint8_t)(gsi >> 8),
			 (uint8_t)(gsi >> 16), (uint8_t)(gsi >> 24) };

	aml_bytes(a, d, sizeof(d));
}

/* Word address space descriptor (§6.4.3.5.3): producer, fixed min and max. */
static void aml_res_word(struct aml *a, uint8_t type, uint8_t type_flags, uint16_t first,
			 uint16_t last)
{
	uint16_t len = (uint16_t)(last - first + 1);
	uint8_t d[16] = { 0x88, 13, 0, type, 0x0c, type_flags, 0, 0,
			  (uint8_t)first, (uint8_t)(first >> 8), (uint8_t)last, (uint8_t)(last >> 8),
			  0, 0, (uint8_t)len, (uint8_t)(len >> 8) };

	aml_bytes(a, d, sizeof(d));
}

void aml_res_bus(struct aml *a, uint16_t first, uint16_t last)
{
	aml_res_word(a, 2, 0, first, last);
}

void aml_res_io_window(struct aml *a, uint16_t first, uint16_t last)
{
	aml_res_word(a, 1, 3, first, last);
}

void aml_res_mem32_window(struct aml *a, uint32_t first, uint32_t last)
{
	uint32_t f[5] = { 0, first, last, 0, last - first + 1 };
	uint8_t d[6] = { 0x87, 23, 0, 0, 0x0c, 0x01 }; /* memory, producer, read-write */

	aml_bytes(a, d, sizeof(d));
	aml_bytes(a, f, sizeof(f));
}

void aml_res_end(struct aml *a)
{
	uint8_t d[2] = { 0x79, 0 };

	aml_bytes(a, d, sizeof(d));
}

uint8_t acpi_checksum(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint8_t sum = 0;

	while (n--)
		sum = (uint8_t)(sum + *b++);
	return (uint8_t)-sum;
}

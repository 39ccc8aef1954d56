/* fw_cfg: the signature and id, the file directory, reads through the
 * data port and through DMA, and hostile DMA descriptors (outside guest
 * memory, lengths running past it, writes, descriptors that overwrite
 * themselves) refused with the error bit, never a crash. */
#include <endian.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vireo/fwcfg.h"
#include "vireo/state.h"

#define RAM_SIZE (1u << 20)

static struct guest_memory mem;

static int setup(void **state)
{
	(void)state;
	memset(&mem, 0, sizeof(mem));
	mem.host = calloc(1, RAM_SIZE);
	mem.size = RAM_SIZE;
	mem.regions[0] = (struct mem_region){ 0, RAM_SIZE, 0 };
	mem.nregions = 1;
	return mem.host ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	free(mem.host);
	return 0;
}

static void read_bytes(struct fwcfg *f, uint16_t key, void *buf, size_t len)
{
	fwcfg_select(f, key);
	for (size_t i = 0; i < len; i++)
		((uint8_t *)buf)[i] = fwcfg_read_byte(f);
}

/* Writes a descriptor at gpa and runs it; returns the control word after. */
static uint32_t dma(struct fwcfg *f, uint64_t gpa, uint32_t control, uint32_t len, uint64_t addr)
{
	uint32_t c = htobe32(control), l = htobe32(len);
	uint64_t a = htobe64(addr);

	memcpy(mem.host + gpa, &c, 4);
	memcpy(mem.host + gpa + 4, &l, 4);
	memcpy(mem.host + gpa + 8, &a, 8);
	fwcfg_dma(f, gpa);
	memcpy(&c, mem.host + gpa, 4);
	return be32toh(c);
}

static void signature_id_and_items(void **state)
{
	struct fwcfg *f = fwcfg_create_model(&mem);
	char sig[5] = { 0 };
	uint32_t id;
	uint16_t cpus;
	uint8_t past;

	(void)state;
	read_bytes(f, FW_CFG_SIGNATURE, sig, 4);
	assert_string_equal(sig, "QEMU");
	read_bytes(f, FW_CFG_ID, &id, 4);
	assert_int_equal(le32toh(id), FW_CFG_VERSION_TRADITIONAL | FW_CFG_VERSION_DMA);
	assert_int_equal(fwcfg_add_u16(f, FW_CFG_NB_CPUS, 3), 0);
	read_bytes(f, FW_CFG_NB_CPUS, &cpus, 2);
	assert_int_equal(le16toh(cpus), 3);
	past = fwcfg_read_byte(f);
	assert_int_equal(past, 0); /* past the end */
	read_bytes(f, 0x1234, &cpus, 2); /* no such item */
	assert_int_equal(cpus, 0);
	assert_int_equal(fwcfg_add_u32(f, FW_CFG_SIGNATURE, 1), -EINVAL);
	assert_int_equal(fwcfg_add_u32(f, FW_CFG_FILE_DIR, 1), -EINVAL);
	fwcfg_destroy(f);

	f = fwcfg_create_model(NULL); /* no DMA without memory */
	read_bytes(f, FW_CFG_ID, &id, 4);
	assert_int_equal(le32toh(id), FW_CFG_VERSION_TRADITIONAL);
	fwcfg_destroy(f);
}

struct dir_entry {
	uint32_t size;
	uint16_t key;
	uint16_t reserved;
	char name[56];
};

static void directory_lists_files_sorted(void **state)
{
	struct fwcfg *f = fwcfg_create_model(&mem);
	struct dir_entry e[3];
	uint32_t count;
	char data[8];

	(void)state;
	assert_int_equal(fwcfg_add_file(f, "etc/e820", "E820DATA", 8), 0);
	assert_int_equal(fwcfg_add_file(f, "bootorder", "/pci", 4), 0);
	assert_int_equal(fwcfg_add_file(f, "etc/boot-fail-wait", "\x05\0\0\0", 4), 0);
	assert_int_equal(fwcfg_add_file(f, "bootorder", "x", 1), -EEXIST);
	assert_int_equal(fwcfg_add_file(f, "a-name-that-is-far-too-long-for-the-fifty-six-byte-field",
					"x", 1), -EINVAL);
	fwcfg_select(f, FW_CFG_FILE_DIR);
	for (int i = 0; i < 4; i++)
		((uint8_t *)&count)[i] = fwcfg_read_byte(f);
	assert_int_equal(be32toh(count), 3);
	for (size_t i = 0; i < sizeof(e); i++)
		((uint8_t *)e)[i] = fwcfg_read_byte(f);
	assert_string_equal(e[0].name, "bootorder");
	assert_string_equal(e[1].name, "etc/boot-fail-wait");
	assert_string_equal(e[2].name, "etc/e820");
	assert_int_equal(be32toh(e[2].size), 8);
	assert_true(be16toh(e[2].key) >= FW_CFG_FILE_FIRST);
	read_bytes(f, be16toh(e[2].key), data, 8);
	assert_memory_equal(data, "E820DATA", 8);
	fwcfg_destroy(f);
}

static void dma_select_read_skip(void **state)
{
	struct fwcfg *f = fwcfg_create_model(&mem);
	uint8_t *buf = mem.host + 0x2000;
	struct fwcfg_stats st;

	(void)state;
	assert_int_equal(fwcfg_add_item(f, FW_CFG_CMDLINE_DATA, "console=ttyS0", 14), 0);
	memset(buf, 0xee, 32);
	assert_int_equal(dma(f, 0x1000, FW_CFG_CMDLINE_DATA << 16 | FW_CFG_DMA_SELECT |
			     FW_CFG_DMA_READ, 8, 0x2000), 0);
	assert_memory_equal(buf, "console=", 8);
	assert_int_equal(buf[8], 0xee);
	/* Skip 2, then read past the end: zeros fill the rest. */
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_SKIP, 2, 0), 0);
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_READ, 8, 0x3000), 0);
	assert_memory_equal(mem.host + 0x3000, "yS0\0\0\0\0\0", 8);
	/* The data port continues where DMA left off. */
	fwcfg_select(f, FW_CFG_CMDLINE_DATA);
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_READ, 3, 0x3000), 0);
	assert_int_equal(fwcfg_read_byte(f), 's');
	fwcfg_get_stats(f, &st);
	assert_int_equal(st.dma_transfers, 4);
	assert_int_equal(st.dma_errors, 0);
	fwcfg_destroy(f);
}

static void hostile_dma_descriptors(void **state)
{
	struct fwcfg *f = fwcfg_create_model(&mem);
	static uint8_t big[64 << 10];
	struct fwcfg_stats st;
	uint8_t before[16];

	(void)state;
	memset(big, 0x5a, sizeof(big));
	assert_int_equal(fwcfg_add_file(f, "etc/big", big, sizeof(big)), 0);
	/* Buffer outside guest RAM, straddling its end, wrapping around. */
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_SELECT | FW_CFG_FILE_FIRST << 16 |
			     FW_CFG_DMA_READ, 16, 1ULL << 40), FW_CFG_DMA_ERROR);
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_READ, 0x100, RAM_SIZE - 0x80),
			 FW_CFG_DMA_ERROR);
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_READ, 0xffffffff, 0x2000), FW_CFG_DMA_ERROR);
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_READ, 0x10, UINT64_MAX - 4),
			 FW_CFG_DMA_ERROR);
	assert_int_equal(mem.host[RAM_SIZE - 1], 0); /* nothing written near the end */
	/* Huge skips stop at the end of the item. */
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_SKIP, 0xffffffff, 0), 0);
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_READ, 4, 0x2000), 0);
	assert_memory_equal(mem.host + 0x2000, "\0\0\0\0", 4);
	/* Writes are refused; items are read-only. */
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_SELECT | FW_CFG_FILE_FIRST << 16 |
			     FW_CFG_DMA_WRITE, 4, 0x2000), FW_CFG_DMA_ERROR);
	fwcfg_select(f, FW_CFG_FILE_FIRST);
	assert_int_equal(fwcfg_read_byte(f), 0x5a);
	/* A descriptor outside RAM or straddling its end: nothing to answer. */
	memcpy(before, mem.host + RAM_SIZE - 16, 16);
	fwcfg_dma(f, RAM_SIZE - 8);
	fwcfg_dma(f, UINT64_MAX - 3);
	assert_memory_equal(before, mem.host + RAM_SIZE - 16, 16);
	/* A read over its own descriptor still ends with a clean control word. */
	assert_int_equal(dma(f, 0x4000, FW_CFG_DMA_SELECT | FW_CFG_FILE_FIRST << 16 |
			     FW_CFG_DMA_READ, 64, 0x4000 - 8), 0);
	assert_int_equal(mem.host[0x4000 + 4], 0x5a);
	/* Selecting nothing and reading gives zeros. */
	assert_int_equal(dma(f, 0x1000, FW_CFG_DMA_SELECT | 0x3fffu << 16 | FW_CFG_DMA_READ, 4,
			     0x4100), 0);
	assert_memory_equal(mem.host + 0x4100, "\0\0\0\0", 4);
	fwcfg_get_stats(f, &st);
	assert_int_equal(st.dma_errors, 7);
	fwcfg_destroy(f);
}

/* The items a restore rebuilds; with boot_only, the kernel's too. */
static struct fwcfg *machine_fwcfg(bool kernel)
{
	struct fwcfg *f = fwcfg_create_model(&mem);

	assert_int_equal(fwcfg_add_u16(f, FW_CFG_NB_CPUS, 2), 0);
	assert_int_equal(fwcfg_add_file(f, "etc/e820", "E820DATA", 8), 0);
	if (kernel) {
		fwcfg_set_boot_only(f, true);
		assert_int_equal(fwcfg_add_item(f, FW_CFG_KERNEL_DATA, "KERNELDATA", 10), 0);
		assert_int_equal(fwcfg_add_file(f, "genroms/linuxboot_dma.bin", "ROM", 3), 0);
		fwcfg_set_boot_only(f, false);
	}
	return f;
}

/* fwcfg_save() into a reader; *ret its result. */
static struct state_reader *saved(struct fwcfg *f, int *ret)
{
	struct state_header h = { .ncpus = 1 };
	struct state_writer *w = state_writer_new(&h);
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	assert_non_null(w);
	*ret = fwcfg_save(f, w);
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), 0);
	state_writer_free(w);
	return r;
}

static struct state_reader *hand_made(uint32_t key, uint64_t offset)
{
	struct state_header h = { .ncpus = 1 };
	struct state_writer *w = state_writer_new(&h);
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	assert_non_null(w);
	state_begin(w, STATE_SEC_FWCFG, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, key);
	state_put_u64(w, offset);
	state_put_bytes(w, "\0\0\0\0\0\0\0\0", 8);
	state_end(w);
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), 0);
	state_writer_free(w);
	return r;
}

/* A read half done goes on in the restored device where it stopped; the
 * kernel's items are boot-only: half read, no snapshot (EBUSY); read to
 * the end, nothing is selected after the restore, which reads the same. */
static void state_round_trip(void **state)
{
	struct fwcfg *a = machine_fwcfg(true), *b = machine_fwcfg(false);
	struct state_reader *r;
	char buf[8];
	int ret;

	(void)state;
	read_bytes(a, FW_CFG_FILE_FIRST, buf, 3);
	assert_memory_equal(buf, "E82", 3);
	r = saved(a, &ret);
	assert_int_equal(ret, 0);
	assert_int_equal(fwcfg_restore(b, r), 0);
	state_reader_free(r);
	for (int i = 0; i < 5; i++)
		buf[i] = (char)fwcfg_read_byte(b);
	assert_memory_equal(buf, "0DATA", 5);
	assert_int_equal(fwcfg_read_byte(b), 0);

	read_bytes(a, FW_CFG_KERNEL_DATA, buf, 2);
	r = saved(a, &ret);
	assert_int_equal(ret, -EBUSY);
	state_reader_free(r);
	read_bytes(a, FW_CFG_FILE_DIR, buf, 4);   /* it lists a boot-only file */
	r = saved(a, &ret);
	assert_int_equal(ret, -EBUSY);
	state_reader_free(r);
	read_bytes(a, FW_CFG_KERNEL_DATA, buf, 8);
	buf[0] = (char)fwcfg_read_byte(a);
	buf[1] = (char)fwcfg_read_byte(a);
	r = saved(a, &ret);
	assert_int_equal(ret, 0);
	read_bytes(b, FW_CFG_NB_CPUS, buf, 1);
	assert_int_equal(fwcfg_restore(b, r), 0);
	state_reader_free(r);
	assert_int_equal(fwcfg_read_byte(b), 0);   /* not the CPU count's 2nd byte */
	fwcfg_destroy(a);
	fwcfg_destroy(b);
}

/* A hostile selection: an item this machine does not have (or only for
 * the boot), an offset at or past its end, a key beyond 16 bits, an
 * offset without an item. Refused, the selection as it was. */
static void hostile_state_refused(void **state)
{
	static const struct { uint32_t key; uint64_t offset; } bad[] = {
		{ 0x1234, 0 }, { FW_CFG_KERNEL_DATA, 0 }, { FW_CFG_NB_CPUS, 2 },
		{ FW_CFG_NB_CPUS, UINT64_MAX }, { 0x10000 | FW_CFG_NB_CPUS, 0 },
		{ FWCFG_KEY_NONE, 1 },
	};
	struct fwcfg *f = machine_fwcfg(true);
	struct state_reader *r;
	uint8_t v;

	(void)state;
	fwcfg_select(f, FW_CFG_FILE_FIRST);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r = hand_made(bad[i].key, bad[i].offset);
		assert_int_equal(fwcfg_restore(f, r), -EINVAL);
		state_reader_free(r);
	}
	assert_int_equal(fwcfg_read_byte(f), 'E');
	fwcfg_destroy(f);
	f = machine_fwcfg(false);
	r = hand_made(FW_CFG_KERNEL_DATA, 0);
	assert_int_equal(fwcfg_restore(f, r), -EINVAL);
	state_reader_free(r);
	fwcfg_select(f, FW_CFG_FILE_FIRST);
	r = hand_made(FW_CFG_NB_CPUS, 1);
	assert_int_equal(fwcfg_restore(f, r), 0);
	state_reader_free(r);
	v = fwcfg_read_byte(f);
	assert_int_equal(v, 0);                    /* le16 2: its high byte */
	assert_int_equal(fwcfg_read_byte(f), 0);
	fwcfg_select(f, FW_CFG_NB_CPUS);
	assert_int_equal(fwcfg_read_byte(f), 2);
	fwcfg_destroy(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(signature_id_and_items),
		cmocka_unit_test(directory_lists_files_sorted),
		cmocka_unit_test(dma_select_read_skip),
		cmocka_unit_test(hostile_dma_descriptors),
		cmocka_unit_test(state_round_trip),
		cmocka_unit_test(hostile_state_refused),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}

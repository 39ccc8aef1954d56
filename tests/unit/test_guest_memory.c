/* Guest memory files (src/vmm/memory.c): a snapshot's memory file keeps
 * holes where guest RAM is zero or was never touched, and maps back
 * privately with the same contents. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "vireo/vmm.h"

#define SIZE (64ull << 20)
#define HUGE (2ull << 20)

static int tmpfile_fd(void)
{
	char path[] = "/tmp/vireo-memtest-XXXXXX";
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	unlink(path);
	return fd;
}

static void sparse_save_and_private_restore(void **unused)
{
	struct guest_memory mem = { .fd = -1 }, back = { .fd = -1 };
	uint64_t written;
	struct stat st;
	int fd = tmpfile_fd();

	(void)unused;
	assert_int_equal(guest_memory_init(&mem, SIZE, false), 0);
	memset(mem.host + 4096 * 3, 0xab, 4096);		/* one page */
	memset(mem.host + (32ull << 20), 0x5a, 3 * 4096);	/* three */
	mem.host[SIZE - 1] = 7;					/* the last */
	memset(mem.host + (16ull << 20), 0, 4096 * 8);		/* touched, zero */
	assert_int_equal(guest_memory_save(&mem, fd, &written), 0);
	assert_int_equal(written, 5 * 4096);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, SIZE);
	assert_true((uint64_t)st.st_blocks * 512 <= 16 * 4096);	/* holes stayed holes */
	assert_int_equal(guest_memory_init_file(&back, SIZE, fd), 0);
	assert_memory_equal(back.host, mem.host, SIZE);
	/* A guest write stays in the VMM: the file is unchanged. */
	back.host[4096 * 3] = 1;
	assert_int_equal(guest_memory_save(&back, tmpfile_fd(), &written), 0);
	assert_int_equal(written, 5 * 4096);
	guest_memory_free(&back);
	fd = tmpfile_fd();
	assert_int_equal(guest_memory_save(&mem, fd, &written), 0);
	assert_int_equal(guest_memory_init_file(&back, SIZE, fd), 0);
	assert_int_equal(back.host[4096 * 3], 0xab);
	guest_memory_free(&back);
	guest_memory_free(&mem);
}

static void short_memory_file_refused(void **unused)
{
	struct guest_memory back = { .fd = -1 };
	int fd = tmpfile_fd();

	(void)unused;
	assert_int_equal(ftruncate(fd, SIZE - 4096), 0);
	assert_int_equal(guest_memory_init_file(&back, SIZE, fd), -EINVAL);
	guest_memory_free(&back);
}

/* The extents a migration's first pass reads: a memfd's touched pages
 * only (reading a hole would allocate it); a private file mapping whole. */
static void data_extents(void **unused)
{
	struct guest_memory mem = { .fd = -1 }, back = { .fd = -1 };
	uint64_t start, end, written;
	int fd = tmpfile_fd();

	(void)unused;
	assert_int_equal(guest_memory_init(&mem, SIZE, false), 0);
	assert_int_equal(guest_memory_next_data(&mem, 0, &start, &end), -ENXIO);
	mem.host[4096 * 3 + 5] = 1;
	memset(mem.host + (32ull << 20), 0x5a, 3 * 4096);
	/* Extents are whole pages of the backing: 4 KiB on a memfd, 2 MiB on
	 * the huge-page tmpfs (memory.c). */
	assert_int_equal(guest_memory_next_data(&mem, 0, &start, &end), 0);
	assert_true(start <= 4096 * 3 && end >= 4096 * 4 && end <= HUGE);
	assert_int_equal(guest_memory_next_data(&mem, end, &start, &end), 0);
	assert_true(start >= (32ull << 20) - HUGE + 4096 && start <= 32ull << 20);
	assert_true(end >= (32ull << 20) + 3 * 4096 && end <= (32ull << 20) + HUGE);
	assert_int_equal(guest_memory_next_data(&mem, end, &start, &end), -ENXIO);
	assert_int_equal(guest_memory_next_data(&mem, SIZE, &start, &end), -ENXIO);
	assert_int_equal(guest_memory_save(&mem, fd, &written), 0);
	assert_int_equal(guest_memory_init_file(&back, SIZE, fd), 0);
	assert_int_equal(guest_memory_next_data(&back, 4096, &start, &end), 0);
	assert_int_equal(start, 4096);
	assert_int_equal(end, SIZE);
	guest_memory_free(&back);
	guest_memory_free(&mem);
}

/* As root, guest RAM is on a huge-page tmpfs of its own: touching one byte
 * brings a whole 2 MiB page (a memfd would take 4 KiB), and the balloon's
 * discard of one 4 KiB page in it still gives memory back. */
static void huge_pages_when_root(void **unused)
{
	struct guest_memory mem = { .fd = -1 };
	struct stat st;

	(void)unused;
	if (geteuid() != 0)
		skip();
	assert_int_equal(guest_memory_init(&mem, SIZE, false), 0);
	mem.host[HUGE + 5] = 1;
	assert_int_equal(fstat(mem.fd, &st), 0);
	assert_int_equal((uint64_t)st.st_blocks * 512, HUGE);
	assert_int_equal(guest_memory_discard(&mem, mem.host + HUGE, 4096), 0);
	assert_int_equal(fstat(mem.fd, &st), 0);
	assert_int_equal((uint64_t)st.st_blocks * 512, HUGE - 4096);
	assert_int_equal(mem.host[HUGE + 5], 0);
	guest_memory_free(&mem);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sparse_save_and_private_restore),
		cmocka_unit_test(short_memory_file_refused),
		cmocka_unit_test(data_extents),
		cmocka_unit_test(huge_pages_when_root),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

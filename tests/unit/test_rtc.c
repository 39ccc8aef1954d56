/* The MC146818 RTC model: time from a fake host clock in BCD and binary,
 * 12 and 24 hours, the guest setting the time under SET, update in
 * progress, the NMI mask and the memory-size NVRAM SeaBIOS reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <cmocka.h>

#include "vireo/rtc.h"
#include "vireo/state.h"

static struct timespec fake_now;

static void fake_clock(struct timespec *now)
{
	*now = fake_now;
}

/* 2026-12-06 15:04:05 UTC, a Sunday. */
#define T0 1796569445

static struct rtc *make_rtc(uint64_t low, uint64_t high, unsigned int ncpus)
{
	struct rtc_config cfg = { .low_ram_end = low, .high_ram_size = high, .ncpus = ncpus,
				  .clock = fake_clock };

	fake_now = (struct timespec){ .tv_sec = T0, .tv_nsec = 0 };
	return rtc_create_model(&cfg);
}

static void time_in_bcd_24h_by_default(void **state)
{
	struct rtc *r = make_rtc(256 << 20, 0, 1);
	struct tm tm;
	time_t t = T0;

	(void)state;
	gmtime_r(&t, &tm);
	assert_int_equal(tm.tm_hour, 15); /* the constant is what the comment says */
	rtc_write_index(r, 0x00);
	assert_int_equal(rtc_read_data(r), 0x05);
	assert_int_equal(rtc_read_reg(r, 0x02), 0x04);
	assert_int_equal(rtc_read_reg(r, 0x04), 0x15);
	assert_int_equal(rtc_read_reg(r, 0x06), 0x01); /* Sunday is 1 */
	assert_int_equal(rtc_read_reg(r, 0x07), 0x06);
	assert_int_equal(rtc_read_reg(r, 0x08), 0x12);
	assert_int_equal(rtc_read_reg(r, 0x09), 0x26);
	assert_int_equal(rtc_read_reg(r, RTC_REG_CENTURY), 0x20);
	assert_int_equal(rtc_read_reg(r, RTC_REG_D), 0x80); /* valid, as Linux checks */
	fake_now.tv_sec += 61;
	assert_int_equal(rtc_read_reg(r, 0x00), 0x06);
	assert_int_equal(rtc_read_reg(r, 0x02), 0x05);
	rtc_destroy(r);
}

static void binary_and_12_hour_modes(void **state)
{
	struct rtc *r = make_rtc(256 << 20, 0, 1);

	(void)state;
	rtc_write_index(r, RTC_REG_B);
	rtc_write_data(r, RTC_B_DM_BINARY); /* binary, 12 hours */
	assert_int_equal(rtc_read_reg(r, 0x04), 0x80 | 3); /* 3 PM */
	assert_int_equal(rtc_read_reg(r, 0x00), 5);
	assert_int_equal(rtc_read_reg(r, 0x09), 26);
	rtc_write_index(r, RTC_REG_B);
	rtc_write_data(r, 0); /* BCD, 12 hours */
	assert_int_equal(rtc_read_reg(r, 0x04), 0x83);
	fake_now.tv_sec -= 15 * 3600; /* midnight hour reads 12 AM */
	assert_int_equal(rtc_read_reg(r, 0x04), 0x12);
	rtc_destroy(r);
}

static void guest_sets_the_time_under_set(void **state)
{
	struct rtc *r = make_rtc(256 << 20, 0, 1);
	static const uint8_t regs[][2] = {
		{ 0x09, 0x99 }, { 0x08, 0x02 }, { 0x07, 0x28 }, { 0x04, 0x23 }, { 0x02, 0x59 },
		{ 0x00, 0x58 },
	};

	(void)state;
	rtc_write_index(r, RTC_REG_B);
	rtc_write_data(r, RTC_B_SET | RTC_B_24H);
	/* Day 31 of the current month is never made Feb 31 on the way. */
	for (unsigned int i = 0; i < sizeof(regs) / sizeof(regs[0]); i++) {
		rtc_write_index(r, regs[i][0]);
		rtc_write_data(r, regs[i][1]);
	}
	rtc_write_index(r, RTC_REG_CENTURY);
	rtc_write_data(r, 0x19);
	fake_now.tv_sec += 5; /* held: the clock does not run */
	assert_int_equal(rtc_read_reg(r, 0x00), 0x58);
	assert_int_equal(rtc_read_reg(r, RTC_REG_A) & RTC_A_UIP, 0);
	rtc_write_index(r, RTC_REG_B);
	rtc_write_data(r, RTC_B_24H);
	fake_now.tv_sec += 3; /* 1999-02-28 23:59:58 + 3 s */
	assert_int_equal(rtc_read_reg(r, 0x00), 0x01);
	assert_int_equal(rtc_read_reg(r, 0x02), 0x00);
	assert_int_equal(rtc_read_reg(r, 0x04), 0x00);
	assert_int_equal(rtc_read_reg(r, 0x07), 0x01);
	assert_int_equal(rtc_read_reg(r, 0x08), 0x03);
	assert_int_equal(rtc_read_reg(r, 0x09), 0x99);
	assert_int_equal(rtc_read_reg(r, RTC_REG_CENTURY), 0x19);
	rtc_destroy(r);
}

static void update_in_progress_before_each_second(void **state)
{
	struct rtc *r = make_rtc(256 << 20, 0, 1);

	(void)state;
	fake_now.tv_nsec = 999000000; /* 1 ms before the update */
	assert_int_equal(rtc_read_reg(r, RTC_REG_A), 0x26);
	fake_now.tv_nsec = 999800000; /* 200 us before */
	assert_int_equal(rtc_read_reg(r, RTC_REG_A), 0x26 | RTC_A_UIP);
	/* The divider in reset: nothing updates. */
	rtc_write_index(r, RTC_REG_A);
	rtc_write_data(r, 0x66 | RTC_A_UIP);
	assert_int_equal(rtc_read_reg(r, RTC_REG_A), 0x66);
	rtc_destroy(r);
}

static void nmi_mask_and_nvram(void **state)
{
	struct rtc *r = make_rtc(256 << 20, 0, 1);

	(void)state;
	rtc_write_index(r, 0x80 | 0x40);
	assert_true(rtc_nmi_masked(r));
	rtc_write_data(r, 0xa5);
	rtc_write_index(r, 0x40);
	assert_false(rtc_nmi_masked(r));
	assert_int_equal(rtc_read_data(r), 0xa5);
	/* D is read-only, C clears on read. */
	rtc_write_index(r, RTC_REG_D);
	rtc_write_data(r, 0);
	assert_int_equal(rtc_read_data(r), 0x80);
	rtc_destroy(r);
}

static unsigned int rd16(struct rtc *r, uint8_t lo)
{
	return rtc_read_reg(r, lo) | (unsigned int)rtc_read_reg(r, lo + 1) << 8;
}

static void memory_sizes_as_seabios_reads_them(void **state)
{
	struct rtc *r = make_rtc(256 << 20, 0, 4);
	uint32_t seabios_ramsize;

	(void)state;
	assert_int_equal(rd16(r, 0x15), 640);
	assert_int_equal(rd16(r, 0x17), 0xffff); /* 255 MiB in KiB does not fit */
	assert_int_equal(rd16(r, 0x30), 0xffff);
	assert_int_equal(rd16(r, 0x34), (256 - 16) << 4);
	/* SeaBIOS: RAM below 4G = (0x34/0x35 << 16) + 16 MiB. */
	seabios_ramsize = ((uint32_t)rd16(r, 0x34) << 16) + (16u << 20);
	assert_int_equal(seabios_ramsize, 256u << 20);
	assert_int_equal(rtc_read_reg(r, 0x5b) | rtc_read_reg(r, 0x5c) | rtc_read_reg(r, 0x5d), 0);
	assert_int_equal(rtc_read_reg(r, 0x5f), 3);
	rtc_destroy(r);

	/* 6 GiB: 3 GiB below the gap, 3 GiB above 4 GiB (0xc000 units of 64 KiB). */
	r = make_rtc(3ULL << 30, 3ULL << 30, 1);
	assert_int_equal(rd16(r, 0x34), ((3u << 10) - 16) << 4);
	assert_int_equal(rtc_read_reg(r, 0x5b), 0x00);
	assert_int_equal(rtc_read_reg(r, 0x5c), 0xc0);
	assert_int_equal(rtc_read_reg(r, 0x5d), 0x00);
	rtc_destroy(r);

	/* 16 MiB and less: only extended memory. */
	r = make_rtc(12 << 20, 0, 1);
	assert_int_equal(rd16(r, 0x17), 11 << 10);
	assert_int_equal(rd16(r, 0x34), 0);
	rtc_destroy(r);
}

/* A snapshot keeps what the guest set: NVRAM bytes, the index, the NMI
 * mask and its clock offset, which then runs on with the host clock. */
static void save_and_restore(void **state)
{
	struct state_header h = { .version = STATE_VERSION, .ncpus = 1, .mem_size = 1 << 20 };
	struct state_writer *w = state_writer_new(&h);
	struct rtc *r = make_rtc(256 << 20, 0, 1), *r2;
	struct state_reader *rd;
	const uint8_t *buf;
	size_t len;

	(void)state;
	rtc_write_index(r, 0x40);
	rtc_write_data(r, 0x5a);
	rtc_write_index(r, 0x09);
	rtc_write_data(r, 0x30); /* year 2030 */
	rtc_write_index(r, 0x80 | 0x00);
	rtc_save(r, w);
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &rd), 0);
	r2 = make_rtc(64 << 20, 0, 2);
	fake_now.tv_sec += 3600;
	assert_int_equal(rtc_restore(r2, rd), 0);
	assert_int_equal(rtc_read_reg(r2, 0x40), 0x5a);
	assert_int_equal(rtc_read_reg(r2, 0x09), 0x30);
	assert_int_equal(rtc_read_reg(r2, 0x04), 0x16); /* an hour later */
	assert_true(rtc_nmi_masked(r2));
	assert_int_equal(rtc_read_data(r2), 0x05); /* index 0: seconds */
	state_reader_free(rd);
	state_writer_free(w);
	rtc_destroy(r);
	rtc_destroy(r2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(time_in_bcd_24h_by_default),
		cmocka_unit_test(binary_and_12_hour_modes),
		cmocka_unit_test(guest_sets_the_time_under_set),
		cmocka_unit_test(update_in_progress_before_each_second),
		cmocka_unit_test(nmi_mask_and_nvram),
		cmocka_unit_test(memory_sizes_as_seabios_reads_them),
		cmocka_unit_test(save_and_restore),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* MC146818 RTC/CMOS (include/vireo/rtc.h). Time registers are computed on
 * each read from the host clock and an offset, so nothing ticks in the VMM;
 * while SET is held, reads and writes go to a frozen copy that becomes the
 * new offset when SET is released (how Linux's mc146818_set_time writes). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/rtc.h"
#include "vireo/state.h"

#define RTC_NVRAM_SIZE  128
#define RTC_UIP_NS      244000 /* update-in-progress lead time, per the data sheet */

enum { REG_SEC = 0, REG_MIN = 2, REG_HOUR = 4, REG_WDAY = 6, REG_MDAY = 7, REG_MON = 8,
       REG_YEAR = 9 };

struct rtc {
	pthread_mutex_t lock;
	uint8_t index;
	bool nmi_masked;
	uint8_t nvram[RTC_NVRAM_SIZE];
	int64_t offset;       /* guest time - host time, seconds */
	struct tm frozen;     /* the time while SET is held */
	void (*clock)(struct timespec *now);
};

static void host_clock(struct timespec *now)
{
	clock_gettime(CLOCK_REALTIME, now);
}

static void put16(uint8_t *nv, unsigned int lo, uint64_t v)
{
	nv[lo] = (uint8_t)v;
	nv[lo + 1] = (uint8_t)(v >> 8);
}

/* The sizes SeaBIOS (and old BIOSes) read, each capped to its field. */
static void rtc_fill_memory(struct rtc *r, const struct rtc_config *cfg)
{
	uint64_t ext_kib = cfg->low_ram_end > (1u << 20) ? (cfg->low_ram_end - (1u << 20)) >> 10 : 0;
	uint64_t above16 = cfg->low_ram_end > (16u << 20) ?
			   (cfg->low_ram_end - (16u << 20)) >> 16 : 0;
	uint64_t high = cfg->high_ram_size >> 16;

	put16(r->nvram, 0x15, 640);
	put16(r->nvram, 0x17, ext_kib > 0xffff ? 0xffff : ext_kib);
	put16(r->nvram, 0x30, ext_kib > 0xffff ? 0xffff : ext_kib);
	put16(r->nvram, 0x34, above16 > 0xffff ? 0xffff : above16);
	r->nvram[0x5b] = (uint8_t)high;
	r->nvram[0x5c] = (uint8_t)(high >> 8);
	r->nvram[0x5d] = (uint8_t)(high >> 16);
	r->nvram[0x5f] = (uint8_t)(cfg->ncpus ? cfg->ncpus - 1 : 0);
	/* Boot order nibbles (1 floppy, 2 disk, 3 CD): disk, then CD. */
	r->nvram[0x3d] = 0x32;
	r->nvram[0x38] = 0x00;
}

struct rtc *rtc_create_model(const struct rtc_config *cfg)
{
	struct rtc *r = calloc(1, sizeof(*r));

	if (!r) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&r->lock, NULL);
	r->clock = cfg->clock ? cfg->clock : host_clock;
	r->nvram[RTC_REG_A] = 0x26;  /* 32.768 kHz divider, 1024 Hz rate */
	r->nvram[RTC_REG_B] = RTC_B_24H;
	r->nvram[RTC_REG_D] = 0x80;  /* valid RAM and time: the battery is fine */
	rtc_fill_memory(r, cfg);
	return r;
}

void rtc_destroy(struct rtc *r)
{
	if (!r)
		return;
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static bool rtc_binary(const struct rtc *r)
{
	return r->nvram[RTC_REG_B] & RTC_B_DM_BINARY;
}

static uint8_t to_reg(const struct rtc *r, int v)
{
	return rtc_binary(r) ? (uint8_t)v : (uint8_t)((v / 10) << 4 | v % 10);
}

static int from_reg(const struct rtc *r, uint8_t v)
{
	return rtc_binary(r) ? v : (v >> 4) * 10 + (v & 0x0f);
}

static bool rtc_held(const struct rtc *r)
{
	return r->nvram[RTC_REG_B] & RTC_B_SET;
}

/* The guest's time now, and the host's nanoseconds into the second. */
static void rtc_now(struct rtc *r, struct tm *tm, long *nsec)
{
	struct timespec ts;
	time_t t;

	r->clock(&ts);
	*nsec = ts.tv_nsec;
	if (rtc_held(r)) {
		struct tm norm = r->frozen;

		/* As written (a date may be half set), but for the weekday. */
		*tm = r->frozen;
		timegm(&norm);
		tm->tm_wday = norm.tm_wday;
		return;
	}
	t = (time_t)(ts.tv_sec + r->offset);
	gmtime_r(&t, tm);
}

static uint8_t hour_to_reg(const struct rtc *r, int hour)
{
	int h12 = hour % 12 ? hour % 12 : 12;

	if (r->nvram[RTC_REG_B] & RTC_B_24H)
		return to_reg(r, hour);
	return to_reg(r, h12) | (hour >= 12 ? 0x80 : 0);
}

static int hour_from_reg(const struct rtc *r, uint8_t v)
{
	int h;

	if (r->nvram[RTC_REG_B] & RTC_B_24H)
		return from_reg(r, v);
	h = from_reg(r, v & 0x7f) % 12;
	return (v & 0x80) ? h + 12 : h;
}

static uint8_t rtc_time_reg(struct rtc *r, uint8_t index)
{
	struct tm tm;
	long nsec;

	rtc_now(r, &tm, &nsec);
	switch (index) {
	case REG_SEC: return to_reg(r, tm.tm_sec > 59 ? 59 : tm.tm_sec);
	case REG_MIN: return to_reg(r, tm.tm_min);
	case REG_HOUR: return hour_to_reg(r, tm.tm_hour);
	case REG_WDAY: return to_reg(r, tm.tm_wday + 1);
	case REG_MDAY: return to_reg(r, tm.tm_mday);
	case REG_MON: return to_reg(r, tm.tm_mon + 1);
	case REG_YEAR: return to_reg(r, tm.tm_year % 100);
	default: return to_reg(r, (tm.tm_year + 1900) / 100); /* RTC_REG_CENTURY */
	}
}

static bool rtc_is_time_reg(uint8_t index)
{
	return (index <= REG_YEAR && index != 1 && index != 3 && index != 5) ||
	       index == RTC_REG_CENTURY;
}

static uint8_t rtc_reg_a(struct rtc *r)
{
	struct tm tm;
	long nsec;
	uint8_t a = r->nvram[RTC_REG_A] & 0x7f;

	rtc_now(r, &tm, &nsec);
	/* Only a running clock (divider 010) updates. */
	if (!rtc_held(r) && (a & 0x70) == 0x20 && nsec >= 1000000000L - RTC_UIP_NS)
		a |= RTC_A_UIP;
	return a;
}

uint8_t rtc_read_reg(struct rtc *r, uint8_t index)
{
	uint8_t v;

	index &= 0x7f;
	pthread_mutex_lock(&r->lock);
	if (rtc_is_time_reg(index))
		v = rtc_time_reg(r, index);
	else if (index == RTC_REG_A)
		v = rtc_reg_a(r);
	else if (index == RTC_REG_C) {
		v = r->nvram[RTC_REG_C]; /* flags clear on read */
		r->nvram[RTC_REG_C] = 0;
	} else
		v = r->nvram[index];
	pthread_mutex_unlock(&r->lock);
	return v;
}

/* A time register write changes the frozen time (SET held) or the offset. */
static void rtc_set_time_reg(struct rtc *r, uint8_t index, uint8_t v)
{
	struct timespec ts;
	struct tm tm;
	long nsec;
	int year;

	rtc_now(r, &tm, &nsec);
	switch (index) {
	case REG_SEC: tm.tm_sec = from_reg(r, v); break;
	case REG_MIN: tm.tm_min = from_reg(r, v); break;
	case REG_HOUR: tm.tm_hour = hour_from_reg(r, v); break;
	case REG_WDAY: return; /* derived from the date */
	case REG_MDAY: tm.tm_mday = from_reg(r, v); break;
	case REG_MON: tm.tm_mon = from_reg(r, v) - 1; break;
	case REG_YEAR: tm.tm_year = (tm.tm_year + 1900) / 100 * 100 + from_reg(r, v) - 1900; break;
	default:
		year = from_reg(r, v) * 100 + (tm.tm_year + 1900) % 100;
		tm.tm_year = year - 1900;
		break;
	}
	if (rtc_held(r)) {
		r->frozen = tm;
		return;
	}
	r->clock(&ts);
	r->offset = (int64_t)timegm(&tm) - ts.tv_sec;
}

static void rtc_write_reg_b(struct rtc *r, uint8_t v)
{
	struct timespec ts;
	struct tm tm;
	long nsec;
	bool was_held = rtc_held(r);

	if (!was_held && (v & RTC_B_SET)) {
		rtc_now(r, &tm, &nsec);
		r->frozen = tm;
	}
	r->nvram[RTC_REG_B] = v;
	if (was_held && !(v & RTC_B_SET)) {
		r->clock(&ts);
		r->offset = (int64_t)timegm(&r->frozen) - ts.tv_sec;
	}
}

static void rtc_write_reg(struct rtc *r, uint8_t index, uint8_t v)
{
	index &= 0x7f;
	pthread_mutex_lock(&r->lock);
	if (rtc_is_time_reg(index))
		rtc_set_time_reg(r, index, v);
	else if (index == RTC_REG_A)
		r->nvram[RTC_REG_A] = v & 0x7f;
	else if (index == RTC_REG_B)
		rtc_write_reg_b(r, v);
	else if (index != RTC_REG_C && index != RTC_REG_D)
		r->nvram[index] = v;
	pthread_mutex_unlock(&r->lock);
}

void rtc_write_index(struct rtc *r, uint8_t value)
{
	__atomic_store_n(&r->nmi_masked, (value & 0x80) != 0, __ATOMIC_RELAXED);
	__atomic_store_n(&r->index, value & 0x7f, __ATOMIC_RELAXED);
}

bool rtc_nmi_masked(const struct rtc *r)
{
	return __atomic_load_n(&r->nmi_masked, __ATOMIC_RELAXED);
}

uint8_t rtc_read_data(struct rtc *r)
{
	return rtc_read_reg(r, __atomic_load_n(&r->index, __ATOMIC_RELAXED));
}

void rtc_write_data(struct rtc *r, uint8_t value)
{
	rtc_write_reg(r, __atomic_load_n(&r->index, __ATOMIC_RELAXED), value);
}

static void rtc_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct rtc *r = opaque;

	if (offset == 0 && is_write)
		rtc_write_index(r, data[0]);
	else if (offset == 0)
		bus_put(data, len, 0xff); /* the index port is write-only */
	else if (is_write)
		rtc_write_data(r, data[0]);
	else
		bus_put(data, len, rtc_read_data(r));
}

/* STATE_SEC_RTC: u8 index, u8 NMI masked, 128 bytes NVRAM, u64 offset
 * (seconds, two's complement), u64 the time frozen while SET is held. */
void rtc_save(struct rtc *r, struct state_writer *w)
{
	struct tm frozen;

	pthread_mutex_lock(&r->lock);
	frozen = r->frozen;
	state_begin(w, STATE_SEC_RTC, 0, 0);
	state_put_u8(w, __atomic_load_n(&r->index, __ATOMIC_RELAXED));
	state_put_u8(w, rtc_nmi_masked(r));
	state_put_bytes(w, r->nvram, sizeof(r->nvram));
	state_put_u64(w, (uint64_t)r->offset);
	state_put_u64(w, rtc_held(r) ? (uint64_t)timegm(&frozen) : 0);
	state_end(w);
	pthread_mutex_unlock(&r->lock);
}

int rtc_restore(struct rtc *r, const struct state_reader *rd)
{
	uint8_t nvram[RTC_NVRAM_SIZE], index, nmi;
	struct state_cursor c;
	int64_t offset;
	time_t frozen;
	int ret = state_section(rd, STATE_SEC_RTC, 0, &c);

	if (ret)
		return ret;
	index = state_get_u8(&c);
	nmi = state_get_u8(&c);
	state_get_bytes(&c, nvram, sizeof(nvram));
	offset = (int64_t)state_get_u64(&c);
	frozen = (time_t)state_get_u64(&c);
	ret = state_done(&c);
	if (ret)
		return ret;
	/* A hostile file gets no further than an odd clock: 10,000 years. */
	if (offset > 315576000000LL || offset < -315576000000LL)
		return err_set(-EINVAL, "RTC state: clock offset out of range");
	pthread_mutex_lock(&r->lock);
	memcpy(r->nvram, nvram, sizeof(nvram));
	r->nvram[RTC_REG_D] = 0x80;
	r->nvram[RTC_REG_A] &= 0x7f;
	r->offset = offset;
	gmtime_r(&frozen, &r->frozen);
	r->index = index & 0x7f;
	r->nmi_masked = nmi != 0;
	pthread_mutex_unlock(&r->lock);
	return 0;
}

struct rtc *rtc_create(struct vm *vm)
{
	struct rtc_config cfg = { .low_ram_end = vm->mem.regions[0].size, .ncpus = vm->ncpus };
	struct rtc *r;
	int ret;

	if (vm->mem.nregions > 1)
		cfg.high_ram_size = vm->mem.regions[1].size;
	r = rtc_create_model(&cfg);
	if (!r)
		return NULL;
	ret = bus_register(&vm->pio, PORT_RTC_INDEX, 2, rtc_io, r, "rtc");
	if (ret) {
		err_set(ret, "cannot register the RTC ports");
		rtc_destroy(r);
		return NULL;
	}
	return r;
}

/* MC146818 CMOS real-time clock and NVRAM (src/hw/rtc.c) at ports 0x70
 * (index; bit 7 of a write is the NMI mask) and 0x71 (data).
 *
 * The time is the host's clock (UTC) plus an offset the guest sets by
 * writing the time registers; BCD or binary and 12 or 24 hours follow
 * register B. Update-in-progress (register A bit 7) is set for the last
 * 244 us of every host second, as on the chip, and never while register
 * B's SET bit holds the clock. No interrupts: IRQ 8 is never raised
 * (periodic, alarm and update-ended interrupts are not modelled, so the
 * DSDT gives the RTC no IRQ and Linux does not offer alarms).
 *
 * The NVRAM holds what firmware reads from it on QEMU (SeaBIOS): base and
 * extended memory (0x15-0x18, 0x30-0x31), memory between 16 MiB and the
 * 32-bit gap in 64 KiB units (0x34-0x35), memory above 4 GiB in 64 KiB
 * units (0x5b-0x5d), the vCPU count less one (0x5f), the boot order
 * (0x38, 0x3d: hard disk first). */
#ifndef VIREO_RTC_H
#define VIREO_RTC_H

#include <stdint.h>
#include <time.h>

#include "vireo/vmm.h"

#define RTC_REG_A        0x0a
#define RTC_REG_B        0x0b
#define RTC_REG_C        0x0c
#define RTC_REG_D        0x0d
#define RTC_REG_CENTURY  0x32 /* the FADT's century field names it */
#define RTC_A_UIP        0x80
#define RTC_B_SET        0x80
#define RTC_B_DM_BINARY  0x04
#define RTC_B_24H        0x02

struct rtc;

struct rtc_config {
	uint64_t low_ram_end;    /* end of RAM below 4 GiB (bytes) */
	uint64_t high_ram_size;  /* RAM above 4 GiB (bytes) */
	unsigned int ncpus;
	/* The host clock; NULL: clock_gettime(CLOCK_REALTIME). For tests. */
	void (*clock)(struct timespec *now);
};

/* The register model alone (unit tests). NULL with err_set(). */
struct rtc *rtc_create_model(const struct rtc_config *cfg);
/* The model with its memory sizes from vm, on vm->pio. */
struct rtc *rtc_create(struct vm *vm);
void rtc_destroy(struct rtc *r);

/* One access to port 0x70 (index) or 0x71 (data), as the guest does it. */
void rtc_write_index(struct rtc *r, uint8_t value);
uint8_t rtc_read_data(struct rtc *r);
void rtc_write_data(struct rtc *r, uint8_t value);
/* Save/restore (vireo/state.h, STATE_SEC_RTC): the index, the NMI mask,
 * the NVRAM and the guest's offset from host time; a restored RTC follows
 * the host clock from there, as a PC's RTC runs on while it is off.
 * rtc_restore: 0 or -errno with err_set(). */
struct state_writer;
struct state_reader;
void rtc_save(struct rtc *r, struct state_writer *w);
int rtc_restore(struct rtc *r, const struct state_reader *rd);
/* Register `index`, for tests (what a read of 0x71 after selecting it gives). */
uint8_t rtc_read_reg(struct rtc *r, uint8_t index);
/* Whether the guest has masked NMIs through port 0x70. */
bool rtc_nmi_masked(const struct rtc *r);

#endif

/* Device models without KVM: the range table, the 16550 register model and
 * PCI configuration space. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "vireo/acpi.h"
#include "vireo/acpipm.h"
#include "vireo/bus.h"
#include "vireo/ged.h"
#include "vireo/i8042.h"
#include "vireo/pci.h"
#include "vireo/serial.h"
#include "vireo/state.h"

static int hits;
static uint64_t last_offset;

static void count_handler(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
			  bool is_write)
{
	(void)opaque;
	hits++;
	last_offset = offset;
	if (!is_write)
		memset(data, 0xab, len);
}

static void bus_dispatches_and_refuses_overlaps(void **state)
{
	struct bus bus;
	uint8_t data[4];

	(void)state;
	bus_init(&bus);
	assert_int_equal(bus_register(&bus, 0x100, 8, count_handler, NULL, "a"), 0);
	assert_int_equal(bus_register(&bus, 0x200, 4, count_handler, NULL, "b"), 0);
	assert_int_equal(bus_register(&bus, 0x104, 8, count_handler, NULL, "c"), -EEXIST);
	assert_int_equal(bus_register(&bus, 0xfc, 8, count_handler, NULL, "d"), -EEXIST);
	assert_true(bus_access(&bus, 0x203, data, 1, false));
	assert_int_equal(last_offset, 3);
	assert_int_equal(data[0], 0xab);
	/* An access that straddles the end of a range is not the device's. */
	assert_false(bus_access(&bus, 0x202, data, 4, false));
	assert_int_equal(data[0], 0xff);
	assert_false(bus_access(&bus, 0x150, data, 1, true));
	assert_int_equal(bus.unhandled, 2);
	assert_int_equal(bus_unregister(&bus, 0x100), 0);
	assert_false(bus_access(&bus, 0x100, data, 1, false));
	bus_destroy(&bus);
}

static void serial_loopback_and_interrupt_identification(void **state)
{
	struct serial *s = serial_create(NULL, -1);

	(void)state;
	assert_int_equal(serial_read_reg(s, 2) & 0x0f, 0x01); /* no interrupt */
	serial_write_reg(s, 1, 0x02);                         /* IER: THRE */
	assert_int_equal(serial_read_reg(s, 2) & 0x0f, 0x02); /* THRE pending */
	assert_int_equal(serial_read_reg(s, 2) & 0x0f, 0x01); /* read IIR acknowledges */
	serial_write_reg(s, 4, 0x10 | 0x0a);                  /* MCR: loop, RTS, OUT2 */
	assert_int_equal(serial_read_reg(s, 6) & 0xf0, 0x90); /* CTS and DCD looped */
	serial_write_reg(s, 0, 'z');                          /* loops into RBR */
	assert_int_equal(serial_read_reg(s, 5) & 0x01, 0x01);
	serial_write_reg(s, 1, 0x01);                         /* IER: RDA */
	assert_int_equal(serial_read_reg(s, 2) & 0x0f, 0x04);
	assert_int_equal(serial_read_reg(s, 0), 'z');
	assert_int_equal(serial_read_reg(s, 5) & 0x01, 0);
	serial_write_reg(s, 3, 0x80);                         /* DLAB */
	serial_write_reg(s, 0, 0x0c);
	assert_int_equal(serial_read_reg(s, 0), 0x0c);
	serial_destroy(s);
}

static void serial_receive_is_bounded(void **state)
{
	struct serial *s = serial_create(NULL, -1);
	uint8_t buf[1000];

	(void)state;
	memset(buf, 'a', sizeof(buf));
	size_t total = 0;
	for (int i = 0; i < 10; i++)
		total += serial_receive(s, buf, sizeof(buf));
	assert_int_equal(total, 4096);
	assert_int_equal(serial_rx_room(s), 0);
	assert_int_equal(serial_read_reg(s, 0), 'a');
	assert_int_equal(serial_rx_room(s), 1);
	serial_destroy(s);
}

/* Flow control: a reader parked on a full buffer is woken once the guest
 * has read it down to half, not at every byte. */
static void serial_rx_wait_wakes_at_half(void **state)
{
	struct serial *s = serial_create(NULL, -1);
	uint8_t buf[4096];
	eventfd_t v;
	int fd = serial_rx_space_fd(s);

	(void)state;
	assert_true(serial_rx_wait(s));			/* empty: room, nothing armed */
	memset(buf, 'b', sizeof(buf));
	assert_int_equal(serial_receive(s, buf, sizeof(buf)), 4096);
	assert_false(serial_rx_wait(s));		/* full: armed */
	for (int i = 0; i < 2047; i++)
		serial_read_reg(s, 0);
	assert_int_equal(eventfd_read(fd, &v), -1);	/* 2049 left: not yet */
	serial_read_reg(s, 0);
	assert_int_equal(eventfd_read(fd, &v), 0);	/* 2048 left: woken */
	serial_read_reg(s, 0);
	assert_int_equal(eventfd_read(fd, &v), -1);	/* once per wait */
	serial_destroy(s);
}

/* A guest that clears its receive FIFO (Linux's 8250 does when the port
 * opens) makes room as reading does: the parked source is woken. */
static void serial_fifo_clear_wakes_a_parked_reader(void **state)
{
	struct serial *s = serial_create(NULL, -1);
	uint8_t buf[4096];
	eventfd_t v;
	int fd = serial_rx_space_fd(s);

	(void)state;
	memset(buf, 'c', sizeof(buf));
	assert_int_equal(serial_receive(s, buf, sizeof(buf)), 4096);
	assert_false(serial_rx_wait(s));		/* full: armed */
	serial_write_reg(s, 2, 0x07);			/* FCR: enable, clear both */
	assert_int_equal(serial_rx_room(s), 4096);
	assert_int_equal(eventfd_read(fd, &v), 0);	/* woken */
	serial_destroy(s);
}

static uint8_t tx_pattern(uint64_t i)
{
	return (uint8_t)(i * 7 % 251);
}

static void serial_send(struct serial *s, uint64_t from, uint64_t n)
{
	for (uint64_t i = from; i < from + n; i++)
		serial_write_reg(s, 0, tx_pattern(i));
	/* Never back-pressured: THR stays empty. */
	assert_int_equal(serial_read_reg(s, 5) & 0x60, 0x60);
}

/* Reads what the pipe holds and checks it is the pattern from `from`. */
static uint64_t pipe_check(int fd, uint64_t from)
{
	static uint8_t buf[65536];
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < n; i++, from++)
			assert_int_equal(buf[i], tx_pattern(from));
	return from;
}

static int pipe_nonblock(int p[2])
{
	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
		return -1;
	return fcntl(p[1], F_SETPIPE_SZ, 65536) == 65536 ? 0 : -1;
}

/* Through the ring, which wraps twice: a reader that keeps up gets every
 * byte in order. */
static void serial_output_keeps_every_byte_in_order(void **state)
{
	struct serial_stats st;
	struct serial *s;
	uint64_t sent = 0, got = 0;
	int p[2];

	(void)state;
	assert_int_equal(pipe_nonblock(p), 0);
	s = serial_create(NULL, p[1]);
	assert_non_null(s);
	for (int round = 0; round < 5; round++) {
		serial_send(s, sent, 30000);
		sent += 30000;
		serial_output_flush(s, 1000);
		got = pipe_check(p[0], got);
		assert_int_equal(got, sent);
	}
	serial_get_stats(s, &st);
	assert_int_equal(st.dropped_bytes, 0);
	serial_destroy(s);
	close(p[0]);
	close(p[1]);
}

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A reader that does not read: the ring keeps 64 KiB, the rest is dropped
 * and counted, and the final flush gives up in time. */
static void serial_output_drops_what_a_stuck_reader_cannot_take(void **state)
{
	struct serial_stats st;
	struct serial *s;
	double t0;
	int p[2];

	(void)state;
	assert_int_equal(pipe_nonblock(p), 0);
	s = serial_create(NULL, p[1]);
	assert_non_null(s);
	serial_send(s, 0, 2 * 65536 + 1000);
	serial_get_stats(s, &st);
	assert_int_equal(st.dropped_bytes, 65536 + 1000);
	serial_output_flush(s, 0);		/* the pipe takes the ring */
	serial_send(s, 200000, 65536);		/* the ring fills again */
	serial_send(s, 300000, 10);		/* dropped */
	t0 = mono_s();
	serial_output_flush(s, 100);		/* the pipe is full: gives up */
	assert_true(mono_s() - t0 < 0.5);
	serial_get_stats(s, &st);
	assert_int_equal(st.dropped_bytes, 65536 + 1000 + 10);
	assert_int_equal(pipe_check(p[0], 0), 65536);	/* the oldest, in order */
	serial_output_flush(s, 1000);		/* a reader again: the rest */
	assert_int_equal(pipe_check(p[0], 200000), 200000 + 65536);
	serial_destroy(s);
	close(p[0]);
	close(p[1]);
}

/* The GED selector: events accumulate until one read returns and clears them. */
static void ged_selector_reads_and_clears(void **state)
{
	struct ged *g = ged_create(NULL);

	(void)state;
	assert_non_null(g);
	assert_int_equal(ged_read_selector(g), 0);
	ged_raise(g, GED_EVENT_POWER_BUTTON);
	ged_raise(g, GED_EVENT_POWER_BUTTON);
	ged_raise(g, 1u << 0);
	assert_int_equal(ged_read_selector(g), GED_EVENT_POWER_BUTTON | 1);
	assert_int_equal(ged_read_selector(g), 0);
	assert_int_equal(ged_power_button_count(g), 2);
	ged_destroy(g);
}

static void pci_config_space_and_bar_sizing(void **state)
{
	static struct pci_bus bus;
	static struct pci_device dev;

	(void)state;
	assert_int_equal(pci_init(&bus, NULL), 0);
	assert_int_equal(pci_config_read(&bus, 0, 0, 4), 0x00081b36);
	assert_int_equal(pci_config_read(&bus, 1 << 3, 0, 4), 0xffffffff); /* empty slot */
	assert_int_equal(pci_config_read(&bus, 1, 0, 2), 0xffff);           /* function 1 */
	pci_device_init(&dev, 0x1af4, 0x1042, 0x010000, "disk");
	pci_set_bar(&dev, 0, 0x4000);
	assert_int_equal(pci_add_device(&bus, &dev), 1);
	pci_config_write(&bus, 1 << 3, 0x10, 4, 0xffffffff);
	assert_int_equal(pci_config_read(&bus, 1 << 3, 0x10, 4), 0xffffc000);
	pci_config_write(&bus, 1 << 3, 0x10, 4, 0xc0001234);
	assert_int_equal(pci_config_read(&bus, 1 << 3, 0x10, 4), 0xc0000000);
	/* IDs are read-only; unaligned and out-of-range accesses are ignored. */
	pci_config_write(&bus, 1 << 3, 0, 4, 0);
	assert_int_equal(pci_config_read(&bus, 1 << 3, 0, 2), 0x1af4);
	assert_int_equal(pci_config_read(&bus, 1 << 3, 0x11, 2), 0xffff);
	assert_int_equal(pci_config_read(&bus, 1 << 3, 4094, 4), 0xffffffff);
}

/* A UART and a GED saved and restored into fresh ones read back the
 * same: registers, unread input in order, pending events. */
static void serial_and_ged_state_round_trip(void **unused)
{
	struct state_header h = { .ncpus = 1 };
	struct state_writer *w = state_writer_new(&h);
	struct serial *a = serial_create(NULL, -1), *b = serial_create(NULL, -1);
	struct ged *ga = ged_create(NULL), *gb = ged_create(NULL);
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	(void)unused;
	serial_write_reg(a, 3, 0x80);	/* DLAB: divisor 0x0c01 */
	serial_write_reg(a, 0, 0x01);
	serial_write_reg(a, 1, 0x0c);
	serial_write_reg(a, 3, 0x03);
	serial_write_reg(a, 1, 0x01);	/* IER: RDA */
	serial_write_reg(a, 7, 0x5a);
	assert_int_equal(serial_receive(a, (const uint8_t *)"xyz", 3), 3);
	assert_int_equal(serial_read_reg(a, 0), 'x');
	ged_raise(ga, GED_EVENT_POWER_BUTTON);
	serial_save(a, w);
	ged_save(ga, w);
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), 0);
	assert_int_equal(serial_restore(b, r), 0);
	assert_int_equal(ged_restore(gb, r), 0);
	assert_int_equal(serial_read_reg(b, 1), 0x01);
	assert_int_equal(serial_read_reg(b, 3), 0x03);
	assert_int_equal(serial_read_reg(b, 7), 0x5a);
	assert_int_equal(serial_read_reg(b, 2) & 0x0f, 0x04);	/* RDA pending */
	assert_int_equal(serial_read_reg(b, 0), 'y');
	assert_int_equal(serial_read_reg(b, 0), 'z');
	assert_int_equal(serial_read_reg(b, 5) & 1, 0);
	serial_write_reg(b, 3, 0x80);
	assert_int_equal(serial_read_reg(b, 0), 0x01);
	assert_int_equal(serial_read_reg(b, 1), 0x0c);
	assert_int_equal(ged_read_selector(gb), GED_EVENT_POWER_BUTTON);
	assert_int_equal(ged_power_button_count(gb), 1);
	state_reader_free(r);
	state_writer_free(w);
	serial_destroy(a);
	serial_destroy(b);
	ged_destroy(ga);
	ged_destroy(gb);
}

static uint64_t pm_read(struct acpipm *pm, uint64_t offset, uint32_t len)
{
	uint8_t d[8];

	acpipm_io(pm, offset, d, len, false);
	return bus_get(d, len);
}

/* SeaBIOS's probe, step by step: every command that expects an answer has
 * one at once, and the keyboard's reset gets "no device", so the probe never
 * waits; the input buffer is never full, so a reboot never waits either. */
static void i8042_answers_a_probe_with_no_devices(void **unused)
{
	struct i8042 *c = i8042_create_model();

	(void)unused;
	assert_non_null(c);
	assert_int_equal(i8042_read(c, 0x64) & 0x03, 0);        /* nothing waits, IBF clear */
	assert_false(i8042_write(c, 0x64, 0xad));                /* keyboard off */
	assert_false(i8042_write(c, 0x64, 0xaa));                /* self-test */
	assert_int_equal(i8042_read(c, 0x64) & 0x21, 0x01);      /* a controller byte */
	assert_int_equal(i8042_read(c, 0x60), 0x55);
	assert_int_equal(i8042_read(c, 0x64) & 0x01, 0);
	i8042_write(c, 0x64, 0xab);                              /* keyboard port test */
	assert_int_equal(i8042_read(c, 0x60), 0x00);
	i8042_write(c, 0x64, 0x20);                              /* the command byte... */
	uint8_t ctr = i8042_read(c, 0x60);
	i8042_write(c, 0x64, 0x60);                              /* ...written back changed */
	i8042_write(c, 0x60, ctr ^ 0x01);
	i8042_write(c, 0x64, 0x20);
	assert_int_equal(i8042_read(c, 0x60), ctr ^ 0x01);
	assert_false(i8042_write(c, 0x60, 0xff));                /* keyboard reset */
	assert_int_equal(i8042_read(c, 0x64) & 0x61, 0x41);      /* time-out, keyboard's */
	assert_int_equal(i8042_read(c, 0x60), 0xfe);
	i8042_write(c, 0x64, 0xd4);                              /* to the mouse */
	i8042_write(c, 0x60, 0xf4);
	assert_int_equal(i8042_read(c, 0x64) & 0x61, 0x61);
	assert_int_equal(i8042_read(c, 0x60), 0xfe);
	assert_int_equal(i8042_read(c, 0x64) & 0x63, 0);
	assert_false(i8042_write(c, 0x64, 0xff));                /* pulses no line */
	assert_true(i8042_write(c, 0x64, 0xfe));                 /* the reset line */
	i8042_destroy(c);
}

static void pm_write(struct acpipm *pm, uint64_t offset, uint32_t len, uint64_t v)
{
	uint8_t d[8];

	bus_put(d, len, v);
	acpipm_io(pm, offset, d, len, true);
}

/* PM1 status is write-1-to-clear, enable is plain, and the SCI is the
 * level of status & enable (a button pressed before it was enabled
 * interrupts once enabled). */
static void acpipm_status_enable_and_sci(void **state)
{
	struct acpipm *pm = acpipm_create(NULL);

	(void)state;
	assert_non_null(pm);
	assert_int_equal(pm_read(pm, 0, 4), 0);
	acpipm_power_button(pm);
	assert_int_equal(pm_read(pm, 0, 2), ACPIPM_PWRBTN);
	assert_false(acpipm_sci(pm));
	pm_write(pm, 2, 2, ACPIPM_PWRBTN | (1u << 5));
	assert_int_equal(pm_read(pm, 2, 2), ACPIPM_PWRBTN | (1u << 5));
	assert_true(acpipm_sci(pm));
	/* 0s, and 1s where no status is set, leave status as it is. */
	pm_write(pm, 0, 2, 0);
	assert_int_equal(pm_read(pm, 0, 2), ACPIPM_PWRBTN);
	pm_write(pm, 0, 2, 1u << 0);
	assert_true(acpipm_sci(pm));
	/* A byte write on the high half (bit 8 is bit 0 of byte 1). */
	pm_write(pm, 1, 1, 1);
	assert_int_equal(pm_read(pm, 0, 2), 0);
	assert_false(acpipm_sci(pm));
	assert_int_equal(pm_read(pm, 2, 2), ACPIPM_PWRBTN | (1u << 5));
	/* Disabled: a press sets status, no SCI; enabling raises it; a
	 * 32-bit write clears status and keeps enable (written as is). */
	pm_write(pm, 2, 2, 0);
	acpipm_power_button(pm);
	assert_false(acpipm_sci(pm));
	pm_write(pm, 3, 1, ACPIPM_PWRBTN >> 8);
	assert_true(acpipm_sci(pm));
	pm_write(pm, 0, 4, (uint32_t)ACPIPM_PWRBTN << 16 | ACPIPM_PWRBTN);
	assert_false(acpipm_sci(pm));
	assert_int_equal(pm_read(pm, 0, 4), (uint32_t)ACPIPM_PWRBTN << 16);
	assert_int_equal(acpipm_power_button_count(pm), 2);
	acpipm_destroy(pm);
}

/* SCI_EN always reads 1; SLP_TYP is kept, SLP_EN reads 0; SLP_EN with any
 * type but S5 does nothing, with S5 powers off (also when SLP_TYP was
 * written first, as ACPICA does). */
static void acpipm_control_and_s5(void **state)
{
	struct acpipm *pm = acpipm_create(NULL);
	uint16_t s5 = ACPI_S5_SLP_TYP << ACPIPM_SLP_TYP_SHIFT;

	(void)state;
	assert_int_equal(pm_read(pm, 4, 2), ACPIPM_SCI_EN);
	pm_write(pm, 4, 2, 3u << ACPIPM_SLP_TYP_SHIFT | ACPIPM_SLP_EN);
	assert_false(acpipm_s5_requested(pm));
	assert_int_equal(pm_read(pm, 4, 2), 3u << ACPIPM_SLP_TYP_SHIFT | ACPIPM_SCI_EN);
	pm_write(pm, 4, 2, s5);
	assert_false(acpipm_s5_requested(pm));
	assert_int_equal(pm_read(pm, 4, 2), s5 | ACPIPM_SCI_EN);
	pm_write(pm, 5, 1, (s5 | ACPIPM_SLP_EN) >> 8);
	assert_true(acpipm_s5_requested(pm));
	/* Beyond the blocks: reads 0, writes are ignored. */
	assert_int_equal(pm_read(pm, 4, 4), s5 | ACPIPM_SCI_EN);
	acpipm_destroy(pm);
}

/* A state file of pm's section, or (pm NULL) of one with these registers. */
static struct state_reader *pm_state(struct acpipm *pm, uint32_t sts, uint32_t en, uint32_t cnt)
{
	struct state_header h = { .ncpus = 1 };
	struct state_writer *w = state_writer_new(&h);
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	assert_non_null(w);
	if (pm) {
		acpipm_save(pm, w);
	} else {
		state_begin(w, STATE_SEC_ACPIPM, 0, STATE_SECTION_CRITICAL);
		state_put_u32(w, sts);
		state_put_u32(w, en);
		state_put_u32(w, cnt);
		state_put_u64(w, 0);
		state_end(w);
	}
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), 0); /* a copy */
	state_writer_free(w);
	return r;
}

/* The PM1 registers and the SCI they drive come back in a fresh device;
 * registers out of 16 bits, or a sleep in progress, are refused. */
static void acpipm_state_round_trip(void **unused)
{
	struct acpipm *a = acpipm_create(NULL), *b = acpipm_create(NULL);
	struct state_reader *r;

	(void)unused;
	acpipm_power_button(a);
	pm_write(a, 2, 2, ACPIPM_PWRBTN | (1u << 5));
	pm_write(a, 4, 2, 1u << 3);
	assert_true(acpipm_sci(a));
	r = pm_state(a, 0, 0, 0);
	assert_false(acpipm_sci(b));
	assert_int_equal(acpipm_restore(b, r), 0);
	state_reader_free(r);
	assert_true(acpipm_sci(b));
	assert_int_equal(pm_read(b, 0, 2), ACPIPM_PWRBTN);
	assert_int_equal(pm_read(b, 2, 2), ACPIPM_PWRBTN | (1u << 5));
	assert_int_equal(pm_read(b, 4, 2), (1u << 3) | ACPIPM_SCI_EN);
	assert_int_equal(acpipm_power_button_count(b), 1);
	/* Cleared status, restored: the line drops. */
	pm_write(a, 0, 2, ACPIPM_PWRBTN);
	r = pm_state(a, 0, 0, 0);
	assert_int_equal(acpipm_restore(b, r), 0);
	state_reader_free(r);
	assert_false(acpipm_sci(b));
	for (int i = 0; i < 3; i++) {
		uint32_t v[3] = { 0, 0, 0 };

		v[i] = 0x10000;
		r = pm_state(NULL, v[0], v[1], v[2]);
		assert_int_equal(acpipm_restore(b, r), -EINVAL);
		state_reader_free(r);
	}
	r = pm_state(NULL, 0, 0, ACPIPM_SLP_EN);
	assert_int_equal(acpipm_restore(b, r), -EINVAL);
	state_reader_free(r);
	assert_int_equal(pm_read(b, 2, 2), ACPIPM_PWRBTN | (1u << 5)); /* unchanged */
	acpipm_destroy(a);
	acpipm_destroy(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(bus_dispatches_and_refuses_overlaps),
		cmocka_unit_test(serial_loopback_and_interrupt_identification),
		cmocka_unit_test(serial_receive_is_bounded),
		cmocka_unit_test(i8042_answers_a_probe_with_no_devices),
		cmocka_unit_test(serial_rx_wait_wakes_at_half),
		cmocka_unit_test(serial_fifo_clear_wakes_a_parked_reader),
		cmocka_unit_test(serial_output_keeps_every_byte_in_order),
		cmocka_unit_test(serial_output_drops_what_a_stuck_reader_cannot_take),
		cmocka_unit_test(pci_config_space_and_bar_sizing),
		cmocka_unit_test(ged_selector_reads_and_clears),
		cmocka_unit_test(acpipm_status_enable_and_sci),
		cmocka_unit_test(acpipm_control_and_s5),
		cmocka_unit_test(serial_and_ged_state_round_trip),
		cmocka_unit_test(acpipm_state_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

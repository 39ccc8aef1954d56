/* Probe guest main (BSP, CPL3): read the boot information (PVH start info
 * or Linux boot_params, bootinfo.c) and the command line,
 * walk ACPI, run the scenario named by "scenario=NAME", power off.
 * A scenario's argument is either "scenario=NAME=ARG" or "NAME=ARG". */
#include "probe.h"
#include "virtio.h"		/* crc32_update */

#define ARG_MAX 64

static const char *cmdline = "";

void probe_main(void);

/* Copies the value of "key=" on the command line into out; false if absent. */
bool cmdline_get(const char *key, char out[ARG_MAX])
{
	size_t klen = probe_strlen(key);

	for (const char *p = cmdline; *p;) {
		while (*p == ' ')
			p++;
		if (!probe_memcmp(p, key, klen) && p[klen] == '=') {
			size_t n = 0;

			for (p += klen + 1; *p && *p != ' ' && n < ARG_MAX - 1; p++)
				out[n++] = *p;
			out[n] = 0;
			return true;
		}
		while (*p && *p != ' ')
			p++;
	}
	return false;
}

uint64_t parse_u64(const char *s, uint64_t dflt)
{
	uint64_t v = 0;
	unsigned base = 10;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16, s += 2;
	if (!*s)
		return dflt;
	for (; *s; s++) {
		unsigned d = *s >= '0' && *s <= '9' ? (unsigned)(*s - '0') :
			     *s >= 'a' && *s <= 'f' ? (unsigned)(*s - 'a' + 10) : 99;
		if (d >= base)
			return dflt;
		v = v * base + d;
	}
	return v;
}

uint64_t cmdline_u64(const char *key, uint64_t dflt)
{
	char v[ARG_MAX];

	return cmdline_get(key, v) ? parse_u64(v, dflt) : dflt;
}

/* End of the type-1 memmap region that holds the image (DMA memory comes
 * from there). */
uint64_t ram_end(void)
{
	static uint64_t end;

	if (end)
		return end;
	end = 0x100000 + (64ull << 20);		/* no memmap: assume 64 MiB past 1 MiB */
	for (uint32_t i = 0; i < boot.nmem; i++) {
		const struct hvm_memmap_entry *e = &boot.mem[i];

		if (e->type == 1 && e->addr <= 0x100000 && e->addr + e->size > 0x100000)
			end = e->addr + e->size;
	}
	return end;
}

static uint64_t mem_bytes(void)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < boot.nmem; i++)
		if (boot.mem[i].type == 1)
			sum += boot.mem[i].size;
	return sum;
}

/* The memory map, the command line and the initrd as the guest sees them,
 * for the host to compare with what it passed (zlib CRC-32). The initrd must lie in the
 * 4 GiB the probe maps. */
static void report_boot_data(void)
{
	size_t len = probe_strlen(cmdline);
	uint64_t a = boot.initrd_addr, n = boot.initrd_size;

	for (uint32_t i = 0; i < boot.nmem; i++)
		probe_printf("PROBE memmap base=0x%lx length=0x%lx type=%u\n", boot.mem[i].addr,
			     boot.mem[i].size, boot.mem[i].type);
	probe_printf("PROBE cmdline_len=%lu cmdline_crc32=%08x\n", len, crc32_update(0, cmdline, len));
	if (!n)
		return;
	if (a >= 0x100000000ull || n > 0x100000000ull - a) {
		probe_printf("PROBE initrd_error=outside-4g initrd_addr=0x%lx initrd_size=%lu\n", a, n);
		return;
	}
	probe_printf("PROBE initrd_addr=0x%lx initrd_size=%lu initrd_crc32=%08x\n", a, n,
		     crc32_update(0, (const void *)(uintptr_t)a, n));
}

static void scn_hello(const char *arg)
{
	uint64_t mem = mem_bytes();

	(void)arg;
	probe_printf("PROBE banner=vireo-probe\n");
	probe_printf("PROBE mem_bytes=%lu\n", mem);
	probe_printf("PROBE mem_mib=%lu\n", (mem + (1 << 19)) >> 20);
	probe_printf("PROBE cpus=%d\n", acpi.ncpus);
	probe_printf("PROBE acpi rsdp=0x%lx rsdp_from=%s hw_reduced=%d sleep_ctl=%s:0x%lx "
		     "pm1a_cnt=0x%x s5=%d ecam=0x%lx tables=%s\n", acpi.rsdp,
		     acpi.rsdp_scanned ? "scan" : boot.rsdp_from, acpi.hw_reduced,
		     acpi.sleep_ctl.space == 1 ? "io" : "mem", acpi.sleep_ctl.addr,
		     acpi.pm1a_cnt, acpi.slp_typ_s5, acpi.ecam_base, acpi.tables);
	report_boot_data();
}

static void scn_cpus(const char *arg)
{
	(void)arg;
	if (x2apic_enable()) {
		probe_printf("PROBE error=no-x2apic\n");
		probe_exit(1);
	}
	probe_printf("PROBE cpu_up apic_id=%u\n", x2apic_id());
	probe_printf("PROBE cpus_up=%d\n", smp_start_aps());
}

/* With a GED (power button) the burn also ends at a button press; the
 * check is a CPL0 round trip, so it is made only every BUTTON_CHECK_NS. */
#define BUTTON_CHECK_NS 20000000ull

static void scn_cpuburn(const char *arg)
{
	uint64_t ms = parse_u64(arg, 1000), iterations = 0;
	bool steal = steal_init();
	uint64_t steal0 = steal_ns(), start = clock_ns(), end = start + ms * 1000000, now;
	uint64_t check = start;
	bool button = !ged_arm(), pressed = false;

	do {
		for (volatile int i = 0; i < 1000; i++)
			;
		iterations++;
		now = clock_ns();
		if (button && now >= check) {
			check = now + BUTTON_CHECK_NS;
			pressed = ged_pressed();
		}
	} while (now < end && !pressed);
	probe_printf("PROBE burn_ms=%lu iterations=%lu\n", ms, iterations);
	if (steal)
		probe_printf("PROBE burn_steal_ms=%lu\n", (steal_ns() - steal0) / 1000000);
	else
		probe_printf("PROBE burn_steal=unavailable\n");
	if (pressed)
		probe_printf("PROBE power_button=1 burn_ran_ms=%lu\n", (now - start) / 1000000);
}

static void scn_exit(const char *arg)
{
	uint32_t code = (uint32_t)parse_u64(arg, 0);

	probe_printf("PROBE exit=%u\n", code);
	probe_exit(code);
}

/* "say=TEXT": after say_after=MS ms, prints TEXT ('_' for a space) as a
 * bare line, not a PROBE line, then powers off: a guest writing what the
 * VMM could have written, for the tests that the VMM's status cannot be
 * forged through the console. */
static void scn_say(const char *arg)
{
	char text[ARG_MAX], ms[ARG_MAX];
	size_t i;

	if (cmdline_get("say_after", ms))
		clock_delay_us(parse_u64(ms, 0) * 1000);
	for (i = 0; arg[i] && i < ARG_MAX - 1; i++)
		text[i] = arg[i] == '_' ? ' ' : arg[i];
	text[i] = 0;
	probe_printf("%s\n", text);
}

/* One flood line: "PROBE flood seq=SSSSSSSS data=D\n", D 40 letters
 * that depend on S (tests/integration/test_serial_output.py rebuilds it). */
static size_t flood_line(char *line, uint64_t seq)
{
	static const char head[] = "PROBE flood seq=", mid[] = " data=";
	size_t n = sizeof(head) - 1;

	probe_memcpy(line, head, n);
	for (int i = 7; i >= 0; i--, seq /= 10)
		line[n + (size_t)i] = (char)('0' + seq % 10);
	n += 8;
	probe_memcpy(line + n, mid, sizeof(mid) - 1);
	n += sizeof(mid) - 1;
	for (unsigned int i = 0; i < 40; i++)
		line[n + i] = (char)('a' + (line[23 - i % 8] - '0' + i) % 26);
	n += 40;
	line[n++] = '\n';
	return n;
}

/* "flood=N": N lines (0: without end) of volume, each sent in one exit,
 * then "PROBE flood_done lines=N": the VMM's console output must keep every
 * byte in order for a reader that keeps up, and never stall the guest for
 * one that does not. */
static void scn_flood(const char *arg)
{
	uint64_t n = parse_u64(arg, 0);
	char line[80];

	for (uint64_t seq = 0; !n || seq < n; seq++)
		probe_write_fast(line, flood_line(line, seq));
	probe_printf("PROBE flood_done lines=%lu\n", n);
}

/* "count=MS": a counter printed every MS ms (default 100) without end,
 * with the clock: the snapshot tests read from it that a restored guest
 * went on where it stopped (the count follows on, the clock is monotonic,
 * no second boot line). */
static void scn_count(const char *arg)
{
	uint64_t ms = parse_u64(arg, 100), start = clock_ns();

	if (!ms)
		ms = 100;
	for (uint64_t n = 0;; n++) {
		probe_printf("PROBE count n=%lu ms=%lu\n", n, (clock_ns() - start) / 1000000);
		clock_delay_us(ms * 1000);
	}
}

/* dirty_rate=MIB_PER_S: page i of the run is not written before i pages'
 * share of the time at that rate (bench/migrate.sh's steady writer). */
static void dirty_pace(uint64_t rate, uint64_t t0, uint64_t i)
{
	uint64_t due = t0 + i * (1000000000ull >> 8) / rate, now = clock_ns();

	if (rate && i % 256 == 0 && due > now)
		clock_delay_us((due - now) / 1000);
}

/* Dirties memory fast, for live migration: "dirty=MIB" writes every page
 * of MIB MiB in turn, each with its own address and the pass number, and
 * checks before each write that the page still holds what the previous
 * pass left there (a page lost or stale after a migration shows as bad).
 * dirty_rate=MIB_PER_S writes no faster than that (0: as fast as it can). */
static void scn_dirty(const char *arg)
{
	uint64_t mib = parse_u64(arg, 16), pages, bad = 0, start = clock_ns();
	uint64_t rate = cmdline_u64("dirty_rate", 0), written = 0;
	volatile uint64_t *buf;

	if (!mib)
		mib = 16;
	pages = mib << 8;
	buf = dma_alloc((size_t)mib << 20, 4096);
	for (uint64_t pass = 1;; pass++) {
		for (uint64_t i = 0; i < pages; i++) {
			volatile uint64_t *pg = buf + i * 512;

			if (rate)
				dirty_pace(rate, start, written++);
			if (pass > 1 && (pg[0] != (uint64_t)(uintptr_t)pg || pg[1] != pass - 1))
				bad++;
			pg[0] = (uint64_t)(uintptr_t)pg;
			pg[1] = pass;
		}
		probe_printf("PROBE dirty pass=%lu bad=%lu ms=%lu\n", pass, bad,
			     (clock_ns() - start) / 1000000);
	}
}

/* For bench/snapshot.sh: "touch=MIB" writes every page of MIB MiB once
 * (its address and generation 1) and says "filled"; after change_after_ms
 * (default 1000) it rewrites the first change_mib MiB (default 10) with
 * generation 2, checks every page and says "changed bad=N". All along it
 * prints a tick every tick_ms (default 5), so that a restored guest shows
 * at once that it runs. */
static uint64_t touch_tick(uint64_t n, uint64_t start, uint64_t tick)
{
	probe_printf("PROBE touch tick n=%lu ms=%lu\n", n, (clock_ns() - start) / 1000000);
	clock_delay_us(tick * 1000);
	return n + 1;
}

static void scn_touch(const char *arg)
{
	uint64_t mib = parse_u64(arg, 512), change = cmdline_u64("change_mib", 10);
	uint64_t after = cmdline_u64("change_after_ms", 1000), tick = cmdline_u64("tick_ms", 5);
	uint64_t pages = mib << 8, bad = 0, n = 0, start;
	volatile uint64_t *buf = dma_alloc((size_t)mib << 20, 4096);

	for (uint64_t i = 0; i < pages; i++) {
		buf[i * 512] = (uint64_t)(uintptr_t)(buf + i * 512);
		buf[i * 512 + 1] = 1;
	}
	probe_printf("PROBE touch filled mib=%lu\n", mib);
	start = clock_ns();
	while (clock_ns() - start < after * 1000000)
		n = touch_tick(n, start, tick);
	for (uint64_t i = 0; i < (change << 8) && i < pages; i++)
		buf[i * 512 + 1] = 2;
	for (uint64_t i = 0; i < pages; i++)
		bad += buf[i * 512] != (uint64_t)(uintptr_t)(buf + i * 512) ||
		       buf[i * 512 + 1] != (i < (change << 8) ? 2u : 1u);
	probe_printf("PROBE touch changed mib=%lu bad=%lu\n", change, bad);
	for (;;)
		n = touch_tick(n, start, tick);
}

/* QEMU microvm has no MCFG (its ECAM is only in the DSDT): "ecam=ADDR"
 * on the command line supplies or overrides the base of bus 0. */
/* Faults on purpose, to test the exception path: "fault=ud" or "fault=pf". */
static void scn_fault(const char *arg)
{
	if (!probe_memcmp(arg, "pf", 3))
		*(volatile uint64_t *)0x100000000000ull = 1;	/* unmapped */
	__asm__ volatile("ud2");
}

static void scn_pci_wrap(const char *arg)
{
	char ecam[ARG_MAX];

	(void)arg;
	if (cmdline_get("ecam", ecam)) {
		acpi.ecam_base = parse_u64(ecam, 0);
		acpi.bus_start = 0;
	}
	scn_pci();
}

static void scn_serial_irq_wrap(const char *arg) { (void)arg; scn_serial_irq(); }

/* virtio scenarios: find the devices first (ecam=, pci_mmio=, irq=). */
static void (*virtio_scn)(const char *);
static void scn_virtio(const char *arg)
{
	virtio_setup();
	virtio_scn(arg);
}
#define VIRTIO_SCN(name, fn) \
	static void name(const char *arg) { virtio_scn = fn; scn_virtio(arg); }
VIRTIO_SCN(scn_blk_wrap, scn_blk)
VIRTIO_SCN(scn_blk_bench_wrap, scn_blk_bench)
VIRTIO_SCN(scn_blk_wz_wrap, scn_blk_wz)
VIRTIO_SCN(scn_blk_mq_wrap, scn_blk_mq)
VIRTIO_SCN(scn_rng_wrap, scn_rng)
VIRTIO_SCN(scn_balloon_wrap, scn_balloon)
VIRTIO_SCN(scn_net_wrap, scn_net)
VIRTIO_SCN(scn_net_bench_wrap, scn_net_bench)
VIRTIO_SCN(scn_net_echo_wrap, scn_net_echo)
VIRTIO_SCN(scn_net_ip_wrap, scn_net_ip)
VIRTIO_SCN(scn_hostile_wrap, scn_hostile)
VIRTIO_SCN(scn_devloop_wrap, scn_devloop)

static const struct scenario {
	const char *name;
	void (*run)(const char *arg);
} scenarios[] = {
	{ "hello", scn_hello },
	{ "cpus", scn_cpus },
	{ "cpuburn", scn_cpuburn },
	{ "exit", scn_exit },
	{ "say", scn_say },
	{ "flood", scn_flood },
	{ "pci", scn_pci_wrap },
	{ "fault", scn_fault },
	{ "serial_irq", scn_serial_irq_wrap },
	{ "blk", scn_blk_wrap },
	{ "blk_bench", scn_blk_bench_wrap },
	{ "blk_wz", scn_blk_wz_wrap },
	{ "blk_mq", scn_blk_mq_wrap },
	{ "rng", scn_rng_wrap },
	{ "balloon", scn_balloon_wrap },
	{ "net", scn_net_wrap },
	{ "net_bench", scn_net_bench_wrap },
	{ "net_echo", scn_net_echo_wrap },
	{ "net_ip", scn_net_ip_wrap },
	{ "hostile", scn_hostile_wrap },
	{ "devloop", scn_devloop_wrap },
	{ "wait", scn_wait },
	{ "echo", scn_echo },
	{ "count", scn_count },
	{ "dirty", scn_dirty },
	{ "touch", scn_touch },
};

static void run_scenario(void)
{
	char name[ARG_MAX] = "hello", arg[ARG_MAX] = "";
	char *eq;

	cmdline_get("scenario", name);
	for (eq = name; *eq && *eq != '='; eq++)
		;
	if (*eq) {				/* scenario=NAME=ARG */
		*eq = 0;
		probe_memcpy(arg, eq + 1, probe_strlen(eq + 1) + 1);
	} else {
		cmdline_get(name, arg);		/* NAME=ARG */
	}
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (!probe_memcmp(name, scenarios[i].name, probe_strlen(scenarios[i].name) + 1)) {
			scenarios[i].run(arg);
			return;
		}
	}
	probe_printf("PROBE error=unknown-scenario name=%s\n", name);
	probe_exit(1);
}

void probe_main(void)
{
	char arg[ARG_MAX];
	const char *clk;

	idt_init();
	tss_clear_iomaps();
	serial_init();
	if (bootinfo_init())
		probe_exit(1);
	cmdline = boot.cmdline;
	/* "clock=tsc" skips kvmclock, to test the fallbacks. */
	clk = clock_init(!(cmdline_get("clock", arg) && !probe_memcmp(arg, "tsc", 4)));
	if (boot_entry == BOOT_ENTRY_PVH)
		probe_printf("PROBE boot start_info_version=%u clock=%s entry=pvh\n",
			     boot.start_info_version, clk);
	else
		probe_printf("PROBE boot boot_protocol=%u.%02u clock=%s entry=%s\n",
			     boot.protocol >> 8, boot.protocol & 0xff, clk, boot.entry);
	/* "rsdp=scan" ignores the loader's RSDP, to test the BIOS-area scan. */
	acpi_init(cmdline_get("rsdp", arg) ? 0 : boot.rsdp);
	run_scenario();
	acpi_poweroff();
}

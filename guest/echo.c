/* Scenario "echo[=MS]": the input direction of COM1. Reads the UART by
 * polling LSR.DR (each poll is a VM exit, so idle polls are spaced out),
 * line by line, and prints each line back as "PROBE echo line=TEXT". A
 * line ends at \n, \r (what a terminal's Enter sends) or \r\n. The
 * line "quit" ends the scenario; so does MS ms without input (default:
 * wait forever), with "PROBE echo_timeout=1". */
#include "probe.h"
#include "virtio.h"		/* parse_u64 */

#define COM1		0x3f8
#define LSR_DR		0x01
#define ECHO_LINE_MAX	200		/* longer lines are cut (truncated=1) */
#define IDLE_POLL_US	200

/* The next byte, or -1 if none came before the deadline (0: none). */
static int serial_getc(uint64_t deadline)
{
	while (!(inb(COM1 + 5) & LSR_DR)) {
		if (deadline && clock_ns() >= deadline)
			return -1;
		clock_delay_us(IDLE_POLL_US);
	}
	return inb(COM1);
}

void scn_echo(const char *arg)
{
	uint64_t ms = parse_u64(arg, 0);
	char line[ECHO_LINE_MAX + 1];
	size_t n = 0;
	bool cut = false, after_cr = false;
	int c;

	probe_printf("PROBE echo ready\n");
	while ((c = serial_getc(ms ? clock_ns() + ms * 1000000 : 0)) >= 0) {
		if (c == '\n' && after_cr) {	/* the \n of a \r\n */
			after_cr = false;
			continue;
		}
		after_cr = c == '\r';
		if (c != '\n' && c != '\r') {
			/* Control characters become '?': one line stays one PROBE line. */
			if (n < ECHO_LINE_MAX)
				line[n++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
			else
				cut = true;
			continue;
		}
		line[n] = 0;
		probe_printf("PROBE echo line=%s%s\n", line, cut ? " truncated=1" : "");
		if (n == 4 && !probe_memcmp(line, "quit", 4))
			return;
		n = 0;
		cut = false;
	}
	probe_printf("PROBE echo_timeout=1\n");
}

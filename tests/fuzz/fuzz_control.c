/* libFuzzer target: the VMM control socket's request parser
 * (src/vmm/control-parse.c). The input is one request line; the parser
 * must refuse or accept it without crashing, and what it accepts must be
 * in range. The CPU-list parser gets the input as text too. */
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/control.h"
#include "vireo/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct control_action a;
	char *text = malloc(size + 1);
	cpu_set_t set;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	if (control_parse(text, size, &a) == 0) {
		if (a.kind == CONTROL_PIN && CPU_COUNT(&a.cpus) == 0)
			abort();	/* "cpus" must not be empty */
		if (a.kind == CONTROL_SET_LIMITS && (a.bps > CONTROL_MAX_RATE ||
						     a.iops > CONTROL_MAX_RATE))
			abort();
		if (a.kind == CONTROL_BALLOON && a.target > (1ULL << 40))
			abort();
	}
	if (control_parse_cpulist(text, &set) == 0 && CPU_COUNT(&set) == 0)
		abort();
	free(text);
	return 0;
}

/* ACPI Generic Event Device: the event selector and its interrupt
 * (include/vireo/ged.h). The pending bits are atomics because they are set
 * on the event-loop thread and read-and-cleared on vCPU threads. */
#include <errno.h>
#include <stdlib.h>

#include "vireo/ged.h"
#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/state.h"

struct ged {
	struct vm *vm;
	uint32_t pending;
	uint64_t power_buttons;
};

uint32_t ged_read_selector(struct ged *g)
{
	return __atomic_exchange_n(&g->pending, 0, __ATOMIC_ACQ_REL);
}

/* Any read clears the whole register: the AML reads it once, 32 bits at
 * offset 0, and a narrower read must not leave half an event behind. */
static void ged_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct ged *g = opaque;

	if (is_write)
		return;
	bus_put(data, len, (uint64_t)ged_read_selector(g) >> (8 * offset));
}

void ged_raise(struct ged *g, uint32_t events)
{
	__atomic_fetch_or(&g->pending, events, __ATOMIC_ACQ_REL);
	if (events & GED_EVENT_POWER_BUTTON)
		__atomic_fetch_add(&g->power_buttons, 1, __ATOMIC_RELAXED);
	if (!g->vm)
		return;
	/* The _CRS says edge-triggered: a rising edge is the event. */
	if (vm_set_irq(g->vm, IRQ_GED, true) || vm_set_irq(g->vm, IRQ_GED, false))
		log_ratelimited("GED: cannot pulse GSI %d", IRQ_GED);
}

uint64_t ged_power_button_count(const struct ged *g)
{
	return __atomic_load_n(&g->power_buttons, __ATOMIC_RELAXED);
}

struct ged *ged_create(struct vm *vm)
{
	struct ged *g = calloc(1, sizeof(*g));
	int ret;

	if (!g) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	g->vm = vm;
	if (vm) {
		ret = bus_register(&vm->pio, PORT_ACPI_GED, 4, ged_io, g, "acpi-ged");
		if (ret) {
			err_set(ret, "cannot register the ACPI GED port");
			free(g);
			return NULL;
		}
	}
	return g;
}

/* STATE_SEC_GED: u32 pending events, u64 power-button presses. */
void ged_save(struct ged *g, struct state_writer *w)
{
	state_begin(w, STATE_SEC_GED, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, __atomic_load_n(&g->pending, __ATOMIC_ACQUIRE));
	state_put_u64(w, ged_power_button_count(g));
	state_end(w);
}

int ged_restore(struct ged *g, const struct state_reader *r)
{
	struct state_cursor c;
	uint32_t pending;
	uint64_t presses;
	int ret = state_section(r, STATE_SEC_GED, 0, &c);

	if (ret)
		return ret;
	pending = state_get_u32(&c);
	presses = state_get_u64(&c);
	ret = state_done(&c);
	if (ret)
		return ret;
	__atomic_store_n(&g->pending, pending, __ATOMIC_RELEASE);
	__atomic_store_n(&g->power_buttons, presses, __ATOMIC_RELAXED);
	return 0;
}

void ged_destroy(struct ged *g)
{
	free(g);
}

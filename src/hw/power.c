#include "vireo/acpi.h"
#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/power.h"

#define SLP_EN (1u << 5)

static void sleep_control_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
			     bool is_write)
{
	struct vm *vm = opaque;
	uint8_t v = data[0];

	if (!is_write) {
		bus_put(data, len, 0); /* sleep status: never woken */
		return;
	}
	if (offset == 0 && (v & SLP_EN) && ((v >> 2) & 7) == ACPI_S5_SLP_TYP)
		vm_request_stop(vm, VM_EXIT_POWEROFF);
}

static void debug_exit_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
			  bool is_write)
{
	struct vm *vm = opaque;
	uint8_t status = (uint8_t)bus_get(data, len);

	(void)offset;
	if (!is_write) {
		bus_put(data, len, 0);
		return;
	}
	vm_request_stop_why(vm, status, "the guest wrote %u to the debug-exit port", status);
}

int power_devices_init(struct vm *vm, bool debug_exit)
{
	int ret;

	ret = bus_register(&vm->pio, PORT_ACPI_SLEEP_CONTROL, 2, sleep_control_io, vm, "acpi-sleep");
	/* Opt-in: it lets the guest pick the VMM's exit status, which a
	 * supervisor must be able to trust (a guest could claim a reboot). */
	if (!ret && debug_exit)
		ret = bus_register(&vm->pio, PORT_DEBUG_EXIT, 4, debug_exit_io, vm, "debug-exit");
	return ret ? err_set(ret, "cannot register power devices") : 0;
}

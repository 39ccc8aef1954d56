/* How a guest ends (src/hw/power.c): the ACPI hardware-reduced sleep
 * control register (power-off) and the debug-exit port (a status for tests; QEMU's isa-debug-exit does
 * the same at the same port, there as (status << 1) | 1), present only with
 * debug_exit (`vireo run --debug-exit`). A reboot goes through the i8042's
 * reset line (vireo/i8042.h). */
#ifndef VIREO_POWER_H
#define VIREO_POWER_H

#include <stdbool.h>

#include "vireo/vmm.h"

int power_devices_init(struct vm *vm, bool debug_exit);

#endif

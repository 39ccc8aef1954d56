/* The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status and
 * commands), as a PC has it with nothing plugged into its keyboard and
 * mouse ports (src/hw/i8042.c). What guests use it for is its reset line
 * (command 0xfe, also the FADT's reset register); firmware probes it at
 * boot. The controller answers its own commands (self-test, interface
 * tests, the command byte), so a probe ends at once; a byte sent to the
 * keyboard or the mouse gets the controller's "no device" answer, 0xfe with
 * the time-out bit, so a driver gives up on the device without waiting.
 * The ACPI tables still announce no 8042 (src/boot/acpi.c), so Linux leaves
 * it alone. */
#ifndef VIREO_I8042_H
#define VIREO_I8042_H

#include <stdint.h>

#include "vireo/vmm.h"

struct i8042;

struct i8042 *i8042_create(struct vm *vm);
void i8042_destroy(struct i8042 *c);
/* The register model without a VM, for tests: a write to the command port
 * returns true when it asks for a reset. */
struct i8042 *i8042_create_model(void);
uint8_t i8042_read(struct i8042 *c, unsigned int port);
bool i8042_write(struct i8042 *c, unsigned int port, uint8_t value);

#endif

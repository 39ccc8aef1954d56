/* The vCPU exit dispatch with fake exits (DESIGN §3.5): no KVM needed. */
#include <linux/kvm.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <cmocka.h>

#include "vireo/layout.h"
#include "vireo/power.h"
#include "vireo/vmm.h"

static struct vm vm;
static struct vcpu vcpu;
static union { struct kvm_run run; uint8_t page[4096]; } area;
static unsigned int port_writes;
static uint8_t last_byte;

static void recorder(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	(void)opaque;
	(void)offset;
	(void)len;
	if (is_write) {
		port_writes++;
		last_byte = data[0];
	} else {
		data[0] = 0x42;
	}
}

static int setup(void **state)
{
	(void)state;
	memset(&vm, 0, sizeof(vm));
	memset(&area, 0, sizeof(area));
	bus_init(&vm.pio);
	bus_init(&vm.mmio);
	pthread_mutex_init(&vm.stop_lock, NULL);
	vm.stop_fd = eventfd(0, EFD_NONBLOCK);
	vcpu = (struct vcpu){ .vm = &vm, .fd = -1, .run = &area.run };
	port_writes = 0;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	bus_destroy(&vm.pio);
	bus_destroy(&vm.mmio);
	close(vm.stop_fd);
	return 0;
}

static void fake_io(uint16_t port, uint8_t dir, uint32_t count, const char *bytes)
{
	area.run.exit_reason = KVM_EXIT_IO;
	area.run.io.direction = dir;
	area.run.io.size = 1;
	area.run.io.port = port;
	area.run.io.count = count;
	area.run.io.data_offset = 1024;
	if (bytes)
		memcpy(area.page + 1024, bytes, count);
}

static void string_io_is_split_into_accesses(void **state)
{
	(void)state;
	assert_int_equal(bus_register(&vm.pio, 0x500, 1, recorder, NULL, "rec"), 0);
	fake_io(0x500, KVM_EXIT_IO_OUT, 3, "abc");
	assert_true(vcpu_handle_exit(&vcpu));
	assert_int_equal(port_writes, 3);
	assert_int_equal(last_byte, 'c');
	fake_io(0x500, KVM_EXIT_IO_IN, 1, NULL);
	assert_true(vcpu_handle_exit(&vcpu));
	assert_int_equal(area.page[1024], 0x42);
	fake_io(0x501, KVM_EXIT_IO_IN, 1, NULL);        /* nobody there */
	assert_true(vcpu_handle_exit(&vcpu));
	assert_int_equal(area.page[1024], 0xff);
}

static void debug_exit_and_poweroff_stop_the_vm(void **state)
{
	(void)state;
	assert_int_equal(power_devices_init(&vm, true), 0);
	fake_io(PORT_DEBUG_EXIT, KVM_EXIT_IO_OUT, 1, "\x09");
	vcpu_handle_exit(&vcpu);
	assert_true(vm.stop_requested);
	assert_int_equal(vm.exit_status, 9);
	assert_string_equal(vm.exit_reason, "the guest wrote 9 to the debug-exit port");
	/* The first reason wins: a later power-off does not change it. */
	fake_io(PORT_ACPI_SLEEP_CONTROL, KVM_EXIT_IO_OUT, 1, "\x34"); /* SLP_TYP 5, SLP_EN */
	vcpu_handle_exit(&vcpu);
	assert_int_equal(vm.exit_status, 9);
}

static void sleep_register_needs_s5_and_enable(void **state)
{
	(void)state;
	assert_int_equal(power_devices_init(&vm, false), 0);
	fake_io(PORT_DEBUG_EXIT, KVM_EXIT_IO_OUT, 1, "\x03"); /* no debug-exit device */
	vcpu_handle_exit(&vcpu);
	assert_false(vm.stop_requested);
	fake_io(PORT_ACPI_SLEEP_CONTROL, KVM_EXIT_IO_OUT, 1, "\x14"); /* S5 without SLP_EN */
	vcpu_handle_exit(&vcpu);
	assert_false(vm.stop_requested);
	fake_io(PORT_ACPI_SLEEP_CONTROL, KVM_EXIT_IO_OUT, 1, "\x34");
	vcpu_handle_exit(&vcpu);
	assert_true(vm.stop_requested);
	assert_int_equal(vm.exit_status, VM_EXIT_POWEROFF);
}

static void triple_fault_resets(void **state)
{
	(void)state;
	area.run.exit_reason = KVM_EXIT_SHUTDOWN;
	assert_false(vcpu_handle_exit(&vcpu));
	assert_int_equal(vm.exit_status, VM_EXIT_REBOOT);
}

static void oversized_mmio_is_ignored(void **state)
{
	(void)state;
	assert_int_equal(bus_register(&vm.mmio, 0x1000, 16, recorder, NULL, "rec"), 0);
	area.run.exit_reason = KVM_EXIT_MMIO;
	area.run.mmio.phys_addr = 0x1000;
	area.run.mmio.len = 200;                /* impossible: never trusted */
	area.run.mmio.is_write = 1;
	assert_true(vcpu_handle_exit(&vcpu));
	assert_int_equal(port_writes, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(string_io_is_split_into_accesses, setup, teardown),
		cmocka_unit_test_setup_teardown(debug_exit_and_poweroff_stop_the_vm, setup, teardown),
		cmocka_unit_test_setup_teardown(sleep_register_needs_s5_and_enable, setup, teardown),
		cmocka_unit_test_setup_teardown(triple_fault_resets, setup, teardown),
		cmocka_unit_test_setup_teardown(oversized_mmio_is_ignored, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

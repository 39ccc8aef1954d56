/* vireo run: one VM in the foreground. The guest's serial console is the
 * terminal (raw mode on a tty, Ctrl-A x quits); the exit status says how
 * the guest ended (docs/run.md). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <termios.h>
#include <unistd.h>

#include "vireo/boot.h"
#include "vireo/cmd.h"
#include "vireo/log.h"
#include "vireo/loop.h"
#include "vireo/pci.h"
#include "vireo/power.h"
#include "vireo/serial.h"
#include "vireo/size.h"
#include "vireo/vmm.h"

struct run_options {
	struct boot_config boot;
	struct vm_config vm;
	bool reboot_restart;
};

struct console {
	struct serial *serial;
	struct vm *vm;
	bool is_tty;
	bool escape; /* the previous byte was Ctrl-A */
	struct termios saved;
};

static const char run_usage[] =
	"usage: vireo run --kernel FILE [--initrd FILE] [--cmdline TEXT]\n"
	"                 [--cpus N] [--memory SIZE] [--hugepages] [--reboot=exit|restart]\n"
	"\n"
	"  --kernel FILE    bzImage, ELF vmlinux, or an ELF with a PVH note\n"
	"  --initrd FILE    initial ramdisk\n"
	"  --cmdline TEXT   kernel command line\n"
	"  --cpus N         vCPUs (default 1)\n"
	"  --memory SIZE    guest RAM, e.g. 512M or 2G (default 256M)\n"
	"  --hugepages      back guest RAM with huge pages\n"
	"  --reboot=MODE    on guest reboot: exit with status 3 (default) or restart\n"
	"\n"
	"Exit status: 0 guest powered off, 1 VMM error, 2 guest crashed,\n"
	"3 guest rebooted, or the value the guest wrote to the debug-exit port 0xf4.\n"
	"On a terminal, Ctrl-A x quits.\n";

static int parse_count(const char *text, unsigned int *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(text, &end, 10);
	if (errno || *end || end == text || v > 1000000 || text[0] == '-')
		return -EINVAL;
	*out = (unsigned int)v;
	return 0;
}

static int parse_run_options(int argc, char **argv, struct run_options *o)
{
	enum { OPT_HUGEPAGES = 256, OPT_REBOOT };
	static const struct option longopts[] = {
		{ "kernel", required_argument, NULL, 'k' },
		{ "initrd", required_argument, NULL, 'i' },
		{ "cmdline", required_argument, NULL, 'c' },
		{ "cpus", required_argument, NULL, 'n' },
		{ "memory", required_argument, NULL, 'm' },
		{ "hugepages", no_argument, NULL, OPT_HUGEPAGES },
		{ "reboot", required_argument, NULL, OPT_REBOOT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*o = (struct run_options){ .vm = { .ncpus = 1, .mem_size = 256ULL << 20 } };
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'k': o->boot.kernel = optarg; break;
		case 'i': o->boot.initrd = optarg; break;
		case 'c': o->boot.cmdline = optarg; break;
		case 'n':
			if (parse_count(optarg, &o->vm.ncpus) || o->vm.ncpus == 0)
				return err_set(-EINVAL, "--cpus: '%s' is not a positive number", optarg);
			break;
		case 'm':
			if (size_parse(optarg, &o->vm.mem_size) || o->vm.mem_size == 0)
				return err_set(-EINVAL, "--memory: '%s' is not a size like 512M", optarg);
			break;
		case OPT_HUGEPAGES: o->vm.hugepages = true; break;
		case OPT_REBOOT:
			if (strcmp(optarg, "exit") && strcmp(optarg, "restart"))
				return err_set(-EINVAL, "--reboot must be 'exit' or 'restart'");
			o->reboot_restart = !strcmp(optarg, "restart");
			break;
		case 'h': fputs(run_usage, stdout); exit(0);
		default: return err_set(-EINVAL, "see 'vireo run --help'");
		}
	}
	if (optind < argc)
		return err_set(-EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->boot.kernel)
		return err_set(-EINVAL, "--kernel is required (see 'vireo run --help')");
	if (access(o->boot.kernel, R_OK) < 0)
		return err_set(-errno, "cannot read kernel %s: %s", o->boot.kernel, strerror(errno));
	if (o->boot.initrd && access(o->boot.initrd, R_OK) < 0)
		return err_set(-errno, "cannot read initrd %s: %s", o->boot.initrd, strerror(errno));
	return 0;
}

static void console_input(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct console *con = opaque;
	uint8_t buf[256], out[256];
	size_t room = serial_rx_room(con->serial), n_out = 0;
	ssize_t n;

	(void)events;
	n = read(fd, buf, room < sizeof(buf) ? room : sizeof(buf));
	if (n <= 0) {
		if (n == 0 || (errno != EINTR && errno != EAGAIN))
			loop_del(loop, fd); /* EOF: the guest simply gets no more input */
		return;
	}
	for (ssize_t i = 0; i < n; i++) {
		if (con->is_tty && con->escape) {
			con->escape = false;
			if (buf[i] == 'x') {
				vm_request_stop(con->vm, VM_EXIT_POWEROFF);
				return;
			}
			if (buf[i] != 0x01)
				out[n_out++] = 0x01;
		} else if (con->is_tty && buf[i] == 0x01) {
			con->escape = true;
			continue;
		}
		out[n_out++] = buf[i];
	}
	serial_receive(con->serial, out, n_out);
}

static void vm_stopped(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	(void)fd;
	(void)events;
	(void)opaque;
	loop_stop(loop);
}

static void console_raw(struct console *con)
{
	struct termios raw;

	con->is_tty = isatty(STDIN_FILENO);
	if (!con->is_tty || tcgetattr(STDIN_FILENO, &con->saved) < 0) {
		con->is_tty = false;
		return;
	}
	raw = con->saved;
	cfmakeraw(&raw);
	raw.c_oflag |= OPOST | ONLCR; /* keep our own messages readable */
	tcsetattr(STDIN_FILENO, TCSANOW, &raw);
}

static void console_restore(struct console *con)
{
	if (con->is_tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &con->saved);
}

static int vm_build(struct vm *vm, struct pci_bus *pci, struct serial **serial,
		    const struct run_options *o)
{
	int ret = vm_create(vm, &o->vm);

	if (ret)
		return ret;
	*serial = serial_create(vm, STDOUT_FILENO);
	if (!*serial)
		return -ENOMEM;
	ret = power_devices_init(vm);
	if (!ret)
		ret = pci_init(pci, vm);
	if (!ret)
		ret = boot_load(vm, &o->boot);
	if (!ret && !vm->hw_virt)
		fprintf(stderr, "vireo: notice: this host's KVM has no hardware virtualization "
			"(guest CPL0 code is emulated); hiding CX16 and XSAVE from the guest\n");
	return ret;
}

static int run_vm(const struct run_options *o)
{
	struct vm vm;
	struct pci_bus pci;
	struct serial *serial = NULL;
	struct console con = { 0 };
	struct loop *loop = NULL;
	int status = VM_EXIT_VMM_ERROR;

	if (vm_build(&vm, &pci, &serial, o) || !(loop = loop_create()) || vm_start(&vm)) {
		fprintf(stderr, "vireo: %s\n", err_get());
		goto out;
	}
	con = (struct console){ .serial = serial, .vm = &vm };
	console_raw(&con);
	loop_add(loop, vm.stop_fd, EPOLLIN, vm_stopped, NULL);
	loop_add(loop, STDIN_FILENO, EPOLLIN, console_input, &con);
	if (loop_run(loop) < 0)
		vm_request_stop(&vm, VM_EXIT_VMM_ERROR);
	vm_join(&vm);
	console_restore(&con);
	status = vm.exit_status;
out:
	vm_destroy(&vm);
	serial_destroy(serial);
	loop_destroy(loop);
	return status;
}

int cmd_run(int argc, char **argv)
{
	struct run_options o;
	int status;

	if (parse_run_options(argc, argv, &o)) {
		fprintf(stderr, "vireo: %s\n", err_get());
		return VM_EXIT_VMM_ERROR;
	}
	status = run_vm(&o);
	if (status == VM_EXIT_REBOOT && o.reboot_restart) {
		/* A fresh process is the simplest complete reset of every device. */
		execv("/proc/self/exe", argv - 1);
		fprintf(stderr, "vireo: cannot restart after reboot: %s\n", strerror(errno));
		return VM_EXIT_VMM_ERROR;
	}
	return status;
}

/* vireo run: one VM in the foreground. The guest's serial console is the
 * terminal (raw mode on a tty, Ctrl-A x quits); the exit status says how
 * the guest ended (docs/run.md). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/boot.h"
#include "vireo/cmd.h"
#include "vireo/control.h"
#include "vireo/firmware.h"
#include "vireo/acpipm.h"
#include "vireo/ged.h"
#include "vireo/i8042.h"
#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/migrate.h"
#include "vireo/sock.h"
#include "vireo/loop.h"
#include "vireo/pci.h"
#include "vireo/power.h"
#include "vireo/rtc.h"
#include "vireo/sandbox.h"
#include "vireo/serial.h"
#include "vireo/size.h"
#include "vireo/state.h"
#include "vireo/virtio.h"
#include "vireo/vmm.h"

#define MAX_DISKS 8
#define MAX_NICS 4
#define SERIAL_FLUSH_MS 1000

struct run_options {
	struct boot_config boot;
	const char *firmware;	/* --firmware: boot through it (vireo/firmware.h) */
	bool firmware_debug;
	struct vm_config vm;
	bool reboot_restart;
	struct disk_config disks[MAX_DISKS];
	unsigned int ndisks;
	bool rng;
	uint64_t rng_bps;
	bool balloon;
	uint64_t balloon_target;
	struct nic_config nics[MAX_NICS];
	unsigned int nnics;
	const char *api_socket;
	const char *vcpu_cgroup;
	const char *console_socket;
	const char *status_file;
	bool debug_exit;
	struct sandbox sandbox;
	char *storage[BLOCK_POLICY_MAX_DIRS];	/* --storage, resolved */
	struct block_policy policy;		/* every disk's, with --storage */
	const char *restore;			/* --restore DIR */
	const char *incoming;			/* --incoming tcp:ADDR:PORT */
	const char *incoming_token;		/* --incoming-token-file FILE */
	struct migrate_storage incoming_disks;	/* --incoming-disk: copied storage */
	const char *host_taps[MAX_NICS];	/* --host-tap, in vNIC order */
	int host_tap_fds[MAX_NICS];		/* --incoming: attached early, or -1 */
	unsigned int nhost_taps;
	struct migrate_incoming *in;		/* --incoming: the stream, received */
	struct vm *early_vm;			/* --incoming: created at the stream's hello */
	bool paused;				/* --paused */
	bool track_dirty;			/* --track-dirty (with --restore) */
	unsigned int machine_opts;		/* options --restore takes from the snapshot */
	struct snapshot *snap;			/* --restore: the snapshot, checked */
	struct machine_config machine;		/* what snapshots record */
};

/* The devices of one VM, torn down together. */
struct vm_devices {
	struct serial *serial;
	struct ged *ged;
	struct acpipm *pm;	/* --firmware: the PC's PM1 blocks and power button */
	struct rtc *rtc;
	struct i8042 *i8042;
	struct firmware *fw;
	struct virtio_blk *disks[MAX_DISKS];
	struct virtio_rng *rng;
	struct virtio_balloon *balloon;
	struct virtio_net *nics[MAX_NICS];
	struct virtio_dev *virtio[MAX_DISKS + MAX_NICS + 2]; /* all, as created */
	unsigned int nvirtio;
	struct snapshot_base snap_base; /* of incremental snapshots */
};

/* Console input sources (the terminal, the console socket's client) parked
 * while the guest's receive buffer is full: nothing typed is lost, the
 * sender just waits, as on a real serial line with flow control. */
struct input_gate {
	struct serial *serial;
	struct { int fd; loop_fn fn; void *opaque; } held[2];
	unsigned int nheld;
};

struct console {
	struct serial *serial;
	struct input_gate *gate;
	struct vm *vm;
	bool is_tty;
	bool escape; /* the previous byte was Ctrl-A */
	struct termios saved;
};

static const char run_usage[] =
	"usage: vireo run --kernel FILE|--firmware FILE [--initrd FILE] [--cmdline TEXT]\n"
	"                 [--cpus N] [--memory SIZE] [--hugepages] [--reboot=exit|restart]\n"
	"\n"
	"  --kernel FILE    bzImage, ELF vmlinux, or an ELF with a PVH note\n"
	"  --firmware FILE  boot a BIOS image (SeaBIOS bios.bin): it boots the first\n"
	"                   disk, or --kernel (a bzImage) with --initrd and --cmdline\n"
	"  --firmware-debug the firmware's debug log (port 0x402) on stderr\n"
	"  --initrd FILE    initial ramdisk\n"
	"  --cmdline TEXT   kernel command line\n"
	"  --cpus N         vCPUs (default 1)\n"
	"  --memory SIZE    guest RAM, e.g. 512M or 2G (default 256M)\n"
	"  --hugepages      back guest RAM with huge pages\n"
	"  --reboot=MODE    on guest reboot: exit with status 3 (default) or restart\n"
	"  --disk SPEC      a virtio-blk disk (repeatable, up to 8):\n"
	"                   path=FILE[,format=raw|qcow2|vpc|vmdk][,readonly][,serial=ID]\n"
	"                   [,iops=N][,bps=SIZE]   (bps: bytes per second, e.g. 50M)\n"
	"                   [,cache=writeback|none|writethrough|directsync|unsafe]\n"
	"                   [,aio=io_uring|threads][,queues=N]\n"
	"                   (queues: virtqueues, 1-8; default one per vCPU, up to 8)\n"
	"  --rng[=bps=SIZE] a virtio-rng device, optionally rate-limited\n"
	"  --balloon[=target=SIZE]  a virtio-balloon device; target: memory to reclaim\n"
	"  --net SPEC       a virtio-net vNIC on a tap device (repeatable, up to 4):\n"
	"                   [tap=NAME][,mac=52:54:00:12:34:56][,mtu=N][,rx_bps=SIZE][,tx_bps=SIZE]\n"
	"                   (a missing tap is created; that needs CAP_NET_ADMIN)\n"
	"  --api-socket PATH  serve the control socket (JSON, docs/api.md) at PATH\n"
	"  --console-socket PATH  the serial console also on this Unix socket (one\n"
	"                   client at a time; bytes both ways)\n"
	"  --status-file FILE  on exit, write {\"pid\",\"status\",\"reason\"} (JSON) to\n"
	"                   FILE: the VMM's own account, apart from guest output\n"
	"                   (and \"migration\": the last migration's figures)\n"
	"  --debug-exit     the guest may end the VMM with any status through port\n"
	"                   0xf4 (a test device, as QEMU's isa-debug-exit)\n"
	"  --vcpu-cgroup FILE each vCPU thread writes its thread id to FILE (the\n"
	"                   daemon's vCPU cgroup: 'tasks' or 'cgroup.threads')\n"
	"  --storage DIR    every disk and every file of its backing chain must lie\n"
	"                   in DIR (repeatable; symlinks resolved); with --user, disks\n"
	"                   are opened with that user's rights (docs/images.md)\n"
	"  --user UID[:GID]|NAME  run as this user once everything is open\n"
	"  --jail DIR       once everything is open, make an empty read-only tmpfs\n"
	"                   on DIR the root of a mount namespace of its own (or\n"
	"                   chroot into DIR where the kernel refuses), with Landlock\n"
	"  --restore DIR    restore the snapshot in DIR (the control socket's\n"
	"                   'snapshot' action) instead of booting: the machine and\n"
	"                   its state come from DIR (docs/run.md)\n"
	"  --track-dirty    with --restore: log the pages the guest writes from the\n"
	"                   restore on, so that the next snapshot can be incremental\n"
	"                   to this one (costs a write fault per page; docs/run.md)\n"
	"  --paused         start paused (resume through the control socket)\n"
	"  --incoming tcp:ADDR:PORT  wait for a live migration on ADDR:PORT and run\n"
	"                   the VM it brings (the source's control action 'migrate');\n"
	"                   fd:N: listen on inherited descriptor N, a bound TCP socket\n"
	"  --incoming-token-file FILE  accept only a source that proves the token\n"
	"                   in FILE (its 'migrate' \"token\")\n"
	"  --incoming-disk path=FILE[,format=FMT]  with --incoming: the source copies\n"
	"                   its disks ('migrate' \"copy_storage\"); its next disk goes\n"
	"                   into FILE, an empty image of the same virtual size (once\n"
	"                   per disk, in order)\n"
	"  --host-tap NAME  with --incoming or --restore: this host's tap for the VM's\n"
	"                   next vNIC (once per vNIC, in order; \"\" lets the kernel\n"
	"                   name one); without it the taps named where the VM came from\n"
	"  --seccomp=MODE   on (default): a syscall outside the VMM's allowlist kills\n"
	"                   it (SIGSYS); log: allowed but logged by the kernel; off\n"
	"                   (--reboot=restart implies off: a filter outlives exec)\n"
	"\n"
	"Exit status: 0 guest powered off, 1 VMM error, 2 guest crashed,\n"
	"3 guest rebooted, or (--debug-exit) the value the guest wrote to port 0xf4.\n"
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

/* "path=a.img,format=qcow2,readonly,serial=d0,iops=100,bps=10M,cache=none,aio=threads". The
 * strings point into `spec`, which lives as long as argv. */
static int parse_disk(char *spec, struct disk_config *d)
{
	char *save = NULL;

	*d = (struct disk_config){ 0 };
	for (char *tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		const char *val = eq ? eq + 1 : "";

		if (eq)
			*eq = '\0';
		if (!strcmp(tok, "path") && eq)
			d->path = val;
		else if (!strcmp(tok, "format") && eq)
			d->format = val;
		else if (!strcmp(tok, "readonly") && (!eq || !strcmp(val, "on")))
			d->readonly = true;
		else if (!strcmp(tok, "serial") && eq && strlen(val) <= 20)
			d->serial = val;
		else if (!strcmp(tok, "iops") && eq && !size_parse(val, &d->iops))
			;
		else if (!strcmp(tok, "bps") && eq && !size_parse(val, &d->bps))
			;
		else if (!strcmp(tok, "cache") && eq && (d->cache = block_cache_parse(val)) >= 0)
			;
		else if (!strcmp(tok, "cache"))
			return err_set(-EINVAL, "--disk: cache must be none, writeback, writethrough, "
				       "directsync or unsafe, not '%s'", val);
		else if (!strcmp(tok, "aio") && eq && (d->aio = block_aio_parse(val)) >= 0)
			;
		else if (!strcmp(tok, "aio"))
			return err_set(-EINVAL, "--disk: aio must be io_uring or threads, not '%s'",
				       val);
		else if (!strcmp(tok, "queues") && eq && !parse_count(val, &d->queues) &&
			 d->queues >= 1 && d->queues <= VIRTIO_BLK_MAX_QUEUES)
			;
		else if (!strcmp(tok, "queues"))
			return err_set(-EINVAL, "--disk: queues must be 1 to %d, not '%s'",
				       VIRTIO_BLK_MAX_QUEUES, val);
		else
			return err_set(-EINVAL, "--disk: bad item '%s%s%s'", tok, eq ? "=" : "", val);
	}
	if (!d->path)
		return err_set(-EINVAL, "--disk needs path=FILE");
	return 0;
}

static int parse_mac(const char *text, uint8_t mac[6])
{
	unsigned int b[6];
	char end;

	if (sscanf(text, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
		   &end) != 6 || (b[0] & 1))
		return -EINVAL;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)b[i];
	return 0;
}

/* "tap=tap0,mac=52:54:00:12:34:56,mtu=9000,rx_bps=10M,tx_bps=10M" */
static int parse_nic(char *spec, struct nic_config *n)
{
	char *save = NULL;
	uint64_t mtu;

	*n = (struct nic_config){ 0 };
	for (char *tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		const char *val = eq ? eq + 1 : "";
		int bad = !eq;

		if (eq)
			*eq = '\0';
		if (bad)
			;
		else if (!strcmp(tok, "tap"))
			n->tap = val;
		else if (!strcmp(tok, "mac"))
			bad = parse_mac(val, n->mac) != 0, n->mac_set = true;
		else if (!strcmp(tok, "mtu"))
			bad = size_parse(val, &mtu) || mtu < 68 || mtu > 65535, n->mtu = (uint16_t)mtu;
		else if (!strcmp(tok, "rx_bps"))
			bad = size_parse(val, &n->rx_bps) != 0;
		else if (!strcmp(tok, "tx_bps"))
			bad = size_parse(val, &n->tx_bps) != 0;
		else
			bad = 1;
		if (bad)
			return err_set(-EINVAL, "--net: bad item '%s%s%s'", tok, eq ? "=" : "", val);
	}
	return 0;
}

static void apply_storage(struct run_options *o);

/* The devices as the machine description records them (a restore reopens
 * the disks by path and the taps by name). */
static void devices_to_machine(struct run_options *o)
{
	struct machine_config *m = &o->machine;

	for (unsigned int i = 0; i < o->ndisks; i++) {
		const struct disk_config *d = &o->disks[i];
		struct machine_disk *k = &m->disks[i];

		snprintf(k->path, sizeof(k->path), "%s", d->path);
		snprintf(k->format, sizeof(k->format), "%s", d->format ? d->format : "");
		snprintf(k->serial, sizeof(k->serial), "%s", d->serial ? d->serial : "");
		k->readonly = d->readonly;
		k->bps = d->bps;
		k->iops = d->iops;
		k->cache = d->cache;
		k->aio = d->aio;
		k->queues = d->queues;
	}
	for (unsigned int i = 0; i < o->nnics; i++) {
		const struct nic_config *n = &o->nics[i];
		struct machine_nic *k = &m->nics[i];

		snprintf(k->tap, sizeof(k->tap), "%s", n->tap ? n->tap : "");
		memcpy(k->mac, n->mac, 6);
		k->mac_set = n->mac_set;
		k->mtu = n->mtu;
		k->rx_bps = n->rx_bps;
		k->tx_bps = n->tx_bps;
	}
	m->rng_bps = o->rng_bps;
	m->balloon_target = o->balloon_target;
}

/* The machine of a stream or a snapshot names the taps of the host it came
 * from; --host-tap names this host's, one per vNIC in order ("" for a tap
 * the kernel names). */
static int devices_from_machine(struct run_options *o)
{
	const struct machine_config *m = &o->machine;

	o->ndisks = m->ndisks;
	for (unsigned int i = 0; i < m->ndisks; i++) {
		const struct machine_disk *k = &m->disks[i];

		o->disks[i] = (struct disk_config){ .path = k->path,
			.format = k->format[0] ? k->format : NULL, .readonly = k->readonly,
			.serial = k->serial[0] ? k->serial : NULL, .bps = k->bps, .iops = k->iops,
			.cache = k->cache, .aio = k->aio, .queues = k->queues };
	}
	o->nnics = m->nnics;
	for (unsigned int i = 0; i < m->nnics; i++) {
		const struct machine_nic *k = &m->nics[i];

		o->nics[i] = (struct nic_config){ .tap = k->tap[0] ? k->tap : NULL,
			.mac_set = k->mac_set, .mtu = k->mtu, .rx_bps = k->rx_bps,
			.tx_bps = k->tx_bps };
		memcpy(o->nics[i].mac, k->mac, 6);
	}
	if (o->nhost_taps && o->nhost_taps != m->nnics)
		return err_set(-EINVAL, "--host-tap given %u times, but the VM has %u vNICs",
			       o->nhost_taps, m->nnics);
	for (unsigned int i = 0; i < o->nhost_taps; i++) {
		o->nics[i].tap = *o->host_taps[i] ? o->host_taps[i] : NULL;
		o->nics[i].tap_opened = o->host_tap_fds[i] >= 0;
		o->nics[i].tap_fd = o->host_tap_fds[i];
		o->host_tap_fds[i] = -1;	/* the device's now */
	}
	o->rng = m->rng;
	o->rng_bps = m->rng_bps;
	o->balloon = m->balloon;
	o->balloon_target = m->balloon_target;
	apply_storage(o);
	return 0;
}

/* --restore: the machine and everything in it come from the snapshot. */
static int check_restore(struct run_options *o)
{
	int ret;

	if (o->machine_opts)
		return err_set(-EINVAL, "--restore takes the machine from the snapshot: no --kernel, "
			       "--initrd, --cmdline, --cpus, --memory, --hugepages, --disk, --net, "
			       "--rng, --balloon, --debug-exit or --firmware with it");
	if (o->reboot_restart)
		return err_set(-EINVAL, "--reboot=restart would restore the snapshot again: "
			       "use --reboot=exit with --restore");
	ret = snapshot_open(o->restore, &o->snap, &o->machine);
	if (ret)
		return err_set(ret, "--restore: %s", err_get());
	o->vm.ncpus = o->machine.ncpus;
	o->vm.mem_size = o->machine.mem_size;
	o->vm.mem_from_file = true;
	o->vm.mem_fd = snapshot_take_memory_fd(o->snap);
	o->debug_exit = o->machine.debug_exit;
	return devices_from_machine(o);
}

/* "path=FILE[,format=FMT]"; the strings point into spec (argv). */
static int parse_incoming_disk(char *spec, struct migrate_storage *st)
{
	unsigned int i = st->ndisks;
	char *save = NULL;

	if (i == MIGRATE_MAX_DISKS)
		return err_set(-EINVAL, "at most %d --incoming-disk options", MIGRATE_MAX_DISKS);
	st->path[i] = st->format[i] = NULL;
	for (char *tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!strncmp(tok, "path=", 5) && tok[5])
			st->path[i] = tok + 5;
		else if (!strncmp(tok, "format=", 7) && tok[7])
			st->format[i] = tok + 7;
		else
			return err_set(-EINVAL, "--incoming-disk: bad item '%s'", tok);
	}
	if (!st->path[i])
		return err_set(-EINVAL, "--incoming-disk needs path=FILE");
	st->ndisks++;
	return 0;
}

/* --incoming: the machine comes from the migration stream. */
static int check_incoming(struct run_options *o)
{
	if (o->restore || o->machine_opts)
		return err_set(-EINVAL, "--incoming takes the machine from the migration: no "
			       "--restore, --kernel, --initrd, --cmdline, --cpus, --memory, "
			       "--hugepages, --disk, --net, --rng, --balloon, --debug-exit or "
			       "--firmware with it");
	if (o->reboot_restart)
		return err_set(-EINVAL, "use --reboot=exit with --incoming");
	return 0;
}

/* The stream's hello: the KVM VM, its memory slot over the memfd and its
 * vCPUs are made now, while the memory arrives. In the downtime they took
 * 5-7 ms here (KVM_CREATE_IRQCHIP and the slot, ~4 ms each under kvm_pvm);
 * the pause now carries only the last pages, the state and the devices. */
static int incoming_hello(void *ctx, int mem_fd, uint64_t size, unsigned int ncpus)
{
	struct run_options *o = ctx;
	struct vm_config cfg = { .ncpus = ncpus, .mem_size = size, .mem_from_file = true,
				 .mem_is_memfd = true };

	o->early_vm = calloc(1, sizeof(*o->early_vm));
	if (!o->early_vm)
		return err_set(-ENOMEM, "out of memory");
	/* vm_create() takes it, even when it fails (vm_destroy() closes it). */
	cfg.mem_fd = fcntl(mem_fd, F_DUPFD_CLOEXEC, 0);
	if (cfg.mem_fd < 0) {
		free(o->early_vm);
		o->early_vm = NULL;
		return err_set(-errno, "cannot duplicate the guest memory's fd: %m");
	}
	return vm_create(o->early_vm, &cfg);
}

/* --incoming: the stream, received whole (memory into a memfd, then the
 * state), the VM created at its start. After sandbox_prepare(): the VM's
 * threads start here, and the mount namespace wants a single thread. */
static int receive_incoming(struct run_options *o)
{
	int ret;

	/* This host's taps are attached now, not in the downtime: a tap's
	 * carrier comes on when a VMM attaches, and its bridge port forwards
	 * only after the kernel's link watch (up to ~1 s, longer when loaded)
	 * notices; the announce right after the switch-over was lost then. */
	for (unsigned int i = 0; i < o->nhost_taps; i++) {
		o->host_tap_fds[i] = *o->host_taps[i] ? virtio_net_open_tap(o->host_taps[i]) : -1;
		if (*o->host_taps[i] && o->host_tap_fds[i] < 0)
			return err_set(o->host_tap_fds[i], "--host-tap %s: %s", o->host_taps[i],
				       err_get());
	}
	/* The copied disks are opened as the VM's will be (--storage, --user). */
	apply_storage(o);
	o->incoming_disks.policy = o->policy.ndirs ? &o->policy : NULL;
	ret = migrate_incoming_receive(o->incoming, o->incoming_token, &o->incoming_disks,
				       incoming_hello, o, &o->in, &o->snap, &o->machine);
	if (ret)
		return ret;
	if (!o->early_vm || o->early_vm->ncpus != o->machine.ncpus ||
	    o->early_vm->mem.size != o->machine.mem_size)
		return err_set(-EPROTO, "migration stream: the state's machine is not the one "
			       "its hello announced");
	o->vm.ncpus = o->machine.ncpus;
	o->vm.mem_size = o->machine.mem_size;
	o->vm.mem_from_file = o->vm.mem_is_memfd = true;
	/* The VM has its own (incoming_hello()). */
	close(snapshot_take_memory_fd(o->snap));
	o->vm.mem_fd = -1;
	o->debug_exit = o->machine.debug_exit;
	return devices_from_machine(o);
}

/* What the options mean together, and the files they name. */
static int check_run_options(struct run_options *o, bool seccomp_given)
{
	if (o->reboot_restart && (o->sandbox.drop || o->sandbox.jail))
		return err_set(-EINVAL, "--reboot=restart re-executes the VMM, which needs what "
			       "--user and --jail take away: use --reboot=exit and restart it "
			       "from outside (as the daemon does)");
	/* A filter outlives execve, and the new VMM's start-up needs calls
	 * a running VMM must not make. */
	if (o->reboot_restart && seccomp_given && o->sandbox.seccomp != SANDBOX_SECCOMP_OFF)
		return err_set(-EINVAL, "--reboot=restart re-executes the VMM, which a seccomp "
			       "filter would not let start: use --reboot=exit with --seccomp");
	if (o->reboot_restart)
		o->sandbox.seccomp = SANDBOX_SECCOMP_OFF;
	if (o->sandbox.jail && access(o->sandbox.jail, X_OK) < 0)
		return err_set(-errno, "--jail %s: %s", o->sandbox.jail, strerror(errno));
	if ((o->incoming_token || o->incoming_disks.ndisks) && !o->incoming)
		return err_set(-EINVAL, "--incoming-token-file and --incoming-disk go with --incoming");
	if (o->nhost_taps && !o->incoming && !o->restore)
		return err_set(-EINVAL, "--host-tap goes with --incoming or --restore (a new VM "
			       "names its taps with --net tap=NAME)");
	if (o->track_dirty && !o->restore)
		return err_set(-EINVAL, "--track-dirty goes with --restore (a running VM starts "
			       "tracking with the 'snapshot' action's \"track_dirty\")");
	if (o->incoming)
		return check_incoming(o);
	if (o->restore)
		return check_restore(o);
	if (!o->boot.kernel && !o->firmware)
		return err_set(-EINVAL, "--kernel or --firmware is required (see 'vireo run --help')");
	if (o->firmware && access(o->firmware, R_OK) < 0)
		return err_set(-errno, "cannot read firmware %s: %s", o->firmware, strerror(errno));
	if (o->boot.kernel && access(o->boot.kernel, R_OK) < 0)
		return err_set(-errno, "cannot read kernel %s: %s", o->boot.kernel, strerror(errno));
	if (o->boot.initrd && access(o->boot.initrd, R_OK) < 0)
		return err_set(-errno, "cannot read initrd %s: %s", o->boot.initrd, strerror(errno));
	return 0;
}

static int add_storage(struct run_options *o, const char *dir)
{
	if (o->policy.ndirs == BLOCK_POLICY_MAX_DIRS)
		return err_set(-EINVAL, "at most %d --storage options", BLOCK_POLICY_MAX_DIRS);
	if (block_storage_dir(dir, &o->storage[o->policy.ndirs]))
		return err_set(-EINVAL, "--storage: %s", err_get());
	o->policy.ndirs++;
	o->policy.dirs = (const char *const *)o->storage;
	return 0;
}

/* With --storage, every disk's chain is confined to it, and opened as the
 * VM's user when there is one (the daemon always gives both). */
static void apply_storage(struct run_options *o)
{
	if (!o->policy.ndirs)
		return;
	o->policy.as_user = o->sandbox.drop;
	o->policy.uid = o->sandbox.uid;
	o->policy.gid = o->sandbox.gid;
	for (unsigned int i = 0; i < o->ndisks; i++)
		o->disks[i].policy = &o->policy;
}

static int parse_run_options(int argc, char **argv, struct run_options *o)
{
	enum { OPT_HUGEPAGES = 256, OPT_REBOOT, OPT_DISK, OPT_RNG, OPT_BALLOON, OPT_NET,
	       OPT_API_SOCKET, OPT_VCPU_CGROUP, OPT_CONSOLE_SOCKET, OPT_USER, OPT_JAIL,
	       OPT_SECCOMP, OPT_STORAGE, OPT_STATUS_FILE, OPT_DEBUG_EXIT, OPT_RESTORE,
	       OPT_PAUSED, OPT_TRACK_DIRTY, OPT_FIRMWARE, OPT_FIRMWARE_DEBUG,
	       OPT_INCOMING, OPT_INCOMING_TOKEN, OPT_INCOMING_DISK, OPT_HOST_TAP };
	static const struct option longopts[] = {
		{ "kernel", required_argument, NULL, 'k' },
		{ "initrd", required_argument, NULL, 'i' },
		{ "firmware", required_argument, NULL, OPT_FIRMWARE },
		{ "firmware-debug", no_argument, NULL, OPT_FIRMWARE_DEBUG },
		{ "cmdline", required_argument, NULL, 'c' },
		{ "cpus", required_argument, NULL, 'n' },
		{ "memory", required_argument, NULL, 'm' },
		{ "hugepages", no_argument, NULL, OPT_HUGEPAGES },
		{ "reboot", required_argument, NULL, OPT_REBOOT },
		{ "disk", required_argument, NULL, OPT_DISK },
		{ "rng", optional_argument, NULL, OPT_RNG },
		{ "balloon", optional_argument, NULL, OPT_BALLOON },
		{ "net", required_argument, NULL, OPT_NET },
		{ "api-socket", required_argument, NULL, OPT_API_SOCKET },
		{ "vcpu-cgroup", required_argument, NULL, OPT_VCPU_CGROUP },
		{ "console-socket", required_argument, NULL, OPT_CONSOLE_SOCKET },
		{ "user", required_argument, NULL, OPT_USER },
		{ "jail", required_argument, NULL, OPT_JAIL },
		{ "seccomp", required_argument, NULL, OPT_SECCOMP },
		{ "storage", required_argument, NULL, OPT_STORAGE },
		{ "status-file", required_argument, NULL, OPT_STATUS_FILE },
		{ "debug-exit", no_argument, NULL, OPT_DEBUG_EXIT },
		{ "restore", required_argument, NULL, OPT_RESTORE },
		{ "paused", no_argument, NULL, OPT_PAUSED },
		{ "track-dirty", no_argument, NULL, OPT_TRACK_DIRTY },
		{ "incoming", required_argument, NULL, OPT_INCOMING },
		{ "incoming-token-file", required_argument, NULL, OPT_INCOMING_TOKEN },
		{ "incoming-disk", required_argument, NULL, OPT_INCOMING_DISK },
		{ "host-tap", required_argument, NULL, OPT_HOST_TAP },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool seccomp_given = false;
	int c;

	*o = (struct run_options){ .vm = { .ncpus = 1, .mem_size = 256ULL << 20 } };
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		/* The options that describe the machine (see check_restore). */
		switch (c) {
		case 'k': case 'i': case 'c': case 'n': case 'm': case OPT_HUGEPAGES:
		case OPT_DISK: case OPT_RNG: case OPT_BALLOON: case OPT_NET: case OPT_DEBUG_EXIT:
		case OPT_FIRMWARE:
			o->machine_opts++;
		}
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
		case OPT_DISK:
			if (o->ndisks == MAX_DISKS)
				return err_set(-EINVAL, "at most %d --disk options", MAX_DISKS);
			if (parse_disk(optarg, &o->disks[o->ndisks]))
				return -EINVAL;
			o->ndisks++;
			break;
		case OPT_RNG:
			o->rng = true;
			if (optarg && (strncmp(optarg, "bps=", 4) || size_parse(optarg + 4, &o->rng_bps)))
				return err_set(-EINVAL, "--rng takes only bps=SIZE");
			break;
		case OPT_NET:
			if (o->nnics == MAX_NICS)
				return err_set(-EINVAL, "at most %d --net options", MAX_NICS);
			if (parse_nic(optarg, &o->nics[o->nnics]))
				return -EINVAL;
			o->nnics++;
			break;
		case OPT_BALLOON:
			o->balloon = true;
			if (optarg && (strncmp(optarg, "target=", 7) ||
				       size_parse(optarg + 7, &o->balloon_target)))
				return err_set(-EINVAL, "--balloon takes only target=SIZE");
			break;
		case OPT_API_SOCKET: o->api_socket = optarg; break;
		case OPT_VCPU_CGROUP: o->vcpu_cgroup = optarg; break;
		case OPT_CONSOLE_SOCKET: o->console_socket = optarg; break;
		case OPT_STATUS_FILE: o->status_file = optarg; break;
		case OPT_DEBUG_EXIT: o->debug_exit = true; break;
		case OPT_RESTORE: o->restore = optarg; break;
		case OPT_PAUSED: o->paused = true; break;
		case OPT_TRACK_DIRTY: o->track_dirty = true; break;
		case OPT_FIRMWARE: o->firmware = optarg; break;
		case OPT_FIRMWARE_DEBUG: o->firmware_debug = true; break;
		case OPT_INCOMING: o->incoming = optarg; break;
		case OPT_INCOMING_TOKEN: o->incoming_token = optarg; break;
		case OPT_INCOMING_DISK:
			if (parse_incoming_disk(optarg, &o->incoming_disks))
				return -EINVAL;
			break;
		case OPT_HOST_TAP:
			if (o->nhost_taps == MAX_NICS)
				return err_set(-EINVAL, "at most %d --host-tap options", MAX_NICS);
			if (strlen(optarg) >= 16)
				return err_set(-EINVAL, "--host-tap: '%s' is too long for a tap name",
					       optarg);
			o->host_tap_fds[o->nhost_taps] = -1;
			o->host_taps[o->nhost_taps++] = optarg;
			break;
		case OPT_USER:
			if (sandbox_parse_user(optarg, &o->sandbox))
				return -EINVAL;
			break;
		case OPT_JAIL: o->sandbox.jail = optarg; break;
		case OPT_SECCOMP:
			if (sandbox_parse_seccomp(optarg, &o->sandbox))
				return -EINVAL;
			seccomp_given = true;
			break;
		case OPT_STORAGE:
			if (add_storage(o, optarg))
				return -EINVAL;
			break;
		case 'h': fputs(run_usage, stdout); exit(0);
		default: return err_set(-EINVAL, "see 'vireo run --help'");
		}
	}
	if (optind < argc)
		return err_set(-EINVAL, "unexpected argument '%s'", argv[optind]);
	apply_storage(o);
	for (unsigned int i = 0; i < o->ndisks; i++)
		if (!o->disks[i].queues)
			o->disks[i].queues = virtio_blk_default_queues(o->vm.ncpus);
	o->machine = (struct machine_config){ .ncpus = o->vm.ncpus, .mem_size = o->vm.mem_size,
		.hugepages = o->vm.hugepages, .debug_exit = o->debug_exit, .ndisks = o->ndisks,
		.nnics = o->nnics, .rng = o->rng, .balloon = o->balloon };
	devices_to_machine(o);
	o->machine.firmware = o->firmware != NULL;
	o->machine.firmware_kernel = o->firmware && o->boot.kernel;
	return check_run_options(o, seccomp_given);
}

static void gate_release(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct input_gate *g = opaque;
	eventfd_t v;

	(void)events;
	eventfd_read(fd, &v);
	for (unsigned int i = 0; i < g->nheld; i++)
		loop_add(loop, g->held[i].fd, EPOLLIN, g->held[i].fn, g->held[i].opaque);
	g->nheld = 0;
}

/* Reads at most what the guest's receive buffer takes; when it is full,
 * parks the source (returns 0) until the guest has read some. */
static ssize_t gate_read(struct loop *loop, struct input_gate *g, int fd, loop_fn fn,
			 void *opaque, uint8_t *buf, size_t size)
{
	size_t room = serial_rx_room(g->serial);

	if (room == 0 && g->nheld < 2) {
		loop_del(loop, fd);
		g->held[g->nheld].fd = fd;
		g->held[g->nheld].fn = fn;
		g->held[g->nheld++].opaque = opaque;
		if (serial_rx_wait(g->serial))	/* the guest read meanwhile */
			eventfd_write(serial_rx_space_fd(g->serial), 1);
		errno = EAGAIN;
		return -1;
	}
	return read(fd, buf, room < size ? room : size);
}

static void console_input(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct console *con = opaque;
	uint8_t buf[256], out[512];
	size_t n_out = 0;
	ssize_t n;

	(void)events;
	n = gate_read(loop, con->gate, fd, console_input, con, buf, sizeof(buf));
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

/* The console socket: the serial console for one client at a time. */
struct console_sock {
	struct serial *serial;
	struct input_gate *gate;
	const char *path;
	int listen_fd, client;
};

static void console_sock_drop(struct loop *loop, struct console_sock *cs)
{
	serial_set_tee(cs->serial, -1);
	loop_del(loop, cs->client);
	close(cs->client);
	cs->client = -1;
}

static void console_sock_input(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct console_sock *cs = opaque;
	uint8_t buf[256];
	ssize_t n;

	(void)events;
	n = gate_read(loop, cs->gate, fd, console_sock_input, cs, buf, sizeof(buf));
	if (n > 0)
		serial_receive(cs->serial, buf, (size_t)n);
	else if (n == 0 || (errno != EINTR && errno != EAGAIN))
		console_sock_drop(loop, cs);
}

static void console_sock_accept(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	static const char busy[] = "vireo: the console has a client already\r\n";
	struct console_sock *cs = opaque;
	int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	(void)events;
	if (c < 0)
		return;
	if (cs->client >= 0) {
		send(c, busy, sizeof(busy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
		close(c);
		return;
	}
	cs->client = c;
	loop_add(loop, c, EPOLLIN, console_sock_input, cs);
	serial_set_tee(cs->serial, c);
}

static int console_sock_open(struct loop *loop, struct console_sock *cs)
{
	cs->listen_fd = cs->client = -1;
	if (!cs->path)
		return 0;
	/* 0660: the daemon's group may attach (vireo vm console), as to its API. */
	cs->listen_fd = unix_listen(cs->path, 4, 0660, 1);
	if (cs->listen_fd < 0)
		return err_set(cs->listen_fd, "console socket: %s", err_get());
	return loop_add(loop, cs->listen_fd, EPOLLIN, console_sock_accept, cs);
}

static void console_sock_close(struct console_sock *cs)
{
	if (cs->client >= 0) {
		serial_set_tee(cs->serial, -1);
		close(cs->client);
	}
	if (cs->listen_fd >= 0) {
		close(cs->listen_fd);
		unix_unlink(cs->path);
	}
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

static int virtio_devices_create(struct vm *vm, struct pci_bus *pci, struct vm_devices *devs,
				 const struct run_options *o)
{
	int ret = 0;

	for (unsigned int i = 0; i < o->ndisks && !ret; i++) {
		ret = virtio_blk_create(vm, pci, &o->disks[i], &devs->disks[i]);
		if (ret)
			err_set(ret, "disk %s: %s", o->disks[i].path, err_get());
		else
			devs->virtio[devs->nvirtio++] = virtio_blk_dev(devs->disks[i]);
	}
	if (!ret && o->rng && !(ret = virtio_rng_create(vm, pci, o->rng_bps, &devs->rng)))
		devs->virtio[devs->nvirtio++] = virtio_rng_dev(devs->rng);
	for (unsigned int i = 0; i < o->nnics && !ret; i++)
		if (!(ret = virtio_net_create(vm, pci, &o->nics[i], &devs->nics[i])))
			devs->virtio[devs->nvirtio++] = virtio_net_dev(devs->nics[i]);
	if (!ret && o->balloon &&
	    !(ret = virtio_balloon_create(vm, pci, o->balloon_target, &devs->balloon)))
		devs->virtio[devs->nvirtio++] = virtio_balloon_dev(devs->balloon);
	return ret;
}

static void vm_devices_destroy(struct vm_devices *devs)
{
	for (unsigned int i = 0; i < MAX_DISKS; i++)
		virtio_blk_destroy(devs->disks[i]);
	virtio_rng_destroy(devs->rng);
	virtio_balloon_destroy(devs->balloon);
	for (unsigned int i = 0; i < MAX_NICS; i++)
		virtio_net_destroy(devs->nics[i]);
	ged_destroy(devs->ged);
	acpipm_destroy(devs->pm);
	rtc_destroy(devs->rtc);
	i8042_destroy(devs->i8042);
	firmware_destroy(devs->fw);
	serial_destroy(devs->serial);
	snapshot_base_free(&devs->snap_base);
}

/* --restore: the devices get their state back before any vCPU runs; a
 * firmware's ROM and fw_cfg come back first, from the state too. */
static int restore_state(struct vm *vm, struct pci_bus *pci, struct vm_devices *devs,
			 const struct run_options *o)
{
	struct snapshot_target t = { .vm = vm, .serial = devs->serial, .ged = devs->ged,
				     .rtc = devs->rtc, .pm = devs->pm,
				     .machine = &o->machine, .virtio = devs->virtio,
				     .nvirtio = devs->nvirtio, .base = &devs->snap_base,
				     .track_dirty = o->track_dirty };
	/* The slots first: KVM checks guest addresses in MSRs (kvmclock,
	 * steal time, async PF, PV EOI) against them as they are set. */
	int ret = vm_memory_ready(vm);

	if (!ret && o->machine.firmware)
		ret = firmware_restore(vm, pci, snapshot_state(o->snap), o->machine.firmware_kernel,
				       o->firmware_debug, &devs->fw);
	t.fw = devs->fw;
	return ret ? ret : snapshot_restore(o->snap, &t);
}

static int vm_build(struct vm *vm, struct pci_bus *pci, struct vm_devices *devs,
		    const struct run_options *o)
{
	/* --incoming: created at the stream's hello (incoming_hello()). */
	int ret = o->early_vm ? 0 : vm_create(vm, &o->vm);

	if (ret)
		return ret;
	if (o->vcpu_cgroup) {
		vm->vcpu_cgroup = o->vcpu_cgroup;
		vm->vcpu_cgroup_fd = open(o->vcpu_cgroup, O_WRONLY | O_CLOEXEC);
		if (vm->vcpu_cgroup_fd < 0)
			return err_set(-errno, "--vcpu-cgroup %s: %m", o->vcpu_cgroup);
	}
	devs->serial = serial_create(vm, STDOUT_FILENO);
	if (!devs->serial)
		return -ENOMEM;
	ret = power_devices_init(vm, o->debug_exit);
	if (!ret && !(devs->ged = ged_create(vm)))
		ret = -ENOMEM;
	/* Its tables are a PC's (acpi_build_tables()); also when restored. */
	if (!ret && o->machine.firmware && !(devs->pm = acpipm_create(vm)))
		ret = -ENOMEM;
	if (!ret && !(devs->rtc = rtc_create(vm)))
		ret = -ENOMEM;
	if (!ret && !(devs->i8042 = i8042_create(vm)))
		ret = -ENOMEM;
	if (!ret)
		ret = pci_init(pci, vm);
	vm->firmware = o->machine.firmware;
	if (!ret)
		ret = virtio_devices_create(vm, pci, devs, o);
	if (!ret && o->snap)
		ret = restore_state(vm, pci, devs, o);
	else if (!ret && o->firmware)
		ret = firmware_load(vm, pci, o->firmware, &o->boot, o->firmware_debug,
				    &devs->fw);
	else if (!ret)
		ret = boot_load(vm, &o->boot);
	vm->start_paused = o->paused;
	if (!ret && !vm->hw_virt)
		fprintf(stderr, "vireo: notice: this host's KVM has no hardware virtualization "
			"(guest CPL0 code is emulated); hiding CX16 and XSAVE from the guest\n");
	return ret;
}

/* The control socket (--api-socket) on the event loop; NULL without it. */
static int control_start(struct loop *loop, struct vm *vm, struct vm_devices *devs,
			 const struct run_options *o, struct migration *mig, const char **paths,
			 struct control **out)
{
	struct control_target t = { .vm = vm, .disks = devs->disks, .disk_paths = paths,
				    .ndisks = o->ndisks, .nics = devs->nics, .nnics = o->nnics,
				    .balloon = devs->balloon, .ged = devs->ged, .pm = devs->pm,
				    .rtc = devs->rtc, .fw = devs->fw, .serial = devs->serial,
				    .balloon_target = o->balloon_target, .machine = &o->machine,
				    .virtio = devs->virtio, .nvirtio = devs->nvirtio,
				    .migration = mig, .snap_base = &devs->snap_base,
				    .no_connect = o->sandbox.jail != NULL };

	*out = NULL;
	if (!o->api_socket)
		return 0;
	for (unsigned int i = 0; i < o->ndisks; i++)
		paths[i] = o->disks[i].path;
	*out = control_create(loop, o->api_socket, &t);
	return *out ? 0 : -1;
}

/* *migration: the last migration's figures (a reference), NULL if none. */
static int run_vm(const struct run_options *o, char *reason, size_t size,
		  struct json_object **migration)
{
	const char *disk_paths[MAX_DISKS];
	struct control *ctl = NULL;
	struct migration *mig = NULL;
	struct vm own, *vm = o->early_vm ? o->early_vm : &own;
	struct pci_bus pci;
	struct vm_devices devs = { 0 };
	struct console con = { 0 };
	struct input_gate gate = { 0 };
	struct console_sock cs = { .path = o->console_socket, .gate = &gate, .listen_fd = -1,
				   .client = -1 };
	struct loop *loop = NULL;
	int status = VM_EXIT_VMM_ERROR;

	/* Disks opened as the VM's user must not get root's groups either
	 * (setfsgid changes only the primary one). */
	if (o->policy.as_user && setgroups(0, NULL) < 0) {
		fprintf(stderr, "vireo: setgroups: %s\n", strerror(errno));
		return status;
	}
	if (vm_build(vm, &pci, &devs, o) || !(loop = loop_create()) ||
	    !(mig = migration_create(&(struct snapshot_target){ .vm = vm,
			.serial = devs.serial, .ged = devs.ged, .rtc = devs.rtc,
			.fw = devs.fw, .pm = devs.pm, .machine = &o->machine,
			.virtio = devs.virtio, .nvirtio = devs.nvirtio })) ||
	    control_start(loop, vm, &devs, o, mig, disk_paths, &ctl) ||
	    (cs.serial = gate.serial = devs.serial, console_sock_open(loop, &cs)) ||
	    loop_add(loop, serial_rx_space_fd(devs.serial), EPOLLIN, gate_release, &gate) ||
	    serial_output_start(devs.serial, loop) ||
	    /* The memory slots are installed on a helper thread with an ioctl
	     * the seccomp filter does not allow: it must be done first. The
	     * vCPU threads open their schedstat files before the sandbox, and
	     * run the guest only after it. */
	    vm_memory_ready(vm) || vm_start_vcpus(vm) ||
	    /* --incoming: built and restored; runs only once the source has
	     * handed the VM over (it never resumes after that). */
	    (o->in && migrate_incoming_ready(o->in)) || sandbox_enter(&o->sandbox) ||
	    vm_start(vm)) {
		fprintf(stderr, "vireo: %s\n", err_get());
		snprintf(reason, size, "%s", err_get());
		/* vCPU threads already waiting for vm_start() end without running. */
		vm_request_stop(vm, VM_EXIT_VMM_ERROR);
		vm_join(vm);
		goto out;
	}
	if (o->in) {
		migrate_incoming_running(o->in, mig);
		if (migrate_announce_start(loop, devs.nics, o->nnics))
			log_warn("%s", err_get()); /* the VM runs: peers learn later */
	}
	con = (struct console){ .serial = devs.serial, .gate = &gate, .vm = vm };
	console_raw(&con);
	loop_add(loop, vm->stop_fd, EPOLLIN, vm_stopped, NULL);
	loop_add(loop, STDIN_FILENO, EPOLLIN, console_input, &con);
	if (loop_run(loop) < 0)
		vm_request_stop(vm, VM_EXIT_VMM_ERROR);
	vm_join(vm);
	/* The guest's last lines (its power-off messages), unless the output
	 * is stuck: then stopping is worth more than them. */
	serial_output_flush(devs.serial, SERIAL_FLUSH_MS);
	console_restore(&con);
	status = vm->exit_status;
	snprintf(reason, size, "%s", vm->exit_reason);
out:
	console_sock_close(&cs);
	control_destroy(ctl);
	*migration = mig ? migration_info(mig) : NULL;
	migration_destroy(mig);
	vm_devices_destroy(&devs);
	vm_destroy(vm);
	loop_destroy(loop);
	return status;
}

/* The command line as given (argv[-1] is "vireo"): parse_disk() and
 * parse_nic() cut their arguments up in place, and the restart after a
 * guest reboot needs them whole. */
static char **argv_save(int argc, char **argv)
{
	char **copy = calloc((size_t)argc + 2, sizeof(char *));

	for (int i = -1; copy && i < argc; i++)
		copy[i + 1] = argv[i];
	for (int i = 0; copy && i <= argc; i++)
		if (copy[i] && !(copy[i] = strdup(copy[i])))
			copy[0] = NULL; /* found by the caller */
	return copy;
}

static void argv_free(char **copy, int argc)
{
	for (int i = 0; copy && i <= argc; i++)
		free(copy[i]);
	free(copy);
}

/* The status file: created empty at start-up (before the sandbox, which
 * could not reach it), filled at exit. Only the VMM writes it, so a
 * supervisor can believe it where it cannot believe the console log that
 * the guest writes into too. */
static int status_open(const char *path)
{
	struct stat st;
	int fd;

	if (!path)
		return -1;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		fd = -1;
		errno = EINVAL;
	}
	if (fd < 0)
		fprintf(stderr, "vireo: --status-file %s: %s\n", path, strerror(errno));
	return fd;
}

static void status_write(int fd, int status, const char *reason, struct json_object *migration)
{
	struct json_object *o = json_object_new_object();
	const char *text;

	if (fd < 0 || !o)
		goto out;
	json_object_object_add(o, "pid", json_object_new_int(getpid()));
	json_object_object_add(o, "status", json_object_new_int(status));
	json_object_object_add(o, "reason", json_object_new_string(reason));
	/* A supervisor that polls info can miss a quick migration's end. */
	if (migration)
		json_object_object_add(o, "migration", json_object_get(migration));
	text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	if (ftruncate(fd, 0) < 0 || pwrite(fd, text, strlen(text), 0) < 0)
		fprintf(stderr, "vireo: cannot write the status file: %s\n", strerror(errno));
out:
	json_object_put(o);
}

int cmd_run(int argc, char **argv)
{
	char **saved = argv_save(argc, argv);
	struct run_options o = { 0 };
	struct json_object *migration = NULL;
	char reason[256] = "";
	int status = VM_EXIT_VMM_ERROR, status_fd;
	bool ran = false;

	/* The mount namespace, while this is the only thread. */
	if (parse_run_options(argc, argv, &o) || sandbox_prepare(&o.sandbox) ||
	    (o.incoming && receive_incoming(&o))) {
		fprintf(stderr, "vireo: %s\n", err_get());
		snprintf(reason, sizeof(reason), "%s", err_get());
		status_fd = status_open(o.status_file);
		goto out;
	}
	status_fd = status_open(o.status_file);
	if (o.status_file && status_fd < 0)
		goto out;
	status = run_vm(&o, reason, sizeof(reason), &migration);
	ran = true;
	if (status == VM_EXIT_REBOOT && !o.reboot_restart)
		fprintf(stderr, "%s\n", VM_REBOOT_LINE);
	if (status == VM_EXIT_REBOOT && o.reboot_restart) {
		/* A fresh process is the simplest complete reset of every device. */
		if (saved && saved[0])
			execv("/proc/self/exe", saved);
		fprintf(stderr, "vireo: cannot restart after reboot: %s\n", strerror(errno));
		snprintf(reason, sizeof(reason), "cannot restart after reboot: %s", strerror(errno));
		status = VM_EXIT_VMM_ERROR;
	}
out:
	status_write(status_fd, status, reason, migration);
	json_object_put(migration);
	if (status_fd >= 0)
		close(status_fd);
	for (unsigned int i = 0; i < o.policy.ndirs; i++)
		free(o.storage[i]);
	snapshot_close(o.snap);
	migrate_incoming_free(o.in);
	/* Created at the stream's hello: run_vm() destroyed it, unless it
	 * never ran (the stream failed after the hello). */
	if (o.early_vm && !ran)
		vm_destroy(o.early_vm);
	free(o.early_vm);
	argv_free(saved, argc);
	return status;
}

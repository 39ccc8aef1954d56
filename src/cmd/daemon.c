/* vireo daemon: the host manager (DESIGN §1). Serves the HTTP API on a
 * Unix socket and supervises one VMM per VM; VMMs outlive the daemon and
 * are re-adopted when it starts again (docs/api.md). */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/cmd.h"
#include "vireo/log.h"
#include "vireo/mgr.h"
#include "vireo/size.h"

#define CHECK_INTERVAL_MS 100

static const char daemon_usage[] =
	"usage: vireo daemon --state-dir DIR --socket PATH [--cgroup=auto|v2|v1|none]\n"
	"                    [--overcommit N] [--overcommit-warn N]\n"
	"                    [--memory-policy=manual|auto] [--memory-low PCT] [--memory-high PCT]\n"
	"                    [--memory-interval MS] [--memory-reserve SIZE]\n"
	"                    [--io-policy=manual|auto] [--io-interval MS] [--io-budget-bps N]\n"
	"                    [--io-budget-iops N] [--net-budget-bps N]\n"
	"                    [--log-max SIZE] [--vmm-uid-base N|none] [--storage DIR]...\n"
	"                    [--request-timeout S] [--migration-address HOST[:PORT]]\n"
	"                    [--verbose]\n"
	"\n"
	"  --state-dir DIR   VM definitions, runtime records, sockets and logs\n"
	"  --socket PATH     the HTTP API's Unix socket (curl --unix-socket PATH)\n"
	"  --cgroup MODE     cgroup hierarchy for VMMs (default auto: v2, else v1)\n"
	"  --overcommit N    max vCPUs of running VMs per host CPU (default 16):\n"
	"                    a start past it is refused\n"
	"  --overcommit-warn N  past this many vCPUs per host CPU a start gets a\n"
	"                    warning (default 4; 0: never)\n"
	"  --memory-policy P manual (default): balloon targets set by hand; auto:\n"
	"                    move memory from idle guests to guests under pressure\n"
	"  --memory-interval MS  how often the auto policy runs (default 1000)\n"
	"  --memory-reserve SIZE host memory the auto policy keeps free (default 256M)\n"
	"  --memory-low PCT  a guest with less free memory is under pressure (default 20)\n"
	"  --memory-high PCT a guest with more free memory is idle (default 50)\n"
	"  --io-policy P     manual (default): disk and vNIC limits stay as set; auto:\n"
	"                    they follow demand within the budgets below, by weight,\n"
	"                    above floors, never above the fixed limits (docs/api.md)\n"
	"  --io-interval MS  how often the auto I/O policy runs (default 1000)\n"
	"  --io-budget-bps N   host disk bandwidth, bytes/s, all disks (0: not managed)\n"
	"  --io-budget-iops N  host disk operations/s, all disks (0: not managed)\n"
	"  --net-budget-bps N  host vNIC bandwidth, bytes/s, each direction, all vNICs\n"
	"                    (0: not managed; a network's budget_bps is its own)\n"
	"  --log-max SIZE    rotate a VM's log (DIR/logs/NAME.log) past this size,\n"
	"                    keeping one old copy (default 16M; 0: never)\n"
	"  --vmm-uid-base N  run as root, each VMM runs as its own user id from N\n"
	"                    (default 100000), chrooted in DIR/jail, under a seccomp\n"
	"                    filter; none: VMMs keep the daemon's user\n"
	"  --storage DIR     disks and their whole backing chains must lie in DIR\n"
	"                    (repeatable, up to 16; symlinks resolved); default: the\n"
	"                    state dir's images/ directory. Each VMM gets access to\n"
	"                    exactly its VM's files while it runs (docs/api.md)\n"
	"  --migration-address HOST[:PORT]  an incoming migration without \"listen\"\n"
	"                    waits at this IPv4 address of this host, on a free port\n"
	"                    (from PORT up, 64 of them; no PORT: any)\n"
	"  --request-timeout S  an API request must arrive whole (headers and body)\n"
	"                    within S seconds, or its connection is cut (default 10)\n"
	"  --verbose         log VM state changes\n"
	"\n"
	"SIGTERM or SIGINT stops the daemon; running VMs keep running and are\n"
	"re-adopted by the next daemon on the same state dir.\n";

struct daemon_options {
	const char *state_dir, *socket, *cgroup;
	unsigned int overcommit, overcommit_warn;
	unsigned int mem_low_pct, mem_high_pct;
	bool mem_auto;
	unsigned int mem_interval_ms;
	uint64_t mem_reserve, log_max;
	unsigned int vmm_uid_base;
	const char *storage[16];
	unsigned int nstorage;
	unsigned int request_timeout_s;
	char migration_host[16];
	unsigned int migration_port;
	bool io_auto;
	unsigned int io_interval_ms;
	uint64_t io_budget_bps, io_budget_iops, net_budget_bps;
};

static int uint_arg(const char *text, unsigned int lo, unsigned int hi, unsigned int *out)
{
	char *end;
	unsigned long v = strtoul(text, &end, 10);

	if (*end || !*text || *text == '-' || v < lo || v > hi)
		return -EINVAL;
	*out = (unsigned int)v;
	return 0;
}

/* A rate: a number with an optional K/M/G suffix (powers of 1024, as
 * sizes), at most CONTROL_MAX_RATE. */
static int rate_arg(const char *text, uint64_t *out)
{
	return size_parse(text, out) || *out > (1ULL << 50) ? -EINVAL : 0;
}

/* HOST[:PORT]: an address the sources can connect to, so not the
 * wildcard (the daemon hands it out as the place to send the stream). */
static int migration_address_arg(const char *text, struct daemon_options *o)
{
	const char *colon = strchr(text, ':');
	size_t n = colon ? (size_t)(colon - text) : strlen(text);
	struct in_addr a;

	if (n >= sizeof(o->migration_host))
		return -EINVAL;
	memcpy(o->migration_host, text, n);
	o->migration_host[n] = 0;
	if (inet_pton(AF_INET, o->migration_host, &a) != 1 || a.s_addr == htonl(INADDR_ANY))
		return -EINVAL;
	return colon ? uint_arg(colon + 1, 1, 65535, &o->migration_port) : 0;
}

static int parse_options(int argc, char **argv, struct daemon_options *o)
{
	static const struct option longopts[] = {
		{ "state-dir", required_argument, NULL, 'd' },
		{ "socket", required_argument, NULL, 's' },
		{ "cgroup", required_argument, NULL, 'c' },
		{ "overcommit", required_argument, NULL, 'o' },
		{ "overcommit-warn", required_argument, NULL, 'w' },
		{ "memory-low", required_argument, NULL, 'L' },
		{ "memory-high", required_argument, NULL, 'H' },
		{ "log-max", required_argument, NULL, 'l' },
		{ "vmm-uid-base", required_argument, NULL, 'u' },
		{ "memory-policy", required_argument, NULL, 'p' },
		{ "memory-interval", required_argument, NULL, 'i' },
		{ "memory-reserve", required_argument, NULL, 'r' },
		{ "storage", required_argument, NULL, 'S' },
		{ "request-timeout", required_argument, NULL, 't' },
		{ "io-policy", required_argument, NULL, 'P' },
		{ "io-interval", required_argument, NULL, 'I' },
		{ "io-budget-bps", required_argument, NULL, 'B' },
		{ "io-budget-iops", required_argument, NULL, 'O' },
		{ "net-budget-bps", required_argument, NULL, 'N' },
		{ "migration-address", required_argument, NULL, 'm' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*o = (struct daemon_options){ .overcommit = 16, .overcommit_warn = 4,
				      .mem_low_pct = 20, .mem_high_pct = 50, .mem_interval_ms = 1000,
				      .mem_reserve = 256ULL << 20, .log_max = 16ULL << 20,
				      .vmm_uid_base = MGR_VMM_UID_BASE, .io_interval_ms = 1000,
				      .request_timeout_s = MGR_REQUEST_TIMEOUT_S };
	while ((c = getopt_long(argc, argv, "hv", longopts, NULL)) != -1) {
		switch (c) {
		case 'd': o->state_dir = optarg; break;
		case 's': o->socket = optarg; break;
		case 'c':
			if (strcmp(optarg, "auto") && strcmp(optarg, "v1") && strcmp(optarg, "v2") &&
			    strcmp(optarg, "none"))
				return err_set(-EINVAL, "--cgroup must be auto, v2, v1 or none");
			o->cgroup = strcmp(optarg, "auto") ? optarg : NULL;
			break;
		case 'o':
			if (uint_arg(optarg, 1, 1000, &o->overcommit))
				return err_set(-EINVAL, "--overcommit must be 1 to 1000");
			break;
		case 'w':
			if (uint_arg(optarg, 0, 1000, &o->overcommit_warn))
				return err_set(-EINVAL, "--overcommit-warn must be 0 to 1000");
			break;
		case 'L':
			if (uint_arg(optarg, 1, 99, &o->mem_low_pct))
				return err_set(-EINVAL, "--memory-low must be 1 to 99 (%% free)");
			break;
		case 'H':
			if (uint_arg(optarg, 1, 99, &o->mem_high_pct))
				return err_set(-EINVAL, "--memory-high must be 1 to 99 (%% free)");
			break;
		case 'p':
			if (strcmp(optarg, "auto") && strcmp(optarg, "manual"))
				return err_set(-EINVAL, "--memory-policy must be manual or auto");
			o->mem_auto = !strcmp(optarg, "auto");
			break;
		case 'i':
			if (uint_arg(optarg, 100, 3600000, &o->mem_interval_ms))
				return err_set(-EINVAL, "--memory-interval must be 100 to 3600000 ms");
			break;
		case 'r':
			if (size_parse(optarg, &o->mem_reserve))
				return err_set(-EINVAL, "--memory-reserve takes a size (e.g. 256M)");
			break;
		case 'l':
			if (size_parse(optarg, &o->log_max))
				return err_set(-EINVAL, "--log-max takes a size (e.g. 16M, 0 for never)");
			break;
		case 'u':
			if (strcmp(optarg, "none") &&
			    uint_arg(optarg, 1000, 0xfffe0000u, &o->vmm_uid_base))
				return err_set(-EINVAL, "--vmm-uid-base must be none or 1000 to 4294836224");
			o->vmm_uid_base = strcmp(optarg, "none") ? o->vmm_uid_base : 0;
			break;
		case 'S':
			if (o->nstorage == 16)
				return err_set(-EINVAL, "at most 16 --storage directories");
			o->storage[o->nstorage++] = optarg;
			break;
		case 't':
			if (uint_arg(optarg, 1, 3600, &o->request_timeout_s))
				return err_set(-EINVAL, "--request-timeout must be 1 to 3600 seconds");
			break;
		case 'P':
			if (strcmp(optarg, "auto") && strcmp(optarg, "manual"))
				return err_set(-EINVAL, "--io-policy must be manual or auto");
			o->io_auto = !strcmp(optarg, "auto");
			break;
		case 'I':
			if (uint_arg(optarg, 100, 3600000, &o->io_interval_ms))
				return err_set(-EINVAL, "--io-interval must be 100 to 3600000 ms");
			break;
		case 'B':
		case 'O':
		case 'N':
			if (rate_arg(optarg, c == 'B' ? &o->io_budget_bps : c == 'O' ?
				     &o->io_budget_iops : &o->net_budget_bps))
				return err_set(-EINVAL, "--%s takes a rate (e.g. 100M)",
					       c == 'B' ? "io-budget-bps" : c == 'O' ? "io-budget-iops"
					       : "net-budget-bps");
			break;
		case 'm':
			if (migration_address_arg(optarg, o))
				return err_set(-EINVAL, "--migration-address takes HOST[:PORT], HOST "
					       "an IPv4 address of this host (not 0.0.0.0), PORT "
					       "1 to 65535");
			break;
		case 'v': log_set_level(LOG_INFO); break;
		case 'h': fputs(daemon_usage, stdout); exit(0);
		default: return err_set(-EINVAL, "see 'vireo daemon --help'");
		}
	}
	if (optind < argc)
		return err_set(-EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->state_dir || !o->socket)
		return err_set(-EINVAL, "--state-dir and --socket are required");
	if (o->mem_low_pct >= o->mem_high_pct)
		return err_set(-EINVAL, "--memory-low must be below --memory-high");
	return 0;
}

/* The storage directories, resolved; DIR/images when none is given (as
 * libvirt's default pool): never "anywhere". */
static int set_storage(struct mgr *m, const struct daemon_options *o)
{
	char def[PATH_MAX + 8];
	unsigned int n = o->nstorage ? o->nstorage : 1;

	snprintf(def, sizeof(def), "%s/images", m->state_dir);
	for (unsigned int i = 0; i < n; i++) {
		if (block_storage_dir(o->nstorage ? o->storage[i] : def, &m->storage[i]))
			return err_set(-EINVAL, "--storage: %s", err_get());
		m->nstorage = i + 1;
	}
	return 0;
}

/* The supervisor: checks the VMMs until SIGTERM or SIGINT. */
static void supervise(struct mgr *m, int sfd)
{
	struct pollfd p = { .fd = sfd, .events = POLLIN };
	unsigned int since = 0, io_since = 0;

	for (;;) {
		int n = poll(&p, 1, CHECK_INTERVAL_MS);

		if (n > 0)
			return;
		pthread_mutex_lock(&m->lock);
		mgr_check(m);
		since += CHECK_INTERVAL_MS;
		if (m->mem_auto && since >= m->mem_interval_ms) {
			since = 0;
			mgr_policy_run(m);
		}
		io_since += CHECK_INTERVAL_MS;
		if (m->io_auto && io_since >= m->io_interval_ms) {
			io_since = 0;
			mgr_iopolicy_run(m);
		}
		pthread_mutex_unlock(&m->lock);
	}
}

int cmd_daemon(int argc, char **argv)
{
	static struct mgr m;
	struct daemon_options o;
	struct api *api;
	sigset_t set;
	int sfd;

	if (parse_options(argc, argv, &o)) {
		fprintf(stderr, "vireo: %s\n", err_get());
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	/* Blocked before any thread starts, so only the signalfd sees them. */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (sfd < 0 || mgr_open(&m, o.state_dir, o.cgroup) || set_storage(&m, &o)) {
		fprintf(stderr, "vireo: %s\n", sfd < 0 ? strerror(errno) : err_get());
		return 1;
	}
	mgr_import_recover(&m);
	m.overcommit = o.overcommit;
	m.overcommit_warn = o.overcommit_warn;
	m.mem_low_pct = o.mem_low_pct;
	m.mem_high_pct = o.mem_high_pct;
	m.mem_auto = o.mem_auto;
	m.mem_interval_ms = o.mem_interval_ms;
	m.mem_reserve = o.mem_reserve;
	m.log_max = o.log_max;
	m.vmm_uid_base = o.vmm_uid_base;
	m.request_timeout_s = o.request_timeout_s;
	memcpy(m.migration_host, o.migration_host, sizeof(m.migration_host));
	m.migration_port = o.migration_port;
	m.io_auto = o.io_auto;
	m.io_interval_ms = o.io_interval_ms;
	m.io_budget_bps = o.io_budget_bps;
	m.io_budget_iops = o.io_budget_iops;
	m.net_budget_bps = o.net_budget_bps;
	api = mgr_info_start(&m) ? NULL : api_start(&m, o.socket);
	if (!api) {
		fprintf(stderr, "vireo: %s\n", err_get());
		mgr_info_stop(&m);
		pthread_mutex_lock(&m.lock);
		mgr_close(&m);
		pthread_mutex_unlock(&m.lock);
		return 1;
	}
	fprintf(stderr, "vireo: daemon listening on %s (state %s, cgroup %s, memory policy %s, "
		"I/O policy %s)\n", o.socket, m.state_dir, cgroup_mode_name(m.cg.mode),
		m.mem_auto ? "auto" : "manual", m.io_auto ? "auto" : "manual");
	supervise(&m, sfd);
	api_stop(api);
	mgr_info_stop(&m);
	pthread_mutex_lock(&m.lock);
	mgr_close(&m);
	pthread_mutex_unlock(&m.lock);
	close(sfd);
	return 0;
}

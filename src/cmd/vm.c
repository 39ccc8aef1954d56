/* vireo vm: the command-line client of the daemon's HTTP API (docs/api.md).
 * A minimal HTTP/1.1 client over the Unix socket: one request per
 * connection, "Connection: close", body read to EOF. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vireo/cmd.h"
#include "vireo/log.h"
#include "vireo/net.h"
#include "vireo/size.h"

#define DEFAULT_SOCKET "/run/vireo/vireo.sock"
#define MAX_REPLY (4 << 20)

static const char vm_usage[] =
	"usage: vireo vm [--socket PATH] [--output=text|json] COMMAND [ARGS]\n"
	"\n"
	"  list                      VMs and their states\n"
	"  create NAME --kernel FILE|--firmware FILE [--cpus N] [--memory SIZE]\n"
	"         [--cmdline TEXT]\n"
	"         [--disk path=FILE[,format=F][,readonly][,bps=SIZE][,iops=N][,cache=MODE]\n"
	"                [,aio=io_uring|threads][,weight=N][,floor_bps=SIZE][,floor_iops=N]]...\n"
	"         [--cpu-weight N] [--cpu-max PCT] [--cpu-pin CPUS]...\n"
	"         [--nic [tap=NAME][,network=NET][,mac=M][,mtu=N][,rx_bps=SIZE][,tx_bps=SIZE]\n"
	"                [,weight=N][,floor_bps=SIZE]\n"
	"                [,vlan=N | ,trunk=N;A-B...[,native_vlan=N]]]...\n"
	"         [--balloon [--balloon-target SIZE] [--memory-min SIZE]]\n"
	"  create --file DEF.json    the definition as JSON (docs/api.md)\n"
	"  start|pause|resume|reboot|delete NAME\n"
	"  stop NAME [--timeout S] [--force]  press the power button and wait until\n"
	"                            the guest powers off (killed after S seconds,\n"
	"                            default 30); --force: power off at once\n"
	"  info NAME                 definition, state and live counters (JSON)\n"
	"  set NAME [--cpu-weight N] [--cpu-max PCT] [--cpu-pin CPUS]...\n"
	"         [--disk-limit INDEX[,bps=SIZE][,iops=N][,weight=N][,floor_bps=SIZE]\n"
	"                [,floor_iops=N]]... [--balloon-target SIZE]\n"
	"         [--memory-min SIZE]\n"
	"         [--nic-limit INDEX[,rx_bps=SIZE][,tx_bps=SIZE][,weight=N][,floor_bps=SIZE]]...\n"
	"         [--nic-vlan INDEX[,vlan=N | ,trunk=N;A-B...[,native_vlan=N]]]...\n"
	"  snapshot NAME SNAP [--no-memory|--incremental]  snapshot the VM: memory (if it\n"
	"                            runs; --incremental: what changed since the current one) and\n"
	"                            disks (qcow2 internal snapshots) at one instant\n"
	"  snapshots NAME            its snapshots (* the one it descends from)\n"
	"  rollback NAME SNAP        back to a snapshot (a running VM is stopped first)\n"
	"  delsnapshot NAME SNAP     delete a snapshot\n"
	"  export NAME [SNAP] FILE   the snapshot (and its chain), the VM's definition\n"
	"                            and disks (compressed qcow2) into one checksummed\n"
	"                            tar archive; the VM may run. No SNAP: the VM now\n"
	"                            (through a snapshot deleted afterwards)\n"
	"  import FILE [NEWNAME]     a new VM from an export (then: rollback)\n"
	"  snapshot export NAME SNAP DIR / snapshot import DIR NAME  the same, as a\n"
	"                            directory\n"
	"  migrate NAME --to tcp:HOST:PORT --token-file FILE [--max-downtime MS]\n"
	"         [--bandwidth SIZE] [--timeout S]  live-migrate to the daemon that\n"
	"                            waits for it (shared storage); stopped here after\n"
	"  incoming NAME --listen tcp:ADDR:PORT --file DEF.json [--token-file FILE]\n"
	"         [--timeout S]      on the destination first: wait for that VM\n"
	"  migrate-cancel NAME       cancel a migration; the VM goes on here\n"
	"  console NAME              attach to the serial console (Ctrl-A x detaches)\n"
	"  top [--interval S] [--count N]  CPU use, steal and throttling per VM\n"
	"  metrics                   the Prometheus metrics\n"
	"\n"
	"The socket is --socket, else $VIREO_SOCKET, else " DEFAULT_SOCKET ".\n";

struct http_reply {
	int status;
	char *body;   /* NUL-terminated, inside raw */
	char *raw;
};

struct vm_cli {
	const char *socket;
	bool json;
};

/* Text from the daemon (names, states, reasons, errors: some of it comes
 * from a guest or another client) with control characters escaped, so that
 * it cannot drive the terminal. C0 controls and DEL, and C1 controls in
 * UTF-8 (U+0080..U+009F: U+009B is a CSI to some terminals); `json` keeps
 * newlines (JSON's own layout) and escapes as JSON does. The result lives
 * until 8 more calls. */
static const char *escape_text(const char *s, bool json)
{
	static char *ring[8];
	static unsigned int next;
	const unsigned char *p = (const unsigned char *)s;
	char *out = malloc(6 * strlen(s) + 1), *o = out;

	if (!out)
		return "?";
	for (; *p; p++) {
		unsigned int c = *p;

		if (c == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
			c = *++p;
		else if (!(c < 0x20 || c == 0x7f) || (json && c == '\n'))
			c = 0;
		if (!c)
			*o++ = (char)*p;
		else if (json || c >= 0x80)
			o += sprintf(o, "\\u%04x", c);
		else
			o += sprintf(o, "\\x%02x", c);
	}
	*o = '\0';
	free(ring[next]);
	ring[next] = out;
	next = (next + 1) % 8;
	return out;
}

static const char *safe(const char *s)
{
	return escape_text(s, false);
}

static int http_connect(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(addr.sun_path))
		return err_set(-ENAMETOOLONG, "socket path too long");
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(-errno, "socket: %m");
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int ret = err_set(-errno, "cannot connect to the daemon at %s: %m", path);

		close(fd);
		return ret;
	}
	return fd;
}

static int send_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return err_set(-errno, "cannot send to the daemon: %m");
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static int recv_all(int fd, struct http_reply *r)
{
	size_t len = 0, cap = 65536;

	r->raw = malloc(cap + 1);
	while (r->raw) {
		ssize_t n;

		if (len == cap) {
			char *nr = cap < MAX_REPLY ? realloc(r->raw, cap * 2 + 1) : NULL;

			if (!nr)
				return err_set(-EFBIG, "reply too large");
			r->raw = nr;
			cap *= 2;
		}
		n = recv(fd, r->raw + len, cap - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return err_set(-errno, "cannot read from the daemon: %m");
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (!r->raw)
		return err_set(-ENOMEM, "out of memory");
	r->raw[len] = '\0';
	return 0;
}

static int http_request(const struct vm_cli *cli, const char *method, const char *path,
			const char *body, struct http_reply *r)
{
	char head[512];
	int fd, ret, n;
	char *sep;

	memset(r, 0, sizeof(*r));
	fd = http_connect(cli->socket);
	if (fd < 0)
		return fd;
	n = snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
		     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
		     method, path, body ? strlen(body) : 0);
	ret = n >= (int)sizeof(head) ? err_set(-EINVAL, "request too long") :
	      send_all(fd, head, (size_t)n);
	if (!ret && body)
		ret = send_all(fd, body, strlen(body));
	if (!ret)
		ret = recv_all(fd, r);
	close(fd);
	if (ret)
		return ret;
	sep = strstr(r->raw, "\r\n\r\n");
	if (sscanf(r->raw, "HTTP/1.%*d %d", &r->status) != 1 || !sep)
		return err_set(-EPROTO, "bad reply from the daemon");
	r->body = sep + 4;
	return 0;
}

/* Runs a request; prints the error of a non-2xx reply. Returns the parsed
 * JSON body (or NULL for text), *ok says whether it succeeded. */
static struct json_object *call(const struct vm_cli *cli, const char *method, const char *path,
				const char *body, bool *ok)
{
	struct http_reply r;
	struct json_object *obj = NULL, *e;

	*ok = false;
	if (http_request(cli, method, path, body, &r)) {
		fprintf(stderr, "vireo: %s\n", err_get());
		free(r.raw);
		return NULL;
	}
	obj = json_tokener_parse(r.body);
	if (r.status >= 200 && r.status < 300) {
		*ok = true;
	} else {
		fprintf(stderr, "vireo: %s (HTTP %d)\n", safe(obj && json_object_object_get_ex(obj,
			"error", &e) ? json_object_get_string(e) : r.body), r.status);
	}
	free(r.raw);
	return obj;
}

static const char *str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

static void print_json(struct json_object *o)
{
	puts(escape_text(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
							JSON_C_TO_STRING_NOSLASHESCAPE), true));
}

static int cmd_list(const struct vm_cli *cli)
{
	bool ok;
	struct json_object *o = call(cli, "GET", "/vms", NULL, &ok), *vms;
	char mem[32];

	if (!ok) {
		json_object_put(o);
		return 1;
	}
	if (cli->json) {
		print_json(o);
	} else {
		printf("%-20s %-8s %4s %10s %6s %5s %7s  %s\n", "NAME", "STATE", "CPUS", "MEMORY",
		       "WEIGHT", "MAX%", "PID", "REASON");
		json_object_object_get_ex(o, "vms", &vms);
		for (size_t i = 0; vms && i < json_object_array_length(vms); i++) {
			struct json_object *v = json_object_array_get_idx(vms, i), *x;

			json_object_object_get_ex(v, "memory", &x);
			size_format((uint64_t)json_object_get_int64(x), mem, sizeof(mem));
			printf("%-20s %-8s %4s %10s %6s %5s %7s  %s\n", safe(str(v, "name")),
			       safe(str(v, "state")), safe(str(v, "cpus")), mem,
			       safe(str(v, "cpu_weight")), safe(str(v, "cpu_max")),
			       safe(str(v, "pid")), safe(str(v, "reason")));
		}
	}
	json_object_put(o);
	return 0;
}

/* "path=F,format=raw,readonly,bps=10M,iops=5,cache=none,aio=threads" → a disk object. */
static struct json_object *parse_disk(char *spec, bool limit_only)
{
	struct json_object *d = json_object_new_object();
	char *save = NULL;

	for (char *tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		uint64_t v;

		if (eq)
			*eq++ = '\0';
		if (!strcmp(tok, "path") && eq && !limit_only) {
			json_object_object_add(d, "path", json_object_new_string(eq));
		} else if (!strcmp(tok, "format") && eq && !limit_only) {
			json_object_object_add(d, "format", json_object_new_string(eq));
		} else if ((!strcmp(tok, "cache") || !strcmp(tok, "aio")) && eq && !limit_only) {
			json_object_object_add(d, tok, json_object_new_string(eq));
		} else if (!strcmp(tok, "readonly") && !eq && !limit_only) {
			json_object_object_add(d, "readonly", json_object_new_boolean(1));
		} else if ((!strcmp(tok, "bps") || !strcmp(tok, "iops") || !strcmp(tok, "weight") ||
			    !strcmp(tok, "floor_bps") || !strcmp(tok, "floor_iops")) && eq &&
			   !size_parse(eq, &v)) {
			json_object_object_add(d, tok, json_object_new_int64((int64_t)v));
		} else {
			json_object_put(d);
			err_set(-EINVAL, "bad disk item '%s'", tok);
			return NULL;
		}
	}
	return d;
}

static int add_number(struct json_object *o, const char *key, const char *text)
{
	char *end;
	long long v = strtoll(text, &end, 10);

	if (*end || !*text)
		return err_set(-EINVAL, "--%s needs a number", key);
	json_object_object_add(o, key, json_object_new_int64(v));
	return 0;
}

/* --nic "tap=NAME,network=NET,mac=M,mtu=N,rx_bps=SIZE,tx_bps=SIZE,vlan=N,
 * trunk=N;A-B,native_vlan=N" (trunk's list as Proxmox's trunks=), or --nic-limit
 * "INDEX,rx_bps=SIZE,tx_bps=SIZE" → an object of those fields. */
static struct json_object *parse_nic(char *spec, bool limit)
{
	struct json_object *d = json_object_new_object();
	char *save = NULL, *first = spec;

	if (limit) {
		spec = strchr(spec, ',');
		if (spec)
			*spec++ = '\0';
		if (!spec || add_number(d, "nic", first)) {
			json_object_put(d);
			err_set(-EINVAL, "--nic-limit needs INDEX,rx_bps=SIZE and/or tx_bps=SIZE");
			return NULL;
		}
	}
	for (char *tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		uint64_t v;

		if (eq)
			*eq++ = '\0';
		if (eq && !limit && (!strcmp(tok, "tap") || !strcmp(tok, "mac") ||
				     !strcmp(tok, "network"))) {
			json_object_object_add(d, tok, json_object_new_string(eq));
		} else if (eq && !limit && (!strcmp(tok, "vlan") || !strcmp(tok, "native_vlan"))) {
			if (add_number(d, tok, eq)) {
				json_object_put(d);
				return NULL;
			}
		} else if (eq && !limit && !strcmp(tok, "trunk")) {
			json_object_object_add(d, tok, vlan_list_json(eq));
		} else if (eq && (!strcmp(tok, "rx_bps") || !strcmp(tok, "tx_bps") ||
				  !strcmp(tok, "weight") || !strcmp(tok, "floor_bps") ||
				  (!limit && !strcmp(tok, "mtu"))) && !size_parse(eq, &v)) {
			json_object_object_add(d, tok, json_object_new_int64((int64_t)v));
		} else {
			json_object_put(d);
			err_set(-EINVAL, "bad nic item '%s'", tok);
			return NULL;
		}
	}
	return d;
}

/* --nic-vlan "INDEX[,vlan=N | ,trunk=N;A-B[,native_vlan=N]]" → {"nic": INDEX, …}
 * (INDEX alone: back to VLAN 1). */
static struct json_object *parse_nic_vlan(char *spec)
{
	char *comma = strchr(spec, ',');
	struct json_object *d;

	if (comma)
		*comma = '\0';
	d = comma ? parse_nic(comma + 1, false) : json_object_new_object();
	if (d && add_number(d, "nic", spec)) {
		json_object_put(d);
		d = NULL;
	}
	return d;
}

/* --disk-limit "INDEX,bps=SIZE,iops=N" → {"disk": INDEX, "bps": …, "iops": …} */
static struct json_object *parse_disk_limit(char *spec)
{
	char *comma = strchr(spec, ',');
	struct json_object *d;

	if (!comma) {
		err_set(-EINVAL, "--disk-limit needs INDEX,bps=SIZE and/or iops=N");
		return NULL;
	}
	*comma = '\0';
	d = parse_disk(comma + 1, true);
	if (d && add_number(d, "disk", spec)) {
		json_object_put(d);
		d = NULL;
	}
	return d;
}

/* Options every command takes, before or after the command. */
enum { OPT_SOCKET = 0x100, OPT_OUTPUT, OPT_JSON, OPT_HELP };
#define MAX_OPTS 32

static const struct option common_opts[] = {
	{ "socket", required_argument, NULL, OPT_SOCKET },
	{ "output", required_argument, NULL, OPT_OUTPUT },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

/* 1 if c was a common option (applied to cli), 0 if not, -1 if bad. */
static int common_option(struct vm_cli *cli, int c)
{
	switch (c) {
	case OPT_SOCKET:
		cli->socket = optarg;
		return 1;
	case OPT_JSON:
		cli->json = true;
		return 1;
	case OPT_OUTPUT:
		if (strcmp(optarg, "json") && strcmp(optarg, "text"))
			return err_set(-EINVAL, "--output is text or json"), -1;
		cli->json = !strcmp(optarg, "json");
		return 1;
	case 'h':
	case OPT_HELP:
		fputs(vm_usage, stdout);
		exit(0);
	}
	return 0;
}

/* A command's options (own, then the common ones) in getopt_long's table. */
static void merge_opts(const struct option *own, struct option *out)
{
	int n = 0;

	for (; own && own->name && n < MAX_OPTS - 5; own++)
		out[n++] = *own;
	for (const struct option *c = common_opts; c->name; c++)
		out[n++] = *c;
	out[n] = (struct option){ NULL, 0, NULL, 0 };
}

/* Parses argv (argv[0] is the command) as getopt does, options anywhere:
 * `vireo vm stop --force web` and `vireo vm stop web --force` are one.
 * Each option of `own` goes to fn(ctx, c); the operands end up in
 * argv[optind..argc). Returns 0 or -EINVAL (err_set()). */
static int parse_opts(struct vm_cli *cli, int argc, char **argv, const struct option *own,
		      int (*fn)(void *ctx, int c), void *ctx)
{
	struct option all[MAX_OPTS];
	int c, ret = 0;

	merge_opts(own, all);
	optind = 0;	/* a fresh scan (glibc) */
	opterr = 0;
	while (!ret && (c = getopt_long(argc, argv, "h", all, NULL)) != -1) {
		if (c == '?' || c == ':')
			return err_set(-EINVAL, "bad option '%s' (see 'vireo vm --help')",
				       argv[optind - 1]);
		ret = common_option(cli, c);
		if (ret == 1)
			ret = 0;
		else if (ret == 0)
			ret = fn ? fn(ctx, c) : err_set(-EINVAL, "bad option");
	}
	return ret < 0 ? ret : 0;
}

/* Flags shared by create and set; fills `o`. */
struct def_flags {
	struct json_object *o, *disks, *pins, *nics, *vlans;
	bool create;
	const char *file;
};

static int def_flag(void *ctx, int c)
{
	struct def_flags *f = ctx;
	struct json_object *o = f->o, *d;
	bool create_only = strchr("kFnmcdfbN", c) != NULL;

	if ((create_only && !f->create) || (strchr("lLV", c) && f->create))
		return err_set(-EINVAL, "bad option for %s (see 'vireo vm --help')",
			       f->create ? "create" : "set");
	switch (c) {
	case 'k': json_object_object_add(o, "kernel", json_object_new_string(optarg)); break;
	case 'F': json_object_object_add(o, "firmware", json_object_new_string(optarg)); break;
	case 'm': json_object_object_add(o, "memory", json_object_new_string(optarg)); break;
	case 'c': json_object_object_add(o, "cmdline", json_object_new_string(optarg)); break;
	case 'n': return add_number(o, "cpus", optarg);
	case 'w': return add_number(o, "cpu_weight", optarg);
	case 'x': return add_number(o, "cpu_max", optarg);
	case 'p': json_object_array_add(f->pins, json_object_new_string(optarg)); break;
	case 'f': f->file = optarg; break;
	case 'b': json_object_object_add(o, "balloon", json_object_new_boolean(1)); break;
	case 't': json_object_object_add(o, "balloon_target", json_object_new_string(optarg)); break;
	case 'M': json_object_object_add(o, "memory_min", json_object_new_string(optarg)); break;
	case 'd':
	case 'l':
		d = c == 'l' ? parse_disk_limit(optarg) : parse_disk(optarg, false);
		if (!d)
			return -EINVAL;
		json_object_array_add(f->disks, d);
		break;
	case 'N':
	case 'L':
		d = parse_nic(optarg, c == 'L');
		if (!d)
			return -EINVAL;
		json_object_array_add(f->nics, d);
		break;
	case 'V':
		d = parse_nic_vlan(optarg);
		if (!d)
			return -EINVAL;
		json_object_array_add(f->vlans, d);
		break;
	}
	return 0;
}

/* Fills `o` from the flags of create or set; the operands (the name) are
 * left in argv[optind..argc). */
static int parse_def_flags(struct vm_cli *cli, int argc, char **argv, struct json_object *o,
			   bool create, const char **file)
{
	static const struct option longopts[] = {
		{ "kernel", required_argument, NULL, 'k' }, { "cpus", required_argument, NULL, 'n' },
		{ "firmware", required_argument, NULL, 'F' },
		{ "memory", required_argument, NULL, 'm' }, { "cmdline", required_argument, NULL, 'c' },
		{ "disk", required_argument, NULL, 'd' }, { "cpu-weight", required_argument, NULL, 'w' },
		{ "cpu-max", required_argument, NULL, 'x' }, { "cpu-pin", required_argument, NULL, 'p' },
		{ "disk-limit", required_argument, NULL, 'l' }, { "file", required_argument, NULL, 'f' },
		{ "balloon", no_argument, NULL, 'b' }, { "balloon-target", required_argument, NULL, 't' },
		{ "nic", required_argument, NULL, 'N' }, { "nic-limit", required_argument, NULL, 'L' },
		{ "memory-min", required_argument, NULL, 'M' },
		{ "nic-vlan", required_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct def_flags f = { .o = o, .disks = json_object_new_array(),
			       .pins = json_object_new_array(), .nics = json_object_new_array(),
			       .vlans = json_object_new_array(), .create = create };
	int ret = parse_opts(cli, argc, argv, longopts, def_flag, &f);

	if (!ret && json_object_array_length(f.pins))
		json_object_object_add(o, "cpu_pin", json_object_get(f.pins));
	if (!ret && json_object_array_length(f.disks))
		json_object_object_add(o, create ? "disks" : "disk_limits", json_object_get(f.disks));
	if (!ret && json_object_array_length(f.nics))
		json_object_object_add(o, create ? "nics" : "nic_limits", json_object_get(f.nics));
	if (!ret && json_object_array_length(f.vlans))
		json_object_object_add(o, "nic_vlans", json_object_get(f.vlans));
	json_object_put(f.pins);
	json_object_put(f.disks);
	json_object_put(f.nics);
	json_object_put(f.vlans);
	*file = f.file;
	return ret;
}

static int print_state(const struct vm_cli *cli, struct json_object *o, bool ok)
{
	if (ok && cli->json)
		print_json(o);
	else if (ok)
		printf("%s: %s\n", safe(str(o, "name")), safe(str(o, "state")));
	json_object_put(o);
	return ok ? 0 : 1;
}

static int cmd_create(struct vm_cli *cli, int argc, char **argv)
{
	struct json_object *def = json_object_new_object(), *o;
	const char *file = NULL, *name = NULL;
	bool ok;

	if (parse_def_flags(cli, argc, argv, def, true, &file) ||
	    (optind + 1 < argc && err_set(-EINVAL, "unexpected argument '%s'", argv[optind + 1]))) {
		fprintf(stderr, "vireo: %s\n", err_get());
		json_object_put(def);
		return 2;
	}
	name = optind < argc ? argv[optind] : NULL;
	if (file) {
		json_object_put(def);
		def = json_object_from_file(file);
		if (!def) {
			fprintf(stderr, "vireo: %s: %s\n", file, json_util_get_last_err());
			return 1;
		}
	}
	if (name)
		json_object_object_add(def, "name", json_object_new_string(name));
	o = call(cli, "POST", "/vms", json_object_to_json_string(def), &ok);
	json_object_put(def);
	return print_state(cli, o, ok);
}

static int cmd_set(struct vm_cli *cli, int argc, char **argv)
{
	struct json_object *patch = json_object_new_object(), *o;
	const char *file = NULL;
	char path[128];
	bool ok;

	if (parse_def_flags(cli, argc, argv, patch, false, &file) ||
	    (optind + 1 != argc && err_set(-EINVAL, "set needs one VM name"))) {
		fprintf(stderr, "vireo: %s\n", err_get());
		json_object_put(patch);
		return 2;
	}
	snprintf(path, sizeof(path), "/vms/%.100s", argv[optind]);
	o = call(cli, "PATCH", path, json_object_to_json_string(patch), &ok);
	json_object_put(patch);
	return print_state(cli, o, ok);
}

static bool name_ok(const char *name)
{
	if (strlen(name) <= 100 && !strpbrk(name, "?# /"))
		return true;
	fprintf(stderr, "vireo: bad VM name\n");
	return false;
}

/* A graceful stop returns with the VM "stopping": poll until the daemon
 * says it ended (it kills the VMM at the timeout). */
static struct json_object *stop_wait(const struct vm_cli *cli, const char *name,
				     struct json_object *o, unsigned int timeout_s, bool *ok)
{
	char path[160];

	snprintf(path, sizeof(path), "/vms/%s", name);
	for (unsigned int ms = 0; *ok && !strcmp(str(o, "state"), "stopping"); ms += 100) {
		if (ms > (timeout_s + 10) * 1000) {
			fprintf(stderr, "vireo: VM '%s' is still stopping\n", name);
			*ok = false;
			break;
		}
		usleep(100000);
		json_object_put(o);
		o = call(cli, "GET", path, NULL, ok);
	}
	return o;
}

struct stop_args {
	bool force;
	unsigned int timeout_s;
};

static int stop_flag(void *ctx, int c)
{
	struct stop_args *a = ctx;
	char *end;

	if (c == 'f') {
		a->force = true;
		return 0;
	}
	a->timeout_s = (unsigned int)strtoul(optarg, &end, 10);
	if (*end || !*optarg || optarg[0] == '-' || a->timeout_s > 3600)
		return err_set(-EINVAL, "--timeout is 0 to 3600 seconds");
	return 0;
}

/* stop NAME [--force] [--timeout S] */
static int cmd_stop(struct vm_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "force", no_argument, NULL, 'f' }, { "timeout", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	struct stop_args a = { .timeout_s = 30 };
	unsigned int timeout_s;
	struct json_object *o;
	bool force, ok;
	char path[160], body[64];

	if (parse_opts(cli, argc, argv, opts, stop_flag, &a) || optind + 1 != argc) {
		fprintf(stderr, "vireo: usage: vireo vm stop NAME [--timeout 0-3600] [--force]\n");
		return 2;
	}
	argv += optind - 1;	/* the name in argv[1] */
	force = a.force;
	timeout_s = a.timeout_s;
	if (!name_ok(argv[1]))
		return 2;
	snprintf(path, sizeof(path), "/vms/%s/stop", argv[1]);
	snprintf(body, sizeof(body), "{\"force\":%s,\"timeout\":%u}", force ? "true" : "false",
		 timeout_s);
	o = call(cli, "POST", path, body, &ok);
	o = stop_wait(cli, argv[1], o, timeout_s, &ok);
	if (ok && !cli->json)
		printf("%s: %s (%s)\n", safe(str(o, "name")), safe(str(o, "state")),
		       safe(str(o, "reason")));
	else if (ok)
		print_json(o);
	json_object_put(o);
	return ok ? 0 : 1;
}

/* start, pause, resume, reboot, delete, info: COMMAND NAME. */
static int cmd_simple(struct vm_cli *cli, const char *cmd, int argc, char **argv)
{
	struct json_object *o;
	char path[160];
	bool ok;

	if (parse_opts(cli, argc, argv, NULL, NULL, NULL) || optind + 1 != argc) {
		fprintf(stderr, "vireo: usage: vireo vm %s NAME\n", cmd);
		return 2;
	}
	argv += optind - 1;	/* the name in argv[1] */
	if (!name_ok(argv[1]))
		return 2;
	if (!strcmp(cmd, "info") || !strcmp(cmd, "delete")) {
		snprintf(path, sizeof(path), "/vms/%s", argv[1]);
		o = call(cli, !strcmp(cmd, "info") ? "GET" : "DELETE", path, NULL, &ok);
		if (ok && (!strcmp(cmd, "info") || cli->json))
			print_json(o);
		else if (ok)
			printf("%s: deleted\n", argv[1]);
		json_object_put(o);
		return ok ? 0 : 1;
	}
	snprintf(path, sizeof(path), "/vms/%s/%s", argv[1], cmd);
	o = call(cli, "POST", path, NULL, &ok);
	return print_state(cli, o, ok);
}

/* ---- top ---- */

struct top_sample {
	char name[72];
	char state[16];
	unsigned int cpus, weight, max;
	uint64_t cpu_ns, wait_ns, throttled_ns;
};

static uint64_t u64_of(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_uint64(v) : 0;
}

static void top_fill(struct top_sample *s, struct json_object *vm)
{
	struct json_object *vmm, *vcpus;

	snprintf(s->name, sizeof(s->name), "%s", str(vm, "name"));
	snprintf(s->state, sizeof(s->state), "%s", str(vm, "state"));
	s->cpus = (unsigned int)u64_of(vm, "cpus");
	s->weight = (unsigned int)u64_of(vm, "cpu_weight");
	s->max = (unsigned int)u64_of(vm, "cpu_max");
	s->cpu_ns = u64_of(vm, "cpu_ns");
	s->throttled_ns = u64_of(vm, "cpu_throttled_ns");
	s->wait_ns = 0;
	if (json_object_object_get_ex(vm, "vmm", &vmm) && json_object_object_get_ex(vmm, "vcpus", &vcpus))
		for (size_t i = 0; i < json_object_array_length(vcpus); i++)
			s->wait_ns += u64_of(json_object_array_get_idx(vcpus, i), "wait_ns");
}

/* Every VM, with live figures for the running ones. Returns the count. */
static int top_snapshot(const struct vm_cli *cli, struct top_sample *out, int max)
{
	struct json_object *list = NULL, *vms;
	int n = 0;
	bool ok;

	list = call(cli, "GET", "/vms", NULL, &ok);
	if (!ok || !json_object_object_get_ex(list, "vms", &vms)) {
		json_object_put(list);
		return -1;
	}
	for (size_t i = 0; i < json_object_array_length(vms) && n < max; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i), *live = NULL;
		char path[160];

		if (!strcmp(str(vm, "state"), "running") || !strcmp(str(vm, "state"), "paused")) {
			snprintf(path, sizeof(path), "/vms/%s", str(vm, "name"));
			live = call(cli, "GET", path, NULL, &ok);
		}
		top_fill(&out[n++], live ? live : vm);
		json_object_put(live);
	}
	json_object_put(list);
	return n;
}

static const struct top_sample *top_find(const struct top_sample *s, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(s[i].name, name))
			return &s[i];
	return NULL;
}

static double pct(uint64_t now, uint64_t before, double dt)
{
	return now >= before ? (double)(now - before) / 1e9 / dt * 100 : 0;
}

static void top_print(const struct vm_cli *cli, const struct top_sample *now, int n,
		      const struct top_sample *prev, int np, double dt)
{
	struct json_object *arr = json_object_new_array();

	if (!cli->json)
		printf("%-20s %-8s %4s %6s %5s %7s %7s %7s\n", "NAME", "STATE", "CPUS", "WEIGHT",
		       "MAX%", "CPU%", "STEAL%", "THROT%");
	for (int i = 0; i < n; i++) {
		const struct top_sample *p = top_find(prev, np, now[i].name);
		double cpu = p ? pct(now[i].cpu_ns, p->cpu_ns, dt) : 0;
		double steal = p ? pct(now[i].wait_ns, p->wait_ns, dt) : 0;
		double thr = p ? pct(now[i].throttled_ns, p->throttled_ns, dt) : 0;
		struct json_object *o;

		if (!cli->json) {
			printf("%-20s %-8s %4u %6u %5u %7.1f %7.1f %7.1f\n", safe(now[i].name),
			       safe(now[i].state),
			       now[i].cpus, now[i].weight, now[i].max, cpu, steal, thr);
			continue;
		}
		o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(now[i].name));
		json_object_object_add(o, "state", json_object_new_string(now[i].state));
		json_object_object_add(o, "cpu_percent", json_object_new_double(cpu));
		json_object_object_add(o, "steal_percent", json_object_new_double(steal));
		json_object_object_add(o, "throttled_percent", json_object_new_double(thr));
		json_object_array_add(arr, o);
	}
	if (cli->json)
		puts(escape_text(json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN), true));
	json_object_put(arr);
	fflush(stdout);
}

/* top [--interval SECONDS] [--count N]: per-VM CPU use (% of one host CPU,
 * all vCPUs and VMM threads), steal (vCPU time runnable but not running)
 * and throttling by cpu_max, over each interval. */
struct top_args {
	double interval;
	long count;
};

static int top_flag(void *ctx, int c)
{
	struct top_args *a = ctx;
	char *end;

	if (c == 'i')
		a->interval = strtod(optarg, &end);
	else
		a->count = strtol(optarg, &end, 10);
	return *end || !*optarg ? -EINVAL : 0;
}

static int cmd_top(struct vm_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "interval", required_argument, NULL, 'i' }, { "count", required_argument, NULL, 'c' },
		{ NULL, 0, NULL, 0 },
	};
	struct top_args ta = { .interval = 1 };
	enum { MAX_VMS = 1024 };
	static struct top_sample a[MAX_VMS], b[MAX_VMS];
	struct top_sample *prev = a, *now = b, *t;
	double interval;
	long count;
	int np, n;

	if (parse_opts(cli, argc, argv, opts, top_flag, &ta) || optind != argc)
		return fprintf(stderr, "vireo: usage: vireo vm top [--interval S] [--count N]\n"), 2;
	interval = ta.interval;
	count = ta.count;
	if (interval < 0.1 || interval > 3600 || count < 0)
		return fprintf(stderr, "vireo: bad --interval or --count\n"), 2;
	np = top_snapshot(cli, prev, MAX_VMS);
	for (long k = 0; np >= 0 && (count == 0 || k < count); k++) {
		struct timespec ts = { (time_t)interval, (long)((interval - (time_t)interval) * 1e9) };

		nanosleep(&ts, NULL);
		n = top_snapshot(cli, now, MAX_VMS);
		if (n < 0)
			return 1;
		if (!cli->json && isatty(STDOUT_FILENO) && count != 1)
			fputs("\033[H\033[J", stdout);
		top_print(cli, now, n, prev, np, interval);
		t = prev, prev = now, now = t;
		np = n;
	}
	return np < 0 ? 1 : 0;
}

static int cmd_metrics(const struct vm_cli *cli)
{
	struct http_reply r;

	if (http_request(cli, "GET", "/metrics", NULL, &r)) {
		fprintf(stderr, "vireo: %s\n", err_get());
		free(r.raw);
		return 1;
	}
	fputs(escape_text(r.body, true), stdout);
	free(r.raw);
	return r.status == 200 ? 0 : 1;
}

static int cmd_console(struct vm_cli *cli, int argc, char **argv)
{
	struct json_object *o;
	char path[128];
	bool ok;
	int ret;

	if (parse_opts(cli, argc, argv, NULL, NULL, NULL) || optind + 1 != argc)
		return fputs(vm_usage, stderr), 2;
	argv += optind - 1;	/* the name in argv[1] */
	if (strchr(argv[1], '/'))
		return fputs(vm_usage, stderr), 2;
	snprintf(path, sizeof(path), "/vms/%s", argv[1]);
	o = call(cli, "GET", path, NULL, &ok);
	if (!ok) {
		json_object_put(o);
		return 1;
	}
	if (!*str(o, "console")) {
		fprintf(stderr, "vireo: VM '%s' is %s: no console to attach to\n", safe(argv[1]),
			*str(o, "state") ? safe(str(o, "state")) : "not running");
		json_object_put(o);
		return 1;
	}
	ret = vm_console_attach(argv[1], str(o, "console"));
	json_object_put(o);
	return ret;
}

int cmd_vm(int argc, char **argv)
{
	struct vm_cli cli = { .socket = getenv("VIREO_SOCKET") };
	int i = 1;
	const char *cmd;

	if (!cli.socket)
		cli.socket = DEFAULT_SOCKET;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--socket") && i + 1 < argc)
			cli.socket = argv[++i];
		else if (!strncmp(argv[i], "--socket=", 9))
			cli.socket = argv[i] + 9;
		else if (!strcmp(argv[i], "--output=json") || !strcmp(argv[i], "--json"))
			cli.json = true;
		else if (!strcmp(argv[i], "--output=text"))
			cli.json = false;
		else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return fputs(vm_usage, stdout), 0;
		else
			return fprintf(stderr, "vireo: unknown option '%s'\n%s", argv[i], vm_usage), 2;
	}
	if (i == argc)
		return fputs(vm_usage, stderr), 2;
	cmd = argv[i];
	argc -= i;
	argv += i;
	if (!strcmp(cmd, "list") || !strcmp(cmd, "metrics")) {
		if (parse_opts(&cli, argc, argv, NULL, NULL, NULL) || optind != argc)
			return fprintf(stderr, "vireo: usage: vireo vm %s\n", cmd), 2;
		return !strcmp(cmd, "list") ? cmd_list(&cli) : cmd_metrics(&cli);
	}
	if (!strcmp(cmd, "create"))
		return cmd_create(&cli, argc, argv);
	if (!strcmp(cmd, "set"))
		return cmd_set(&cli, argc, argv);
	if (!strcmp(cmd, "top"))
		return cmd_top(&cli, argc, argv);
	if (!strcmp(cmd, "console"))
		return cmd_console(&cli, argc, argv);
	if (!strcmp(cmd, "stop"))
		return cmd_stop(&cli, argc, argv);
	if (!strcmp(cmd, "snapshot") || !strcmp(cmd, "snapshots") || !strcmp(cmd, "rollback") ||
	    !strcmp(cmd, "delsnapshot") || !strcmp(cmd, "export") || !strcmp(cmd, "import"))
		return vm_snapshot_cmd(cli.socket, cli.json, argc, argv);
	if (!strcmp(cmd, "migrate") || !strcmp(cmd, "migrate-cancel") || !strcmp(cmd, "incoming"))
		return vm_migrate_cmd(cli.socket, cli.json, argc, argv);
	if (!strcmp(cmd, "start") || !strcmp(cmd, "pause") ||
	    !strcmp(cmd, "resume") || !strcmp(cmd, "reboot") || !strcmp(cmd, "delete") ||
	    !strcmp(cmd, "info"))
		return cmd_simple(&cli, cmd, argc, argv);
	fprintf(stderr, "vireo: unknown vm command '%s'\n%s", cmd, vm_usage);
	return 2;
}

/* For the other clients of the daemon (vireo net, src/cmd/net.c). */
struct json_object *vm_api_call(const char *socket, bool json, const char *method,
				const char *path, const char *body, bool *ok)
{
	struct vm_cli cli = { .socket = socket, .json = json };

	return call(&cli, method, path, body, ok);
}

void vm_api_print_json(struct json_object *o)
{
	print_json(o);
}

const char *vm_api_safe(const char *s)
{
	return safe(s);
}

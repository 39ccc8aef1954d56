/* vireo vm migrate|migrate-cancel|incoming: live migration between two
 * daemons with shared storage (docs/api.md "Live migration"), with virsh's
 * and Proxmox's habits: `migrate NAME --to URI` on the source (virsh
 * migrate --live, qm migrate --online), `incoming NAME --listen URI` on the
 * destination first (Cloud Hypervisor's receive-migration), and
 * `migrate-cancel NAME` (virsh domjobabort). Options go anywhere on the
 * line. While a migration runs, a progress line on stderr shows the VMM's
 * figures (GET /vms/NAME), each second. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "vireo/cmd.h"
#include "vireo/size.h"

struct mig_cli {
	const char *socket, *name, *to, *listen, *token_file, *def_file;
	bool json, copy_storage;
	uint64_t bandwidth;
	long max_downtime_ms, timeout_s;
};

static const char usage[] =
	"usage: vireo vm migrate NAME --to tcp:HOST:PORT --token-file FILE\n"
	"                [--max-downtime MS] [--bandwidth SIZE] [--timeout S]\n"
	"                [--copy-storage]\n"
	"       vireo vm migrate NAME --to DEST_SOCKET [--listen tcp:ADDR:PORT]\n"
	"                [--token-file FILE] [--max-downtime MS] [--bandwidth SIZE] [--timeout S]\n"
	"                [--copy-storage]\n"
	"       vireo vm incoming NAME [--listen tcp:ADDR:PORT] --file DEF.json\n"
	"                [--token-file FILE] [--timeout S] [--copy-storage]\n"
	"       vireo vm migrate-cancel NAME\n";

enum { O_TO = 0x100, O_LISTEN, O_TOKEN, O_FILE, O_DOWNTIME, O_BW, O_TIMEOUT, O_SOCKET,
       O_OUTPUT, O_JSON, O_COPY };

static int number(const char *text, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno || end == text || *end || v < 1 || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int option(struct mig_cli *c, int o)
{
	switch (o) {
	case O_TO: c->to = optarg; return 0;
	case O_LISTEN: c->listen = optarg; return 0;
	case O_TOKEN: c->token_file = optarg; return 0;
	case O_FILE: c->def_file = optarg; return 0;
	case O_SOCKET: c->socket = optarg; return 0;
	case O_JSON: c->json = true; return 0;
	case O_COPY: c->copy_storage = true; return 0;
	case O_OUTPUT:
		if (strcmp(optarg, "json") && strcmp(optarg, "text"))
			return -EINVAL;
		c->json = !strcmp(optarg, "json");
		return 0;
	case O_DOWNTIME: return number(optarg, 3600000, &c->max_downtime_ms);
	case O_TIMEOUT: return number(optarg, 86400, &c->timeout_s);
	case O_BW: return size_parse(optarg, &c->bandwidth) || !c->bandwidth ? -EINVAL : 0;
	}
	return -EINVAL;
}

static int parse(struct mig_cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "to", required_argument, NULL, O_TO },
		{ "listen", required_argument, NULL, O_LISTEN },
		{ "token-file", required_argument, NULL, O_TOKEN },
		{ "file", required_argument, NULL, O_FILE },
		{ "max-downtime", required_argument, NULL, O_DOWNTIME },
		{ "bandwidth", required_argument, NULL, O_BW },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "socket", required_argument, NULL, O_SOCKET },
		{ "output", required_argument, NULL, O_OUTPUT },
		{ "json", no_argument, NULL, O_JSON },
		{ "copy-storage", no_argument, NULL, O_COPY },
		{ NULL, 0, NULL, 0 },
	};
	int o;

	optind = 0;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1)
		if (o == '?' || option(c, o)) {
			fprintf(stderr, "vireo: bad option or value '%s'\n", argv[optind - 1]);
			return -EINVAL;
		}
	if (optind + 1 != argc)
		return -EINVAL;
	c->name = argv[optind];
	/* Names go into the URL as they are: nothing may make another route. */
	if (!c->name[0] || strlen(c->name) > 100 || strpbrk(c->name, "?#%/ ")) {
		fprintf(stderr, "vireo: bad name '%s'\n", vm_api_safe(c->name));
		return -EINVAL;
	}
	return 0;
}

/* The token file's content, a trailing newline dropped (as the VMM's
 * --incoming-token-file). */
static char *read_token(const char *path)
{
	char buf[512];
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f) {
		fprintf(stderr, "vireo: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = 0;
	if (!n) {
		fprintf(stderr, "vireo: %s is empty\n", path);
		return NULL;
	}
	return strdup(buf);
}

static const char *str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

static uint64_t u64(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

/* ---- the progress line ---- */

/* The migration's figures from GET /vms/NAME (nothing before it runs). */
static bool migrate_tick(void *arg, unsigned int seconds, bool tty, bool shown)
{
	const struct mig_cli *c = arg;
	char path[160], sent[32], left[32];
	struct json_object *o, *mig;
	bool ok, printed = false;

	(void)seconds;
	(void)shown;
	snprintf(path, sizeof(path), "/vms/%s", c->name);
	o = vm_api_call(c->socket, true, "GET", path, NULL, &ok);
	if (ok && json_object_object_get_ex(o, "migration", &mig) && *str(mig, "state")) {
		size_format(u64(mig, "bytes_sent"), sent, sizeof(sent));
		size_format(u64(mig, "remaining_bytes"), left, sizeof(left));
		fprintf(stderr, tty ? "\r\033[Kvireo: %s: %s sent, %s left, round %llu, throttle %llu %%"
			: "vireo: %s: %s sent, %s left, round %llu, throttle %llu %%\n",
			vm_api_safe(str(mig, "state")), sent, left,
			(unsigned long long)u64(mig, "rounds"),
			(unsigned long long)u64(mig, "throttle_percent"));
		printed = true;
	}
	json_object_put(o);
	return printed;
}

static struct json_object *call_with_progress(const struct mig_cli *c, const char *path,
					      const char *body, bool *ok)
{
	return vm_api_call_ticking(c->socket, c->json, "POST", path, body, ok, migrate_tick,
				   (void *)c);
}

/* ---- the verbs ---- */

/* The source's VMM may exit before it knows the downtime (the
 * destination's `info` has it): shown only when known. */
static void print_moved(const struct mig_cli *c, struct json_object *mig)
{
	char down[48] = "";

	if (mig && json_object_object_get_ex(mig, "downtime_ms", NULL))
		snprintf(down, sizeof(down), "downtime %llu ms, ",
			 (unsigned long long)u64(mig, "downtime_ms"));
	printf("%s: migrated to %s (%s%llu bytes sent in %llu ms)\n", c->name, vm_api_safe(c->to),
	       down, (unsigned long long)u64(mig, "bytes_sent"),
	       (unsigned long long)u64(mig, "total_ms"));
}

static int migrate_via(struct mig_cli *c);

/* The source's POST /vms/NAME/migrate body. */
static struct json_object *migrate_body(const struct mig_cli *c, const char *uri,
					const char *token)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "uri", json_object_new_string(uri));
	json_object_object_add(body, "token", json_object_new_string(token));
	if (c->max_downtime_ms)
		json_object_object_add(body, "max_downtime_ms", json_object_new_int64(c->max_downtime_ms));
	if (c->bandwidth)
		json_object_object_add(body, "bandwidth", json_object_new_int64((int64_t)c->bandwidth));
	if (c->timeout_s)
		json_object_object_add(body, "timeout_s", json_object_new_int64(c->timeout_s));
	if (c->copy_storage)
		json_object_object_add(body, "copy_storage", json_object_new_boolean(true));
	return body;
}

static int migrate(struct mig_cli *c)
{
	struct json_object *body, *o, *mig;
	char path[160], *token;
	bool ok;

	if (c->to && strncmp(c->to, "tcp:", 4))
		return migrate_via(c);
	if (!c->to || !c->token_file || c->listen || c->def_file) {
		fputs(usage, stderr);
		return 2;
	}
	token = read_token(c->token_file);
	if (!token)
		return 1;
	body = migrate_body(c, c->to, token);
	free(token);
	snprintf(path, sizeof(path), "/vms/%s/migrate", c->name);
	o = call_with_progress(c, path, json_object_to_json_string(body), &ok);
	json_object_put(body);
	if (ok && c->json)
		vm_api_print_json(o);
	else if (ok)
		print_moved(c, json_object_object_get_ex(o, "migration", &mig) ? mig : NULL);
	json_object_put(o);
	return ok ? 0 : 1;
}

/* The POST /vms/NAME/incoming body; def is taken. */
static struct json_object *incoming_body(const struct mig_cli *c, struct json_object *def,
					 const char *token)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "definition", def);
	if (c->listen)	/* else the daemon's --migration-address */
		json_object_object_add(body, "listen", json_object_new_string(c->listen));
	if (token)
		json_object_object_add(body, "token", json_object_new_string(token));
	if (c->timeout_s)
		json_object_object_add(body, "timeout_s", json_object_new_int64(c->timeout_s));
	if (c->copy_storage)
		json_object_object_add(body, "copy_storage", json_object_new_boolean(true));
	return body;
}

static int incoming(struct mig_cli *c)
{
	struct json_object *body, *def, *o;
	char path[160], *token = NULL;
	bool ok;

	if (!c->def_file || c->to || c->max_downtime_ms || c->bandwidth) {
		fputs(usage, stderr);
		return 2;
	}
	if (c->token_file && !(token = read_token(c->token_file)))
		return 1;
	def = json_object_from_file(c->def_file);
	if (!def) {
		fprintf(stderr, "vireo: %s: %s\n", c->def_file, json_util_get_last_err());
		free(token);
		return 1;
	}
	body = incoming_body(c, def, token);
	free(token);
	snprintf(path, sizeof(path), "/vms/%s/incoming", c->name);
	o = vm_api_call(c->socket, c->json, "POST", path, json_object_to_json_string(body), &ok);
	json_object_put(body);
	if (ok && c->json) {
		vm_api_print_json(o);
	} else if (ok) {
		printf("%s: incoming, listening on %s\n", c->name, vm_api_safe(str(o, "listen")));
		if (*str(o, "token"))
			printf("token: %s\n", vm_api_safe(str(o, "token")));
	}
	json_object_put(o);
	return ok ? 0 : 1;
}

static int cancel(struct mig_cli *c)
{
	struct json_object *o;
	char path[160];
	bool ok;

	if (c->to || c->listen || c->token_file || c->def_file) {
		fputs(usage, stderr);
		return 2;
	}
	snprintf(path, sizeof(path), "/vms/%s/migrate-cancel", c->name);
	o = vm_api_call(c->socket, c->json, "POST", path, NULL, &ok);
	if (ok && c->json)
		vm_api_print_json(o);
	else if (ok)
		printf("%s: migration cancelled\n", c->name);
	json_object_put(o);
	return ok ? 0 : 1;
}

/* ---- --to DEST_SOCKET: one command drives both daemons ----
 * The destination daemon's API socket (local, or forwarded with ssh -L)
 * prepares the incoming VM with the source's definition; then the source
 * migrates to it. Whatever fails, or Ctrl-C, the VM runs on at the source
 * and the destination is left without it. */

/* What GET /vms/NAME shows besides the definition (src/mgr/report.c). */
static const char *const report_keys[] = {
	"state", "reason", "pid", "vmm_uid", "console", "cgroup", "cpu_ns", "cpu_throttled_ns",
	"io_policy", "vmm", "vmm_info_age_ms", "migration", "firewall_counters",
};

static volatile sig_atomic_t interrupted;
static bool cancel_sent;

static void on_interrupt(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* The source's VM as a POST /vms body; NULL (said why) if it cannot move. */
static struct json_object *source_definition(const struct mig_cli *c)
{
	struct json_object *o;
	char path[160];
	const char *state;
	bool ok;

	snprintf(path, sizeof(path), "/vms/%s", c->name);
	o = vm_api_call(c->socket, c->json, "GET", path, NULL, &ok);
	state = ok ? str(o, "state") : "";
	if (ok && strcmp(state, "running") && strcmp(state, "paused")) {
		fprintf(stderr, "vireo: %s is %s: only a running or paused VM migrates\n", c->name,
			vm_api_safe(state));
		ok = false;
	}
	if (!ok) {
		json_object_put(o);
		return NULL;
	}
	for (size_t i = 0; i < sizeof(report_keys) / sizeof(report_keys[0]); i++)
		json_object_object_del(o, report_keys[i]);
	return o;
}

/* POST /vms/NAME/incoming there: the token the source must prove (malloc'd),
 * or NULL (printed); uri: where the destination listens, as it says (its
 * --migration-address when there is no --listen). def is taken. */
static char *prepare_destination(const struct mig_cli *c, struct json_object *def,
				 char *uri, size_t size)
{
	struct json_object *body, *o;
	char path[160], *token = NULL;
	bool ok;

	if (c->token_file && !(token = read_token(c->token_file))) {
		json_object_put(def);
		return NULL;
	}
	body = incoming_body(c, def, token);
	snprintf(path, sizeof(path), "/vms/%s/incoming", c->name);
	o = vm_api_call(c->to, c->json, "POST", path, json_object_to_json_string(body), &ok);
	json_object_put(body);
	if (ok && !token)
		token = strdup(str(o, "token"));
	if (ok)
		snprintf(uri, size, "%s", str(o, "listen"));
	if (!ok) {
		free(token);
		token = NULL;
	}
	json_object_put(o);
	return token;
}

/* A destination VMM whose source never connected (it failed first) would
 * wait out its timeout: a connection closed at once fails its stream, and
 * its daemon then removes the incoming VM. Once it has taken a stream it
 * no longer listens, so this cannot disturb one. */
static void end_destination(const char *uri)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	char host[128];
	const char *port = strrchr(uri, ':');
	struct timeval tv = { 2, 0 };
	int fd;

	if (strlen(uri) >= sizeof(host) + 4 || !port || port <= uri + 4)
		return;
	snprintf(host, sizeof(host), "%.*s", (int)(port - uri - 4), uri + 4);
	if (!strcmp(host, "localhost"))
		snprintf(host, sizeof(host), "127.0.0.1");
	if (getaddrinfo(host, port + 1, &hints, &ai))
		return;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		connect(fd, ai->ai_addr, ai->ai_addrlen);
		close(fd);
	}
	freeaddrinfo(ai);
}

static void cancel_source(const struct mig_cli *c)
{
	char path[160];
	bool ok;

	cancel_sent = true;
	fprintf(stderr, "\nvireo: interrupted: cancelling the migration of %s\n", c->name);
	snprintf(path, sizeof(path), "/vms/%s/migrate-cancel", c->name);
	json_object_put(vm_api_call(c->socket, true, "POST", path, NULL, &ok));
}

static bool via_tick(void *arg, unsigned int seconds, bool tty, bool shown)
{
	if (interrupted && !cancel_sent)
		cancel_source(arg);
	return migrate_tick(arg, seconds, tty, shown);
}

/* The destination's VM once it runs there (its daemon believes the VMM,
 * which says so shortly after the source has let go); NULL if not in 30 s. */
static struct json_object *destination_running(const struct mig_cli *c)
{
	struct timespec nap = { 0, 100 * 1000000L };
	char path[160];

	snprintf(path, sizeof(path), "/vms/%s", c->name);
	for (int i = 0; i < 300; i++, nanosleep(&nap, NULL)) {
		bool ok;
		struct json_object *o = vm_api_call(c->to, true, "GET", path, NULL, &ok);

		if (ok && strcmp(str(o, "state"), "incoming"))
			return o;
		json_object_put(o);
	}
	return NULL;
}

/* The figures of both ends: the source's answer and, from the
 * destination, the downtime and the VM there. */
static void report_moved(const struct mig_cli *c, struct json_object *src,
			 struct json_object *dst)
{
	struct json_object *mig = NULL, *vmm, *dmig, *down;

	json_object_object_get_ex(src, "migration", &mig);
	if (mig && json_object_object_get_ex(dst, "vmm", &vmm) &&
	    json_object_object_get_ex(vmm, "migration", &dmig) &&
	    json_object_object_get_ex(dmig, "downtime_ms", &down))
		json_object_object_add(mig, "downtime_ms", json_object_get(down));
	if (c->json) {
		json_object_object_add(src, "destination", json_object_get(dst));
		vm_api_print_json(src);
	} else {
		print_moved(c, mig);
	}
}

static int migrate_via(struct mig_cli *c)
{
	struct sigaction sa = { .sa_handler = on_interrupt, .sa_flags = SA_RESTART };
	struct json_object *def, *body, *o, *dst = NULL;
	char path[160], uri[160], *token;
	bool ok = false;

	if (c->def_file) {
		fputs(usage, stderr);
		return 2;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	def = source_definition(c);
	token = def ? prepare_destination(c, def, uri, sizeof(uri)) : NULL;
	if (!token)
		return 1;
	body = migrate_body(c, uri, token);
	free(token);
	snprintf(path, sizeof(path), "/vms/%s/migrate", c->name);
	o = interrupted ? NULL : vm_api_call_ticking(c->socket, c->json, "POST", path,
						     json_object_to_json_string(body), &ok,
						     via_tick, c);
	json_object_put(body);
	if (!ok && o && interrupted && !cancel_sent)
		cancel_source(c);
	if (!ok)
		end_destination(uri);
	else if (!(dst = destination_running(c)) || strcmp(str(dst, "state"), "running"))
		fprintf(stderr, "vireo: %s left the source but is %s on %s\n", c->name,
			dst ? vm_api_safe(str(dst, "state")) : "not known", vm_api_safe(c->to));
	else
		report_moved(c, o, dst);
	ok = ok && dst && !strcmp(str(dst, "state"), "running");
	json_object_put(dst);
	json_object_put(o);
	return ok ? 0 : 1;
}

int vm_migrate_cmd(const char *socket, bool json, int argc, char **argv)
{
	struct mig_cli c = { .socket = socket, .json = json };

	if (parse(&c, argc, argv)) {
		fputs(usage, stderr);
		return 2;
	}
	if (!strcmp(argv[0], "migrate"))
		return migrate(&c);
	if (!strcmp(argv[0], "incoming"))
		return incoming(&c);
	return cancel(&c);
}

/* vireo net: the daemon's networks from the command line (docs/networking.md).
 * Options may come anywhere (getopt_long permutes). */
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/cmd.h"
#include "vireo/net.h"
#include "vireo/size.h"

static const char net_usage[] =
	"usage: vireo net [--socket PATH] [--output=text|json] COMMAND [ARGS]\n"
	"\n"
	"  create NAME [--vlan-aware [--vlans N;A-B...]] [--uplink IFNAME]\n"
	"              [--budget-bps SIZE]\n"
	"                            a Linux bridge vb-NAME (--vlans: the uplink's;\n"
	"                            --budget-bps: its vNICs' bandwidth, each direction,\n"
	"                            with daemon --io-policy=auto)\n"
	"  set NAME --budget-bps SIZE  a new budget for its vNICs\n"
	"  list                      the networks, their bridges and ports\n"
	"  info NAME                 a network's ports and counters\n"
	"  delete NAME               (refused while a VM's vNIC uses it)\n"
	"\n"
	"NAME: 1 to 12 of A-Z a-z 0-9 _ -. The socket is --socket, else\n"
	"$VIREO_SOCKET, else /run/vireo/vireo.sock.\n";

struct net_cli {
	const char *socket, *uplink, *vlans;
	bool json, vlan_aware, has_budget;
	uint64_t budget;
};

enum { OPT_SOCKET = 0x100, OPT_OUTPUT, OPT_JSON, OPT_VLAN, OPT_VLANS, OPT_UPLINK, OPT_BUDGET };

static int parse(struct net_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "vlan-aware", no_argument, NULL, OPT_VLAN },
		{ "uplink", required_argument, NULL, OPT_UPLINK },
		{ "vlans", required_argument, NULL, OPT_VLANS },
		{ "budget-bps", required_argument, NULL, OPT_BUDGET },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_SOCKET: cli->socket = optarg; break;
		case OPT_JSON: cli->json = true; break;
		case OPT_VLAN: cli->vlan_aware = true; break;
		case OPT_UPLINK: cli->uplink = optarg; break;
		case OPT_VLANS: cli->vlans = optarg; break;
		case OPT_BUDGET:
			/* The daemon checks the bounds; 0 would mean none. */
			if (size_parse(optarg, &cli->budget) || !cli->budget) {
				fprintf(stderr, "vireo: --budget-bps takes a size above 0 (e.g. 100M)\n");
				return -1;
			}
			cli->has_budget = true;
			break;
		case OPT_OUTPUT:
			if (strcmp(optarg, "json") && strcmp(optarg, "text")) {
				fprintf(stderr, "vireo: --output is text or json\n");
				return -1;
			}
			cli->json = !strcmp(optarg, "json");
			break;
		case 'h':
			fputs(net_usage, stdout);
			exit(0);
		default:
			fprintf(stderr, "vireo: bad option '%s'\n%s", argv[optind - 1], net_usage);
			return -1;
		}
	}
	return 0;
}

static const char *field(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

/* A field that may be null (or absent): `none` then. */
static const char *field_or(struct json_object *o, const char *key, const char *none)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : none;
}

static void print_net(struct json_object *n, bool ports)
{
	struct json_object *p, *c;
	size_t np;

	json_object_object_get_ex(n, "ports", &p);
	np = p ? json_object_array_length(p) : 0;
	printf("%-13s %-16s %-5s %-16s %5zu\n", vm_api_safe(field(n, "name")),
	       vm_api_safe(field(n, "bridge")), field(n, "vlan_aware")[0] == 't' ? "yes" : "no",
	       *field(n, "uplink") ? vm_api_safe(field(n, "uplink")) : "-", np);
	if (!ports)
		return;
	for (size_t i = 0; i < np; i++) {
		struct json_object *e = json_object_array_get_idx(p, i);

		printf("  port %-16s rx_bytes %s tx_bytes %s\n", vm_api_safe(field(e, "name")),
		       field(e, "rx_bytes"), field(e, "tx_bytes"));
	}
	if (json_object_object_get_ex(n, "counters", &c)) {
		json_object_object_foreach(c, k, v)
			printf("  %-12s %s\n", k, json_object_get_string(v));
	}
	if (*field(n, "budget_bps") && json_object_object_get_ex(n, "allocation", &c))
		printf("  budget_bps   %s (allocated: rx_bps %s, tx_bps %s)\n", field(n, "budget_bps"),
		       field_or(c, "rx_bps", "-"), field_or(c, "tx_bps", "-"));
}

static void print_header(void)
{
	printf("%-13s %-16s %-5s %-16s %5s\n", "NAME", "BRIDGE", "VLAN", "UPLINK", "PORTS");
}

static int run(struct net_cli *cli, const char *cmd, const char *name)
{
	char path[128], *body = NULL;
	struct json_object *o, *req, *arr;
	bool ok;

	if (name)
		snprintf(path, sizeof(path), "/networks/%s", name);
	if (!strcmp(cmd, "create")) {
		req = json_object_new_object();
		json_object_object_add(req, "name", json_object_new_string(name));
		if (cli->vlan_aware)
			json_object_object_add(req, "vlan_aware", json_object_new_boolean(true));
		if (cli->uplink)
			json_object_object_add(req, "uplink", json_object_new_string(cli->uplink));
		if (cli->vlans)
			json_object_object_add(req, "vlans", vlan_list_json(cli->vlans));
		if (cli->has_budget)
			json_object_object_add(req, "budget_bps", json_object_new_uint64(cli->budget));
		body = strdup(json_object_to_json_string(req));
		json_object_put(req);
		o = vm_api_call(cli->socket, cli->json, "POST", "/networks", body, &ok);
		free(body);
	} else if (!strcmp(cmd, "set")) {
		req = json_object_new_object();
		json_object_object_add(req, "budget_bps", json_object_new_uint64(cli->budget));
		body = strdup(json_object_to_json_string(req));
		json_object_put(req);
		o = vm_api_call(cli->socket, cli->json, "PATCH", path, body, &ok);
		free(body);
	} else if (!strcmp(cmd, "list")) {
		o = vm_api_call(cli->socket, cli->json, "GET", "/networks", NULL, &ok);
	} else {
		o = vm_api_call(cli->socket, cli->json, !strcmp(cmd, "delete") ? "DELETE" : "GET",
				path, NULL, &ok);
	}
	if (ok && cli->json) {
		vm_api_print_json(o);
	} else if (ok && !strcmp(cmd, "list")) {
		print_header();
		json_object_object_get_ex(o, "networks", &arr);
		for (size_t i = 0; arr && i < json_object_array_length(arr); i++)
			print_net(json_object_array_get_idx(arr, i), false);
	} else if (ok && strcmp(cmd, "delete")) {
		print_header();
		print_net(o, !strcmp(cmd, "info"));
	} else if (ok) {
		printf("deleted %s\n", vm_api_safe(name));
	}
	json_object_put(o);
	return ok ? 0 : 1;
}

int cmd_net(int argc, char **argv)
{
	struct net_cli cli = { .socket = getenv("VIREO_SOCKET") };
	const char *cmd;
	bool named;

	if (!cli.socket)
		cli.socket = "/run/vireo/vireo.sock";
	if (parse(&cli, argc, argv))
		return 2;
	if (optind >= argc)
		return fputs(net_usage, stderr), 2;
	cmd = argv[optind];
	named = !strcmp(cmd, "create") || !strcmp(cmd, "info") || !strcmp(cmd, "delete") ||
		!strcmp(cmd, "set");
	if (!named && strcmp(cmd, "list"))
		return fprintf(stderr, "vireo: unknown net command '%s'\n%s", cmd, net_usage), 2;
	if (argc - optind != (named ? 2 : 1))
		return fprintf(stderr, "vireo: usage: vireo net %s%s\n", cmd,
			       named ? " NAME" : ""), 2;
	if ((cli.vlan_aware || cli.uplink || cli.vlans) && strcmp(cmd, "create"))
		return fprintf(stderr, "vireo: --vlan-aware, --vlans and --uplink go with create\n"),
		       2;
	if (cli.has_budget != !strcmp(cmd, "set") && strcmp(cmd, "create"))
		return fprintf(stderr, "vireo: --budget-bps goes with create or set (which needs "
			       "it)\n"), 2;
	/* A name the path cannot carry is refused here, the daemon checks the rest. */
	if (named && strcmp(cmd, "create") && (strlen(argv[optind + 1]) > 64 || strpbrk(argv[optind + 1], "/?#% ")))
		return fprintf(stderr, "vireo: bad network name\n"), 2;
	return run(&cli, cmd, named ? argv[optind + 1] : NULL);
}

/* vireo: one binary, subcommands like git and kvmtool (DESIGN §1). */
#include <stdio.h>
#include <string.h>

#include "vireo/cmd.h"

struct subcommand {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static const struct subcommand subcommands[] = {
	{ "run", cmd_run, "run one VM in the foreground (the VMM)" },
	{ "img", cmd_img, "create, inspect, check, convert and snapshot disk images" },
	{ "daemon", cmd_daemon, "the host manager: many VMs, JSON API on a Unix socket" },
	{ "vm", cmd_vm, "client of the daemon: list, create, start, stop, pause, ..." },
	{ "net", cmd_net, "client of the daemon: virtual networks (Linux bridges)" },
};

static int usage(FILE *out)
{
	fprintf(out, "usage: vireo COMMAND [ARGS...]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		fprintf(out, "  %-8s %s\n", subcommands[i].name, subcommands[i].summary);
	fprintf(out, "\n'vireo COMMAND --help' describes each command.\n");
	return out == stdout ? 0 : 2;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage(stderr);
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))
		return usage(stdout);
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		if (!strcmp(argv[1], subcommands[i].name))
			return subcommands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "vireo: unknown command '%s'\n", argv[1]);
	return usage(stderr);
}

#include <stdio.h>

#include "vireo/cmd.h"

int cmd_run(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "vireo run: not built yet\n");
	return 1;
}

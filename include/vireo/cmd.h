/* Subcommands of the vireo binary; one file each in src/cmd/. Each returns
 * the process exit status. */
#ifndef VIREO_CMD_H
#define VIREO_CMD_H

int cmd_run(int argc, char **argv);
int cmd_img(int argc, char **argv);
int cmd_daemon(int argc, char **argv);
int cmd_vm(int argc, char **argv);
/* vireo vm console (src/cmd/vm-console.c): attaches the terminal to a VMM's
 * console socket until Ctrl-A x or the VM goes away; an exit status. */
int vm_console_attach(const char *name, const char *path);

#endif

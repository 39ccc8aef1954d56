/* Subcommands of the vireo binary; one file each in src/cmd/. Each returns
 * the process exit status. */
#ifndef VIREO_CMD_H
#define VIREO_CMD_H

int cmd_run(int argc, char **argv);
int cmd_img(int argc, char **argv);
int cmd_daemon(int argc, char **argv);
int cmd_vm(int argc, char **argv);

#endif

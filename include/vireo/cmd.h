/* Subcommands of the vireo binary; one file each in src/cmd/. Each returns
 * the process exit status. */
#ifndef VIREO_CMD_H
#define VIREO_CMD_H

#include <stdbool.h>

int cmd_run(int argc, char **argv);
int cmd_img(int argc, char **argv);
int cmd_daemon(int argc, char **argv);
int cmd_vm(int argc, char **argv);
int cmd_net(int argc, char **argv);
/* The copy of `vireo img convert` (src/cmd/img-copy.c), for the daemon's
 * export too: every range of in (through its backing chain) that does not
 * read as zero into out, a new image of in's size; compress: as qcow2
 * compressed clusters, on a worker per CPU. Then flushes out. */
struct image;
int img_copy(struct image *in, struct image *out, bool compress, bool show_progress);
/* The daemon's HTTP client (src/cmd/vm.c), shared with `vireo net`: one
 * request; prints a non-2xx reply's error, *ok says whether it succeeded. */
struct json_object;
struct json_object *vm_api_call(const char *socket, bool json, const char *method,
				const char *path, const char *body, bool *ok);
void vm_api_print_json(struct json_object *o);
/* vm_api_call for a request that may take long (src/cmd/vm-progress.c):
 * while it waits, tick(arg, seconds, tty, shown) is called each second on
 * another thread to print a progress line on stderr (on a terminal drawn
 * in place: "\r" first, no newline) and returns whether it printed one;
 * SHOWN says whether an earlier call did. The line is erased at the end. */
typedef bool vm_api_tick_fn(void *arg, unsigned int seconds, bool tty, bool shown);
struct json_object *vm_api_call_ticking(const char *socket, bool json, const char *method,
					const char *path, const char *body, bool *ok,
					vm_api_tick_fn *tick, void *arg);
/* Control characters escaped, for text from the daemon (lives briefly). */
const char *vm_api_safe(const char *s);
/* vireo vm snapshot|snapshots|rollback|delsnapshot (src/cmd/vm-snapshot.c):
 * argv[0] is the verb; an exit status. */
int vm_snapshot_cmd(const char *socket, bool json, int argc, char **argv);
/* vireo vm migrate|migrate-cancel|incoming (src/cmd/vm-migrate.c): argv[0]
 * is the verb; an exit status. */
int vm_migrate_cmd(const char *socket, bool json, int argc, char **argv);
/* vireo vm console (src/cmd/vm-console.c): attaches the terminal to a VMM's
 * console socket until Ctrl-A x or the VM goes away; an exit status. */
int vm_console_attach(const char *name, const char *path);

#endif

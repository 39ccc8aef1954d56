/* The VMM's sandbox (src/vmm/sandbox.c): once every host resource is open,
 * the VMM chroots into an empty jail, drops to an unprivileged uid/gid and
 * installs a seccomp allowlist, as Firecracker's jailer does (DESIGN §1). */
#ifndef VIREO_SANDBOX_H
#define VIREO_SANDBOX_H

#include <stdbool.h>
#include <sys/types.h>

enum sandbox_seccomp { SANDBOX_SECCOMP_ON, SANDBOX_SECCOMP_OFF, SANDBOX_SECCOMP_LOG };

struct sandbox {
	bool drop;               /* switch to uid/gid */
	uid_t uid;
	gid_t gid;
	const char *jail;        /* chroot into this directory, or NULL */
	enum sandbox_seccomp seccomp;
};

/* "UID[:GID]" or a user name (its primary group unless ":GID" follows). */
int sandbox_parse_user(const char *text, struct sandbox *sb);
/* "on", "off" or "log". */
int sandbox_parse_seccomp(const char *text, struct sandbox *sb);
/* Applies it to the whole process (every thread): jail, uid/gid, no new
 * privileges, seccomp filter. Call it after every file, device and socket
 * the VMM needs is open. */
int sandbox_enter(const struct sandbox *sb);
/* The seccomp part alone (unit tests apply it in a child). */
int sandbox_seccomp(enum sandbox_seccomp mode);

#endif

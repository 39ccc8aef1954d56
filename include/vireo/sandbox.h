/* The VMM's sandbox (src/vmm/sandbox.c): once every host resource is open,
 * the VMM pivots into an empty jail in its own mount namespace, restricts
 * itself with Landlock, drops to an unprivileged uid/gid and installs a
 * seccomp allowlist, as Firecracker's jailer and Cloud Hypervisor do
 * (DESIGN §1, docs/run.md). */
#ifndef VIREO_SANDBOX_H
#define VIREO_SANDBOX_H

#include <stdbool.h>
#include <sys/types.h>

enum sandbox_seccomp { SANDBOX_SECCOMP_ON, SANDBOX_SECCOMP_OFF, SANDBOX_SECCOMP_LOG };

struct sandbox {
	bool drop;               /* switch to uid/gid */
	uid_t uid;
	gid_t gid;
	const char *jail;        /* the new root (a tmpfs mounted on it), or NULL */
	enum sandbox_seccomp seccomp;
	bool mount_ns;           /* set by sandbox_prepare(): a mount namespace of
				  * its own, else a plain chroot */
};

/* "UID[:GID]" or a user name (its primary group unless ":GID" follows). */
int sandbox_parse_user(const char *text, struct sandbox *sb);
/* "on", "off" or "log". */
int sandbox_parse_seccomp(const char *text, struct sandbox *sb);
/* With a jail: enters a mount namespace of its own (or notes, with a
 * warning, that the kernel refused and a chroot will do) and prepares the
 * Landlock ruleset if the kernel has Landlock. Call it while the process
 * has a single thread, before anything is opened. */
int sandbox_prepare(struct sandbox *sb);
/* Restricts the calling thread with that ruleset (no-op without one): for
 * threads started before sandbox_enter() that run guest-facing code (the
 * vCPUs), on kernels whose Landlock cannot restrict all threads at once. */
int sandbox_restrict_thread(void);
/* Applies it to the whole process (every thread): jail, uid/gid, no new
 * privileges, Landlock, seccomp filter. Call it after every file, device
 * and socket the VMM needs is open; no descriptor of a directory may stay
 * open (openat() relative to it would leave the jail). */
int sandbox_enter(const struct sandbox *sb);
/* The seccomp part alone (unit tests apply it in a child); connect_out:
 * TCP socket and connect allowed (a VMM without a jail, which makes its
 * migration's connection itself; a jailed one is handed it). */
int sandbox_seccomp(enum sandbox_seccomp mode, bool connect_out);

#endif

/* Listening Unix stream sockets that exist at their path only once they
 * accept connections.
 *
 * A socket made with bind() then listen() appears at its path between the two
 * calls, and a client that connects the moment it sees the path is refused
 * (ECONNREFUSED). unix_listen() binds to a temporary name in the same
 * directory, sets the mode, listens, and only then renames it onto the path
 * (rename(2) is atomic within a directory), so whoever sees the path can
 * connect. An existing path is replaced only if it is a socket (DESIGN §3.15:
 * a path given for a socket is never taken for something else). */
#ifndef VIREO_SOCK_H
#define VIREO_SOCK_H

#include <sys/types.h>

/* Returns the listening descriptor (SOCK_CLOEXEC, plus SOCK_NONBLOCK when
 * nonblock), or -errno with the reason in err_get(). mode is applied to the
 * socket file before it appears. */
int unix_listen(const char *path, int backlog, mode_t mode, int nonblock);

/* Removes path if it is a socket (a listener's own path at exit). */
void unix_unlink(const char *path);

#endif

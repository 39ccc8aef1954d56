/* Opening files that come from outside (src/util/fileopen.c, DESIGN §3.15).
 *
 * open() of a FIFO blocks until a writer comes, and a read from one (or from
 * a character device) blocks for as long as the peer likes: a kernel, disk,
 * state file or definition that is a FIFO would freeze the process that
 * reads it. These helpers open without blocking (O_NONBLOCK) and check the
 * file's type with fstat() before anything is read. */
#ifndef VIREO_FILEOPEN_H
#define VIREO_FILEOPEN_H

#include <sys/types.h>

/* Accepted file types (a mask). */
#define FILE_REG 1u  /* regular file */
#define FILE_BLK 2u  /* block device */

/* open(path, flags | O_CLOEXEC, mode) with O_NONBLOCK while opening (then
 * cleared), and fstat() for one of `types`. Returns the descriptor, or
 * -errno with err_set() detail naming `what` (e.g. "kernel"; NULL: none),
 * the path and, for a wrong type, what it is: -EINVAL "kernel /k is a FIFO,
 * not a regular file". */
int file_open_checked(const char *path, int flags, mode_t mode, const char *what,
		      unsigned int types);

/* The same check by stat() alone (follows symlinks), for a file another
 * process opens: 0 or -errno with err_set() detail. */
int file_check_path(const char *path, const char *what, unsigned int types);

#endif

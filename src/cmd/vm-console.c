/* vireo vm console: the terminal on a VMM's console socket (run
 * --console-socket). Raw mode on a tty; Ctrl-A x detaches, Ctrl-A Ctrl-A
 * sends one Ctrl-A, as in `vireo run`. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "vireo/cmd.h"

static int console_connect(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int ret = -errno;

		close(fd);
		return ret;
	}
	return fd;
}

static bool write_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

/* Terminal input to the guest: false once Ctrl-A x is seen. */
static bool forward_input(int sock, const uint8_t *buf, size_t n, bool tty, bool *escape)
{
	uint8_t out[2 * 256];
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		if (tty && *escape) {
			*escape = false;
			if (buf[i] == 'x')
				return write_all(sock, out, k), false;
			if (buf[i] != 0x01)
				out[k++] = 0x01;
		} else if (tty && buf[i] == 0x01) {
			*escape = true;
			continue;
		}
		out[k++] = buf[i];
	}
	return write_all(sock, out, k);
}

/* 0 detached by the user, 1 the VM went away or an error. */
static int console_pump(int sock, bool tty)
{
	struct pollfd p[2] = { { .fd = STDIN_FILENO, .events = POLLIN },
			       { .fd = sock, .events = POLLIN } };
	bool escape = false, stdin_open = true;
	uint8_t buf[256];

	for (;;) {
		ssize_t n;

		p[0].fd = stdin_open ? STDIN_FILENO : -1;
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		if (p[1].revents) {
			n = read(sock, buf, sizeof(buf));
			if (n <= 0)
				return 1;
			if (!write_all(STDOUT_FILENO, buf, (size_t)n))
				return 1;
		}
		if (p[0].revents) {
			n = read(STDIN_FILENO, buf, sizeof(buf));
			if (n <= 0)
				stdin_open = false; /* EOF: keep showing the output */
			else if (!forward_input(sock, buf, (size_t)n, tty, &escape))
				return 0;
		}
	}
}

int vm_console_attach(const char *name, const char *path)
{
	struct termios saved, raw;
	bool tty = isatty(STDIN_FILENO) && !tcgetattr(STDIN_FILENO, &saved);
	int sock = console_connect(path), ret;

	if (sock < 0) {
		fprintf(stderr, "vireo: cannot connect to %s's console %s: %s\n", name, path,
			strerror(-sock));
		return 1;
	}
	if (tty) {
		raw = saved;
		cfmakeraw(&raw);
		raw.c_oflag |= OPOST | ONLCR;
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
		fprintf(stderr, "vireo: console of %s (Ctrl-A x detaches)\r\n", name);
	}
	ret = console_pump(sock, tty);
	if (tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved);
	fprintf(stderr, "\nvireo: %s\n", ret ? "the console closed (VM stopped?)" : "detached");
	close(sock);
	return ret;
}

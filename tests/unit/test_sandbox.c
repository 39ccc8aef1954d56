/* The VMM's seccomp filter, applied in a child process: what it allows
 * works, what it does not kills the process with SIGSYS; and the --user /
 * --seccomp option parsers. */
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <cmocka.h>

#include "vireo/sandbox.h"

/* Runs fn in a child under the filter (connect_out: a VMM without a
 * jail's); returns its wait status. */
static int in_child_filtered(int (*fn)(void), bool connect_out)
{
	int status = 0;
	pid_t pid = fork();

	if (pid == 0) {
		if (sandbox_seccomp(SANDBOX_SECCOMP_ON, connect_out))
			_exit(100);
		_exit(fn());
	}
	waitpid(pid, &status, 0);
	return status;
}

static int in_filtered_child(int (*fn)(void))
{
	return in_child_filtered(fn, true);
}

static int allowed_calls(void)
{
	char buf[8];
	int fds[2];

	if (getpid() <= 0 || pipe2(fds, 0) || write(fds[1], "x", 1) != 1 ||
	    read(fds[0], buf, 1) != 1)
		return 1;
	/* clone3 fails softly, so that glibc falls back to clone. */
	return syscall(SYS_clone3, NULL, 0) == -1 && errno == ENOSYS ? 0 : 2;
}

/* A migration's outgoing TCP stream is the only socket a VMM opens. */
static int open_tcp_socket(void)
{
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);

	return fd >= 0 || errno == EAFNOSUPPORT ? 0 : 3;
}

/* A TCP socket made before the filter, as a passed one would be. */
static int tcp_fd = -1;

/* connect() on it, to a port nobody listens on: refused, but called. */
static int connect_tcp(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(1),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	return connect(tcp_fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ? 0 : 3;
}

static int open_udp_socket(void)
{
	return socket(AF_INET, SOCK_DGRAM, 0) >= 0 ? 0 : 3;
}

static int open_netlink_socket(void)
{
	return socket(AF_NETLINK, SOCK_STREAM, 0) >= 0 ? 0 : 3;
}

static int listen_tcp(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	return fd >= 0 && listen(fd, 1) == 0 ? 0 : 3;
}

static int make_process(void)
{
	/* fork() is clone without CLONE_THREAD */
	return (int)syscall(SYS_clone, SIGCHLD, 0, NULL, NULL, 0) >= 0 ? 0 : 4;
}

static int exec_shell(void)
{
	char *argv[] = { "/bin/true", NULL };

	execv(argv[0], argv);
	return 5;
}

static int unlisted_ioctl(void)
{
	int n;

	return ioctl(STDIN_FILENO, FIONREAD, &n) == 0 ? 0 : 6;	/* not a VMM's */
}

static int listed_ioctl(void)
{
	struct termios t;

	/* TCGETS is allowed: on a non-terminal it fails with ENOTTY, no kill */
	return tcgetattr(STDIN_FILENO, &t) == 0 || errno == ENOTTY || errno == EBADF ? 0 : 7;
}

static void filter_allows_the_vmm_and_kills_the_rest(void **state)
{
	int st;

	(void)state;
	st = in_filtered_child(allowed_calls);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	st = in_filtered_child(open_tcp_socket);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	st = in_filtered_child(open_udp_socket);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_filtered_child(open_netlink_socket);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_filtered_child(listen_tcp);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_filtered_child(make_process);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_filtered_child(exec_shell);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_filtered_child(unlisted_ioctl);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_filtered_child(listed_ioctl);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* A jailed VMM is handed its migration stream: neither socket nor connect. */
static void jailed_filter_kills_socket_and_connect(void **state)
{
	int st;

	(void)state;
	tcp_fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(tcp_fd >= 0);
	st = in_child_filtered(open_tcp_socket, false);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_child_filtered(connect_tcp, false);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS);
	st = in_child_filtered(connect_tcp, true);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	st = in_child_filtered(allowed_calls, false);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	close(tcp_fd);
}

static void user_option(void **state)
{
	struct sandbox sb = { 0 };

	(void)state;
	assert_int_equal(sandbox_parse_user("65534", &sb), 0);
	assert_true(sb.drop && sb.uid == 65534 && sb.gid == 65534);
	assert_int_equal(sandbox_parse_user("100001:5", &sb), 0);
	assert_true(sb.uid == 100001 && sb.gid == 5);
	assert_int_equal(sandbox_parse_user("nobody", &sb), 0);
	assert_int_equal(sb.uid, 65534);
	assert_int_equal(sandbox_parse_user("root:0", &sb), 0);
	assert_true(sb.uid == 0 && sb.gid == 0);
	assert_int_equal(sandbox_parse_user("no-such-user-here", &sb), -EINVAL);
	assert_int_equal(sandbox_parse_user("", &sb), -EINVAL);
	assert_int_equal(sandbox_parse_user(":5", &sb), -EINVAL);
	assert_int_equal(sandbox_parse_user("5:x", &sb), -EINVAL);
	assert_int_equal(sandbox_parse_user("-1", &sb), -EINVAL);
	assert_int_equal(sandbox_parse_seccomp("log", &sb), 0);
	assert_int_equal(sb.seccomp, SANDBOX_SECCOMP_LOG);
	assert_int_equal(sandbox_parse_seccomp("yes", &sb), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(filter_allows_the_vmm_and_kills_the_rest),
		cmocka_unit_test(jailed_filter_kills_socket_and_connect),
		cmocka_unit_test(user_option),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

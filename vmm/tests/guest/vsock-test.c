/*
 * Guest side of the vsock tests (static, in the test initramfs):
 *   vsock-test connect PORT MESSAGE  connect to the host (CID 2), send MESSAGE, half-close,
 *                                    print what comes back until EOF
 *   vsock-test echo PORT [N]         accept N connections (default 1), each served by its own
 *                                    process, echo them until EOF, print the total count
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/vm_sockets.h>

static int fail(const char *what)
{
	perror(what);
	return 1;
}

int main(int argc, char **argv)
{
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK };
	char buf[65536];
	long total = 0;
	ssize_t n;
	int fd, conn;

	if (argc < 3)
		return fprintf(stderr, "usage: vsock-test connect PORT MSG | echo PORT\n"), 2;
	addr.svm_port = atoi(argv[2]);
	fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0)
		return fail("socket");

	if (!strcmp(argv[1], "connect") && argc == 4) {
		addr.svm_cid = VMADDR_CID_HOST;
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
			return fail("connect");
		if (write(fd, argv[3], strlen(argv[3])) != (ssize_t)strlen(argv[3]))
			return fail("write");
		shutdown(fd, SHUT_WR);
		while ((n = read(fd, buf, sizeof(buf) - 1)) > 0) {
			buf[n] = 0;
			printf("vmpod-init: vsock-test: received %s\n", buf);
		}
		return n < 0 ? fail("read") : 0;
	}
	if (!strcmp(argv[1], "echo")) {
		int conns = argc > 3 ? atoi(argv[3]) : 1;
		int pipefd[2];

		addr.svm_cid = VMADDR_CID_ANY;
		if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(fd, 64))
			return fail("bind/listen");
		if (pipe(pipefd))
			return fail("pipe");
		printf("vmpod-init: vsock-test: listening on %u\n", addr.svm_port);
		fflush(stdout);
		for (int i = 0; i < conns; i++) {
			conn = accept(fd, NULL, NULL);
			if (conn < 0)
				return fail("accept");
			if (fork() == 0) {
				while ((n = read(conn, buf, sizeof(buf))) > 0) {
					for (ssize_t off = 0; off < n;) {
						ssize_t w = write(conn, buf + off, n - off);
						if (w <= 0)
							_exit(fail("write"));
						off += w;
					}
					total += n;
				}
				/* Each child reports its count through the pipe. */
				if (write(pipefd[1], &total, sizeof(total)) != sizeof(total))
					_exit(1);
				_exit(n < 0);
			}
			close(conn);
		}
		for (int i = 0; i < conns; i++) {
			long part = 0;
			int status;
			if (read(pipefd[0], &part, sizeof(part)) == sizeof(part))
				total += part;
			wait(&status);
		}
		printf("vmpod-init: vsock-test: echoed %ld bytes on %d connections\n", total, conns);
		return 0;
	}
	return fprintf(stderr, "vmpod-init: vsock-test: unknown mode %s\n", argv[1]), 2;
}

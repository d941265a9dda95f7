/* What a root process in the guest gets from the shared filesystem's extended attributes and
 * file handles: one line per attempt, "NAME ok" or "NAME <errno name>". Built static by
 * cli/tests/volumes.rs and run from the volume itself (the busybox image has no setfattr). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

static void report(const char *what, int rc) {
    if (rc >= 0)
        printf("%s ok\n", what);
    else
        printf("%s %s\n", what, strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: xattr-probe FILE\n");
        return 2;
    }
    const char *file = argv[1];
    report("set-user", setxattr(file, "user.vmpod", "guest", 5, 0));
    char buf[64] = {0};
    ssize_t n = getxattr(file, "user.vmpod", buf, sizeof buf - 1);
    report("get-user", n);
    if (n >= 0)
        printf("user-value %s\n", buf);
    report("set-trusted", setxattr(file, "trusted.vmpod", "guest", 5, 0));
    report("set-security", setxattr(file, "security.vmpod", "guest", 5, 0));
    report("set-capability", setxattr(file, "security.capability", "\1\0\0\2", 4, 0));
    report("get-trusted-host", getxattr(file, "trusted.host", buf, sizeof buf));
    struct file_handle *handle = malloc(sizeof *handle + MAX_HANDLE_SZ);
    handle->handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    report("name-to-handle", name_to_handle_at(AT_FDCWD, file, handle, &mount_id, 0));
    return 0;
}

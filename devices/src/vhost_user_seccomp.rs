//! What vmpod-vmm's sibling for QEMU, vmpod-vhost-user, may ask of the host kernel once it
//! serves: one filter for the whole process (installed with TSYNC, so the slot-command thread
//! has it too), each syscall with the reason it is there. Anything else kills the process
//! with SIGSYS. At most [`LIMIT`] distinct syscalls.
//!
//! By then its disks, tap and vsock socket are open and its vhost-user sockets listen. What
//! comes later arrives as descriptors: QEMU's connection, guest memory and the rings' eventfds
//! (in vhost-user messages), and a slot command's image, which it opens read-only by path.

use crate::seccomp::{
    arg_eq, mprotect_no_exec, openat_read_only, AllowlistBuilder, Filter, SeccompError,
};

pub const LIMIT: usize = 45;

pub fn filter() -> Result<Filter, SeccompError> {
    AllowlistBuilder::new("vhost-user")
        // One epoll set for every device's socket, connection, ring kicks and own
        // descriptor.
        .any(libc::SYS_epoll_wait)
        .any(libc::SYS_epoll_ctl)
        // Eventfds (kicks, calls), the tap, vsock streams, stdin/stdout commands, stderr.
        .any(libc::SYS_read)
        .any(libc::SYS_write)
        // vhost-user messages carry descriptors (guest memory, eventfds) both ways.
        .any(libc::SYS_recvmsg)
        .any(libc::SYS_sendmsg)
        // std reads and writes a Unix stream (vsock) with recv and send (MSG_NOSIGNAL), to
        // connected sockets only (no address).
        .any(libc::SYS_recvfrom)
        .rules(libc::SYS_sendto, vec![arg_eq(4, 0)])
        // The front end's connection to each device's listening socket.
        .any(libc::SYS_accept4)
        // A guest-initiated vsock stream connects to `<uds>_<port>`: Unix sockets only.
        .rules(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)])
        .any(libc::SYS_connect)
        .any(libc::SYS_shutdown)
        // Accepted and connected sockets made non-blocking (FIONBIO) and nothing else.
        .rules(libc::SYS_ioctl, vec![arg_eq(1, libc::FIONBIO)])
        // Finding the backend channel the vhost crate keeps to itself: which descriptors
        // are open (F_GETFD), which is an unnamed Unix socket, a duplicate of it
        // (F_DUPFD_CLOEXEC); and O_NONBLOCK through F_GETFL/F_SETFL.
        .any(libc::SYS_fcntl)
        .any(libc::SYS_getsockname)
        // The vhost crate asks a received descriptor for its socket domain (SO_DOMAIN).
        .rules(
            libc::SYS_getsockopt,
            vec![arg_eq(1, libc::SOL_SOCKET as u64)],
        )
        .any(libc::SYS_close)
        // Guest memory: the front end's regions mapped shared, unmapped on a new table.
        .any(libc::SYS_mmap)
        .any(libc::SYS_munmap)
        // The allocator.
        .any(libc::SYS_brk)
        .any(libc::SYS_mremap)
        .any(libc::SYS_madvise)
        .rules(libc::SYS_mprotect, mprotect_no_exec())
        .any(libc::SYS_futex)
        // Block requests and flushes.
        .any(libc::SYS_pread64)
        .any(libc::SYS_pwrite64)
        .any(libc::SYS_fdatasync)
        // `insert SLOT PATH` on stdin opens the image read-only and measures it.
        .rules(libc::SYS_openat, openat_read_only())
        .any(libc::SYS_statx)
        .any(libc::SYS_lseek)
        // virtio-rng's entropy; std's HashMap keys.
        .any(libc::SYS_getrandom)
        .any(libc::SYS_clock_gettime)
        // The vhost crate removes a device's listening socket when its front end goes.
        .any(libc::SYS_unlink)
        // The command thread ends with stdin; the process with its last front end, or by
        // abort() after a panic.
        .any(libc::SYS_exit)
        .any(libc::SYS_exit_group)
        .any(libc::SYS_sigaltstack)
        .any(libc::SYS_rt_sigprocmask)
        .any(libc::SYS_getpid)
        .any(libc::SYS_gettid)
        .any(libc::SYS_tgkill)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_user_filter_stays_within_its_limit() {
        let filter = filter().unwrap();
        eprintln!("vhost-user: {} syscalls", filter.syscall_count());
        assert!(
            filter.syscall_count() <= LIMIT,
            "{}",
            filter.syscall_count()
        );
    }

    #[test]
    fn the_vhost_user_filter_kills_every_forbidden_probe_and_lets_getpid_through() {
        crate::seccomp::assert_confines(&filter().unwrap(), || {
            // SAFETY: getpid has no arguments and cannot fail.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            i32::from(pid <= 0)
        });
    }
}

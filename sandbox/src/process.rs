//! Children that die with the sandbox's owner, even when it is killed with SIGKILL.

use std::os::unix::process::CommandExt;
use std::process::Command;

pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Lets the child inherit `fd` (at the same number): the CLOEXEC flag is cleared in the child
/// only, so no other child gets it.
pub fn inherit_fd(cmd: &mut Command, fd: std::os::fd::RawFd) -> &mut Command {
    // SAFETY: fcntl is async-signal-safe; it changes only the child's copy of the fd table.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

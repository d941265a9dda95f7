//! Children that die with the sandbox's owner, even when it is killed with SIGKILL, and hear
//! no terminal.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The child dies with its parent, in a session of its own: a terminal's Ctrl-C (SIGINT to the
/// foreground process group) and a supervisor's signal to a process group reach the sandbox's
/// owner, which hands them to the container, and never the VMM or its helpers directly.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl and setsid are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
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

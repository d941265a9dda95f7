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

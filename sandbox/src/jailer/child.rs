//! The jail's first process, after the fork: the hostname, the root, the credential drop, the
//! parent-death signal set again, then exec of the program, opened before the root changed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::credentials::drop_privileges;
use super::error::{check, cstring, os, JailerError, Never};
use super::root::enter_root;
use super::spec::JailSpec;

/// The kernel clears PDEATHSIG when the credentials change: it is set again, and the parent is
/// checked once more (it may have died between the two), through `parent_alive`, the read end
/// of a pipe the jailer holds open for as long as it lives.
fn die_with_jailer(parent_alive: &OwnedFd) -> Result<(), JailerError> {
    // SAFETY: prctl with integer arguments changes only this process's attributes.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        || "set the parent-death signal".into(),
    )?;
    let mut poll = libc::pollfd {
        fd: parent_alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready != 0 {
        // SAFETY: _exit ends this process at once; the parent is gone.
        unsafe { libc::_exit(137) };
    }
    Ok(())
}

/// The program's child side: everything after the fork, ending in exec.
pub fn become_program(spec: &JailSpec, parent_alive: OwnedFd) -> JailerError {
    match prepare_and_exec(spec, parent_alive) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn prepare_and_exec(spec: &JailSpec, parent_alive: OwnedFd) -> Result<Never, JailerError> {
    let program = std::fs::File::open(&spec.program).map_err(|e| JailerError::Os {
        what: format!("open {}", spec.program.display()),
        source: e,
    })?;
    let hostname = b"vmpod";
    // SAFETY: the buffer holds the length given.
    check(
        unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) },
        || "set the jail's hostname".into(),
    )?;
    enter_root(spec)?;
    drop_privileges(spec)?;
    die_with_jailer(&parent_alive)?;
    drop(parent_alive);
    let mut argv: Vec<CString> = vec![cstring(&spec.program)?];
    for arg in &spec.args {
        argv.push(
            CString::new(arg.as_bytes())
                .map_err(|_| JailerError::Usage("an argument holds a NUL byte".into()))?,
        );
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let empty = CString::default();
    // SAFETY: argv and envp are null-terminated arrays of strings that outlive the call; the
    // program was opened before the root changed.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            program.as_raw_fd(),
            empty.as_ptr(),
            argv_ptrs.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    Err(os(format!("execute {}", spec.program.display())))
}

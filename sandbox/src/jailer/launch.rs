//! The jailer's own side of a launch: cgroups joined, descriptors closed but the ones passed,
//! a cleared environment, resource limits, the new namespaces, the fork, then waiting for the
//! program as its parent and ending as it did.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::child::become_program;
use super::error::{check, os, JailerError, Never};
use super::spec::JailSpec;

/// Closes every descriptor above stderr but `keep`.
fn close_others(keep: &[RawFd]) -> Result<(), JailerError> {
    let mut keep: Vec<u32> = keep.iter().map(|fd| *fd as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep.into_iter().filter(|fd| *fd >= 3) {
        if fd > from {
            // SAFETY: close_range only closes descriptors; none of those closed is in use.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
            check(rc as libc::c_int, || "close inherited descriptors".into())?;
        }
        // SAFETY: fcntl on a descriptor number only changes that descriptor's flags.
        let flags = unsafe { libc::fcntl(fd as RawFd, libc::F_GETFD) };
        if flags < 0 {
            return Err(os(format!("keep descriptor {fd}: it is not open")));
        }
        // SAFETY: as above.
        unsafe { libc::fcntl(fd as RawFd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
        from = fd + 1;
    }
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
    check(rc as libc::c_int, || "close inherited descriptors".into())
}

fn set_limit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    name: &str,
) -> Result<(), JailerError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit for the call.
    check(unsafe { libc::setrlimit(resource, &limit) }, || {
        format!("set {name} to {value}")
    })
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}

/// Waits for the program and ends as it did; stop signals sent to the jailer reach it.
fn wait_as_parent(child: libc::pid_t) -> ! {
    CHILD.store(child, std::sync::atomic::Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `forward` only calls kill, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int to fill in.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: _exit ends this process.
            unsafe { libc::_exit(125) };
        }
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // SAFETY: the default action, then the same signal: the jailer ends as its child did
        // (its core limit is 0, so no core is written).
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    // SAFETY: _exit ends this process.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// Runs the jailed launch; returns only on an error before the fork or in the child.
pub fn run(spec: &JailSpec) -> JailerError {
    match launch(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn launch(spec: &JailSpec) -> Result<Never, JailerError> {
    for procs in &spec.cgroups {
        std::fs::write(procs, std::process::id().to_string()).map_err(|e| JailerError::Os {
            what: format!("join the cgroup of {}", procs.display()),
            source: e,
        })?;
    }
    close_others(&spec.keep_fds)?;
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    set_limit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    set_limit(libc::RLIMIT_NOFILE, spec.nofile, "RLIMIT_NOFILE")?;
    set_limit(libc::RLIMIT_FSIZE, spec.fsize, "RLIMIT_FSIZE")?;
    set_limit(libc::RLIMIT_NPROC, spec.nproc, "RLIMIT_NPROC")?;
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
    // SAFETY: unshare takes flags only; the jailer is single-threaded.
    check(unsafe { libc::unshare(flags) }, || {
        "make the jail's namespaces (mount, ipc, uts, pid)".into()
    })?;
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    check(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
        || "make the parent-alive pipe".into(),
    )?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: the jailer is single-threaded, so the child may run any code after the fork.
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(os("fork the jail's first process")),
        0 => {
            drop(write_end);
            let e = become_program(spec, read_end);
            eprintln!("vmpod-jailer: {}", crate::error::chain(&e));
            // SAFETY: _exit ends this process; the jailer reports the status.
            unsafe { libc::_exit(126) }
        }
        child => {
            drop(read_end);
            // The program's descriptors are its own: the jailer keeps none of them open.
            close_others(&[write_end.as_raw_fd()])?;
            // Held (never written) until the jailer ends: the child sees it close then.
            std::mem::forget(write_end);
            wait_as_parent(child)
        }
    }
}

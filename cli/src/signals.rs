//! Signals the CLI receives (Ctrl-C, SIGTERM, SIGWINCH), turned into a channel a thread can
//! read: the handler only writes the signal number to a pipe.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

static PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn forward(signal: libc::c_int) {
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; the pipe lives as long as the process.
    unsafe { libc::write(PIPE.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1) };
}

/// Installs the handlers; the returned reader yields one byte per signal.
pub fn catch(signals: &[libc::c_int]) -> std::io::Result<std::fs::File> {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: pipe2(2) fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned here.
    let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), fds[1]) };
    PIPE.store(fds[1], Ordering::Relaxed);
    for &signal in signals {
        // SAFETY: the handler only calls write(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            if libc::sigaction(signal, &action, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(std::fs::File::from(r))
}

pub fn next(reader: &mut std::fs::File) -> Option<i32> {
    let mut byte = [0u8; 1];
    match reader.read(&mut byte) {
        Ok(1) => Some(i32::from(byte[0])),
        _ => None,
    }
}

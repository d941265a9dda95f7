//! Small system calls the agent needs that its crates don't wrap: vsock listeners, the
//! SIGCHLD wake-up, the clock and the kernel's entropy pool.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A non-blocking vsock stream listener on `port` for any CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned on success.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm of the length given.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen(2) on a socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(fd)
}

/// The VM's vsock CID, or an error when the VM has no vsock device: without one, binding a
/// listener still works but no host can ever connect.
pub fn vsock_local_cid() -> io::Result<u32> {
    const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::Ioctl = 0x7b9;
    let dev = std::fs::File::open("/dev/vsock")?;
    let mut cid: u32 = libc::VMADDR_CID_ANY;
    // SAFETY: the ioctl writes one u32.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid) })?;
    if cid == libc::VMADDR_CID_ANY {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the VM has no vsock device, so the host cannot reach the agent",
        ));
    }
    Ok(cid)
}

/// Accepts one connection, non-blocking and close-on-exec; `None` when none is waiting.
pub fn accept(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    loop {
        // SAFETY: accept4(2) without an address buffer.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just returned by accept4(2).
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => {}
            // The peer gave up before we got to it: not the listener's fault.
            _ if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            _ => return Err(e),
        }
    }
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(2) on an fd the caller owns.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

static SIGCHLD_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGCHLD_FD.load(Ordering::Relaxed);
    let one: u64 = 1;
    // SAFETY: write(2) is async-signal-safe; the eventfd lives as long as the agent.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// An eventfd that becomes readable whenever a child changes state. A handler rather than a
/// signalfd: a signalfd needs SIGCHLD blocked, and a blocked mask is inherited by every
/// container process.
pub fn sigchld_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2).
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: fd was just returned by eventfd(2).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    SIGCHLD_FD.store(fd, Ordering::Relaxed);
    // SAFETY: installs a handler that only calls write(2); sigaction is plain data.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as *const () as usize;
        action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        cvt(libc::sigaction(
            libc::SIGCHLD,
            &action,
            std::ptr::null_mut(),
        ))?;
        // A closed stream must be an error on write, not the agent's death.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    Ok(owned)
}

pub fn drain_eventfd(fd: &OwnedFd) {
    let mut value = 0u64;
    // SAFETY: reads 8 bytes into a u64.
    unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
}

pub fn set_time(unix_secs: i64, nanos: u32) -> io::Result<()> {
    if nanos >= 1_000_000_000 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nanos must be below 1e9",
        ));
    }
    let ts = libc::timespec {
        tv_sec: unix_secs,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: clock_settime(2) reads one timespec.
    cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })?;
    Ok(())
}

/// The most entropy one request may add; the kernel's pool is 256 bytes anyway.
pub const MAX_ENTROPY: usize = 4096;

/// Mixes bytes into the kernel's pool and credits them (RNDADDENTROPY), which also reseeds
/// the CRNG: what a restored clone needs so it stops sharing its template's random state.
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() || bytes.len() > MAX_ENTROPY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "entropy must be 1 to {MAX_ENTROPY} bytes, not {}",
                bytes.len()
            ),
        ));
    }
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")?;
    const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size its header states.
    cvt(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) })?;
    // A clone of a template starts with its template's CRNG state: reseed now, not at the
    // kernel's next scheduled reseed, so no two clones hand out the same random bytes.
    const RNDRESEEDCRNG: libc::Ioctl = 0x5207;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    cvt(unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) })?;
    Ok(())
}

/// The VM's own identity: its hostname and /etc/machine-id (per sandbox, not per template).
pub fn set_identity(hostname: &str, machine_id: &str) -> io::Result<()> {
    let valid_host = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let valid_id = machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_host || !valid_id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("hostname {hostname:?} or machine-id {machine_id:?} is malformed"),
        ));
    }
    // SAFETY: the pointer and length describe `hostname`'s bytes.
    cvt(unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) })?;
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/machine-id", format!("{machine_id}\n"))
}

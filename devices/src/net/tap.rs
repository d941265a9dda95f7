//! A tap device opened by name (optionally inside a network namespace) or taken as an open fd.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFNAMSIZ: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} must be 1 to 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error("cannot attach to tap {name}: {source}")]
    Attach { name: String, source: io::Error },
    #[error("network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
    #[error("tap fd {fd}: {source}")]
    Fd { fd: RawFd, source: io::Error },
}

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    fd: OwnedFd,
}

impl Tap {
    /// Attaches to the tap called `name` (creating it if it does not exist), inside the network
    /// namespace at `netns` when given. The fd keeps working from our own namespace.
    pub fn open(name: &str, netns: Option<&Path>) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ {
            return Err(TapError::Name(name.to_string()));
        }
        match netns {
            None => Self::open_here(name),
            Some(path) => {
                let ns = File::open(path).map_err(|source| TapError::Netns {
                    path: path.display().to_string(),
                    source,
                })?;
                let name = name.to_string();
                let path = path.display().to_string();
                // setns(2) moves only the calling thread, so a short-lived thread does it.
                std::thread::spawn(move || {
                    // SAFETY: `ns` is an open namespace fd; CLONE_NEWNET limits what changes.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(TapError::Netns {
                            path,
                            source: io::Error::last_os_error(),
                        });
                    }
                    Self::open_here(&name)
                })
                .join()
                .unwrap_or_else(|_| Err(TapError::OpenTun(io::Error::other("thread panicked"))))
            }
        }
    }

    fn open_here(name: &str) -> Result<Tap, TapError> {
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap { fd: tun.into() })
    }

    /// Takes over an already attached tap fd (e.g. passed by the caller).
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: F_GETFL on an arbitrary number is harmless; it tells whether it is open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above, setting O_NONBLOCK on the fd we were handed.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::Fd {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the caller handed us this fd to own.
        Ok(Tap {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The attached fd, to hand to another process (a VMM).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Reads one frame; `WouldBlock` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a valid readable buffer of `frame.len()` bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_do_not_fit_are_refused() {
        assert!(matches!(Tap::open("", None), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-name-far-too-long", None),
            Err(TapError::Name(_))
        ));
    }

    #[test]
    fn missing_namespace_is_named() {
        let err = Tap::open("tap0", Some(Path::new("/run/netns/no-such-ns")))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("network namespace /run/netns/no-such-ns:"),
            "{err}"
        );
    }

    #[test]
    fn closed_fd_is_refused() {
        assert!(matches!(Tap::from_fd(987_654), Err(TapError::Fd { .. })));
    }
}

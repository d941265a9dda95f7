//! Telling a vhost-user front end that a device's configuration changed (a template's disk slot
//! got its disk): VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the backend request channel.
//!
//! The `vhost` crate receives that channel (SET_BACKEND_REQ_FD) and hands it over wrapped in a
//! `Backend` that can send several messages but not this one, and never shows its socket. So
//! the channel is found the one way left: it is the only unnamed Unix socket the process gained
//! that no device has claimed yet (the front end's own connections are bound to our listening
//! paths). One process serves several devices, so the claims are kept process-wide; the front
//! end sets up its devices one after the other, so only one channel is ever unclaimed.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

const CONFIG_CHANGE_MSG: u32 = 2;
const VERSION_1: u32 = 0x1;

/// Descriptor numbers above this are not looked at: the kernel hands out the lowest free
/// number, so a backend with thousands of descriptors open is not ours.
const FD_SCAN_LIMIT: RawFd = 1 << 16;

/// The highest descriptor number the process may have, bounded by [`FD_SCAN_LIMIT`].
fn fd_limit() -> RawFd {
    // SAFETY: an all-zero rlimit is a valid value to be filled in.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return FD_SCAN_LIMIT;
    }
    RawFd::try_from(limit.rlim_cur).map_or(FD_SCAN_LIMIT, |n| n.min(FD_SCAN_LIMIT))
}

/// The process's open descriptors below `limit`, by asking each number for its flags (not by
/// listing /proc/self/fd, which a confined or jailed backend cannot read).
pub fn open_fds(limit: RawFd) -> BTreeSet<RawFd> {
    (0..limit)
        // SAFETY: F_GETFD only reads a descriptor's flags; a closed number fails with EBADF.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .collect()
}

fn is_unnamed_unix_socket(fd: RawFd) -> bool {
    // SAFETY: an all-zero sockaddr_un is a valid value to be filled in.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr and len describe a buffer of the length given.
    let ok =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    let family_len = std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t;
    ok == 0 && addr.sun_family == libc::AF_UNIX as libc::sa_family_t && len <= family_len
}

/// The descriptors that are no device's channel: those open before serving began, and the
/// channels already claimed with their duplicates.
pub struct Channels {
    known: Mutex<BTreeSet<RawFd>>,
    /// Read once, before the process confines itself.
    fd_limit: RawFd,
}

impl Channels {
    /// Call before any front end connects.
    pub fn new() -> Channels {
        let fd_limit = fd_limit();
        Channels {
            known: Mutex::new(open_fds(fd_limit)),
            fd_limit,
        }
    }

    /// Claims the one new channel (see the module's comment), duplicated.
    pub fn claim(&self) -> Option<UnixStream> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let channel = find_channel(&known, self.fd_limit)?;
        if let Some(original) = open_fds(self.fd_limit)
            .difference(&known)
            .copied()
            .find(|fd| *fd != channel.as_raw_fd() && is_unnamed_unix_socket(*fd))
        {
            known.insert(original);
        }
        known.insert(channel.as_raw_fd());
        Some(channel)
    }
}

impl Default for Channels {
    fn default() -> Self {
        Channels::new()
    }
}

/// The backend request channel among the descriptors opened since `baseline`, duplicated.
fn find_channel(baseline: &BTreeSet<RawFd>, limit: RawFd) -> Option<UnixStream> {
    let fresh: Vec<RawFd> = open_fds(limit)
        .difference(baseline)
        .copied()
        .filter(|fd| is_unnamed_unix_socket(*fd))
        .collect();
    let [fd] = fresh.as_slice() else {
        tracing::warn!(
            "vhost-user: {} candidate channels to the front end, not one",
            fresh.len()
        );
        return None;
    };
    // SAFETY: the fd is open (it was just listed) and only borrowed to be duplicated.
    let borrowed = unsafe { BorrowedFd::borrow_raw(*fd) };
    borrowed
        .try_clone_to_owned()
        .ok()
        .map(UnixStream::from)
        .filter(|s| s.as_raw_fd() >= 0)
}

/// One config-change message: a 12-byte header (request, flags, size) and a u64 payload.
pub fn config_change_message() -> [u8; 20] {
    let mut msg = [0u8; 20];
    msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
    msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
    msg[8..12].copy_from_slice(&8u32.to_le_bytes());
    msg
}

pub fn send_config_change(channel: &mut UnixStream) -> std::io::Result<()> {
    channel.write_all(&config_change_message())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One try; other tests of this process may open sockets at the same moment.
    fn try_once() -> bool {
        let mut baseline = open_fds(fd_limit());
        let (front_end, channel_end) = UnixStream::pair().unwrap();
        // Both ends are new and unnamed: no single channel can be told apart.
        if find_channel(&baseline, fd_limit()).is_some() {
            return false;
        }
        baseline.insert(front_end.as_raw_fd());
        let Some(mut channel) = find_channel(&baseline, fd_limit()) else {
            return false;
        };
        drop(channel_end);
        send_config_change(&mut channel).unwrap();
        let mut got = [0u8; 20];
        std::io::Read::read_exact(&mut &front_end, &mut got).unwrap();
        assert_eq!(got, config_change_message());
        assert_eq!(u32::from_le_bytes(got[0..4].try_into().unwrap()), 2);
        true
    }

    #[test]
    fn the_channel_is_the_one_new_unnamed_socket() {
        assert!((0..50).any(|_| try_once()), "the channel was never found");
    }

    /// One try of two devices claiming in turn; other tests may open sockets meanwhile.
    fn claims_once() -> bool {
        let channels = Channels::new();
        let (first_front, first) = UnixStream::pair().unwrap();
        // The front end's end is bound in real life; here it is known from the start.
        channels
            .known
            .lock()
            .unwrap()
            .insert(first_front.as_raw_fd());
        let Some(mut claimed) = channels.claim() else {
            return false;
        };
        let (second_front, second) = UnixStream::pair().unwrap();
        channels
            .known
            .lock()
            .unwrap()
            .insert(second_front.as_raw_fd());
        let Some(mut claimed_second) = channels.claim() else {
            return false;
        };
        send_config_change(&mut claimed).unwrap();
        send_config_change(&mut claimed_second).unwrap();
        drop((first, second));
        let mut got = [0u8; 20];
        std::io::Read::read_exact(&mut &first_front, &mut got).unwrap();
        std::io::Read::read_exact(&mut &second_front, &mut got).unwrap();
        true
    }

    #[test]
    fn each_device_of_one_process_claims_its_own_channel() {
        assert!(
            (0..50).any(|_| claims_once()),
            "the channels were never told apart"
        );
    }
}

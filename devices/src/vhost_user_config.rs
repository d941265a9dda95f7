//! Telling a vhost-user front end that a device's configuration changed (a template's disk slot
//! got its disk): VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the backend request channel.
//!
//! The `vhost` crate receives that channel (SET_BACKEND_REQ_FD) and hands it over wrapped in a
//! `Backend` that can send several messages but not this one, and never shows its socket. So
//! the channel is found the one way left: it is the only unnamed Unix socket the process gained
//! since it started serving (the front end's own connection is bound to our listening path).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;

const CONFIG_CHANGE_MSG: u32 = 2;
const VERSION_1: u32 = 0x1;

/// The process's open descriptors.
pub fn open_fds() -> BTreeSet<RawFd> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // The listing's own descriptor is closed by now; its number must not count as taken.
    listed
        .into_iter()
        // SAFETY: F_GETFD only reads the descriptor's flags.
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

/// The backend request channel among the descriptors opened since `baseline`, duplicated.
pub fn find_channel(baseline: &BTreeSet<RawFd>) -> Option<UnixStream> {
    let fresh: Vec<RawFd> = open_fds()
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
        let mut baseline = open_fds();
        let (front_end, channel_end) = UnixStream::pair().unwrap();
        // Both ends are new and unnamed: no single channel can be told apart.
        if find_channel(&baseline).is_some() {
            return false;
        }
        baseline.insert(front_end.as_raw_fd());
        let Some(mut channel) = find_channel(&baseline) else {
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
}

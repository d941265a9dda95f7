//! docker's `USER` (name or number, optionally `:group`) resolved against the container's
//! own /etc/passwd and /etc/group: names mean what the image says they mean, not the host.

use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user '{0}': no such user in the container's /etc/passwd")]
    NoUser(String),
    #[error("group '{0}': no such group in the container's /etc/group")]
    NoGroup(String),
    #[error("user '{0}' is empty")]
    Empty(String),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub uid: u32,
    pub gid: u32,
    /// The groups /etc/group lists the user in, as docker adds them.
    pub additional_gids: Vec<u32>,
}

/// An image's file, read with a bound: the image is not trusted to keep it small.
fn read_small(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    text
}

/// `name:x:uid:gid:…` lines as (name, uid, gid); malformed lines are skipped as libc does.
fn passwd(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            *f.first()?,
            f.get(2)?.parse().ok()?,
            f.get(3)?.parse().ok()?,
        ))
    })
}

/// `name:x:gid:member,member` lines as (name, gid, members).
fn groups(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

pub fn resolve(rootfs: &Path, user: &str) -> Result<Resolved, UserError> {
    resolve_in(
        &read_small(&rootfs.join("etc/passwd")),
        &read_small(&rootfs.join("etc/group")),
        user,
    )
}

fn resolve_in(passwd_text: &str, group_text: &str, user: &str) -> Result<Resolved, UserError> {
    let (who, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if who.is_empty() || group == Some("") {
        return Err(UserError::Empty(user.into()));
    }
    let entry = passwd(passwd_text)
        .find(|(name, uid, _)| *name == who || who.parse::<u32>().ok() == Some(*uid));
    let (name, uid, mut gid) = match (entry, who.parse::<u32>()) {
        (Some(e), _) => (Some(e.0), e.1, e.2),
        // A number needs no passwd entry (docker runs it with group 0).
        (None, Ok(uid)) => (None, uid, 0),
        (None, Err(_)) => return Err(UserError::NoUser(who.into())),
    };
    if let Some(g) = group {
        gid = match groups(group_text).find(|(n, _, _)| *n == g) {
            Some((_, id, _)) => id,
            None => g.parse().map_err(|_| UserError::NoGroup(g.into()))?,
        };
    }
    let additional_gids = match (name, group) {
        (Some(name), None) => groups(group_text)
            .filter(|(_, id, members)| *id != gid && members.contains(&name))
            .map(|(_, id, _)| id)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Resolved {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\nbad line\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,root\nnogroup:x:65534:\napp:x:1000:\n";

    fn r(user: &str) -> Result<Resolved, UserError> {
        resolve_in(PASSWD, GROUP, user)
    }

    #[test]
    fn names_and_numbers_resolve_as_docker_resolves_them() {
        assert_eq!(
            r("app").unwrap(),
            Resolved {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10]
            }
        );
        assert_eq!(r("nobody").unwrap().gid, 65534);
        assert_eq!(r("1000").unwrap().gid, 1000, "uid found in passwd");
        assert_eq!(
            r("4242").unwrap(),
            Resolved {
                uid: 4242,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(r("app:wheel").unwrap().gid, 10);
        assert_eq!(r("app:77").unwrap().gid, 77);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(r("ghost"), Err(UserError::NoUser("ghost".into())));
        assert_eq!(r("app:ghosts"), Err(UserError::NoGroup("ghosts".into())));
        assert!(r(":0").is_err());
        assert!(r("app:").is_err());
    }
}

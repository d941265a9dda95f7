//! A container's bind mounts of host paths (containerd's /dev/shm, /etc/hosts, /etc/hostname,
//! /etc/resolv.conf; kubelet's volumes) reach the guest live through the sandbox's shared
//! directory: each source is bound into it, and the spec's source becomes the guest's path.

use oci_spec::runtime::Spec;
use std::path::PathBuf;
use std::sync::Mutex;
use vmpod_sandbox::shared::{self, SharedDir};
use vmpod_sandbox::SharedVolume;

fn is_bind(mount: &oci_spec::runtime::Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Shares every host bind of `spec` and points the spec at the guest's paths. Returns those
/// paths, to unshare when the container goes; on failure nothing stays shared.
pub fn share_host_binds(spec: &mut Spec, shared: &Mutex<SharedDir>) -> Result<Vec<String>, String> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    for mount in mounts.iter_mut().filter(|m| is_bind(m)) {
        let Some(source) = mount.source().clone() else {
            continue;
        };
        // The pod's /dev/shm is the guest's own (cri.rs).
        if source == std::path::Path::new(vmpod_protocol::POD_SHM_DIR) {
            continue;
        }
        let read_only = mount.options().iter().flatten().any(|o| o == "ro");
        let volume = SharedVolume {
            source: source.clone(),
            read_only,
        };
        let added = shared::lock(shared).add(&volume);
        match added {
            Ok(guest) => {
                mount.set_source(Some(PathBuf::from(&guest)));
                done.push(guest);
            }
            Err(e) => {
                unshare(shared, &done);
                return Err(format!(
                    "bind mount of host path {} at {}: {}",
                    source.display(),
                    mount.destination().display(),
                    vmpod_sandbox::error::chain(&e)
                ));
            }
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(done)
}

pub fn unshare(shared: &Mutex<SharedDir>, guest_paths: &[String]) {
    let mut shared = shared::lock(shared);
    for path in guest_paths {
        shared.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn am_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn host_binds_point_at_the_shared_directory_and_a_missing_source_undoes_the_rest() {
        if !am_root() {
            eprintln!("skipped: binding needs root");
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let state = scratch.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let hosts = scratch.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let shared = Mutex::new(SharedDir::create(&state).unwrap());
        let json = format!(
            r#"{{"ociVersion":"1.0.2","mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},{{"destination":"/etc/hosts","type":"bind","source":"{}","options":["rbind","ro"]}},{{"destination":"/dev/shm","type":"bind","source":"{}","options":["rbind"]}}]}}"#,
            hosts.display(),
            vmpod_protocol::POD_SHM_DIR
        );
        let mut spec: Spec = serde_json::from_str(&json).unwrap();
        let paths = share_host_binds(&mut spec, &shared).unwrap();
        assert_eq!(paths, ["/run/vmpod/shared/v0"]);
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(std::path::Path::new("proc"))
        );
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(std::path::Path::new("/run/vmpod/shared/v0"))
        );
        // The pod's /dev/shm stays the guest's.
        assert_eq!(
            mounts[2].source().as_deref(),
            Some(std::path::Path::new(vmpod_protocol::POD_SHM_DIR))
        );
        let seen = shared::lock(&shared).root().join("v0");
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap(),
            "127.0.0.1 localhost\n"
        );

        let json = format!(
            r#"{{"ociVersion":"1.0.2","mounts":[{{"destination":"/etc/hosts","type":"bind","source":"{}","options":["rbind"]}},{{"destination":"/data","type":"bind","source":"/no/such/dir","options":["rbind"]}}]}}"#,
            hosts.display()
        );
        let mut spec: Spec = serde_json::from_str(&json).unwrap();
        let err = share_host_binds(&mut spec, &shared).unwrap_err();
        assert!(
            err.contains("bind mount of host path /no/such/dir at /data"),
            "{err}"
        );
        let root = shared::lock(&shared).root().to_path_buf();
        assert!(!root.join("v1").exists(), "the first bind was not undone");
        unshare(&shared, &paths);
        assert!(!root.join("v0").exists());
        drop(shared);
        assert!(!vmpod_sandbox::shared::has_mounts_under(&state));
    }
}

//! `-v`, `--mount` and `--tmpfs` as docker reads them: host paths become live binds through
//! the sandbox's shared directory, tmpfs mounts live in the guest only.

use crate::Failure;
use oci_spec::runtime::{Mount, MountBuilder};
use std::path::{Path, PathBuf};
use vmpod_sandbox::shared::guest_path;
use vmpod_sandbox::SharedVolume;

/// One mount a user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserMount {
    /// A host directory or file, shared live.
    Bind {
        source: PathBuf,
        destination: String,
        read_only: bool,
    },
    /// A tmpfs in the guest's memory, gone with the container.
    Tmpfs {
        destination: String,
        options: Vec<String>,
    },
}

fn refuse(message: String) -> Failure {
    Failure::runtime(message)
}

fn destination(flag: &str, path: &str) -> Result<String, Failure> {
    if !path.starts_with('/') || path.trim_matches('/').is_empty() {
        return Err(refuse(format!(
            "{flag}: the container path '{path}' must be absolute and not /"
        )));
    }
    Ok(path.to_string())
}

/// `-v HOST:CTR[:OPTS]`: a missing host directory is created, as docker does.
pub fn parse_volume(spec: &str) -> Result<UserMount, Failure> {
    let flag = format!("-v {spec}");
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, ctr, options) = match parts[..] {
        [h, c] => (h, c, ""),
        [h, c, o] => (h, c, o),
        [_] => {
            return Err(refuse(format!(
                "{flag}: anonymous volumes are not supported; give HOST_PATH:CONTAINER_PATH"
            )))
        }
        _ => {
            return Err(refuse(format!(
                "{flag}: expected HOST_PATH:CONTAINER_PATH[:ro|:rw]"
            )))
        }
    };
    if !host.starts_with('/') {
        return Err(refuse(format!(
            "{flag}: '{host}' is not an absolute host path (named volumes are not supported)"
        )));
    }
    let mut read_only = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            // SELinux relabelling and propagation have no meaning across the VM boundary.
            "z" | "Z" | "rprivate" | "private" | "rslave" | "slave" | "rshared" | "shared" => {}
            other => {
                return Err(refuse(format!(
                    "{flag}: unknown option '{other}' (ro or rw)"
                )))
            }
        }
    }
    let destination = destination(&flag, ctr)?;
    let path = Path::new(host);
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(|e| refuse(format!("{flag}: create {host}: {e}")))?;
    }
    let source = path
        .canonicalize()
        .map_err(|e| refuse(format!("{flag}: {host}: {e}")))?;
    Ok(UserMount::Bind {
        source,
        destination,
        read_only,
    })
}

/// `--mount type=bind|tmpfs,source=…,target=…[,readonly]`: a missing bind source is refused.
pub fn parse_mount(spec: &str) -> Result<UserMount, Failure> {
    let flag = format!("--mount {spec}");
    let (mut typ, mut source, mut target, mut read_only) = ("volume", None, None, false);
    let mut tmpfs_options = Vec::new();
    for field in spec.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        match (key, value) {
            ("type", Some(v)) => typ = v,
            ("source" | "src", Some(v)) => source = Some(v),
            ("target" | "destination" | "dst", Some(v)) => target = Some(v),
            ("readonly" | "ro", None | Some("true" | "1")) => read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => read_only = false,
            ("bind-propagation" | "consistency", Some(_)) => {}
            ("tmpfs-size", Some(v)) => tmpfs_options.push(format!("size={v}")),
            ("tmpfs-mode", Some(v)) if u32::from_str_radix(v, 8).is_ok() => {
                tmpfs_options.push(format!("mode={v}"))
            }
            _ => return Err(refuse(format!("{flag}: unexpected field '{field}'"))),
        }
    }
    let Some(target) = target else {
        return Err(refuse(format!("{flag}: target is required")));
    };
    let destination = destination(&flag, target)?;
    match typ {
        "bind" => {
            let Some(source) = source else {
                return Err(refuse(format!("{flag}: source is required for a bind")));
            };
            let source = Path::new(source).canonicalize().map_err(|e| {
                refuse(format!(
                    "{flag}: bind source path does not exist: {source} ({e})"
                ))
            })?;
            Ok(UserMount::Bind {
                source,
                destination,
                read_only,
            })
        }
        "tmpfs" => {
            if source.is_some() {
                return Err(refuse(format!("{flag}: a tmpfs has no source")));
            }
            let mut options = tmpfs_defaults();
            options.extend(tmpfs_options);
            if read_only {
                options.push("ro".into());
            }
            Ok(UserMount::Tmpfs {
                destination,
                options,
            })
        }
        other => Err(refuse(format!(
            "{flag}: type '{other}' is not supported (bind or tmpfs)"
        ))),
    }
}

/// docker's options for a tmpfs nobody asked otherwise of.
fn tmpfs_defaults() -> Vec<String> {
    ["nosuid", "nodev", "noexec"].map(String::from).to_vec()
}

/// `--tmpfs PATH[:OPTIONS]`.
pub fn parse_tmpfs(spec: &str) -> Result<UserMount, Failure> {
    let flag = format!("--tmpfs {spec}");
    let (path, options) = spec.split_once(':').unwrap_or((spec, ""));
    let destination = destination(&flag, path)?;
    let mut all = tmpfs_defaults();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        if option.contains(['"', '\'']) {
            return Err(refuse(format!("{flag}: option '{option}' holds a quote")));
        }
        // A later exec/suid/dev undoes a default, as mount(8) reads them.
        all.retain(|o| format!("no{option}") != *o);
        all.push(option.to_string());
    }
    Ok(UserMount::Tmpfs {
        destination,
        options: all,
    })
}

/// Binds to share, in order (the i-th at `guest_path(i)`), and the spec's mounts for all, in
/// docker's order: a parent before what is mounted inside it.
pub fn plan(mut mounts: Vec<UserMount>) -> Result<(Vec<SharedVolume>, Vec<Mount>), Failure> {
    let key = |m: &UserMount| match m {
        UserMount::Bind { destination, .. } | UserMount::Tmpfs { destination, .. } => {
            Path::new(destination).components().count()
        }
    };
    mounts.sort_by_key(key);
    let mut shared = Vec::new();
    let mut spec_mounts = Vec::new();
    for mount in mounts {
        let built = match mount {
            UserMount::Bind {
                source,
                destination,
                read_only,
            } => {
                let guest = guest_path(shared.len() as u64);
                shared.push(SharedVolume { source, read_only });
                let mode = if read_only { "ro" } else { "rw" };
                MountBuilder::default()
                    .destination(destination)
                    .typ("bind")
                    .source(guest)
                    .options(vec!["rbind".to_string(), mode.to_string()])
                    .build()
            }
            UserMount::Tmpfs {
                destination,
                options,
            } => MountBuilder::default()
                .destination(destination)
                .typ("tmpfs")
                .source("tmpfs")
                .options(options)
                .build(),
        };
        spec_mounts.push(built.map_err(|e| refuse(format!("mount: {e}")))?);
    }
    Ok((shared, spec_mounts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(f: Failure) -> String {
        assert_eq!(f.0, 125);
        f.1
    }

    #[test]
    fn a_volume_is_read_write_unless_ro_and_its_missing_host_directory_is_made() {
        let scratch = tempfile::tempdir().unwrap();
        let host = scratch.path().join("made/here");
        let spec = format!("{}:/data", host.display());
        let UserMount::Bind { read_only, .. } = parse_volume(&spec).unwrap() else {
            panic!("not a bind")
        };
        assert!(!read_only);
        assert!(host.is_dir());
        let spec = format!("{}:/data:ro", host.display());
        assert!(matches!(
            parse_volume(&spec).unwrap(),
            UserMount::Bind {
                read_only: true,
                ..
            }
        ));
    }

    #[test]
    fn bad_volumes_are_refused_by_what_is_wrong() {
        for (bad, why) in [
            ("/tmp:/data:rx", "unknown option 'rx'"),
            ("/tmp:data", "must be absolute"),
            ("/tmp:/", "must be absolute"),
            ("name:/data", "named volumes"),
            ("/data", "anonymous volumes"),
            ("/a:/b:ro:x", "expected HOST_PATH"),
        ] {
            let m = message(parse_volume(bad).unwrap_err());
            assert!(m.contains(why), "{bad}: {m}");
        }
    }

    #[test]
    fn a_bind_mount_with_a_missing_source_is_refused_naming_it() {
        let m = message(parse_mount("type=bind,source=/no/such/dir,target=/data").unwrap_err());
        assert!(
            m.contains("bind source path does not exist: /no/such/dir"),
            "{m}"
        );
        assert!(matches!(
            parse_mount("type=bind,src=/tmp,dst=/data,readonly").unwrap(),
            UserMount::Bind {
                read_only: true,
                ..
            }
        ));
        for (bad, why) in [
            ("type=volume,source=x,target=/d", "type 'volume'"),
            ("type=bind,source=/tmp", "target is required"),
            ("type=bind,target=/d", "source is required"),
            (
                "type=bind,source=/tmp,target=/d,colour=red",
                "unexpected field",
            ),
        ] {
            let m = message(parse_mount(bad).unwrap_err());
            assert!(m.contains(why), "{bad}: {m}");
        }
    }

    #[test]
    fn tmpfs_takes_dockers_defaults_and_the_users_options() {
        assert_eq!(
            parse_tmpfs("/run:size=64m,exec").unwrap(),
            UserMount::Tmpfs {
                destination: "/run".into(),
                options: ["nosuid", "nodev", "size=64m", "exec"]
                    .map(String::from)
                    .to_vec(),
            }
        );
        assert!(message(parse_tmpfs("run").unwrap_err()).contains("must be absolute"));
    }

    #[test]
    fn mounts_are_ordered_parent_first_and_binds_numbered_as_shared() {
        let (shared, mounts) = plan(vec![
            UserMount::Bind {
                source: "/a".into(),
                destination: "/data/inner".into(),
                read_only: true,
            },
            UserMount::Tmpfs {
                destination: "/data".into(),
                options: vec![],
            },
            UserMount::Bind {
                source: "/b".into(),
                destination: "/other".into(),
                read_only: false,
            },
        ])
        .unwrap();
        let order: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            order,
            [
                Path::new("/data"),
                Path::new("/other"),
                Path::new("/data/inner")
            ]
        );
        assert_eq!(shared[0].source, Path::new("/b"));
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new(&guest_path(0)))
        );
        assert_eq!(
            mounts[2].options().as_deref(),
            Some(&["rbind".to_string(), "ro".to_string()][..])
        );
    }
}

//! The snapshotter's mounts in a Create request as erofs layer disks. overlayfs lowerdirs are
//! committed snapshots, immutable while they exist: each becomes one erofs image, cached by the
//! directory's fingerprint and shared by every pod using it. An upperdir with content (a
//! container restarted from its snapshot) is taken as one more layer; the container's own
//! writes go to a tmpfs upper in the guest.

use std::path::{Path, PathBuf};

/// Where converted snapshots live.
pub const CACHE: &str = "/var/lib/vmpod/snapshots";

/// containerd's `Mount` as far as the rootfs needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The directories that make up the rootfs, lowest first.
pub fn layer_dirs(mounts: &[Mount], bundle: &Path) -> Result<Vec<PathBuf>, String> {
    match mounts {
        // Nothing from a snapshotter: the rootfs is the bundle's rootfs directory.
        [] => Ok(vec![bundle.join("rootfs")]),
        [m] if m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") => {
            Ok(vec![PathBuf::from(&m.source)])
        }
        [m] if m.kind == "overlay" => {
            let option = |key: &str| {
                m.options
                    .iter()
                    .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            };
            let lower = option("lowerdir")
                .ok_or_else(|| format!("overlay rootfs without lowerdir: {:?}", m.options))?;
            // overlayfs lists the top layer first.
            let mut dirs: Vec<PathBuf> = lower.split(':').rev().map(PathBuf::from).collect();
            if let Some(upper) = option("upperdir") {
                let upper = PathBuf::from(upper);
                let has_content = std::fs::read_dir(&upper)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false);
                if has_content {
                    dirs.push(upper);
                }
            }
            Ok(dirs)
        }
        [m] => Err(format!(
            "rootfs mount of type '{}' is not supported (overlay and bind are)",
            m.kind
        )),
        _ => Err(format!(
            "{} rootfs mounts given; vmpod takes one (overlay or bind)",
            mounts.len()
        )),
    }
}

/// Each directory as a cached erofs image.
pub fn layer_images(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    dirs.iter()
        .map(|d| {
            vmpod_sandbox::erofs::cached_layer(d, Path::new(CACHE))
                .map_err(|e| format!("rootfs layer {}", vmpod_sandbox::error::chain(&e)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[&str]) -> Mount {
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_lowerdirs_become_layers_lowest_first() {
        let dirs = layer_dirs(
            &[overlay(&[
                "index=off",
                "workdir=/s/3/work",
                "upperdir=/nonexistent/upper",
                "lowerdir=/s/2/fs:/s/1/fs",
            ])],
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(dirs, [PathBuf::from("/s/1/fs"), PathBuf::from("/s/2/fs")]);
    }

    #[test]
    fn other_shapes() {
        assert_eq!(
            layer_dirs(&[], Path::new("/b")).unwrap(),
            [PathBuf::from("/b/rootfs")]
        );
        let bind = Mount {
            kind: "bind".into(),
            source: "/snap/7/fs".into(),
            options: vec!["rbind".into(), "rw".into()],
        };
        assert_eq!(
            layer_dirs(&[bind], Path::new("/b")).unwrap(),
            [PathBuf::from("/snap/7/fs")]
        );
        assert!(layer_dirs(&[overlay(&["upperdir=/u"])], Path::new("/b"))
            .unwrap_err()
            .contains("without lowerdir"));
        let odd = Mount {
            kind: "zfs".into(),
            source: "x".into(),
            options: vec![],
        };
        assert!(layer_dirs(&[odd], Path::new("/b"))
            .unwrap_err()
            .contains("'zfs'"));
    }
}

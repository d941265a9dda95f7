//! `--rootfs DIR` as a read-only erofs layer, built once per version of the directory and
//! cached under /var/cache/vmpod/rootfs.

use std::path::{Path, PathBuf};

const CACHE: &str = "/var/cache/vmpod/rootfs";

pub fn layer_for(dir: &Path) -> Result<PathBuf, String> {
    vmpod_sandbox::erofs::cached_layer(dir, Path::new(CACHE))
        .map_err(|e| format!("--rootfs {}", crate::chain(&e)))
}

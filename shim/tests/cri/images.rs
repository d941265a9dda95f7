//! The pods' images, built without a registry from the busybox OCI layout `make guest` makes:
//! a pause image and two images A and B, each busybox's layer plus one layer of its own (so the
//! shared base layer is one layer, attached once). Written as docker-archives for `ctr import`.

use super::containerd::{guest_dir, text};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PAUSE: &str = "localhost/vmpod-cri/pause:1";
/// busybox + /www/index.html: the app's document root.
pub const IMAGE_A: &str = "localhost/vmpod-cri/a:1";
/// busybox + /opt/b/marker: the init container's and the sidecar's.
pub const IMAGE_B: &str = "localhost/vmpod-cri/b:1";

pub const INDEX_HTML: &str = "hello from image A\n";
pub const B_MARKER: &str = "image B\n";

fn ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        text(&out.stderr)
    );
}

/// Builds the three images under `dir`; returns their archives.
pub fn build(dir: &Path) -> Vec<PathBuf> {
    let busybox = guest_dir().join("busybox-oci");
    assert!(
        busybox.join("index.json").is_file(),
        "{} is missing: run `make guest` first",
        busybox.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let layout = dir.join("layout");
    ok(
        "cp",
        &["-r", busybox.to_str().unwrap(), layout.to_str().unwrap()],
    );
    let image = |tag: &str| format!("{}:{tag}", layout.display());

    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), INDEX_HTML).unwrap();
    ok(
        "umoci",
        &[
            "insert",
            "--image",
            &image("latest"),
            "--tag",
            "a",
            www.to_str().unwrap(),
            "/www",
        ],
    );
    let b = dir.join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("marker"), B_MARKER).unwrap();
    ok(
        "umoci",
        &[
            "insert",
            "--image",
            &image("latest"),
            "--tag",
            "b",
            b.to_str().unwrap(),
            "/opt/b",
        ],
    );
    // The pause container only holds the pod's namespaces: busybox's sleep, no layer of its own.
    ok(
        "umoci",
        &[
            "config",
            "--image",
            &image("latest"),
            "--tag",
            "pause",
            "--config.entrypoint",
            "/bin/sleep",
            "--config.cmd",
            "2147483647",
        ],
    );
    [("pause", PAUSE), ("a", IMAGE_A), ("b", IMAGE_B)]
        .iter()
        .map(|(tag, name)| {
            let archive = dir.join(format!("{tag}.tar"));
            ok(
                "skopeo",
                &[
                    "--insecure-policy",
                    "copy",
                    "-q",
                    &format!("oci:{}", image(tag)),
                    &format!("docker-archive:{}:{name}", archive.display()),
                ],
            );
            archive
        })
        .collect()
}

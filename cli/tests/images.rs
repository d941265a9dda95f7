//! Images without a registry, end to end: archives built in the test (umoci, skopeo,
//! debootstrap), imported, run in real microVMs, removed.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const LAYERS: &str = "/var/lib/vmpod/images/layers";
const TMP: &str = "/var/lib/vmpod/images/tmp";

/// The two-layer test image (whiteouts, a user, a full config) in three forms.
fn test_image(scratch: &support::Scratch) -> PathBuf {
    let out = scratch.path("image");
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new(repo_root().join("cli/tests/make-test-image.sh"))
        .arg(&out)
        .arg(rootfs())
        .status()
        .expect("run make-test-image.sh (umoci, skopeo)");
    assert!(status.success(), "make-test-image.sh failed");
    out
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn oci_and_docker_archives_import_once_and_run_as_their_config_says() {
    let _serial = serial();
    let layers_before = entries(LAYERS);
    let scratch = support::Scratch::new("images");
    let image = test_image(&scratch);

    ok(&[
        "image",
        "import",
        image.join("oci.tar").to_str().unwrap(),
        "vmpod-test/oci:1",
    ]);
    // Entrypoint + Cmd, Env, WorkingDir and User (a name the image's passwd defines).
    assert_eq!(
        ok(&["run", "--rm", "vmpod-test/oci:1"]),
        "hi from /opt as app\n"
    );
    // Arguments replace Cmd and keep the Entrypoint; -e, -w and -u override the config.
    assert_eq!(
        ok(&[
            "run",
            "--rm",
            "-e",
            "GREETING=yo",
            "-w",
            "/",
            "-u",
            "0",
            "vmpod-test/oci:1",
            "echo $GREETING $(pwd) $(id -u)",
        ]),
        "yo / 0\n"
    );
    // Layer two's whiteouts hide layer one's file and directory.
    assert_eq!(
        ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            "vmpod-test/oci:1",
            "-c",
            "cat /opt/keep/a; ls /etc/motd /opt/drop 2>&1 | wc -l",
        ]),
        "a\n2\n"
    );

    // The same layers again, from a docker-archive and from the OCI layout directory:
    // nothing is converted a second time.
    let new_layers: Vec<String> = entries(LAYERS)
        .into_iter()
        .filter(|l| !layers_before.contains(l))
        .collect();
    assert_eq!(new_layers.len(), 2, "{new_layers:?}");
    let stamps: Vec<_> = new_layers
        .iter()
        .map(|l| modified(&Path::new(LAYERS).join(l)))
        .collect();
    ok(&[
        "image",
        "import",
        image.join("docker.tar").to_str().unwrap(),
    ]);
    ok(&[
        "image",
        "import",
        image.join("oci").to_str().unwrap(),
        "vmpod-test/layout",
    ]);
    let again: Vec<_> = new_layers
        .iter()
        .map(|l| modified(&Path::new(LAYERS).join(l)))
        .collect();
    assert_eq!(stamps, again, "a second import rebuilt a layer");
    assert_eq!(
        ok(&["run", "--rm", "vmpod-test/docker:1"]),
        "hi from /opt as app\n",
        "the docker-archive's name (docker.io/vmpod-test/docker:1) in docker's short form"
    );
    assert_eq!(
        ok(&["run", "--rm", "vmpod-test/layout"]),
        "hi from /opt as app\n"
    );
    let listed = ok(&["images"]);
    for name in ["vmpod-test/oci", "vmpod-test/docker", "vmpod-test/layout"] {
        assert!(listed.contains(name), "{listed}");
    }

    // Removing one keeps the layers the others share; removing all frees them.
    ok(&["image", "rm", "vmpod-test/oci:1", "vmpod-test/docker:1"]);
    assert_eq!(entries(LAYERS).len(), layers_before.len() + 2);
    ok(&["image", "rm", "vmpod-test/layout"]);
    assert_eq!(entries(LAYERS), layers_before);
    assert!(entries(TMP).is_empty(), "{:?}", entries(TMP));
}

#[test]
fn bad_archives_and_names_exit_125_naming_the_problem_and_leave_nothing() {
    let _serial = serial();
    let layers_before = entries(LAYERS);
    let listed_before = ok(&["images"]);
    let scratch = support::Scratch::new("bad-images");
    let image = test_image(&scratch);

    std::fs::write(scratch.path("garbage.tar"), vec![0x5au8; 4096]).unwrap();
    let full = std::fs::read(image.join("oci.tar")).unwrap();
    std::fs::write(scratch.path("truncated.tar"), &full[..full.len() / 2]).unwrap();
    // A layer blob with one byte changed: its digest no longer matches.
    let tampered = scratch.path("tampered");
    let status = Command::new("cp")
        .args(["-a"])
        .arg(image.join("oci"))
        .arg(&tampered)
        .status()
        .unwrap();
    assert!(status.success());
    let blobs = tampered.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    std::fs::create_dir_all(scratch.path("empty-dir")).unwrap();

    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["image".into(), "import".into(), "/no/such/file.tar".into()],
            "/no/such/file.tar",
        ),
        (
            vec![
                "image".into(),
                "import".into(),
                s(scratch.path("garbage.tar")),
                "x".into(),
            ],
            "garbage.tar",
        ),
        (
            vec![
                "image".into(),
                "import".into(),
                s(scratch.path("truncated.tar")),
                "x".into(),
            ],
            "truncated.tar",
        ),
        (
            vec!["image".into(), "import".into(), s(tampered), "x".into()],
            "does not match",
        ),
        (
            vec![
                "image".into(),
                "import".into(),
                s(scratch.path("empty-dir")),
                "x".into(),
            ],
            "neither an OCI layout",
        ),
        (
            vec!["image".into(), "import".into(), s(image.join("oci"))],
            "names only the tag 't'",
        ),
        (
            vec![
                "image".into(),
                "import".into(),
                s(image.join("oci.tar")),
                "Not A Name".into(),
            ],
            "'Not A Name' is not an image name",
        ),
        (
            vec!["image".into(), "rm".into(), "vmpod-test/never".into()],
            "no image 'vmpod-test/never'",
        ),
        // An absent image is pulled first; here from a loopback port nothing listens on.
        (
            vec![
                "run".into(),
                "--rm".into(),
                "127.0.0.1:1/vmpod-test/never".into(),
            ],
            "cannot reach the registry 127.0.0.1:1",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = vmpod(&args, None);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?} should say {needle}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(ok(&["images"]), listed_before);
    assert!(entries(TMP).is_empty(), "{:?}", entries(TMP));
    // The tampered layer was refused before it reached the store.
    let added: Vec<String> = entries(LAYERS)
        .into_iter()
        .filter(|l| !layers_before.contains(l))
        .collect();
    assert!(
        added.iter().all(|l| !l.ends_with(".tmp")),
        "half-built layers: {added:?}"
    );
}

#[test]
fn a_debian_image_from_debootstrap_runs_perl() {
    let _serial = serial();
    let built = Command::new(repo_root().join("scripts/build-debian-image.sh"))
        .output()
        .expect("run scripts/build-debian-image.sh (debootstrap, umoci)");
    assert!(
        built.status.success(),
        "build-debian-image.sh: {}",
        text(&built.stderr)
    );
    let layout = text(&built.stdout).trim().to_string();
    ok(&["image", "import", &layout, "vmpod-test/debian:bookworm"]);
    let out = ok(&[
        "run",
        "--rm",
        "vmpod-test/debian:bookworm",
        "perl",
        "-e",
        "open(my $f, '<', '/etc/debian_version') or die; my $v = <$f>; print \"perl $^V on Debian $v\"",
    ]);
    assert!(
        out.starts_with("perl v5.") && out.contains("on Debian 12."),
        "{out}"
    );
    ok(&["image", "rm", "vmpod-test/debian:bookworm"]);
}

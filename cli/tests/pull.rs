//! `vmpod pull` and `vmpod run` of an absent image against Debian's real docker-registry on
//! loopback: one open registry and one behind htpasswd, started once per test binary, fed
//! with skopeo from OCI layouts built here (busybox, the two-layer test image, a multi-arch
//! index, an image whose blob is then corrupted, a big one pulled through a throttling proxy).
//! Each test pulls into its own store (its own vmpod.toml), so they run in parallel.
//!
//! (Over 600 lines: one test binary, so that its tests share the registries it starts.)

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const USER: &str = "puller";
const PASSWORD: &str = "s3cret";

/// A docker-registry serving a directory. A shell watches the test binary: when its stdin
/// closes (the binary exits, passes or fails), it stops the registry and removes the directory.
struct Registry {
    addr: String,
    dir: PathBuf,
    /// The watchdog and the pipe whose end tells it to stop.
    _watch: std::sync::Mutex<(Child, ChildStdin)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl Registry {
    fn start(dir: PathBuf, htpasswd: Option<&Path>) -> Registry {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let auth = htpasswd.map_or(String::new(), |file| {
            format!(
                "auth:\n  htpasswd:\n    realm: vmpod-test\n    path: {}\n",
                file.display()
            )
        });
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let mut watch = Command::new("sh")
            .arg("-c")
            .arg(
                "dir=$1; /usr/bin/docker-registry serve \"$dir/config.yml\" >\"$dir/registry.log\" 2>&1 &
                 pid=$!; read _; kill $pid; wait $pid 2>/dev/null; rm -rf \"$dir\"",
            )
            .arg("sh")
            .arg(&dir)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/docker-registry (apt-get install docker-registry)");
        let stdin = watch.stdin.take().unwrap();
        let registry = Registry {
            addr,
            dir,
            _watch: std::sync::Mutex::new((watch, stdin)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                registry.addr,
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Requests for `repo`'s blobs among `digests`, as the access log shows them.
    fn blob_gets(&self, repo: &str, digests: &[String]) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/{repo}/blobs/")))
            .filter(|l| digests.iter().any(|d| l.contains(d.as_str())))
            .count()
    }

    fn push(&self, from: &str, to: &str, extra: &[&str]) {
        let status = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .args(extra)
            .arg(from)
            .arg(format!("docker://{}/{to}", self.addr))
            .status()
            .expect("run skopeo");
        assert!(status.success(), "skopeo copy {from} {to}");
    }
}

/// What the tests pull: the registries, the digests to look for, a throttled way in.
struct Fixture {
    open: Registry,
    auth: Registry,
    /// The busybox image's config digest (its ID).
    busybox_id: String,
    /// The multi-arch index's digest.
    multi_index: String,
    /// The two-layer image's layer blobs.
    layered_layers: Vec<String>,
    /// The corrupted image's layer diff_id, never to be found in a store.
    corrupt_diff_id: String,
    /// A proxy to the open registry that sends about 4 MB/s.
    slow_addr: String,
}

fn run_script(script: &str, args: &[&Path]) {
    let status = Command::new(repo_root().join(script))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} failed");
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    std::fs::write(blob(layout, &digest), bytes).unwrap();
    digest
}

/// The manifest the layout's index.json names first.
fn manifest_of(layout: &Path) -> (String, serde_json::Value) {
    let index = read_json(&layout.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = read_json(&blob(layout, &digest));
    (digest, manifest)
}

/// An OCI layout holding one index: busybox for linux/arm64 (the same layer, a config that
/// says arm64) listed before busybox for linux/amd64.
fn multi_arch_layout(busybox: &Path, out: &Path) -> String {
    let status = Command::new("cp")
        .arg("-a")
        .arg(busybox)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
    let (amd64_digest, amd64) = manifest_of(out);
    let amd64_bytes = std::fs::read(blob(out, &amd64_digest)).unwrap();
    let mut config = read_json(&blob(out, amd64["config"]["digest"].as_str().unwrap()));
    config["architecture"] = "arm64".into();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let mut arm64 = amd64.clone();
    arm64["config"]["digest"] = write_blob(out, &config_bytes).into();
    arm64["config"]["size"] = config_bytes.len().into();
    let arm64_bytes = serde_json::to_vec(&arm64).unwrap();
    let arm64_digest = write_blob(out, &arm64_bytes);
    let entry = |digest: &str, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(&arm64_digest, arm64_bytes.len(), "arm64"),
            entry(&amd64_digest, amd64_bytes.len(), "amd64"),
        ]
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = write_blob(out, &index_bytes);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}
        }]
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    index_digest
}

/// Forwards connections to `upstream`, sending its answers in 16 KiB pieces 4 ms apart.
fn throttling_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut client_in, mut server_out) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
                let _ = server_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut server_in, mut client_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = server_in.read(&mut buf) {
                    if n == 0 || client_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(4));
                }
                let _ = client_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = |name: &str| {
            let dir =
                std::env::temp_dir().join(format!("vmpod-test-pull-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
        let open = Registry::start(dir("open"), None);
        let images = open.dir.join("images");
        std::fs::create_dir_all(&images).unwrap();

        let busybox = guest_dir().join("busybox-oci");
        assert!(
            busybox.is_dir(),
            "{} is missing: run `make guest`",
            busybox.display()
        );
        open.push(
            &format!("oci:{}:latest", busybox.display()),
            "single:1",
            &[],
        );
        let (_, manifest) = manifest_of(&busybox);
        let busybox_id = manifest["config"]["digest"].as_str().unwrap().to_string();

        let multi = images.join("multi");
        let multi_index = multi_arch_layout(&busybox, &multi);
        open.push(
            &format!("oci:{}:multi", multi.display()),
            "multi:1",
            &["--all"],
        );

        let layered = images.join("layered");
        std::fs::create_dir_all(&layered).unwrap();
        run_script("cli/tests/make-test-image.sh", &[&layered, &rootfs()]);
        let layered_oci = format!("oci:{}:t", layered.join("oci").display());
        open.push(&layered_oci, "layered:1", &[]);
        open.push(&layered_oci, "again:1", &[]);
        let (_, manifest) = manifest_of(&layered.join("oci"));
        let layered_layers = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();

        // A layer of its own (no other image shares the blob), then damaged in the registry.
        let tree = images.join("corrupt-tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("only-here"), format!("{:?}", Instant::now())).unwrap();
        let corrupt = images.join("corrupt");
        run_script(
            "scripts/oci-image-from-dir.sh",
            &[&tree, &corrupt, Path::new("c")],
        );
        open.push(&format!("oci:{}:c", corrupt.display()), "corrupt:1", &[]);
        let (_, manifest) = manifest_of(&corrupt);
        let config = read_json(&blob(
            &corrupt,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        let corrupt_diff_id = config["rootfs"]["diff_ids"][0]
            .as_str()
            .unwrap()
            .to_string();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap();
        let hex = layer.trim_start_matches("sha256:");
        let data = open
            .dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = std::fs::read(&data).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&data, bytes).unwrap();

        // 24 MB that gzip cannot shrink: seconds to come through the proxy.
        let tree = images.join("big-tree");
        std::fs::create_dir_all(&tree).unwrap();
        let mut random = vec![0u8; 24 << 20];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut random)
            .unwrap();
        std::fs::write(tree.join("random"), random).unwrap();
        let big = images.join("big");
        run_script(
            "scripts/oci-image-from-dir.sh",
            &[&tree, &big, Path::new("b")],
        );
        open.push(&format!("oci:{}:b", big.display()), "big:1", &[]);
        std::fs::remove_dir_all(&images).unwrap();

        let auth_dir = dir("auth");
        let htpasswd = auth_dir.join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("run htpasswd (apt-get install apache2-utils)");
        assert!(out.status.success());
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        let auth = Registry::start(auth_dir, Some(&htpasswd));
        auth.push(
            &format!("oci:{}:latest", busybox.display()),
            "private:1",
            &["--dest-creds", &format!("{USER}:{PASSWORD}")],
        );
        let slow_addr = throttling_proxy(open.addr.clone());
        Fixture {
            open,
            auth,
            busybox_id,
            multi_index,
            layered_layers,
            corrupt_diff_id,
            slow_addr,
        }
    })
}

/// A test's own image store and docker config, removed with it.
struct Host {
    scratch: support::Scratch,
}

impl Host {
    fn new(name: &str) -> Host {
        let scratch = support::Scratch::new(&format!("pull-{name}"));
        std::fs::create_dir_all(scratch.path("docker")).unwrap();
        let host = Host { scratch };
        host.config("");
        host
    }

    /// The test's vmpod.toml: its own store, and `more`.
    fn config(&self, more: &str) {
        let store = self.scratch.path("store");
        std::fs::write(
            self.scratch.path("vmpod.toml"),
            format!("image_store = \"{}\"\n{more}", store.display()),
        )
        .unwrap();
    }

    fn credentials(&self, registry: &str, user: &str, password: &str) {
        use std::fmt::Write as _;
        let plain = format!("{user}:{password}");
        // base64 by hand: the test needs no crate for twelve lines.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut auth = String::new();
        for chunk in plain.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    auth.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    auth.push('=');
                }
            }
        }
        let mut text = String::new();
        let _ = write!(
            text,
            r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#
        );
        std::fs::write(self.scratch.path("docker/config.json"), text).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vmpod"));
        command
            .args(args)
            .env("VMPOD_CONFIG", self.scratch.path("vmpod.toml"))
            .env("DOCKER_CONFIG", self.scratch.path("docker"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn vmpod(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run vmpod")
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.vmpod(args))
    }

    /// `vmpod ARGS` fails with 125 and one line of stderr, which it returns.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.vmpod(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "vmpod {args:?}: {stderr}");
        eprint!("vmpod {}: {stderr}", args.join(" "));
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        stderr
    }

    fn store(&self, dir: &str) -> Vec<String> {
        entries(self.scratch.path("store").join(dir))
    }

    fn has_layer(&self, diff_id: &str) -> bool {
        let hex = diff_id.trim_start_matches("sha256:");
        self.store("layers").contains(&format!("{hex}.erofs"))
    }
}

#[test]
fn a_pulled_image_runs_and_run_pulls_an_absent_one() {
    support::require_kvm();
    let f = fixture();
    let host = Host::new("run");
    let id = host.ok(&["pull", &format!("{}/single:1", f.open.addr)]);
    assert_eq!(id.trim(), f.busybox_id);
    let images = host.ok(&["images"]);
    assert!(
        images.contains(&format!("{}/single", f.open.addr)),
        "{images}"
    );
    assert_eq!(
        host.ok(&[
            "run",
            "--rm",
            &format!("{}/single:1", f.open.addr),
            "echo",
            "pulled"
        ]),
        "pulled\n"
    );
    // Not in the store: run pulls it first, then runs it as its config says.
    let out = host.vmpod(&["run", "--rm", &format!("{}/layered:1", f.open.addr)]);
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (Some(0), "hi from /opt as app\n"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("Unable to find image"));
    assert!(host.store("tmp").is_empty(), "{:?}", host.store("tmp"));
}

#[test]
fn a_multi_arch_index_resolves_to_linux_amd64_also_by_digest() {
    let f = fixture();
    let host = Host::new("multi");
    let id = host.ok(&["pull", &format!("{}/multi:1", f.open.addr)]);
    assert_eq!(id.trim(), f.busybox_id, "the amd64 config, not arm64's");
    let by_digest = format!("{}/multi@{}", f.open.addr, f.multi_index);
    assert_eq!(host.ok(&["pull", &by_digest]).trim(), f.busybox_id);
    let images = host.ok(&["images"]);
    assert!(images.contains("<none>"), "{images}");
    assert_eq!(host.store("layers").len(), 1, "one layer for both names");
}

#[test]
fn a_second_pull_fetches_no_layer() {
    let f = fixture();
    let host = Host::new("again");
    let reference = format!("{}/again:1", f.open.addr);
    host.ok(&["pull", &reference]);
    let first = f.open.blob_gets("again", &f.layered_layers);
    assert_eq!(first, f.layered_layers.len(), "{}", f.open.log());
    host.ok(&["pull", &reference]);
    assert_eq!(f.open.blob_gets("again", &f.layered_layers), first);
}

#[test]
fn concurrent_pulls_sharing_a_layer_all_succeed_and_the_store_holds_it_once() {
    let f = fixture();
    let host = Host::new("concurrent");
    let references = ["single:1", "multi:1", "single:1"].map(|r| format!("{}/{r}", f.open.addr));
    let children: Vec<Child> = references
        .iter()
        .map(|r| host.command(&["pull", r]).spawn().unwrap())
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    assert_eq!(host.store("tmp"), Vec::<String>::new());
    let layers = host.store("layers");
    assert_eq!(layers.len(), 1, "{layers:?}");
    let images = host.ok(&["images"]);
    assert!(
        images.contains(&format!("{}/single", f.open.addr)),
        "{images}"
    );
    assert!(
        images.contains(&format!("{}/multi", f.open.addr)),
        "{images}"
    );
    // The layer is whole: an erofs image (its superblock magic at 1024).
    let bytes = std::fs::read(host.scratch.path("store/layers").join(&layers[0])).unwrap();
    assert_eq!(bytes[1024..1028], 0xE0F5_E1E2u32.to_le_bytes());
}

#[test]
fn bad_input_exits_125_with_one_line_naming_the_problem() {
    let f = fixture();
    let host = Host::new("bad");
    let line = host.fails(&["pull", &format!("{}/corrupt:1", f.open.addr)]);
    assert!(line.contains("does not match its digest"), "{line}");
    assert!(!host.has_layer(&f.corrupt_diff_id));
    let line = host.fails(&["pull", &format!("{}/single:nope", f.open.addr)]);
    assert!(line.contains("has no image"), "{line}");
    let closed = format!("127.0.0.1:{}", free_port());
    let line = host.fails(&["pull", &format!("{closed}/single:1")]);
    assert!(
        line.contains(&format!("cannot reach the registry {closed}")),
        "{line}"
    );
    let line = host.fails(&["pull", "Not/A/Name"]);
    assert!(line.contains("not an image reference"), "{line}");
    let private = format!("{}/private:1", f.auth.addr);
    let line = host.fails(&["pull", &private]);
    assert!(line.contains("refused access (no credentials"), "{line}");
    host.credentials(&f.auth.addr, USER, "wrong");
    let line = host.fails(&["pull", &private]);
    assert!(
        line.contains("credentials in the docker config were refused"),
        "{line}"
    );
    host.credentials(&f.auth.addr, USER, PASSWORD);
    assert_eq!(host.ok(&["pull", &private]).trim(), f.busybox_id);
    assert!(host.store("tmp").is_empty(), "{:?}", host.store("tmp"));
}

#[test]
fn insecure_registries_in_vmpod_toml_are_spoken_to_over_plain_http() {
    let f = fixture();
    let host = Host::new("insecure");
    // The same registry under a name docker's localhost rule does not cover (0.0.0.0 reaches
    // the host's own loopback listener): TLS first, which a plain-HTTP registry cannot answer.
    let port = f.open.addr.rsplit(':').next().unwrap();
    let other = format!("0.0.0.0:{port}");
    let reference = format!("{other}/single:1");
    host.fails(&["pull", &reference]);
    host.config(&format!("insecure_registries = [\"{other}\"]\n"));
    assert_eq!(host.ok(&["pull", &reference]).trim(), f.busybox_id);
}

#[test]
fn sigint_mid_pull_leaves_no_partial_layer_and_no_temporary_file() {
    let f = fixture();
    let host = Host::new("sigint");
    let child = host
        .command(&["pull", &format!("{}/big:1", f.slow_addr)])
        .spawn()
        .unwrap();
    // Interrupt once the blob is coming in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let tmp = host.scratch.path("store/tmp");
    loop {
        let arriving = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| std::fs::metadata(d.path().join("blob")).is_ok_and(|m| m.len() > (1 << 20)));
        if arriving {
            break;
        }
        assert!(Instant::now() < deadline, "the big blob never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(host.store("tmp"), Vec::<String>::new());
    assert_eq!(host.store("layers"), Vec::<String>::new());
    assert!(!host.ok(&["images"]).contains("big"));
}

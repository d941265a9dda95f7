//! Helpers every crate's end-to-end tests share (included with `#[path]`): the Linux test
//! guest, KVM checks, scratch directories that clean up after failures, and the host side of
//! the device exercises the test initramfs runs in the guest.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Children die with the test thread that spawned them (PDEATHSIG follows the thread), even
/// when a failed assertion or a kill skips their owner's destructors.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// The guest artefacts: $VMPOD_GUEST_DIR, else the tree's build/guest.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("VMPOD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest"))
}

/// The processes whose command line mentions `needle` (e.g. a state directory): pid and
/// command line.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// The guest kernel and test initramfs, as `make guest` builds them into build/guest.
pub fn linux_guest() -> (PathBuf, PathBuf) {
    let dir = guest_dir();
    let kernel = dir.join("vmlinux");
    let initrd = dir.join("test-initramfs.cpio");
    assert!(
        kernel.is_file() && initrd.is_file(),
        "the Linux guest is missing from {}: run `make guest` (or `make test`) first",
        dir.display()
    );
    (kernel, initrd)
}

/// These tests boot real VMs; a machine without KVM must fail them loudly, never skip them.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test boots a real VM and needs /dev/kvm, which cannot be opened: {e}");
    }
}

pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vmpod-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read scratch dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What the test init reported as `vmpod-init: <key>...`.
pub fn report<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.strip_prefix("vmpod-init: ")?.strip_prefix(key))
        .map(str::trim)
}

/// The disks of the test init's "devices" mode: a read-only erofs image (serial "layer0")
/// holding 1 MiB of pseudo-random `payload.bin`, and a 1 MiB raw scratch disk ("scratch").
pub struct DiskFixture {
    pub payload_sha256: String,
    pub erofs: PathBuf,
    pub erofs_bytes: Vec<u8>,
    pub scratch: PathBuf,
}

impl DiskFixture {
    pub fn new(dir: &Scratch) -> DiskFixture {
        let tree = dir.path("tree");
        std::fs::create_dir(&tree).unwrap();
        let payload: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(tree.join("payload.bin"), &payload).unwrap();
        let erofs = dir.path("layer.erofs");
        let status = Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&erofs)
            .arg(&tree)
            .status()
            .expect("run mkfs.erofs (erofs-utils)");
        assert!(status.success(), "mkfs.erofs failed");
        let out = Command::new("sha256sum")
            .arg(tree.join("payload.bin"))
            .output()
            .expect("run sha256sum");
        let payload_sha256 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("sha256sum output")
            .to_string();
        let scratch = dir.path("scratch.img");
        std::fs::write(&scratch, vec![0u8; 1 << 20]).unwrap();
        DiskFixture {
            payload_sha256,
            erofs_bytes: std::fs::read(&erofs).unwrap(),
            erofs,
            scratch,
        }
    }

    /// Checks what the guest reported and what it left on the disks.
    pub fn check(&self, console: &str) {
        let erofs_line =
            report(console, "erofs sha256 ").unwrap_or_else(|| panic!("no erofs line:\n{console}"));
        assert!(erofs_line.starts_with(&self.payload_sha256), "{erofs_line}");
        let hwrng =
            report(console, "hwrng ").unwrap_or_else(|| panic!("no hwrng line:\n{console}"));
        assert_eq!(hwrng.len(), 32, "16 bytes in hex: {hwrng}\n{console}");
        assert_ne!(hwrng, "0".repeat(32));
        assert!(report(console, "scratch written").is_some(), "{console}");
        let written = std::fs::read(&self.scratch).unwrap();
        assert_eq!(&written[..21], b"written by the guest\n");
        assert!(written[21..512].iter().all(|&b| b == 0));
        assert!(
            report(console, "layer write refused").is_some(),
            "{console}"
        );
        assert_eq!(
            std::fs::read(&self.erofs).unwrap(),
            self.erofs_bytes,
            "read-only disk changed"
        );
    }
}

/// The host side of the test init's "vsock" mode, against the VM's hybrid vsock socket `uds`.
/// Call `listen_for_guest` before the guest boots, then `echo_through_guest` while it runs.
pub struct VsockExercise {
    guest_side: JoinHandle<String>,
}

impl VsockExercise {
    /// The guest connects to host port 5000, says hello and reads our answer.
    pub fn listen_for_guest(uds: &Path) -> VsockExercise {
        let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
        let guest_side = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("guest connection");
            let mut message = String::new();
            stream.read_to_string(&mut message).expect("guest message");
            stream.write_all(b"hello from the host").unwrap();
            message
        });
        VsockExercise { guest_side }
    }

    /// Waits for the guest's echo server on port 1024 and sends 64 KiB through it.
    /// `vm` runs the guest: if it ends first, the test fails at once instead of waiting.
    pub fn echo_through_guest(&self, uds: &Path, console: &Path, vm: &mut Child) {
        wait_for_guest_listener(console, vm);
        echo_stream(uds, 64 << 10, 0);
    }

    pub fn check(self, console: &str) {
        assert_eq!(self.guest_side.join().unwrap(), "hello from the guest");
        assert!(
            console.contains("vsock-test: received hello from the host"),
            "{console}"
        );
        assert!(
            console.contains("vsock-test: echoed 65536 bytes on 1 connections"),
            "{console}"
        );
    }
}

/// A network namespace with a tap at 10.77.0.1/24 and an HTTP server there handing out
/// `payload` as /payload.bin, for the test init's "net" mode. Removed on drop.
pub struct NetFixture {
    pub name: String,
    pub tap: String,
    pub payload_sha256: String,
    server: Option<JoinHandle<()>>,
}

impl NetFixture {
    pub fn new(tag: &str) -> NetFixture {
        let name = format!("vmpod-{tag}-{}", std::process::id());
        let tap = "vmtap0".to_string();
        let ip = |args: &[&str]| {
            let status = Command::new("ip")
                .args(args)
                .status()
                .expect("run ip (iproute2)");
            assert!(status.success(), "ip {args:?} failed");
        };
        // A namespace left by an earlier, killed run of the same pid would be in the way.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let fixture = NetFixture {
            name: name.clone(),
            tap: tap.clone(),
            payload_sha256: String::new(),
            server: None,
        };
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "tuntap", "add", "dev", &tap, "mode", "tap"]);
        ip(&["-n", &name, "addr", "add", "10.77.0.1/24", "dev", &tap]);
        ip(&["-n", &name, "link", "set", &tap, "up"]);
        fixture.with_server()
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn with_server(mut self) -> NetFixture {
        let payload: Vec<u8> = (0..256u32 << 10)
            .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
            .collect();
        self.payload_sha256 = sha256_of(&payload);
        let netns = std::fs::File::open(self.netns_path()).expect("open the test netns");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.server = Some(std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: moves only this thread into the test's own network namespace.
            assert_eq!(
                unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            // The tap has no carrier until the VM attaches, so the address may not be
            // bindable at once.
            let deadline = Instant::now() + Duration::from_secs(30);
            let listener = loop {
                match std::net::TcpListener::bind("10.77.0.1:8080") {
                    Ok(l) => break l,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => panic!("bind 10.77.0.1:8080 in the test netns: {e}"),
                }
            };
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let mut request = Vec::new();
                        let mut byte = [0u8; 1];
                        while !request.ends_with(b"\r\n\r\n")
                            && stream.read(&mut byte).unwrap_or(0) == 1
                        {
                            request.push(byte[0]);
                        }
                        let head = format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                            payload.len()
                        );
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(&payload);
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(40))
            .expect("test HTTP server did not start");
        self
    }

    /// Checks what the guest reported.
    pub fn check(&mut self, console: &str) {
        assert!(
            report(console, "ping ok").is_some(),
            "guest could not ping the host:\n{console}"
        );
        let fetched =
            report(console, "fetched sha256 ").unwrap_or_else(|| panic!("no fetch:\n{console}"));
        assert!(fetched.starts_with(&self.payload_sha256), "{fetched}");
        if let Some(server) = self.server.take() {
            server.join().expect("HTTP server");
        }
    }
}

impl Drop for NetFixture {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the guest's `vsock-test echo` listens on port 1024; fails at once if `vm` ends.
pub fn wait_for_guest_listener(console: &Path, vm: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !std::fs::read_to_string(console)
        .unwrap_or_default()
        .contains("vsock-test: listening on 1024")
    {
        assert!(
            Instant::now() < deadline,
            "guest never listened on vsock port 1024"
        );
        if let Ok(Some(status)) = vm.try_wait() {
            let text = std::fs::read_to_string(console).unwrap_or_default();
            panic!("the VM ended ({status}) before the guest listened:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The byte at `offset` of stream number `seed`: every stream differs, none repeats quickly.
fn pattern_byte(seed: u64, offset: u64) -> u8 {
    (offset
        .wrapping_mul(2_654_435_761)
        .wrapping_add(seed.wrapping_mul(97))
        >> 11) as u8
}

/// Connects to guest port 1024 through the VM's socket, sends `len` pattern bytes while reading
/// the echo, and checks every byte that comes back; returns once the guest closed its end.
pub fn echo_stream(uds: &Path, len: u64, seed: u64) {
    let stream = UnixStream::connect(uds).expect("connect to the VM's vsock socket");
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(b"CONNECT 1024\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "handshake answer: {ok:?}");
    let sender = std::thread::spawn(move || {
        let mut chunk = vec![0u8; 64 << 10];
        let mut sent = 0u64;
        while sent < len {
            let n = chunk.len().min((len - sent) as usize);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern_byte(seed, sent + i as u64);
            }
            writer.write_all(&chunk[..n]).unwrap();
            sent += n as u64;
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut received = 0u64;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk).expect("read the echo");
        if n == 0 {
            break;
        }
        for (i, b) in chunk[..n].iter().enumerate() {
            assert_eq!(
                *b,
                pattern_byte(seed, received + i as u64),
                "stream {seed}: byte {} differs",
                received + i as u64
            );
        }
        received += n as u64;
    }
    sender.join().unwrap();
    assert_eq!(received, len, "stream {seed}: echo length");
}

/// A pod network namespace as a CNI bridge plugin would leave it: a veth whose host end has
/// the gateway address. Removed on drop.
pub struct PodNetns {
    name: String,
    host_if: String,
}

impl PodNetns {
    /// `tag` keeps the names of different test binaries apart.
    pub fn new(tag: &str, with_address: bool) -> PodNetns {
        let id = std::process::id() % 10_000;
        let short: String = tag.chars().take(3).collect();
        let ns = PodNetns {
            name: format!("vmpod-test-{tag}-{id}-{}", u8::from(with_address)),
            host_if: format!("v{short}{id}h{}", u8::from(with_address)),
        };
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (n, h) = (&ns.name, &ns.host_if);
        sh(&format!(
            "ip netns add {n} && ip link add {h} type veth peer name {h}c && \
             ip link set {h}c netns {n} && ip -n {n} link set {h}c name eth0 && \
             ip -n {n} link set eth0 up && ip -n {n} link set lo up && ip link set {h} up"
        ));
        if with_address {
            sh(&format!(
                "ip -n {n} addr add 10.203.0.2/24 dev eth0 && \
                 ip -n {n} route add default via 10.203.0.1 && ip addr add 10.203.0.1/24 dev {h}"
            ));
        }
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// What vmpod may have left in the namespace: links and tc qdiscs on eth0.
    pub fn state(&self) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ip -n {0} -o link | cut -d: -f2; tc -n {0} qdisc show dev eth0",
                self.name
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

/// `busybox httpd` serving one file on `addr` (host:port) from a scratch directory, stopped
/// on drop.
pub struct FileServer {
    _dir: Scratch,
    child: std::process::Child,
}

impl FileServer {
    pub fn start(tag: &str, addr: &str, name: &str, content: &str) -> FileServer {
        let dir = Scratch::new(tag);
        std::fs::write(dir.path(name), content).unwrap();
        let child = std::process::Command::new("busybox")
            .args(["httpd", "-f", "-p", addr, "-h"])
            .arg(&dir.0)
            .spawn()
            .expect("busybox httpd");
        FileServer { _dir: dir, child }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

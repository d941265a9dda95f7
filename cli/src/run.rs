//! `vmpod run`: one container in one new microVM, in the foreground, its stdio and exit status
//! passed through as docker passes them.

use crate::{rootfs, signals, EXIT_RUNTIME};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec, UserBuilder,
};
use std::io::{Read, Write};
use std::path::PathBuf;
use vmpod_protocol::{
    ClientError, CreateContainer, ErrorKind, RequestBody, Rootfs, StdStream, StdioWiring, Upper,
};
use vmpod_sandbox::hypervisor::Disk;
use vmpod_sandbox::{Backend, Sandbox, SandboxConfig};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Remove the sandbox when the container exits (foreground runs always are, for now).
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable (K=V).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Read environment variables from a file (K=V lines).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// UID[:GID] to run as.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// vCPUs of the VM and the container's CPU quota.
    #[arg(long, default_value = "1")]
    cpus: String,
    /// The container's memory limit (e.g. 256m, 1g); the VM gets it plus the agent's share.
    #[arg(long, short = 'm')]
    memory: Option<String>,
    /// Make the container's root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// auto, vmm or qemu.
    #[arg(long, default_value = "auto")]
    hypervisor: String,
    /// Run this directory as the root filesystem instead of an image.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// The agent narrates on the VM's console (kept in the state directory while it runs).
    #[arg(long, hide = true)]
    debug: bool,
    /// Run in the background (not yet supported).
    #[arg(short = 'd', long)]
    detach: bool,
    /// Bind a host path (not yet supported).
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// The image, or with --rootfs the command; then the command and its arguments.
    #[arg(trailing_var_arg = true)]
    args: Vec<String>,
}

/// A run that could not happen: the one-line reason and docker's exit status for it.
struct Failure(i32, String);

fn runtime(message: impl Into<String>) -> Failure {
    Failure(EXIT_RUNTIME, message.into())
}

pub fn run(args: RunArgs) -> i32 {
    match run_container(args) {
        Ok(status) => status,
        Err(Failure(code, message)) => {
            eprintln!("vmpod: {message}");
            code
        }
    }
}

/// "512m", "1g", "1048576" (bytes) → bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// The guest kernel, the agent and page cache need this much beside the container's limit.
const VM_OVERHEAD_MIB: u64 = 96;
const DEFAULT_VM_MIB: u64 = 256;

fn build_spec(args: &RunArgs, command: &[String]) -> Result<Spec, Failure> {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(command.to_vec()));
    process.set_terminal(Some(args.tty));
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| runtime(format!("--env-file {}: {e}", file.display())))?;
        env.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    env.extend(args.env.iter().cloned());
    if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
        return Err(runtime(format!("environment entry '{bad}' is not K=V")));
    }
    if args.tty {
        env.push("TERM=xterm".into());
    }
    process.set_env(Some(env));
    if let Some(dir) = &args.workdir {
        if !dir.starts_with('/') {
            return Err(runtime(format!(
                "--workdir '{dir}' must be an absolute path"
            )));
        }
        process.set_cwd(dir.into());
    }
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, user));
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| runtime(format!("--user '{user}' must be UID[:GID] in numbers")))
        };
        let (uid, gid) = (parse(uid)?, parse(gid)?);
        process.set_user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(|e| runtime(e.to_string()))?,
        );
    }
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_readonly(Some(args.read_only));
    spec.set_root(Some(root));
    if let Some(h) = &args.hostname {
        spec.set_hostname(Some(h.clone()));
    }
    Ok(spec)
}

/// Where a run's time goes, printed on stderr when VMPOD_TIMING is set (the benchmark reads it).
struct Timing {
    start: std::time::Instant,
    marks: Vec<(&'static str, std::time::Instant)>,
}

impl Timing {
    fn new() -> Timing {
        Timing {
            start: std::time::Instant::now(),
            marks: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        self.marks.push((step, std::time::Instant::now()));
    }

    fn report(&self) {
        if std::env::var_os("VMPOD_TIMING").is_none() {
            return;
        }
        let mut last = self.start;
        let steps: Vec<String> = self
            .marks
            .iter()
            .map(|(step, at)| {
                let ms = at.duration_since(last).as_secs_f64() * 1e3;
                last = *at;
                format!("{step}={ms:.1}")
            })
            .collect();
        eprintln!("vmpod: timing ms: {}", steps.join(" "));
    }
}

fn run_container(args: RunArgs) -> Result<i32, Failure> {
    let mut timing = Timing::new();
    if args.detach {
        return Err(runtime(
            "-d is not supported yet: runs stay in the foreground",
        ));
    }
    if !args.volume.is_empty() {
        return Err(runtime(
            "-v is not supported yet: there is no shared filesystem with the VM",
        ));
    }
    let Some(dir) = args.rootfs.clone() else {
        let image = args.args.first().map(String::as_str).unwrap_or("");
        return Err(runtime(format!(
            "image '{image}': images are not supported yet; give a root filesystem with --rootfs DIR"
        )));
    };
    if args.args.is_empty() {
        return Err(runtime(
            "no command given: vmpod run --rootfs DIR CMD [ARG...]",
        ));
    }
    let cpus: f64 = args
        .cpus
        .parse()
        .ok()
        .filter(|c: &f64| *c > 0.0 && *c <= 64.0)
        .ok_or_else(|| {
            runtime(format!(
                "--cpus '{}' must be a number above 0 and at most 64",
                args.cpus
            ))
        })?;
    let limit = match &args.memory {
        Some(m) => Some(parse_size(m).filter(|b| *b >= 4 << 20).ok_or_else(|| {
            runtime(format!(
                "--memory '{m}' must be a size of at least 4m (like 512m or 1g)"
            ))
        })?),
        None => None,
    };
    let mut spec = build_spec(&args, &args.args)?;
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = limit {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes as i64)
                .build()
                .map_err(|e| runtime(e.to_string()))?,
        );
    }
    if cpus.fract() != 0.0 {
        let quota = (cpus * 100_000.0) as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(100_000u64)
                .build()
                .map_err(|e| runtime(e.to_string()))?,
        );
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources.build().map_err(|e| runtime(e.to_string()))?));
    spec.set_linux(Some(linux));

    let layer = rootfs::layer_for(&dir).map_err(runtime)?;
    timing.mark("rootfs");
    let backend = Backend::choose(&args.hypervisor).map_err(|e| runtime(e.to_string()))?;
    let memory_mib = limit
        .map(|b| (b >> 20) + VM_OVERHEAD_MIB)
        .unwrap_or(DEFAULT_VM_MIB);
    let mut sandbox = Sandbox::start(SandboxConfig {
        backend,
        cpus: cpus.ceil() as u8,
        memory_mib: memory_mib.min(u64::from(u32::MAX)) as u32,
        disks: vec![Disk {
            path: layer,
            serial: "rootfs".into(),
            read_only: true,
        }],
        debug: args.debug,
    })
    .map_err(|e| runtime(chain(&e)))?;
    timing.mark("vm_boot_to_agent");
    let id = "main";
    let wiring = StdioWiring {
        stdin: args.interactive,
        stdout: true,
        stderr: !args.tty,
    };
    let created = sandbox
        .agent()
        .call(RequestBody::CreateContainer(CreateContainer {
            container_id: id.into(),
            spec: Box::new(spec),
            rootfs: Rootfs {
                layers: vec!["rootfs".into()],
                upper: Upper::Tmpfs,
            },
            stdio: wiring,
        }));
    if let Err(e) = created {
        return Err(create_failure(&args.args[0], e));
    }
    timing.mark("create");
    let stream = |s: &Sandbox, which| s.stream(id, None, which).map_err(|e| runtime(chain(&e)));
    let stdout = stream(&sandbox, StdStream::Stdout)?;
    let stderr = if wiring.stderr {
        Some(stream(&sandbox, StdStream::Stderr)?)
    } else {
        None
    };
    let stdin = if wiring.stdin {
        Some(stream(&sandbox, StdStream::Stdin)?)
    } else {
        None
    };
    let terminal = if args.tty {
        crate::run::raw_terminal()
    } else {
        None
    };
    sandbox
        .agent()
        .call(RequestBody::StartContainer {
            container_id: id.into(),
        })
        .map_err(|e| runtime(format!("start: {e}")))?;
    timing.mark("start");

    let out = std::thread::spawn(move || copy(stdout, std::io::stdout()));
    let err = stderr.map(|s| std::thread::spawn(move || copy(s, std::io::stderr())));
    if let Some(mut s) = stdin {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut s);
            let _ = s.shutdown(std::net::Shutdown::Write);
        });
    }
    // Ctrl-C and SIGTERM go to the container; a window resize to its terminal.
    let mut signal_connection = None;
    if let (Ok(mut signals), Ok(mut control)) = (
        signals::catch(&[libc::SIGINT, libc::SIGTERM, libc::SIGWINCH]),
        sandbox.control_connection(),
    ) {
        // Closed once the container has exited: the agent powers off when its clients hang up.
        signal_connection = control.stream().try_clone().ok();
        let tty = args.tty;
        if tty {
            resize(&mut control, id);
        }
        std::thread::spawn(move || {
            while let Some(sig) = signals::next(&mut signals) {
                if sig == libc::SIGWINCH {
                    if tty {
                        resize(&mut control, id);
                    }
                    continue;
                }
                let _ = control.call(RequestBody::SignalProcess {
                    container_id: id.into(),
                    exec_id: None,
                    signal: sig,
                    all: false,
                });
            }
        });
    }
    let exit = sandbox.agent().wait(id, None);
    let _ = out.join();
    if let Some(err) = err {
        let _ = err.join();
    }
    drop(terminal);
    let exit = exit.map_err(|e| {
        let why = sandbox
            .vm_ended()
            .map(|s| format!(" (the VM ended: {s})"))
            .unwrap_or_default();
        runtime(format!("lost the container: {e}{why}"))
    })?;
    timing.mark("run");
    if let Some(connection) = signal_connection {
        let _ = connection.shutdown(std::net::Shutdown::Both);
    }
    let _ = sandbox.agent().call_done(RequestBody::RemoveContainer {
        container_id: id.into(),
    });
    drop(sandbox);
    timing.mark("teardown");
    timing.report();
    Ok(exit.status)
}

fn resize(control: &mut vmpod_protocol::Client<std::os::unix::net::UnixStream>, id: &str) {
    // SAFETY: TIOCGWINSZ writes one winsize.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) } == 0 {
        let _ = control.call(RequestBody::ResizePty {
            container_id: id.into(),
            exec_id: None,
            rows: size.ws_row,
            cols: size.ws_col,
        });
    }
}

/// The local terminal in raw mode while the container owns it; restored on drop.
pub struct RawTerminal(libc::termios);

pub fn raw_terminal() -> Option<RawTerminal> {
    // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
    unsafe {
        let mut saved: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
            return None;
        }
        let mut raw = saved;
        libc::cfmakeraw(&mut raw);
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw);
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the termios saved above.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
    }
}

fn copy(mut from: std::os::unix::net::UnixStream, mut to: impl Write) {
    let mut buf = [0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                let _ = to.flush();
            }
        }
    }
}

/// docker's statuses for a process that cannot start: 127 not found, 126 cannot execute.
fn create_failure(program: &str, e: ClientError) -> Failure {
    let message = match &e {
        ClientError::Refused(r) => r.message.clone(),
        other => other.to_string(),
    };
    let lower = message.to_ascii_lowercase();
    if matches!(&e, ClientError::Refused(r) if r.kind == ErrorKind::Failed) {
        if lower.contains("not found") || lower.contains("no such file") {
            return Failure(
                127,
                format!("{program}: executable file not found in the container ({message})"),
            );
        }
        if lower.contains("permission denied") || lower.contains("not executable") {
            return Failure(126, format!("{program}: cannot execute ({message})"));
        }
    }
    runtime(format!("create the container: {message}"))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += ": ";
        text += &c.to_string();
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["", "m", "12x", "-1m"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}

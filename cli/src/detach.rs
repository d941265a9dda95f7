//! Background containers (`vmpod run -d`). A monitor process (this binary, re-executed) owns
//! the sandbox: it boots it, writes the container's output to log files and records the exit.
//! Each container has a record directory under /run/vmpod/containers/<id>:
//! `record.json` (what `ps` shows, how to reach the agent), `request.json` (the prepared run,
//! read once by the monitor), `stdout.log` and `stderr.log`.
//! `exec`, `kill` and `logs` reach the agent or the logs directly; `rm -f` asks the monitor to
//! stop, which tears the sandbox down as a foreground run does.

use crate::launch::{launch, CONTAINER};
use crate::prepare::{Prepared, RunArgs};
use crate::session::{attach, Streams};
use crate::{chain, signals, Failure};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vmpod_protocol::{ExecProcess, RequestBody, StdStream, StdioWiring};
use vmpod_sandbox::Endpoint;

pub const RECORDS: &str = "/run/vmpod/containers";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    Starting,
    Running,
    Exited { code: i32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub created_unix: u64,
    pub monitor_pid: i32,
    pub status: Status,
    /// The agent's hybrid vsock socket while the sandbox runs.
    pub vsock: Option<PathBuf>,
    pub hypervisor: String,
    pub remove_on_exit: bool,
    /// What an exec inherits: the container's environment and working directory.
    pub env: Vec<String>,
    pub cwd: String,
}

fn dir_of(id: &str) -> PathBuf {
    Path::new(RECORDS).join(id)
}

fn name_link(name: &str) -> PathBuf {
    Path::new(RECORDS).join(format!(".name-{name}"))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), Failure> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Failure::runtime(format!("encode {}: {e}", path.display())))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::runtime(format!("write {}: {e}", path.display())))
}

fn read_record(id: &str) -> Result<Record, Failure> {
    let path = dir_of(id).join("record.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| Failure::runtime(format!("read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
}

fn monitor_alive(pid: i32) -> bool {
    // The pid could have been reused: only our monitor counts.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("__monitor"))
        .unwrap_or(false)
}

impl Record {
    /// Running per the record and its monitor still there; a monitor killed with -9 leaves a
    /// record that says running, which is shown as exited.
    fn effective_status(&self) -> Status {
        match self.status {
            Status::Exited { .. } => self.status.clone(),
            _ if monitor_alive(self.monitor_pid) => self.status.clone(),
            _ => Status::Exited { code: 125 },
        }
    }
}

fn all_records() -> Vec<Record> {
    let mut records: Vec<Record> = std::fs::read_dir(RECORDS)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| read_record(&e.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    records.sort_by_key(|r| std::cmp::Reverse(r.created_unix));
    records
}

/// By name, full ID or unique ID prefix.
fn find(reference: &str) -> Result<Record, Failure> {
    let records = all_records();
    if let Some(r) = records
        .iter()
        .find(|r| r.name == reference || r.id == reference)
    {
        return Ok(r.clone());
    }
    let matching: Vec<&Record> = records
        .iter()
        .filter(|r| !reference.is_empty() && r.id.starts_with(reference))
        .collect();
    match matching[..] {
        [one] => Ok(one.clone()),
        [] => Err(Failure::runtime(format!("no such container: {reference}"))),
        _ => Err(Failure::runtime(format!(
            "'{reference}' matches {} containers; give more of the ID",
            matching.len()
        ))),
    }
}

fn random_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Failure::runtime(format!("read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a record and its name.
fn forget(record: &Record) {
    let _ = std::fs::remove_file(name_link(&record.name));
    let _ = std::fs::remove_dir_all(dir_of(&record.id));
}

/// `vmpod run -d`: writes the record, starts the monitor and waits until the container runs
/// (or fails to), then prints its ID.
pub fn start(args: &RunArgs, prepared: Prepared) -> Result<i32, Failure> {
    if prepared.interactive || prepared.tty {
        return Err(Failure::runtime(
            "-d cannot be combined with -i or -t: nothing could attach to a background container yet; use `vmpod exec -it`",
        ));
    }
    std::fs::create_dir_all(RECORDS)
        .map_err(|e| Failure::runtime(format!("create {RECORDS}: {e}")))?;
    let id = random_id()?;
    let name = args.name.clone().unwrap_or_else(|| id.clone());
    // The symlink claims the name atomically: two runs with one name cannot both get it.
    if let Err(e) = std::os::unix::fs::symlink(&id, name_link(&name)) {
        let owner = std::fs::read_link(name_link(&name))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Err(Failure::runtime(
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!("the name '{name}' is in use by container {owner}; remove it with `vmpod rm` or pick another")
            } else {
                format!("claim the name '{name}': {e}")
            },
        ));
    }
    let dir = dir_of(&id);
    let mut record = Record {
        id: id.clone(),
        name,
        image: prepared.image.clone(),
        command: prepared.command.clone(),
        created_unix: now_unix(),
        monitor_pid: 0,
        status: Status::Starting,
        vsock: None,
        hypervisor: prepared.hypervisor.flag().to_string(),
        remove_on_exit: args.rm,
        env: prepared
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default(),
        cwd: prepared
            .spec
            .process()
            .as_ref()
            .map(|p| p.cwd().display().to_string())
            .unwrap_or_else(|| "/".into()),
    };
    let result = spawn_monitor(&dir, &mut record, &prepared);
    if result.is_err() {
        forget(&record);
    }
    result
}

fn spawn_monitor(dir: &Path, record: &mut Record, prepared: &Prepared) -> Result<i32, Failure> {
    std::fs::create_dir(dir)
        .map_err(|e| Failure::runtime(format!("create {}: {e}", dir.display())))?;
    write_json(&dir.join("request.json"), prepared)?;
    write_json(&dir.join("record.json"), record)?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::runtime(format!("find the vmpod program: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__monitor")
        .arg(&record.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setsid(2) is async-signal-safe; the monitor leaves our session so a hangup or a
    // Ctrl-C meant for this shell does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::runtime(format!("start the monitor: {e}")))?;
    // The monitor says "ready" once the container runs, or why it could not.
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let line = line.trim_end();
    if line == "ready" {
        // It runs on, reparented to init once this process exits.
        std::mem::forget(child);
        println!("{}", record.id);
        return Ok(0);
    }
    let _ = child.wait();
    let (code, message) = match line.strip_prefix("error ") {
        Some(rest) => match rest.split_once(' ') {
            Some((code, message)) => (code.parse().unwrap_or(125), message.to_string()),
            None => (125, rest.to_string()),
        },
        None => (125, "the monitor ended before the container started".into()),
    };
    Err(Failure(code, message.replace("\\n", "\n")))
}

/// The monitor: `vmpod __monitor ID`, started by `run -d` with a pipe on stdout.
pub fn monitor(id: &str) -> i32 {
    let mut ready = std::io::stdout();
    let fail = |ready: &mut std::io::Stdout, f: Failure| {
        let _ = writeln!(ready, "error {} {}", f.0, f.1.replace('\n', "\\n"));
        let _ = ready.flush();
        f.0
    };
    let dir = dir_of(id);
    let prepared: Prepared = match std::fs::read(dir.join("request.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            return fail(
                &mut ready,
                Failure::runtime(format!("read the request: {e}")),
            )
        }
    };
    let _ = std::fs::remove_file(dir.join("request.json"));
    let mut record = match read_record(id) {
        Ok(r) => r,
        Err(f) => return fail(&mut ready, f),
    };
    record.monitor_pid = std::process::id() as i32;
    if let Err(f) = write_json(&dir.join("record.json"), &record) {
        return fail(&mut ready, f);
    }
    // Caught before the boot, so `rm -f` during it ends the sandbox cleanly too.
    let stop = signals::catch(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let mut timing = crate::run::Timing::new();
    let launched = match launch(&prepared, &mut timing) {
        Ok(l) => l,
        Err(f) => return fail(&mut ready, f),
    };
    let mut sandbox = launched.sandbox;
    let endpoint = sandbox.endpoint();
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
    };
    let (out_log, err_log) = match (log("stdout.log"), log("stderr.log")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return fail(&mut ready, Failure::runtime(format!("open the logs: {e}")))
        }
    };
    let stdout = launched.stdout;
    let out = std::thread::spawn(move || crate::session::copy(stdout, out_log));
    let err = launched
        .stderr
        .map(|s| std::thread::spawn(move || crate::session::copy(s, err_log)));
    if let Err(e) = sandbox.agent().call(RequestBody::StartContainer {
        container_id: CONTAINER.into(),
    }) {
        return fail(&mut ready, Failure::runtime(format!("start: {e}")));
    }
    record.status = Status::Running;
    record.vsock = Some(endpoint.vsock_uds().to_path_buf());
    if let Err(f) = write_json(&dir.join("record.json"), &record) {
        return fail(&mut ready, f);
    }
    let _ = writeln!(ready, "ready");
    let _ = ready.flush();
    // The pipe's reader is gone soon; stdout must not hold it (or raise SIGPIPE later).
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2(2) onto our own stdout.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }

    // A stop request kills the container; its exit then ends the monitor as any exit does.
    let mut stop_connection = None;
    if let (Ok(mut stop), Ok(mut control)) = (stop, endpoint.control()) {
        stop_connection = control.stream().try_clone().ok();
        std::thread::spawn(move || {
            if signals::next(&mut stop).is_some() {
                let _ = control.call(RequestBody::SignalProcess {
                    container_id: CONTAINER.into(),
                    exec_id: None,
                    signal: libc::SIGKILL,
                    all: true,
                });
            }
        });
    }
    let exit = sandbox.agent().wait(CONTAINER, None);
    // The agent powers off only once its clients hang up; this one is ours to close.
    if let Some(connection) = stop_connection {
        let _ = connection.shutdown(std::net::Shutdown::Both);
    }
    let code = match &exit {
        Ok(e) => e.status,
        Err(_) => 125,
    };
    let _ = out.join();
    if let Some(err) = err {
        let _ = err.join();
    }
    if let Err(e) = &exit {
        let why = sandbox
            .vm_ended()
            .map(|s| format!(" (the VM ended: {s})"))
            .unwrap_or_default();
        if let Ok(mut f) = log("stderr.log") {
            let _ = writeln!(f, "vmpod: lost the container: {}{why}", chain(e));
        }
    }
    record.status = Status::Exited { code };
    record.vsock = None;
    let _ = write_json(&dir.join("record.json"), &record);
    drop(sandbox);
    if record.remove_on_exit {
        forget(&record);
    }
    code
}

pub fn ps(all: bool) -> Result<i32, Failure> {
    println!(
        "{:<12}  {:<16}  {:<20}  {:<24}  {:<10}  STATUS",
        "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "CREATED"
    );
    for r in all_records() {
        let status = r.effective_status();
        if !all && !matches!(status, Status::Running | Status::Starting) {
            continue;
        }
        let status = match status {
            Status::Starting => "Starting".to_string(),
            Status::Running => format!("Up ({})", r.hypervisor),
            Status::Exited { code } => format!("Exited ({code})"),
        };
        let mut command = r.command.join(" ");
        if command.len() > 24 {
            command.truncate(21);
            command.push_str("...");
        }
        let age = now_unix().saturating_sub(r.created_unix);
        let created = match age {
            0..=59 => format!("{age}s ago"),
            60..=3599 => format!("{}m ago", age / 60),
            _ => format!("{}h ago", age / 3600),
        };
        println!(
            "{:<12}  {:<16}  {:<20}  {:<24}  {:<10}  {status}",
            r.id, r.name, r.image, command, created
        );
    }
    Ok(0)
}

fn running(reference: &str) -> Result<(Record, Endpoint), Failure> {
    let record = find(reference)?;
    match (record.effective_status(), &record.vsock) {
        (Status::Running, Some(vsock)) => {
            let endpoint = Endpoint::new(vsock);
            Ok((record, endpoint))
        }
        _ => Err(Failure::runtime(format!(
            "container {reference} is not running"
        ))),
    }
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the process a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable (K=V).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// UID[:GID] to run as.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// The container (name or ID), then the command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 2..)]
    args: Vec<String>,
}

pub fn exec(args: ExecArgs) -> Result<i32, Failure> {
    let (record, endpoint) = running(&args.args[0])?;
    let command = args.args[1..].to_vec();
    let mut process = oci_spec::runtime::Process::default();
    process.set_args(Some(command.clone()));
    process.set_terminal(Some(args.tty));
    process.set_capabilities(Some(crate::prepare::docker_capabilities()));
    let mut env = record.env.clone();
    env.extend(args.env.iter().cloned());
    if args.tty {
        env.push("TERM=xterm".into());
    }
    if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
        return Err(Failure::runtime(format!(
            "environment entry '{bad}' is not K=V"
        )));
    }
    process.set_env(Some(env));
    process.set_cwd(args.workdir.clone().unwrap_or(record.cwd.clone()).into());
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        match (uid.parse::<u32>(), gid.parse::<u32>()) {
            (Ok(uid), Ok(gid)) => {
                let mut u = oci_spec::runtime::User::default();
                u.set_uid(uid);
                u.set_gid(gid);
                process.set_user(u);
            }
            _ => {
                return Err(Failure::runtime(format!(
                    "--user '{user}' must be UID[:GID] in numbers"
                )))
            }
        }
    }
    let exec_id = format!("exec-{}", random_id()?);
    let wiring = StdioWiring {
        stdin: args.interactive,
        stdout: true,
        stderr: !args.tty,
    };
    let mut client = endpoint
        .control()
        .map_err(|e| Failure::runtime(chain(&e)))?;
    client
        .call(RequestBody::ExecProcess(ExecProcess {
            container_id: CONTAINER.into(),
            exec_id: exec_id.clone(),
            process: Box::new(process),
            stdio: wiring,
        }))
        .map_err(|e| crate::launch::create_failure(&command[0], e))?;
    let stream = |which| {
        endpoint
            .stream(CONTAINER, Some(&exec_id), which)
            .map_err(|e| Failure::runtime(chain(&e)))
    };
    let streams = Streams {
        stdout: stream(StdStream::Stdout)?,
        stderr: if wiring.stderr {
            Some(stream(StdStream::Stderr)?)
        } else {
            None
        },
        stdin: if wiring.stdin {
            Some(stream(StdStream::Stdin)?)
        } else {
            None
        },
    };
    let exit = attach(
        &endpoint,
        &mut client,
        CONTAINER,
        Some(&exec_id),
        streams,
        args.tty,
        |_| Ok(()),
    )
    .map_err(|e| Failure::runtime(chain(&e)))?
    .map_err(|e| Failure::runtime(format!("lost the process: {}", chain(&e))))?;
    Ok(exit.status)
}

/// "KILL", "SIGKILL", "9" → 9.
fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

pub fn kill(reference: &str, signal: &str) -> Result<i32, Failure> {
    let signal = parse_signal(signal).ok_or_else(|| {
        Failure::runtime(format!(
            "-s '{signal}' is not a signal (a name like TERM or a number 1-64)"
        ))
    })?;
    let (record, endpoint) = running(reference)?;
    let mut client = endpoint
        .control()
        .map_err(|e| Failure::runtime(chain(&e)))?;
    client
        .call(RequestBody::SignalProcess {
            container_id: CONTAINER.into(),
            exec_id: None,
            signal,
            all: false,
        })
        .map_err(|e| Failure::runtime(format!("signal {}: {}", record.id, chain(&e))))?;
    println!("{}", record.id);
    Ok(0)
}

pub fn rm(references: &[String], force: bool) -> Result<i32, Failure> {
    let mut failed = None;
    for reference in references {
        match rm_one(reference, force) {
            Ok(id) => println!("{id}"),
            Err(f) => {
                eprintln!("vmpod: {}", f.1);
                failed = Some(f.0);
            }
        }
    }
    Ok(failed.unwrap_or(0))
}

fn rm_one(reference: &str, force: bool) -> Result<String, Failure> {
    let record = find(reference)?;
    if matches!(
        record.effective_status(),
        Status::Running | Status::Starting
    ) {
        if !force {
            return Err(Failure::runtime(format!(
                "container {reference} is running: stop it with `vmpod kill` or remove it with `vmpod rm -f`"
            )));
        }
        // SAFETY: kill(2) of the monitor found by its record (checked to be ours above).
        unsafe { libc::kill(record.monitor_pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while monitor_alive(record.monitor_pid) {
            if std::time::Instant::now() > deadline {
                // SAFETY: as above; the VM dies with it (PDEATHSIG) and the janitor cleans up.
                unsafe { libc::kill(record.monitor_pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    forget(&record);
    Ok(record.id)
}

pub fn logs(reference: &str, follow: bool) -> Result<i32, Failure> {
    let record = find(reference)?;
    let dir = dir_of(&record.id);
    let open = |name: &str| std::fs::File::open(dir.join(name)).ok();
    let (mut out, mut err) = (open("stdout.log"), open("stderr.log"));
    loop {
        for (file, sink) in [
            (&mut out, &mut std::io::stdout() as &mut dyn Write),
            (&mut err, &mut std::io::stderr() as &mut dyn Write),
        ] {
            if let Some(f) = file {
                let _ = std::io::copy(f, sink);
                let _ = sink.flush();
            }
        }
        if !follow || !monitor_alive(record.monitor_pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the monitor wrote between the last read and its exit.
    for (file, sink) in [
        (&mut out, &mut std::io::stdout() as &mut dyn Write),
        (&mut err, &mut std::io::stderr() as &mut dyn Write),
    ] {
        if let Some(f) = file {
            let _ = std::io::copy(f, sink);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("10"), Some(10));
        for bad in ["0", "65", "BOGUS", ""] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
    }
}

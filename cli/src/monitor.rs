//! The monitor: the process (this binary, re-executed as `vmpod __monitor ID`) that owns a
//! background container's sandbox. It boots it, writes the container's output to log files
//! and records the exit; `rm -f` asks it to stop, which tears the sandbox down as a foreground
//! run does. `start` is the `run -d` side that writes the record and starts it.

use crate::containers::{
    claim_name, dir_of, forget, now_unix, random_id, read_record, write_json, Record, Status,
    RECORDS,
};
use crate::launch::{launch, CONTAINER};
use crate::prepare::{Prepared, RunArgs};
use crate::timing::Timing;
use crate::{chain, publish, signals, Failure};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use vmpod_protocol::RequestBody;

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
    claim_name(&id, &name)?;
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
        ports: Vec::new(),
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
    // Bound before the VM starts: a busy port fails `run -d` with nothing to undo.
    let published = match publish::bind(&prepared.publish) {
        Ok(p) => p,
        Err(e) => return fail(&mut ready, Failure::runtime(e.to_string())),
    };
    record.ports = published.iter().map(|p| p.spec.to_string()).collect();
    if let Err(f) = write_json(&dir.join("record.json"), &record) {
        return fail(&mut ready, f);
    }
    // Caught before the boot, so `rm -f` during it ends the sandbox cleanly too.
    let stop = signals::catch(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let mut timing = Timing::new();
    let launched = match launch(&prepared, &mut timing) {
        Ok(l) => l,
        Err(f) => return fail(&mut ready, f),
    };
    let mut sandbox = launched.sandbox;
    let endpoint = sandbox.endpoint();
    publish::serve(published, &endpoint);
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
    let (code, oom_killed) = match &exit {
        Ok(e) => (e.status, e.oom_killed),
        Err(_) => (125, false),
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
    record.status = Status::Exited { code, oom_killed };
    record.vsock = None;
    let _ = write_json(&dir.join("record.json"), &record);
    drop(sandbox);
    if record.remove_on_exit {
        forget(&record);
    }
    code
}

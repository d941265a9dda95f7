//! vmpod-agent in a real guest (QEMU microvm on TCG with our vhost-user devices), driven over
//! vsock exactly as the sandbox drives it.
//!
//! (Over 600 lines: one test binary for the agent's whole protocol, whose tests run in
//! parallel within it and share its VM helpers.)

mod common;

use common::{read_all, AgentVm};
use oci_spec::runtime::Spec;
use std::io::Write;
use vmpod_protocol::{
    ClientError, CreateContainer, ExecProcess, RequestBody, ResponseBody, Rootfs, StdStream,
    StdioWiring, Upper,
};

fn spec(args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec
        .process()
        .clone()
        .expect("the default spec has a process");
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    spec.set_process(Some(process));
    // Writable, as docker and containerd make it (the OCI default is read-only).
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec
}

fn busybox() -> Rootfs {
    Rootfs {
        layers: vec!["busybox".into()],
        upper: Upper::Tmpfs,
    }
}

const OUT: StdioWiring = StdioWiring {
    stdin: false,
    stdout: true,
    stderr: true,
};

fn create(
    client: &mut vmpod_protocol::Client<std::os::unix::net::UnixStream>,
    id: &str,
    spec: Spec,
    stdio: StdioWiring,
) -> Result<ResponseBody, ClientError> {
    client.call(RequestBody::CreateContainer(CreateContainer::new(
        id,
        spec,
        busybox(),
        stdio,
    )))
}

/// Runs `sh -c script` to its end; returns (status, stdout, stderr).
fn run(
    vm: &AgentVm,
    client: &mut vmpod_protocol::Client<std::os::unix::net::UnixStream>,
    id: &str,
    script: &str,
) -> (i32, Vec<u8>, Vec<u8>) {
    create(client, id, spec(&["sh", "-c", script]), OUT).expect("create");
    let out = vm.stream(id, None, StdStream::Stdout);
    let err = vm.stream(id, None, StdStream::Stderr);
    client
        .call(RequestBody::StartContainer {
            container_id: id.into(),
        })
        .expect("start");
    let readers = std::thread::spawn(move || (read_all(out), read_all(err)));
    let exit = client.wait(id, None).expect("wait");
    let (stdout, stderr) = readers.join().unwrap();
    client
        .call_done(RequestBody::RemoveContainer {
            container_id: id.into(),
        })
        .expect("remove");
    (exit.status, stdout, stderr)
}

#[test]
fn echo_exit_codes_signals_and_separate_streams() {
    let vm = AgentVm::boot("agent-basic", &[]);
    let mut client = vm.client();
    let (status, out, err) = run(&vm, &mut client, "echo", "echo hello");
    assert_eq!(
        (status, out.as_slice(), err.as_slice()),
        (0, &b"hello\n"[..], &b""[..]),
        "console:\n{}",
        vm.console_text()
    );
    for code in [1, 42] {
        let (status, _, _) = run(
            &vm,
            &mut client,
            &format!("exit{code}"),
            &format!("exit {code}"),
        );
        assert_eq!(status, code);
    }
    // PID 1 of a pid namespace ignores its own SIGKILL (as under runc), so the shell that
    // kills itself is an exec'd one; the host's SIGKILL reaches the container's init.
    create(
        &mut client,
        "sleeper",
        spec(&["sleep", "1000"]),
        StdioWiring::default(),
    )
    .expect("create");
    client
        .call(RequestBody::StartContainer {
            container_id: "sleeper".into(),
        })
        .expect("start");
    let exec = |script: &str, id: &str| {
        let mut process = spec(&["sh", "-c", script]).process().clone().unwrap();
        process.set_terminal(Some(false));
        RequestBody::ExecProcess(ExecProcess {
            container_id: "sleeper".into(),
            exec_id: id.into(),
            process: Box::new(process),
            stdio: StdioWiring::default(),
        })
    };
    client.call(exec("kill -9 $$", "suicide")).expect("exec");
    let exit = client.wait("sleeper", Some("suicide")).expect("wait");
    assert_eq!((exit.status, exit.signal), (137, Some(9)));
    client
        .call_done(RequestBody::SignalProcess {
            container_id: "sleeper".into(),
            exec_id: None,
            signal: 9,
            all: false,
        })
        .expect("kill");
    let exit = client.wait("sleeper", None).expect("wait");
    assert_eq!(
        (exit.status, exit.signal, exit.oom_killed),
        (137, Some(9), false)
    );
    client
        .call_done(RequestBody::RemoveContainer {
            container_id: "sleeper".into(),
        })
        .expect("remove");
    let (status, out, err) = run(
        &vm,
        &mut client,
        "streams",
        "echo to-out; echo to-err >&2; echo more-out",
    );
    assert_eq!(
        (status, out.as_slice(), err.as_slice()),
        (0, &b"to-out\nmore-out\n"[..], &b"to-err\n"[..])
    );
    vm.shutdown(&mut client);
}

type AgentClient = vmpod_protocol::Client<std::os::unix::net::UnixStream>;

fn start(client: &mut AgentClient, id: &str) {
    client
        .call(RequestBody::StartContainer {
            container_id: id.into(),
        })
        .expect("start");
}

fn remove(client: &mut AgentClient, id: &str) {
    client
        .call_done(RequestBody::RemoveContainer {
            container_id: id.into(),
        })
        .expect("remove");
}

fn exec_request(container: &str, exec_id: &str, script: &str, stdio: StdioWiring) -> RequestBody {
    let process = spec(&["sh", "-c", script]).process().clone().unwrap();
    RequestBody::ExecProcess(ExecProcess {
        container_id: container.into(),
        exec_id: exec_id.into(),
        process: Box::new(process),
        stdio,
    })
}

/// Runs `script` as an exec in a running container; returns (status, stdout).
fn exec_output(
    vm: &AgentVm,
    client: &mut AgentClient,
    container: &str,
    exec_id: &str,
    script: &str,
) -> (i32, String) {
    client
        .call(exec_request(container, exec_id, script, OUT))
        .expect("exec");
    let out = vm.stream(container, Some(exec_id), StdStream::Stdout);
    let err = vm.stream(container, Some(exec_id), StdStream::Stderr);
    let reader = std::thread::spawn(move || {
        let _ = read_all(err);
    });
    let stdout = read_all(out);
    reader.join().unwrap();
    let exit = client
        .wait(container, Some(exec_id))
        .expect("wait for the exec");
    (exit.status, String::from_utf8_lossy(&stdout).into_owned())
}

#[test]
fn ten_mib_through_cat_come_back_byte_equal() {
    let vm = AgentVm::boot("agent-stdin", &[]);
    let mut client = vm.client();
    let wiring = StdioWiring {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    create(&mut client, "cat", spec(&["cat"]), wiring).expect("create");
    let mut stdin = vm.stream("cat", None, StdStream::Stdin);
    let stdout = vm.stream("cat", None, StdStream::Stdout);
    start(&mut client, "cat");
    let payload: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent = payload.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&sent).unwrap();
        stdin.shutdown(std::net::Shutdown::Write).unwrap();
        stdin
    });
    let echoed = read_all(stdout);
    let _stdin = writer.join().unwrap();
    let exit = client.wait("cat", None).expect("wait");
    assert_eq!(exit.status, 0);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the bytes differ");
    remove(&mut client, "cat");
    vm.shutdown(&mut client);
}

#[test]
fn exec_shares_files_and_pids_two_containers_share_only_the_network() {
    let vm = AgentVm::boot("agent-exec", &[]);
    let mut client = vm.client();
    for id in ["a", "b"] {
        let script = format!("echo {id} > /tmp/mine; hostname; exec sleep 1000");
        create(
            &mut client,
            id,
            spec(&["sh", "-c", &script]),
            StdioWiring::default(),
        )
        .expect("create");
        start(&mut client, id);
    }
    // The exec sees the container's files and its pid namespace (sleep is PID 1 there).
    let (status, out) = exec_output(
        &vm,
        &mut client,
        "a",
        "look",
        "sleep 0.2; cat /tmp/mine; cat /proc/1/cmdline | tr '\\0' ' '",
    );
    assert_eq!(status, 0);
    assert_eq!(out, "a\nsleep 1000 ", "exec output");
    let (_, out_b) = exec_output(&vm, &mut client, "b", "look", "cat /tmp/mine");
    assert_eq!(out_b, "b\n", "b has its own files");
    let ns = "for n in pid mnt net; do readlink /proc/self/ns/$n; done";
    let (_, ns_a) = exec_output(&vm, &mut client, "a", "ns", ns);
    let (_, ns_b) = exec_output(&vm, &mut client, "b", "ns", ns);
    let (ns_a, ns_b): (Vec<&str>, Vec<&str>) = (ns_a.lines().collect(), ns_b.lines().collect());
    assert_eq!(ns_a.len(), 3, "{ns_a:?}");
    assert_ne!(ns_a[0], ns_b[0], "own pid namespaces");
    assert_ne!(ns_a[1], ns_b[1], "own mount namespaces");
    assert_eq!(ns_a[2], ns_b[2], "one network namespace, the VM's");
    // One network: what a listens on, b reaches.
    client
        .call(exec_request(
            "a",
            "server",
            "echo from-a | nc -l -p 7777",
            StdioWiring::default(),
        ))
        .expect("exec server");
    let (status, out) = exec_output(
        &vm,
        &mut client,
        "b",
        "client",
        "for i in 1 2 3 4 5 6 7 8 9 10; do nc 127.0.0.1 7777 </dev/null && break; sleep 0.3; done",
    );
    assert_eq!((status, out.as_str()), (0, "from-a\n"));
    for id in ["a", "b"] {
        remove(&mut client, id);
    }
    vm.shutdown(&mut client);
}

fn limited(script: &str, memory: Option<i64>, pids: Option<i64>) -> Spec {
    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};
    let mut spec = spec(&["sh", "-c", script]);
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = memory {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes).build().unwrap());
    }
    if let Some(n) = pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(n).build().unwrap());
    }
    let mut linux = spec.linux().clone().unwrap();
    linux.set_resources(Some(resources.build().unwrap()));
    spec.set_linux(Some(linux));
    spec
}

#[test]
fn memory_and_pids_limits_are_enforced_and_oom_is_reported() {
    let vm = AgentVm::boot("agent-limits", &[]);
    let mut client = vm.client();
    // A shell doubling a string until it holds far more than 32 MiB.
    create(
        &mut client,
        "hog",
        limited(
            "x=0123456789abcdef; while :; do x=$x$x; done",
            Some(32 << 20),
            None,
        ),
        StdioWiring::default(),
    )
    .expect("create");
    start(&mut client, "hog");
    let exit = client.wait("hog", None).expect("wait");
    assert_eq!((exit.status, exit.oom_killed), (137, true), "{exit:?}");
    let events = client.take_events();
    assert!(
        events.iter().any(
            |e| matches!(e, vmpod_protocol::Event::Oom { container_id } if container_id == "hog")
        ),
        "an Oom event was pushed before the exit: {events:?}"
    );
    remove(&mut client, "hog");

    // pids.max 6: the shell and five sleeps; the sixth fork fails and ends the shell.
    let script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & echo started $i; done";
    create(&mut client, "forks", limited(script, None, Some(6)), OUT).expect("create");
    let out = vm.stream("forks", None, StdStream::Stdout);
    let err = vm.stream("forks", None, StdStream::Stderr);
    start(&mut client, "forks");
    let err = std::thread::spawn(move || read_all(err));
    let out = String::from_utf8_lossy(&read_all(out)).into_owned();
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let exit = client.wait("forks", None).expect("wait");
    let started = out.lines().filter(|l| l.starts_with("started")).count();
    assert_eq!(started, 5, "out {out:?} err {err:?}");
    assert!(err.contains("can't fork"), "{err:?}");
    assert_ne!(exit.status, 0);
    let stats = client
        .call(RequestBody::Stats {
            container_id: "forks".into(),
        })
        .expect("stats");
    let ResponseBody::Stats(stats) = stats else {
        panic!("{stats:?}")
    };
    assert_eq!(stats.pids_limit, Some(6));
    remove(&mut client, "forks");
    vm.shutdown(&mut client);
}

#[test]
fn pause_stops_a_counter_and_resume_continues_it() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let vm = AgentVm::boot("agent-pause", &[]);
    let mut client = vm.client();
    let script = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done";
    create(
        &mut client,
        "counter",
        spec(&["sh", "-c", script]),
        StdioWiring {
            stdin: false,
            stdout: true,
            stderr: false,
        },
    )
    .expect("create");
    let stdout = vm.stream("counter", None, StdStream::Stdout);
    start(&mut client, "counter");
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().push(line.trim().parse().unwrap_or(0));
            }
        })
    };
    let last = |seen: &Arc<Mutex<Vec<u64>>>| seen.lock().unwrap().last().copied().unwrap_or(0);
    let count = |seen: &Arc<Mutex<Vec<u64>>>| seen.lock().unwrap().len();
    std::thread::sleep(std::time::Duration::from_millis(700));
    client
        .call_done(RequestBody::PauseContainer {
            container_id: "counter".into(),
        })
        .expect("pause");
    // Whatever was in flight arrives; after that, nothing while frozen.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (paused_at, paused_len) = (last(&seen), count(&seen));
    assert!(paused_at > 0, "the counter ran before the pause");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(count(&seen), paused_len, "the counter moved while paused");
    client
        .call_done(RequestBody::ResumeContainer {
            container_id: "counter".into(),
        })
        .expect("resume");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let values = seen.lock().unwrap().clone();
    assert!(
        values.len() > paused_len,
        "the counter runs again after resume"
    );
    assert_eq!(
        values[paused_len],
        paused_at + 1,
        "and continues where it stopped"
    );
    client
        .call_done(RequestBody::SignalProcess {
            container_id: "counter".into(),
            exec_id: None,
            signal: 9,
            all: false,
        })
        .expect("kill");
    client.wait("counter", None).expect("wait");
    reader.join().unwrap();
    remove(&mut client, "counter");
    vm.shutdown(&mut client);
}

#[test]
fn a_terminal_process_gets_a_pty_that_resizes() {
    let vm = AgentVm::boot("agent-tty", &[]);
    let mut client = vm.client();
    let mut tty = spec(&["sh"]);
    let mut process = tty.process().clone().unwrap();
    process.set_terminal(Some(true));
    tty.set_process(Some(process));
    let wiring = StdioWiring {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    create(&mut client, "tty", tty, wiring).expect("create");
    let mut stdin = vm.stream("tty", None, StdStream::Stdin);
    let stdout = vm.stream("tty", None, StdStream::Stdout);
    start(&mut client, "tty");
    client
        .call_done(RequestBody::ResizePty {
            container_id: "tty".into(),
            exec_id: None,
            rows: 31,
            cols: 101,
        })
        .expect("resize");
    let reader = std::thread::spawn(move || read_all(stdout));
    stdin
        .write_all(b"[ -t 0 ] && echo is-a-tty; stty size; exit 3\n")
        .unwrap();
    let exit = client.wait("tty", None).expect("wait");
    let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert_eq!(exit.status, 3);
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert!(out.contains("31 101"), "{out:?}");
    remove(&mut client, "tty");
    vm.shutdown(&mut client);
}

fn refused(result: Result<ResponseBody, ClientError>) -> vmpod_protocol::ErrorReply {
    match result {
        Err(ClientError::Refused(reply)) => reply,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_input_gets_an_error_reply_and_the_agent_keeps_serving() {
    use std::io::Read;
    use vmpod_protocol::{ErrorKind, AGENT_PORT};
    let vm = AgentVm::boot("agent-bad", &[]);
    let mut client = vm.client();

    // Unknown ids.
    for body in [
        RequestBody::StartContainer {
            container_id: "ghost".into(),
        },
        RequestBody::Stats {
            container_id: "ghost".into(),
        },
        RequestBody::RemoveContainer {
            container_id: "ghost".into(),
        },
        RequestBody::WaitProcess {
            container_id: "ghost".into(),
            exec_id: None,
        },
        RequestBody::SignalProcess {
            container_id: "ghost".into(),
            exec_id: None,
            signal: 9,
            all: false,
        },
    ] {
        let reply = refused(client.call(body));
        assert_eq!(reply.kind, ErrorKind::NotFound, "{reply}");
        assert!(reply.message.contains("ghost"), "{reply}");
    }
    // A missing rootfs disk, an id that could name a path, a spec without a process, a
    // program that does not exist: each refused with the reason, and nothing left behind
    // (the same id works afterwards).
    let missing = client.call(RequestBody::CreateContainer(CreateContainer {
        container_id: "c1".into(),
        spec: Box::new(spec(&["true"])),
        rootfs: Rootfs {
            layers: vec!["no-such-disk".into()],
            upper: Upper::Tmpfs,
        },
        stdio: StdioWiring::default(),
        user: None,
        pod_sandbox: false,
    }));
    let reply = refused(missing);
    assert!(
        reply.message.contains("no disk with serial 'no-such-disk'"),
        "{reply}"
    );
    let reply = refused(create(
        &mut client,
        "../escape",
        spec(&["true"]),
        StdioWiring::default(),
    ));
    assert_eq!(reply.kind, ErrorKind::BadRequest, "{reply}");
    let mut no_process = spec(&["true"]);
    no_process.set_process(None);
    let reply = refused(create(
        &mut client,
        "c1",
        no_process,
        StdioWiring::default(),
    ));
    assert!(reply.message.contains("no process"), "{reply}");
    let reply = refused(create(
        &mut client,
        "c1",
        spec(&["/no/such/program"]),
        StdioWiring::default(),
    ));
    assert!(reply.message.contains("/no/such/program"), "{reply}");
    let (status, out, _) = run(&vm, &mut client, "c1", "echo still-serving");
    assert_eq!((status, out.as_slice()), (0, &b"still-serving\n"[..]));
    // Starting twice.
    create(
        &mut client,
        "twice",
        spec(&["sleep", "100"]),
        StdioWiring::default(),
    )
    .expect("create");
    start(&mut client, "twice");
    let reply = refused(client.call(RequestBody::StartContainer {
        container_id: "twice".into(),
    }));
    assert_eq!(reply.kind, ErrorKind::InvalidState, "{reply}");
    remove(&mut client, "twice");

    // Frames: malformed JSON gets a reply and the connection lives on.
    let mut raw = vm.connect(AGENT_PORT);
    let garbage = b"{\"id\": 5, \"body\": nonsense";
    raw.write_all(&(garbage.len() as u32).to_be_bytes())
        .unwrap();
    raw.write_all(garbage).unwrap();
    let reply = read_reply(&mut raw);
    assert!(
        reply.contains("\"bad_request\"") && reply.contains("\"id\":0"),
        "{reply}"
    );
    vmpod_protocol::frame::write_frame(
        &mut raw,
        &vmpod_protocol::Request {
            id: 6,
            body: RequestBody::Hello {
                version: vmpod_protocol::PROTOCOL_VERSION,
            },
        },
    )
    .unwrap();
    assert!(
        read_reply(&mut raw).contains("\"id\":6"),
        "the connection still serves"
    );
    // An oversized length: an error reply, then the agent hangs up.
    raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let reply = read_reply(&mut raw);
    assert!(reply.contains("exceeds"), "{reply}");
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the connection is closed after an oversized frame"
    );
    // A frame cut short by a closed connection.
    let mut cut = vm.connect(AGENT_PORT);
    cut.write_all(&100u32.to_be_bytes()).unwrap();
    cut.write_all(b"{\"id\":").unwrap();
    drop(cut);
    // Requests before hello are refused.
    let mut early = vm.connect(AGENT_PORT);
    vmpod_protocol::frame::write_frame(
        &mut early,
        &vmpod_protocol::Request {
            id: 1,
            body: RequestBody::Stats {
                container_id: "x".into(),
            },
        },
    )
    .unwrap();
    assert!(read_reply(&mut early).contains("first request must be hello"));
    // After all that, the first client still works.
    let (status, _, _) = run(&vm, &mut client, "after", "exit 7");
    assert_eq!(status, 7);
    vm.shutdown(&mut client);
}

fn read_reply(stream: &mut std::os::unix::net::UnixStream) -> String {
    let frame = vmpod_protocol::frame::read_frame(stream)
        .expect("read a reply")
        .expect("a reply, not the end of the stream");
    String::from_utf8_lossy(&frame).into_owned()
}

/// Runs a container to its end with stdout only; returns (status, stdout).
fn run_spec(
    vm: &AgentVm,
    client: &mut AgentClient,
    id: &str,
    spec: Spec,
    rootfs: Rootfs,
) -> (i32, String) {
    client
        .call(RequestBody::CreateContainer(CreateContainer::new(
            id,
            spec,
            rootfs,
            StdioWiring::STDOUT_ONLY,
        )))
        .expect("create");
    let out = vm.stream(id, None, StdStream::Stdout);
    start(client, id);
    let out = String::from_utf8_lossy(&read_all(out)).into_owned();
    let exit = client.wait(id, None).expect("wait");
    remove(client, id);
    (exit.status, out)
}

#[test]
fn spec_fields_seccomp_scratch_disk_clock_entropy_and_updates() {
    use oci_spec::runtime::{
        Arch, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccompAction, LinuxSeccompBuilder,
        LinuxSyscallBuilder, UserBuilder,
    };
    use vmpod_protocol::ErrorKind;
    let scratch_img =
        std::env::temp_dir().join(format!("vmpod-test-scratch-{}.ext4", std::process::id()));
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&scratch_img)
        .arg("32M")
        .status()
        .expect("run mkfs.ext4");
    assert!(status.success());
    let vm = AgentVm::boot(
        "agent-spec",
        &[common::Disk {
            path: &scratch_img,
            serial: "scratch",
            read_only: false,
        }],
    );
    let _ = std::fs::remove_file(&scratch_img);
    let mut client = vm.client();

    // Hostname, env, cwd, user.
    let mut s = spec(&[
        "sh",
        "-c",
        "echo \"$(hostname) $FOO $(pwd) $(id -u):$(id -g)\"",
    ]);
    s.set_hostname(Some("pod-a".into()));
    let mut p = s.process().clone().unwrap();
    p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar".into()]));
    p.set_cwd("/tmp".into());
    p.set_user(
        UserBuilder::default()
            .uid(65534u32)
            .gid(65534u32)
            .build()
            .unwrap(),
    );
    s.set_process(Some(p));
    let (status, out) = run_spec(&vm, &mut client, "fields", s, busybox());
    assert_eq!((status, out.as_str()), (0, "pod-a bar /tmp 65534:65534\n"));

    // The spec's seccomp profile holds in the container and in what is exec'd into it.
    let mut s = spec(&[
        "sh",
        "-c",
        "mkdir /tmp/x 2>/dev/null || echo denied; exec sleep 1000",
    ]);
    let mut linux = s.linux().clone().unwrap();
    linux.set_seccomp(Some(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(vec![Arch::ScmpArchX86_64])
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(1u32)
                .build()
                .unwrap()])
            .build()
            .unwrap(),
    ));
    s.set_linux(Some(linux));
    client
        .call(RequestBody::CreateContainer(CreateContainer::new(
            "filtered",
            s,
            busybox(),
            StdioWiring::STDOUT_ONLY,
        )))
        .expect("create");
    let out = vm.stream("filtered", None, StdStream::Stdout);
    start(&mut client, "filtered");
    let reader = std::thread::spawn(move || read_all(out));
    client
        .call(exec_request(
            "filtered",
            "try",
            "mkdir /tmp/y 2>/dev/null || echo denied-in-exec",
            StdioWiring {
                stdin: false,
                stdout: true,
                stderr: false,
            },
        ))
        .expect("exec");
    let exec_out = read_all(vm.stream("filtered", Some("try"), StdStream::Stdout));
    assert_eq!(String::from_utf8_lossy(&exec_out), "denied-in-exec\n");
    // Limits change on a running container.
    let resources = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(10i64).build().unwrap())
        .build()
        .unwrap();
    client
        .call_done(RequestBody::UpdateResources {
            container_id: "filtered".into(),
            resources: Box::new(resources),
        })
        .expect("update");
    let ResponseBody::Stats(stats) = client
        .call(RequestBody::Stats {
            container_id: "filtered".into(),
        })
        .expect("stats")
    else {
        panic!("stats")
    };
    assert_eq!(stats.pids_limit, Some(10));
    assert!(
        stats.memory_current > 0 && stats.pids_current >= 1,
        "{stats:?}"
    );
    client
        .call_done(RequestBody::SignalProcess {
            container_id: "filtered".into(),
            exec_id: None,
            signal: 9,
            all: true,
        })
        .expect("signal all");
    client.wait("filtered", None).expect("wait");
    assert_eq!(String::from_utf8_lossy(&reader.join().unwrap()), "denied\n");
    remove(&mut client, "filtered");

    // A writable layer on an ext4 scratch disk keeps what the container wrote.
    let on_disk = Rootfs {
        layers: vec!["busybox".into()],
        upper: Upper::Disk {
            serial: "scratch".into(),
        },
    };
    let (status, _) = run_spec(
        &vm,
        &mut client,
        "w1",
        spec(&["sh", "-c", "echo kept > /data.txt"]),
        on_disk.clone(),
    );
    assert_eq!(status, 0);
    let (_, out) = run_spec(&vm, &mut client, "w2", spec(&["cat", "/data.txt"]), on_disk);
    assert_eq!(out, "kept\n");

    // The clock and the entropy pool, as a restored clone needs them.
    client
        .call_done(RequestBody::SetTime {
            unix_secs: 1_893_456_000,
            nanos: 0,
        })
        .expect("set time");
    let (_, out) = run_spec(
        &vm,
        &mut client,
        "clock",
        spec(&["date", "-u", "+%Y"]),
        busybox(),
    );
    assert_eq!(out, "2030\n");
    client
        .call_done(RequestBody::AddEntropy { bytes: vec![7; 64] })
        .expect("entropy");
    assert_eq!(
        refused(client.call(RequestBody::AddEntropy { bytes: vec![] })).kind,
        ErrorKind::Failed
    );
    assert_eq!(
        refused(client.call(RequestBody::SetTime {
            unix_secs: 0,
            nanos: 2_000_000_000
        }))
        .kind,
        ErrorKind::Failed
    );

    // CloseStdin ends a reader whose stream the host keeps open.
    client
        .call(RequestBody::CreateContainer(CreateContainer::new(
            "reader",
            spec(&["cat"]),
            busybox(),
            StdioWiring {
                stdin: true,
                stdout: true,
                stderr: true,
            },
        )))
        .expect("create");
    let mut stdin = vm.stream("reader", None, StdStream::Stdin);
    let out = vm.stream("reader", None, StdStream::Stdout);
    let err = vm.stream("reader", None, StdStream::Stderr);
    start(&mut client, "reader");
    let readers = std::thread::spawn(move || (read_all(out), read_all(err)));
    stdin.write_all(b"some input\n").unwrap();
    // The bytes come back before stdin is closed: nothing written before CloseStdin is lost.
    std::thread::sleep(std::time::Duration::from_millis(300));
    client
        .call_done(RequestBody::CloseStdin {
            container_id: "reader".into(),
            exec_id: None,
        })
        .expect("close stdin");
    let exit = client.wait("reader", None).expect("wait");
    let (out, err) = readers.join().unwrap();
    assert_eq!(
        (
            exit.status,
            String::from_utf8_lossy(&out).as_ref(),
            String::from_utf8_lossy(&err).as_ref()
        ),
        (0, "some input\n", "")
    );
    remove(&mut client, "reader");

    // Output nobody asked for goes to /dev/null, and input is empty.
    create(
        &mut client,
        "quiet",
        spec(&[
            "sh",
            "-c",
            "echo dropped || exit 11; cat || exit 12; echo dropped >&2 || exit 13",
        ]),
        StdioWiring::default(),
    )
    .expect("create");
    start(&mut client, "quiet");
    assert_eq!(client.wait("quiet", None).expect("wait").status, 0);
    remove(&mut client, "quiet");

    // A network request that cannot be right is refused whole.
    let bad = vmpod_protocol::NetworkConfig {
        routes: vec![vmpod_protocol::Route {
            destination: "default".into(),
            gateway: Some("nonsense".into()),
        }],
        ..Default::default()
    };
    let reply = refused(client.call(RequestBody::SetupNetwork(bad)));
    assert_eq!(reply.kind, ErrorKind::BadRequest, "{reply}");
    vm.shutdown(&mut client);
}

#[test]
fn an_agent_that_cannot_start_says_why_on_the_console_and_the_vm_stops() {
    // No vsock device: the agent cannot listen.
    let scratch = common::support::Scratch::new("agent-novsock");
    let console = scratch.path("console.log");
    let guest = common::guest_dir();
    let status =
        std::process::Command::new(common::support::repo_root().join("scripts/qemu-microvm.sh"))
            .args([
                "--accel",
                "tcg",
                "--memory",
                "256",
                "--cmdline",
                "console=ttyS0 quiet",
            ])
            .arg("--kernel")
            .arg(guest.join("vmlinux"))
            .arg("--initrd")
            .arg(guest.join("initramfs.cpio"))
            .arg("--console")
            .arg(&console)
            .stdin(std::process::Stdio::null())
            .status()
            .expect("run QEMU");
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(status.success(), "QEMU stops when the guest does: {status}");
    assert!(
        text.contains("vmpod-agent: vsock: the VM has no vsock device"),
        "the reason is on the console:\n{text}"
    );
}

/// A spec whose IPC and UTS namespaces are the pod's pause process's, and whose /dev/shm is
/// the pod's, as a CRI container's (the shim keeps the sandbox's `/proc/PID/ns/…` paths).
fn in_pod(mut spec: Spec, pause: i32, share_pid: bool) -> Spec {
    use oci_spec::runtime::{LinuxNamespaceType as T, MountBuilder};
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    for ns in namespaces.iter_mut() {
        let name = match ns.typ() {
            T::Ipc => "ipc",
            T::Uts => "uts",
            T::Pid if share_pid => "pid",
            _ => continue,
        };
        ns.set_path(Some(format!("/proc/{pause}/ns/{name}").into()));
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/dev/shm")
            .typ("bind")
            .source(vmpod_protocol::POD_SHM_DIR)
            .options(vec!["rbind".into(), "rw".into()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    spec
}

#[test]
fn a_pods_sandbox_holds_its_ipc_uts_and_hostname_and_its_containers_share_dev_shm() {
    let vm = AgentVm::boot("agent-pod", &[]);
    let mut client = vm.client();
    // The sandbox brings no image: the agent's own binary is its pause process.
    let mut sandbox = in_pod(spec(&["/bin/sleep", "99999"]), 0, false);
    sandbox.set_hostname(Some("web-0".into()));
    // containerd makes the sandbox's root read-only.
    let mut root = sandbox.root().clone().unwrap_or_default();
    root.set_readonly(Some(true));
    sandbox.set_root(Some(root));
    let mut linux = sandbox.linux().clone().unwrap();
    let own: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|mut ns| {
            ns.set_path(None);
            ns
        })
        .collect();
    linux.set_namespaces(Some(own));
    sandbox.set_linux(Some(linux));
    let created = client.call(RequestBody::CreateContainer(CreateContainer {
        container_id: "pod".into(),
        spec: Box::new(sandbox.clone()),
        rootfs: Rootfs {
            layers: Vec::new(),
            upper: Upper::Tmpfs,
        },
        stdio: StdioWiring::default(),
        user: None,
        pod_sandbox: true,
    }));
    let Ok(ResponseBody::Pid(pause)) = created else {
        panic!("sandbox: {created:?}\nconsole:\n{}", vm.console_text());
    };
    start(&mut client, "pod");

    let script = "echo from-a > /dev/shm/x; exec sleep 1000";
    create(
        &mut client,
        "a",
        in_pod(spec(&["sh", "-c", script]), pause, false),
        StdioWiring::default(),
    )
    .expect("create a");
    start(&mut client, "a");
    create(
        &mut client,
        "b",
        in_pod(spec(&["sleep", "1000"]), pause, false),
        StdioWiring::default(),
    )
    .expect("create b");
    start(&mut client, "b");
    let look = "sleep 0.3; cat /dev/shm/x; hostname; for n in ipc uts pid; do readlink /proc/self/ns/$n; done";
    let (status, out_b) = exec_output(&vm, &mut client, "b", "look", look);
    assert_eq!(status, 0, "{out_b}");
    let (_, out_a) = exec_output(&vm, &mut client, "a", "look", look);
    let (a, b): (Vec<&str>, Vec<&str>) = (out_a.lines().collect(), out_b.lines().collect());
    assert_eq!(b.len(), 5, "{out_b}");
    assert_eq!(
        &b[..2],
        ["from-a", "web-0"],
        "the pod's /dev/shm and hostname"
    );
    assert_eq!(&a[1..4], &b[1..4], "one IPC and UTS namespace");
    assert_ne!(a[4], b[4], "PID namespaces of their own");

    // A pod that shares its process namespace: the pause process is PID 1 there.
    create(
        &mut client,
        "c",
        in_pod(spec(&["sleep", "1000"]), pause, true),
        StdioWiring::default(),
    )
    .expect("create c");
    start(&mut client, "c");
    let (_, out) = exec_output(&vm, &mut client, "c", "ps", "cat /proc/1/cmdline");
    assert_eq!(out, "/pause\0", "PID 1 of the pod's PID namespace");

    for id in ["a", "b", "c"] {
        remove(&mut client, id);
    }
    // The pause process stops on SIGTERM, with status 0, as Kubernetes' pause does.
    client
        .call_done(RequestBody::SignalProcess {
            container_id: "pod".into(),
            exec_id: None,
            signal: 15,
            all: false,
        })
        .expect("signal the sandbox");
    let exit = client.wait("pod", None).expect("wait for the sandbox");
    assert_eq!(exit.status, 0);
    remove(&mut client, "pod");

    let refused = refused(client.call(RequestBody::CreateContainer(CreateContainer {
        container_id: "pod2".into(),
        spec: Box::new(sandbox),
        rootfs: busybox(),
        stdio: StdioWiring::default(),
        user: None,
        pod_sandbox: true,
    })));
    assert!(
        refused.message.contains("takes no image layers"),
        "{refused}"
    );
    vm.shutdown(&mut client);
}

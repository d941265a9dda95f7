//! vmpod-agent in a real guest (QEMU microvm on TCG with our vhost-user devices), driven over
//! vsock exactly as the sandbox drives it.

mod common;

use common::{read_all, AgentVm};
use oci_spec::runtime::Spec;
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
    client.call(RequestBody::CreateContainer(CreateContainer {
        container_id: id.into(),
        spec: Box::new(spec),
        rootfs: busybox(),
        stdio,
    }))
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

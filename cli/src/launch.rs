//! A prepared run made real: the sandbox booted, the container created with its stdio
//! streams open, ready to start. Shared by foreground runs and background monitors.

use crate::prepare::Prepared;
use crate::{chain, Failure};
use std::os::unix::net::UnixStream;
use vmpod_protocol::{
    ClientError, CreateContainer, ErrorKind, RequestBody, StdStream, StdioWiring,
};
use vmpod_sandbox::hypervisor::Disk;
use vmpod_sandbox::{Boot, Sandbox, SandboxConfig};

/// The one container of a `vmpod run` sandbox.
pub const CONTAINER: &str = "main";

pub struct Launched {
    pub sandbox: Sandbox,
    pub stdout: UnixStream,
    /// None with a terminal: the pty carries both.
    pub stderr: Option<UnixStream>,
    pub stdin: Option<UnixStream>,
}

pub fn launch(p: &Prepared, timing: &mut crate::timing::Timing) -> Result<Launched, Failure> {
    let mut sandbox = Sandbox::start(SandboxConfig {
        backend: p.hypervisor,
        boot: if p.cold_boot {
            Boot::Cold
        } else {
            Boot::Template
        },
        cpus: p.cpus,
        memory_mib: p.memory_mib,
        disks: p
            .layers
            .iter()
            .map(|(path, serial)| Disk {
                path: path.clone(),
                serial: serial.clone(),
                read_only: true,
            })
            .collect(),
        shared: p.shared.clone(),
        debug: p.debug,
        kernel_args: p.kernel_args.clone(),
        netns: p.netns.clone(),
    })
    .map_err(|e| Failure::runtime(chain(&e)))?;
    timing.mark("vm_boot_to_agent");
    let wiring = StdioWiring {
        stdin: p.interactive,
        stdout: true,
        stderr: !p.tty,
    };
    let created = sandbox
        .agent()
        .call(RequestBody::CreateContainer(CreateContainer {
            container_id: CONTAINER.into(),
            spec: Box::new(p.spec.clone()),
            rootfs: p.rootfs.clone(),
            stdio: wiring,
            user: p.user.clone(),
            pod_sandbox: false,
        }));
    if let Err(e) = created {
        return Err(create_failure(&p.command[0], e));
    }
    timing.mark("create");
    let stream = |s: &Sandbox, which| {
        s.stream(CONTAINER, None, which)
            .map_err(|e| Failure::runtime(chain(&e)))
    };
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
    Ok(Launched {
        sandbox,
        stdout,
        stderr,
        stdin,
    })
}

/// docker's statuses for a process that cannot start: 127 not found, 126 cannot execute.
pub fn create_failure(program: &str, e: ClientError) -> Failure {
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
    Failure::runtime(format!("create the container: {message}"))
}

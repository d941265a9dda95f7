//! `vmpod exec`: a new process in a running background container, attached as `run` attaches.

use crate::containers::{random_id, running};
use crate::launch::CONTAINER;
use crate::session::{attach, Streams};
use crate::{chain, Failure};
use vmpod_protocol::{ExecProcess, RequestBody, StdStream, StdioWiring};

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

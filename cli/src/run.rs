//! `vmpod run`: one container in one new microVM. In the foreground its stdio and exit status
//! pass through as docker passes them; with `-d` a monitor process owns it (monitor.rs).

use crate::launch::{launch, CONTAINER};
use crate::prepare::{prepare, RunArgs};
use crate::session::{attach, Streams};
use crate::timing::Timing;
use crate::{chain, monitor, publish, Failure};
use vmpod_protocol::RequestBody;

pub fn run(args: RunArgs) -> Result<i32, Failure> {
    let mut timing = Timing::new();
    let prepared = prepare(&args)?;
    timing.mark("prepare");
    if args.detach {
        return monitor::start(&args, prepared);
    }
    if args.name.is_some() {
        return Err(Failure::runtime(
            "--name is for background containers (-d); a foreground run is removed when it exits",
        ));
    }
    // Bound before the VM starts: a busy port fails the run with nothing to undo.
    let published =
        publish::bind(&prepared.publish).map_err(|e| Failure::runtime(e.to_string()))?;
    let launched = launch(&prepared, &mut timing)?;
    let mut sandbox = launched.sandbox;
    let endpoint = sandbox.endpoint();
    publish::serve(published, &endpoint);
    let streams = Streams {
        stdout: launched.stdout,
        stderr: launched.stderr,
        stdin: launched.stdin,
    };
    let exit = attach(
        &endpoint,
        sandbox.agent(),
        CONTAINER,
        None,
        streams,
        prepared.tty,
        |agent| {
            agent
                .call(RequestBody::StartContainer {
                    container_id: CONTAINER.into(),
                })
                .map(|_| ())
        },
    )
    .map_err(|e| Failure::runtime(format!("start: {e}")))?;
    timing.mark("start_and_run");
    let exit = exit.map_err(|e| {
        let why = sandbox
            .vm_ended()
            .map(|s| format!(" (the VM ended: {s})"))
            .unwrap_or_default();
        Failure::runtime(format!("lost the container: {}{why}", chain(&e)))
    })?;
    let _ = sandbox.agent().call_done(RequestBody::RemoveContainer {
        container_id: CONTAINER.into(),
    });
    drop(sandbox);
    timing.mark("teardown");
    timing.report();
    Ok(exit.status)
}

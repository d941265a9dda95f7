//! `vmpod run`: one container in one new microVM. In the foreground its stdio and exit status
//! pass through as docker passes them; with `-d` a monitor process owns it (detach.rs).

use crate::launch::{launch, CONTAINER};
use crate::prepare::{prepare, RunArgs};
use crate::session::{attach, Streams};
use crate::{chain, detach, Failure};
use vmpod_protocol::RequestBody;

/// Where a run's time goes, printed on stderr when VMPOD_TIMING is set (the benchmark reads it).
pub struct Timing {
    start: std::time::Instant,
    marks: Vec<(&'static str, std::time::Instant)>,
}

impl Timing {
    pub fn new() -> Timing {
        Timing {
            start: std::time::Instant::now(),
            marks: Vec::new(),
        }
    }

    pub fn mark(&mut self, step: &'static str) {
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

pub fn run(args: RunArgs) -> Result<i32, Failure> {
    let mut timing = Timing::new();
    let prepared = prepare(&args)?;
    timing.mark("prepare");
    if args.detach {
        return detach::start(&args, prepared);
    }
    if args.name.is_some() {
        return Err(Failure::runtime(
            "--name is for background containers (-d); a foreground run is removed when it exits",
        ));
    }
    let launched = launch(&prepared, &mut timing)?;
    let mut sandbox = launched.sandbox;
    let endpoint = sandbox.endpoint();
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

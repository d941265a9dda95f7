//! The threads that learn what happens in the VM on their own: one per started process, which
//! waits for its exit and records it, and one per VM for OOM kills.

use crate::agent::{Agent, Hangup};
use crate::events::EventSink;
use crate::state::{now, SharedPod};
use crate::stdio::Attached;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::protobuf::MessageField;
use std::sync::Arc;

/// A process that exited with this status was killed (SIGKILL): what a VM that died reports
/// for every process it took with it.
const LOST: u32 = 128 + libc::SIGKILL as u32;

/// Waits for the process on its own connection and records the exit once its output is out:
/// the process goes Stopped, Wait wakes, and TaskExit is published (before any TaskDelete,
/// which waits for the pod's lock).
pub fn watch_exit(
    pod: Arc<SharedPod>,
    events: Arc<dyn EventSink>,
    agent: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
    attached: Option<Attached>,
) {
    let watcher = move || {
        let exec = (!exec_id.is_empty()).then_some(exec_id.as_str());
        let result = agent.wait(&container_id, exec);
        if let Some(a) = attached {
            a.finish();
        }
        // A VM that died takes its processes with it: they are reported killed.
        let status = result.unwrap_or_else(|e| {
            let e = vmpod_sandbox::error::chain(&e);
            log::warn!("{container_id}/{exec_id}: lost the process: {e}");
            LOST
        });
        let at = now();
        {
            let mut state = pod.lock();
            let Ok(p) = state.proc_mut(&container_id, &exec_id) else {
                return;
            };
            p.exited(status, at.clone());
            events.publish(Box::new(TaskExit {
                container_id: container_id.clone(),
                id: if exec_id.is_empty() {
                    container_id.clone()
                } else {
                    exec_id.clone()
                },
                pid: p.pid,
                exit_status: status,
                exited_at: MessageField::some(at),
                ..Default::default()
            }));
        }
        pod.notify();
    };
    if let Err(e) = std::thread::Builder::new()
        .name("exit-watcher".into())
        .spawn(watcher)
    {
        log::warn!("start an exit watcher: {e}");
    }
}

/// Pushed OOM kills become TaskOOM events, for as long as the VM runs; what hangs the watch up.
pub fn watch_oom(agent: &dyn Agent, events: Arc<dyn EventSink>) -> Option<Hangup> {
    let (kills, hangup) = agent.watch_oom()?;
    let watcher = move || {
        for container_id in kills {
            events.publish(Box::new(TaskOOM {
                container_id,
                ..Default::default()
            }));
        }
    };
    match std::thread::Builder::new()
        .name("oom".into())
        .spawn(watcher)
    {
        Ok(_) => Some(hangup),
        Err(e) => {
            log::warn!("start the OOM watcher: {e}");
            hangup();
            None
        }
    }
}

//! containerd-shim-vmpod-v2: containerd's runtime v2 shim. One shim process per pod (containers
//! whose spec carries the same `io.kubernetes.cri.sandbox-id` share it), one VM per shim.
//!
//!   containerd runs `containerd-shim-vmpod-v2 ... start` (prints the socket address),
//!   the server it spawns serves the task API, and `... delete` cleans up after a dead shim.

mod agent;
mod binds;
mod boot;
mod cri;
mod error;
mod events;
mod host_cgroup;
mod layers;
mod metrics;
mod rootfs;
mod service;
mod spec;
mod state;
mod stdio;
mod task;
mod vm;
mod watch;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};
use service::TaskService;
use std::path::Path;
use std::sync::Arc;

const RUNTIME: &str = "io.containerd.vmpod.v2";

struct Service {
    namespace: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // The bundle is the working directory; nothing but the address may be printed.
        let spec = containerd_shim::util::read_spec_from_file("")?;
        // containerd's CRI puts every container of a pod under the pod sandbox's id.
        let grouping = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(cri::SANDBOX_ID).cloned())
            .unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // containerd finds the shim again after a restart through this file.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // The shim is gone (killed or crashed): its VM died with it; what it left on disk and
        // in a pod network namespace is removed here.
        // A sandbox's shim died in the pod's host cgroup, which is empty now.
        if let Ok(spec) = containerd_shim::util::read_spec_from_file("") {
            let annotations = spec.annotations().clone().unwrap_or_default();
            let sandbox =
                annotations.get(cri::CONTAINER_TYPE).map(String::as_str) == Some("sandbox");
            let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
            if let (true, Some(path)) = (sandbox, path) {
                host_cgroup::remove(&path.display().to_string());
            }
        }
        let note = Path::new(spec::SANDBOX_NOTE);
        if let Ok(state_dir) = std::fs::read_to_string(note) {
            let state_dir = Path::new(state_dir.trim());
            if state_dir.starts_with(vmpod_sandbox::paths::STATE_ROOT) {
                let cleanup = state_dir.join("cleanup.sh");
                if cleanup.is_file() {
                    let _ = std::process::Command::new("sh").arg(&cleanup).status();
                }
                // A volume still bound under it would be emptied by the removal.
                if vmpod_sandbox::shared::has_mounts_under(state_dir) {
                    log::warn!(
                        "{} still has mounts under it; left in place",
                        state_dir.display()
                    );
                } else {
                    let _ = std::fs::remove_dir_all(state_dir);
                }
            }
            let _ = std::fs::remove_file(note);
        }
        let mut response = DeleteResponse::new();
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = containerd_shim::protos::protobuf::MessageField::some(
            containerd_shim::util::timestamp()?,
        );
        Ok(response)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = events::Events::start(publisher, self.namespace.clone());
        let host = boot::SandboxHost::new(spec::Knobs::from_env());
        TaskService::new(
            self.namespace.clone(),
            self.exit.clone(),
            Arc::new(events),
            Arc::new(host),
        )
    }
}

fn main() {
    // The shim's stderr goes nowhere once it runs as a server: a panic is said in containerd's
    // log, as the shim's other lines are.
    std::panic::set_hook(Box::new(|info| {
        log::error!("containerd-shim-vmpod-v2 panicked: {info}");
        eprintln!("containerd-shim-vmpod-v2 panicked: {info}");
    }));
    // The shim reaps its own children (the VMM, its helpers, nsenter): the crate's reaper
    // would take their exit statuses away from those who wait for them. It is set up before
    // `Shim::new`, so it is turned off here.
    let config = Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<Service>(RUNTIME, Some(config))
}

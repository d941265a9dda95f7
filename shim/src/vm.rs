//! The pod's VM, owned by one long-lived thread: every process a sandbox spawns dies with the
//! thread that spawned it (PR_SET_PDEATHSIG follows threads, not processes), and ttrpc's
//! worker threads come and go. Everything else reaches the agent through the VM's endpoint.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use vmpod_sandbox::shared::SharedDir;
use vmpod_sandbox::{DiskSlots, Endpoint, Sandbox, SandboxConfig};

pub struct Vm {
    pub endpoint: Endpoint,
    pub state_dir: PathBuf,
    pub disks: Vec<(PathBuf, String)>,
    /// Where containers' host binds are shared with the guest.
    pub shared: Arc<Mutex<SharedDir>>,
    /// Spare disk slots for layers the VM did not boot with.
    pub slots: DiskSlots,
    stop: mpsc::Sender<()>,
    owner: Option<std::thread::JoinHandle<()>>,
}

impl Vm {
    /// Boots the VM on its own thread and returns once the agent answers.
    pub fn boot(config: SandboxConfig) -> Result<Vm, String> {
        let disks = config
            .disks
            .iter()
            .map(|d| (d.path.clone(), d.serial.clone()))
            .collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let owner = std::thread::Builder::new()
            .name("vm-owner".into())
            .spawn(move || {
                let sandbox = match Sandbox::start(config) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(vmpod_sandbox::error::chain(&e)));
                        return;
                    }
                };
                let shared = match sandbox.shared_dir() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(vmpod_sandbox::error::chain(&e)));
                        return;
                    }
                };
                let slots = match sandbox.slots() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(vmpod_sandbox::error::chain(&e)));
                        return;
                    }
                };
                let ready = (sandbox.endpoint(), sandbox.state_dir.clone(), shared, slots);
                let _ = ready_tx.send(Ok(ready));
                // Held until asked to stop (or the shim goes): dropping it stops the VM.
                let _ = stop_rx.recv();
                drop(sandbox);
            })
            .map_err(|e| format!("start the VM's thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok((endpoint, state_dir, shared, slots))) => Ok(Vm {
                endpoint,
                state_dir,
                disks,
                shared,
                slots,
                stop,
                owner: Some(owner),
            }),
            Ok(Err(e)) => {
                let _ = owner.join();
                Err(e)
            }
            Err(_) => {
                let _ = owner.join();
                Err("the VM's thread ended without a word".into())
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
    }
}

//! One sandbox: its state directory, its VM and the agent inside it. Dropping it stops the VM
//! and removes every file it made, on every path out (errors and panics included).

use crate::backend::Backend;
use crate::endpoint::Endpoint;
use crate::error::{io, SandboxError};
use crate::hypervisor::{Disk, Hypervisor, NetAttachment, TemplateRole, VmSpec};
use crate::jail::{self, Jail};
use crate::jail_slots::JailedSlots;
use crate::network::PodNetwork;
use crate::paths;
use crate::shared::{self, SharedDir, SharedVolume};
use crate::slots::DiskSlots;
use crate::template::{self, Layout, Template, Wanted};
use crate::vsock::connect;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmpod_protocol::{Client, RequestBody, StdStream, AGENT_PORT};

/// How the VM comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// A full boot of kernel and agent.
    Cold,
    /// Restored from the template of its shape (template.rs), which is built first if there
    /// is none; a full boot where the backend or the shape has no templates yet.
    Template,
    /// Booted to be saved as a template (`Sandbox::save`), with a NIC on a throwaway tap
    /// when `nic`.
    AsTemplate { nic: bool },
}

pub struct SandboxConfig {
    pub backend: Backend,
    pub boot: Boot,
    pub cpus: u8,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
    /// Host directories and files shared live with the guest, bound in this order (the guest
    /// sees the i-th at [`shared::guest_path`]`(i)`); more can be added while it runs.
    pub shared: Vec<SharedVolume>,
    /// The agent narrates on the console (`vmpod.debug`).
    pub debug: bool,
    /// Appended to the guest kernel's command line (for diagnosis).
    pub kernel_args: String,
    /// A pod network namespace (as a CNI plugin made it) whose interface the guest takes over.
    pub netns: Option<PathBuf>,
}

pub struct Sandbox {
    pub id: String,
    pub state_dir: PathBuf,
    vm: Box<dyn Hypervisor>,
    agent: Option<Client<UnixStream>>,
    janitor: Option<std::process::Child>,
    network: Option<PodNetwork>,
    /// Shared with whoever adds volumes while the VM runs (the shim's RPC threads).
    shared: Option<Arc<Mutex<SharedDir>>>,
    /// The VM's spare disk slots, likewise.
    slots: Option<DiskSlots>,
    /// The uid and root the VM's processes run with (jail.rs); none when not jailed.
    jail: Option<Arc<Jail>>,
}

/// Removes the state directory if the sandbox's owner dies without doing it (`kill -9`): the
/// kernel sends it SIGTERM when its parent goes (the VM's processes get SIGKILL then), and the
/// trap cleans up. A normal end kills it first.
fn spawn_janitor(state_dir: &Path) -> Result<std::process::Child, SandboxError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"trap 'kill $! 2>/dev/null; [ -f "$0/cleanup.sh" ] && sh "$0/cleanup.sh"; rm -rf --one-file-system "$0"; exit 0' TERM; while :; do sleep 3600 & wait $!; done"#)
        .arg(state_dir)
        // None of the owner's streams: a sleep the trap misses (a TERM while the shell forks
        // the next one) would hold them open, and whoever reads the owner's output to its end
        // would wait for it.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: prctl and setpgid are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // Its own process group: a Ctrl-C meant for the container does not reach it.
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(io("start the sandbox's clean-up watcher (/bin/sh)"))
}

fn random_id() -> Result<String, SandboxError> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sandbox {
    /// Boots a VM with the agent and waits until the agent answers.
    pub fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        if config.cpus == 0 {
            return Err(SandboxError::Invalid("--cpus must be at least 1".into()));
        }
        if config.memory_mib < 64 {
            return Err(SandboxError::Invalid(format!(
                "--memory must be at least 64 MiB for the guest kernel and agent, not {} MiB",
                config.memory_mib
            )));
        }
        let kernel = paths::guest_file(paths::KERNEL)?;
        let initrd = paths::guest_file(paths::INITRAMFS)?;
        let id = random_id()?;
        let state_dir = Path::new(paths::STATE_ROOT).join(&id);
        std::fs::create_dir_all(&state_dir)
            .map_err(io(format!("create {}", state_dir.display())))?;
        let mut sandbox = Sandbox {
            id,
            state_dir: state_dir.clone(),
            vm: config.backend.hypervisor(),
            agent: None,
            janitor: None,
            network: None,
            shared: None,
            slots: None,
            jail: None,
        };
        sandbox.janitor = Some(spawn_janitor(&state_dir)?);
        if jail::enabled() {
            // The guest's memory and what its VM's processes need besides (QEMU's TCG
            // translation cache the most).
            let memory = (u64::from(config.memory_mib) << 20) + (1 << 30);
            sandbox.jail = Some(Arc::new(Jail::create(&state_dir, memory)?));
        }
        let disks = config.disks;
        let shared = SharedDir::create(&state_dir)?;
        let shared_root = shared.root().to_path_buf();
        sandbox.shared = Some(Arc::new(Mutex::new(shared)));
        sandbox.write_cleanup()?;
        for volume in &config.shared {
            sandbox.share(volume)?;
        }
        // Held until the VMM has inherited it; the tap lives as long as the VMM then.
        let mut tap_fd = None;
        if let Some(netns) = &config.netns {
            let (network, fd) = PodNetwork::attach(netns)?;
            sandbox.network = Some(network);
            sandbox.write_cleanup()?;
            tap_fd = Some(fd);
        }
        if let Boot::AsTemplate { nic: true } = config.boot {
            // Unattached and not persistent: it goes when the template's VMM closes it.
            let name = format!("vmpt{}", std::process::id() % 100_000);
            let tap = vmpod_devices::net::Tap::open(&name, None).map_err(|e| {
                SandboxError::Invalid(format!("create the template's tap {name}: {e}"))
            })?;
            tap_fd = Some(tap.into_fd());
        }
        let net = match (&tap_fd, &sandbox.network) {
            (Some(fd), Some(network)) => Some(NetAttachment {
                tap_fd: fd.as_raw_fd(),
                mac: network.interface.mac.clone(),
            }),
            (Some(fd), None) => Some(NetAttachment {
                tap_fd: fd.as_raw_fd(),
                mac: TEMPLATE_MAC.into(),
            }),
            _ => None,
        };
        let cmdline = kernel_cmdline(config.debug, &config.kernel_args);
        let template = match config.boot {
            Boot::Cold => None,
            Boot::AsTemplate { .. } => Some(TemplateRole::Build {
                memory: state_dir.join("memory"),
            }),
            Boot::Template => ensure_template(
                config.backend,
                config.cpus,
                config.memory_mib,
                disks.len(),
                net.is_some(),
                &cmdline,
            )
            .map(|t| TemplateRole::Restore {
                state: t.state(),
                memory: t.memory(),
            })
            .map(Some)?,
        };
        let restored = matches!(template, Some(TemplateRole::Restore { .. }));
        let first_spare = disks.len();
        let spare_slots = config.backend.spare_slots(first_spare, net.is_some());
        let spec = VmSpec {
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            kernel,
            initrd,
            cmdline,
            disks,
            net,
            shared_dir: shared_root,
            state_dir,
            template,
            spare_slots,
            jail: sandbox.jail.clone(),
        };
        let restored_from = match &spec.template {
            Some(TemplateRole::Restore { state, .. }) => state.parent().map(Path::to_path_buf),
            _ => None,
        };
        sandbox.vm.start(&spec).map_err(|e| match &restored_from {
            Some(dir) => SandboxError::Invalid(format!(
                "{}; remove the template with `vmpod template rm {}`, or boot with --cold-boot",
                crate::error::chain(&e),
                dir.file_name().unwrap_or_default().to_string_lossy()
            )),
            None => e,
        })?;
        drop(tap_fd);
        if let Some(mut control) = sandbox.vm.slot_control() {
            if sandbox.jail.is_some() && !control.takes_open_files() {
                control = Arc::new(JailedSlots::new(&sandbox.state_dir, control));
            }
            let slots = DiskSlots::new(&sandbox.id, control, first_spare, spare_slots);
            sandbox.slots = Some(slots);
        }
        if sandbox.vm.saves_when_ready() {
            return Ok(sandbox);
        }
        sandbox.wait_for_agent()?;
        if restored {
            sandbox.freshen()?;
        }
        let wanted = sandbox
            .network
            .as_ref()
            .map(|n| (n.config.clone(), n.netns.clone()));
        if let Some((config, netns)) = wanted {
            sandbox
                .agent()
                .call_done(RequestBody::SetupNetwork(config))
                .map_err(|e| {
                    SandboxError::Invalid(format!(
                        "configure the guest's network from {}: {e}",
                        netns.display()
                    ))
                })?;
        }
        Ok(sandbox)
    }

    /// What the janitor undoes if the owner dies without cleaning up: the shared directory's
    /// binds first (the state directory is removed after them), then the network.
    fn write_cleanup(&self) -> Result<(), SandboxError> {
        let mut lines = String::new();
        if let Some(shared) = &self.shared {
            lines += &(shared::lock(shared).cleanup_command() + "\n");
        }
        if let Some(network) = &self.network {
            lines += &(network.detach_command() + "\n");
        }
        if let Some(jail) = &self.jail {
            lines += &(jail.cleanup_command() + "\n");
        }
        let cleanup = self.state_dir.join("cleanup.sh");
        std::fs::write(&cleanup, lines).map_err(io(format!("write {}", cleanup.display())))
    }

    /// Shares a host directory or file with the guest, live; returns where the guest sees it
    /// (a bind source for a container's spec).
    pub fn share(&mut self, volume: &SharedVolume) -> Result<String, SandboxError> {
        let shared = self.shared_dir()?;
        let added = shared::lock(&shared).add(volume);
        added
    }

    /// The shared directory, for adding and removing volumes from other threads while the VM
    /// runs; it is torn down with the sandbox whoever still holds it.
    pub fn shared_dir(&self) -> Result<Arc<Mutex<SharedDir>>, SandboxError> {
        self.shared
            .clone()
            .ok_or_else(|| SandboxError::Invalid("this sandbox has no shared directory".into()))
    }

    /// The VM's spare disk slots, for attaching images from any thread while it runs
    /// (slots.rs); they go with the sandbox whoever still holds the handle.
    pub fn slots(&self) -> Result<DiskSlots, SandboxError> {
        self.slots
            .clone()
            .ok_or_else(|| SandboxError::Invalid(format!("sandbox {} has no disk slots", self.id)))
    }

    /// A restored clone starts with its template's clock, entropy pool and identity: each
    /// gets its own before anything runs in it.
    fn freshen(&mut self) -> Result<(), SandboxError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut entropy = vec![0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut entropy))
            .map_err(io("read /dev/urandom"))?;
        let machine_id = format!("{}{}", random_id()?, random_id()?) + &random_id()?[..8];
        let hostname = format!("vmpod-{}", self.id);
        let agent = self.agent();
        agent.call_done(RequestBody::SetTime {
            unix_secs: now.as_secs() as i64,
            nanos: now.subsec_nanos(),
        })?;
        agent.call_done(RequestBody::AddEntropy { bytes: entropy })?;
        agent.call_done(RequestBody::SetIdentity {
            hostname,
            machine_id,
        })?;
        Ok(())
    }

    /// Saves this VM (started with [`Boot::AsTemplate`]) to `state`. Its agent connection is
    /// closed first: a template holds no open stream.
    pub fn save(&mut self, state: &Path) -> Result<(), SandboxError> {
        drop(self.agent.take());
        self.vm.save(state)
    }

    pub fn hypervisor_name(&self) -> &'static str {
        self.vm.name()
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(self.vm.console()).unwrap_or_default()
    }

    fn wait_for_agent(&mut self) -> Result<(), SandboxError> {
        // A kvm-pvm boot takes most of a minute; TCG about a second.
        const LIMIT: u64 = 600;
        let deadline = Instant::now() + Duration::from_secs(LIMIT);
        loop {
            if let Some(status) = self.vm.ended() {
                return Err(SandboxError::VmEnded {
                    status,
                    console: self.console_text(),
                });
            }
            if let Some(stream) = connect(self.vm.vsock_uds(), AGENT_PORT) {
                // A Hello that gets no answer is retried like a refused connection.
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(io("set a timeout on the agent connection"))?;
                if let Ok(client) = Client::handshake(stream) {
                    client
                        .stream()
                        .set_read_timeout(None)
                        .map_err(io("clear the agent connection's timeout"))?;
                    self.agent = Some(client);
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(SandboxError::AgentTimeout(LIMIT));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn agent(&mut self) -> &mut Client<UnixStream> {
        self.agent
            .as_mut()
            .expect("the agent is connected once start returns")
    }

    /// Reaches the agent from anywhere on the host, for as long as the sandbox runs.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.vm.vsock_uds())
    }

    /// A second control connection, e.g. for signals while the first waits for an exit.
    pub fn control_connection(&self) -> Result<Client<UnixStream>, SandboxError> {
        self.endpoint().control()
    }

    /// Opens one stdio stream of a process.
    pub fn stream(
        &self,
        container: &str,
        exec: Option<&str>,
        stream: StdStream,
    ) -> Result<UnixStream, SandboxError> {
        self.endpoint().stream(container, exec, stream)
    }

    /// Has the VM ended on its own (crash, panic)?
    pub fn vm_ended(&mut self) -> Option<String> {
        self.vm.ended()
    }
}

/// A template's NIC address; a clone's agent gives the NIC the pod's own.
const TEMPLATE_MAC: &str = "02:76:6d:70:00:01";

/// The guest kernel command line a sandbox adds to the backend's own.
pub fn kernel_cmdline(debug: bool, kernel_args: &str) -> String {
    format!("{}{kernel_args}", if debug { "vmpod.debug " } else { "" })
        .trim()
        .to_string()
}

/// The template for a sandbox of this shape, built now if there is none.
pub fn ensure_template(
    backend: Backend,
    cpus: u8,
    memory_mib: u32,
    slots: usize,
    nic: bool,
    cmdline: &str,
) -> Result<Template, SandboxError> {
    let layout = Layout {
        backend: backend.flag().to_string()
            + if backend == (Backend::Qemu { kvm: true }) {
                "-kvm"
            } else {
                ""
            },
        cpus,
        memory_mib,
        slots,
        spare_slots: backend.spare_slots(slots, nic),
        nic,
        cmdline: cmdline.to_string(),
    };
    let kernel = paths::guest_file(paths::KERNEL)?;
    let initrd = paths::guest_file(paths::INITRAMFS)?;
    let wanted = Wanted::new(backend, layout, &kernel, &initrd)?;
    let store = template::Store::open()?;
    store.ensure(&wanted, |state| {
        build_template(backend, (cpus, memory_mib), slots, nic, cmdline, state)
    })
}

/// Boots a VM with `slots` empty disks, the spare slots after them (and a NIC when `nic`),
/// and saves it to `state` once its agent answers.
fn build_template(
    backend: Backend,
    (cpus, memory_mib): (u8, u32),
    slots: usize,
    nic: bool,
    cmdline: &str,
    state: &Path,
) -> Result<(), SandboxError> {
    let empty = state.with_file_name("empty-slot");
    std::fs::write(&empty, b"").map_err(io(format!("create {}", empty.display())))?;
    let config = SandboxConfig {
        backend,
        boot: Boot::AsTemplate { nic },
        cpus,
        memory_mib,
        disks: (0..slots)
            .map(|i| Disk {
                path: empty.clone(),
                serial: format!("slot{i}"),
                read_only: true,
            })
            .collect(),
        shared: Vec::new(),
        debug: false,
        kernel_args: cmdline.to_string(),
        netns: None,
    };
    let result = Sandbox::start(config).and_then(|mut sandbox| {
        sandbox.save(state)?;
        // Saved: the VM is stopped, its memory file complete.
        let memory = sandbox.state_dir.join("memory");
        let kept = state.with_file_name("memory");
        std::fs::rename(&memory, &kept).map_err(io(format!(
            "move {} to {}",
            memory.display(),
            kept.display()
        )))?;
        crate::guest_memory::sparsify(&kept)
    });
    let _ = std::fs::remove_file(&empty);
    result
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Ask the agent to power off cleanly, briefly; the VM is killed either way.
        if let Some(mut agent) = self.agent.take() {
            if agent.call_done(RequestBody::Shutdown).is_ok() {
                drop(agent);
                let deadline = Instant::now() + Duration::from_secs(3);
                while self.vm.ended().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        self.vm.kill();
        if let Some(network) = self.network.take() {
            network.detach();
        }
        if let Some(shared) = self.shared.take() {
            shared::lock(&shared).teardown();
        }
        if let Some(jail) = &self.jail {
            jail.teardown();
        }
        // A bind that would not go must not be reached by the removal: it is a host volume.
        if shared::has_mounts_under(&self.state_dir) {
            eprintln!(
                "vmpod: {} still has mounts under it; left in place",
                self.state_dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
        if let Some(mut janitor) = self.janitor.take() {
            // SIGTERM: its trap also ends its sleep.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(janitor.id() as libc::pid_t, libc::SIGTERM) };
            let _ = janitor.wait();
        }
    }
}

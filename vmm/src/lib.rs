//! vmpod-vmm: one KVM microVM per process.
//!
//! `run` builds the VM from a [`VmConfig`](config::VmConfig) (memory, kernel, vCPUs, legacy
//! devices), runs one thread per vCPU plus the calling thread as the event loop, and returns why
//! the guest stopped. It knows nothing of containers.

pub mod boot;
mod build;
pub mod config;
pub mod cpuid;
pub mod devices;
mod disk_control;
mod error;
mod event_loop;
mod fs_worker;
pub mod host;
pub mod lifecycle;
pub mod memory;
pub mod seccomp;
mod signals;
pub mod snapshot;
pub mod virtio;
pub mod vstate;

use devices::persist::Persist;
pub use error::VmmError;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use config::{Console, CpuidMask, VmConfig, Workarounds};
use devices::boot_timer::BootTimer;
use devices::console::ConsoleOutput;
use devices::{Bus, SERIAL_IRQ};
use event_loop::StopHandler;
use lifecycle::{ExitReason, Lifecycle};

/// Builds the VM and runs it until the guest stops, a vCPU fails or a stop signal arrives.
/// `started` is the VMM's own start, which the boot timer measures from. With `seccomp` on,
/// every thread confines itself before the guest runs (see [`seccomp`]).
pub fn run(
    config: &VmConfig,
    started: Instant,
    seccomp: seccomp::Seccomp,
) -> Result<ExitReason, VmmError> {
    config.validate()?;
    let filters = seccomp::Filters::new()?;
    let kvm = build::open_kvm(config)?;
    let pvm = host::is_kvm_pvm();
    let cpus = config.cpus as u8;

    let hidden = match &config.cpuid_mask {
        CpuidMask::Auto if pvm => cpuid::KVM_PVM_HIDDEN.to_vec(),
        CpuidMask::Auto | CpuidMask::None => Vec::new(),
        CpuidMask::Hide(list) => list.clone(),
    };
    let workarounds =
        use_workarounds(config.pvm_workarounds, pvm).then(|| host::kvm_pvm_cmdline(&hidden));
    let ap_start_port = workarounds.is_some();
    let virtio::Devices {
        devices,
        disk_slots,
    } = virtio::open_devices(config)?;
    let machine = [
        Some(host::MACHINE_CMDLINE.to_string()),
        workarounds,
        Some(virtio::cmdline_entries(devices.len())),
    ];
    let cmdline = full_cmdline(&machine, &config.cmdline);

    step(started, "KVM opened");
    let restored = match &config.restore {
        Some(files) => Some(snapshot::load(&files.state)?),
        None => None,
    };
    let build::Machine { mem, vm, mut vcpus } = match (&config.restore, &restored) {
        (Some(files), Some(saved)) => {
            let machine = build::restore(&kvm, files, saved, hidden)?;
            step(started, "VM restored");
            machine
        }
        _ => {
            let cpuid = build::CpuidTemplate::new(&kvm, hidden)?;
            let machine = build::boot(&kvm, config, &cmdline, &cpuid)?;
            step(started, "guest loaded");
            machine
        }
    };
    let attached = virtio::attach(&vm, &mem, devices)?;
    if let Some(saved) = &restored {
        build::restore_devices(&attached, saved)?;
    }

    let disk_control = match &config.disk_control {
        Some(path) => {
            let disks = disk_slots
                .into_iter()
                .zip(&attached)
                .map(|(slot, device)| disk_control::ControlledDisk {
                    slot,
                    transport: device.transport.clone(),
                })
                .collect();
            Some(disk_control::DiskControl::bind(path, disks)?)
        }
        None => None,
    };
    step(started, "VM created");
    // The console and snapshot files come last, so that a VM that cannot be built leaves no
    // file behind.
    let console = match &config.console {
        Console::Stdout => ConsoleOutput::stdout(),
        Console::Off => ConsoleOutput::off(),
        Console::File(path) => ConsoleOutput::file(path).map_err(|source| VmmError::Console {
            path: path.display().to_string(),
            source,
        })?,
    };
    let saving = match &config.snapshot {
        Some(files) => {
            let msrs =
                vstate::snapshot::readable_msrs(&kvm, vcpus[0].fd()).map_err(VmmError::State)?;
            let pause = Arc::new(vstate::pause::Pause::new(msrs, vcpus.len()));
            if vcpus.len() > 1 {
                vstate::pause::install_kick_handler().map_err(VmmError::Signals)?;
            }
            for vcpu in &mut vcpus {
                vcpu.snapshot_when_ready(pause.clone());
            }
            let request = snapshot::SnapshotRequest {
                vm: vm.clone(),
                mem: mem.clone(),
                output: snapshot::SnapshotOutput::create(files)?,
                memory_mib: config.memory_mib,
            };
            Some((pause, request))
        }
        None => None,
    };
    step(started, "vCPUs configured");

    let eventfd =
        || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VmmError::EventFd);
    let serial_irq = eventfd()?;
    vm.register_irq(&serial_irq, SERIAL_IRQ)?;
    let reset = eventfd()?;
    let bus = Bus::new(
        serial_irq,
        reset.try_clone().map_err(VmmError::EventFd)?,
        console,
        BootTimer::new(started),
        mem.clone(),
        attached.iter().map(|a| a.transport.clone()).collect(),
    );
    if let Some(saved) = &restored {
        // The UART continues from the snapshot: its registers and receive FIFO.
        bus.serial
            .lock()
            .map_err(|_| VmmError::Restore("the serial port's lock is poisoned".into()))?
            .restore(&saved.devices.serial)
            .map_err(|e| VmmError::Restore(e.to_string()))?;
    }
    step(started, "devices created");

    // Before any thread exists, so that every vCPU thread inherits the blocked mask.
    let signals = signals::SignalFd::block_stop_signals().map_err(VmmError::Signals)?;
    let lifecycle = Arc::new(Lifecycle::new().map_err(VmmError::EventFd)?);
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> =
        EventManager::new().map_err(VmmError::EventLoop)?;
    events.add_subscriber(Arc::new(Mutex::new(StopHandler {
        lifecycle: lifecycle.clone(),
        reset,
        signals,
        mem: mem.clone(),
    })));
    let mut attached = attached;
    // The shared directory is the last device (virtio::open_devices): its own thread.
    let fs_handler = match &config.fs {
        Some(_) => attached.pop().map(|device| device.handler),
        None => None,
    };
    for device in attached {
        events.add_subscriber(Arc::new(Mutex::new(device.handler)));
    }
    if let Some(control) = disk_control {
        events.add_subscriber(Arc::new(Mutex::new(control)));
    }

    tracing::debug!(cpus, memory_mib = config.memory_mib, %cmdline, "starting vCPUs");
    let gate = Arc::new(seccomp::StartGate::default());
    let thread_start = |filter: &vmpod_devices::seccomp::Filter| seccomp::ThreadStart {
        mode: seccomp,
        filter: filter.clone(),
        gate: gate.clone(),
    };
    if let Some(handler) = fs_handler {
        fs_worker::start(handler, lifecycle.clone(), thread_start(&filters.fs_worker))
            .map_err(VmmError::FsThread)?;
    }
    for vcpu in vcpus {
        // On kvm-pvm our guest kernel asks the VMM to start its APs (real-mode SIPI cannot work
        // there); elsewhere they wait in KVM for the usual INIT/SIPI.
        // A restored VM's APs are running already.
        let start_request = (ap_start_port && vcpu.index() != 0 && restored.is_none())
            .then(|| bus.ap_start.register(vcpu.index()));
        vcpu.start(
            bus.clone(),
            lifecycle.clone(),
            start_request,
            thread_start(&filters.vcpu),
        )?;
    }
    // The event loop is the last thread to confine itself; threads it started before keep
    // only their own filter.
    match seccomp::confine(seccomp, &filters.event_loop) {
        Ok(()) => gate.open(true),
        Err(e) => {
            gate.open(false);
            return Err(e.into());
        }
    }
    step(started, "threads confined");

    let reason = loop {
        if let Some(reason) = lifecycle.reason() {
            break reason;
        }
        events.run().map_err(VmmError::EventLoop)?;
    };
    let reason = match (reason, &saving) {
        (ExitReason::Paused, Some((pause, request))) => save_stopped(pause, request, &bus),
        (reason, _) => reason,
    };
    bus.flush_console();
    // The device threads are never joined (see below), so the vsock socket would outlive us.
    if let Some(vsock) = &config.vsock {
        let _ = std::fs::remove_file(&vsock.uds_path);
    }

    // The vCPU threads are not joined: a vCPU can sit in KVM_RUN indefinitely, and the caller's
    // process exit releases the VM; `mem` stays mapped until then.
    std::mem::forget(mem);
    std::mem::forget(vm);
    Ok(reason)
}

/// Saves a VM whose vCPUs are stopped, on the event loop's thread (the vCPU threads only read
/// their own registers), and releases the parked vCPUs with the verdict.
fn save_stopped(
    pause: &vstate::pause::Pause,
    request: &snapshot::SnapshotRequest,
    bus: &Bus,
) -> ExitReason {
    let outcome = match pause.take_states() {
        None => ExitReason::SnapshotFailed("no vCPU handed its state over".into()),
        Some(vcpus) => {
            let devices = snapshot::DevicesState {
                serial: bus.serial_state(),
                virtio: bus.virtio_states(),
            };
            match request.save(vcpus, devices) {
                Ok(()) => ExitReason::Snapshotted,
                Err(e) => ExitReason::SnapshotFailed(e.to_string()),
            }
        }
    };
    pause.finish(outcome.clone());
    outcome
}

/// Start-up breakdown for `RUST_LOG=debug`: where the time to the first guest instruction goes.
fn step(started: Instant, what: &str) {
    tracing::debug!("{what} after {} us", started.elapsed().as_micros());
}

fn use_workarounds(setting: Workarounds, pvm: bool) -> bool {
    match setting {
        Workarounds::Auto => pvm,
        Workarounds::On => true,
        Workarounds::Off => false,
    }
}

/// Machine options first, so that anything the caller passes overrides them.
fn full_cmdline(machine: &[Option<String>], user: &str) -> String {
    machine
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(std::iter::once(user))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_cmdline_comes_last_so_it_can_override() {
        let machine = [
            Some(host::MACHINE_CMDLINE.to_string()),
            None,
            Some(String::new()),
        ];
        let cmdline = full_cmdline(&machine, "console=ttyS0 panic=5");
        assert!(cmdline.starts_with(host::MACHINE_CMDLINE));
        assert!(cmdline.ends_with("console=ttyS0 panic=5"));
        assert!(!cmdline.contains("vmpod_syscall_fault_fallback"));
    }

    #[test]
    fn pvm_workarounds_follow_the_setting() {
        assert!(use_workarounds(Workarounds::Auto, true));
        assert!(!use_workarounds(Workarounds::Auto, false));
        assert!(use_workarounds(Workarounds::On, false));
        let workarounds = host::kvm_pvm_cmdline(cpuid::KVM_PVM_HIDDEN);
        let cmdline = full_cmdline(&[Some(workarounds)], "");
        assert!(cmdline.contains("vmpod_syscall_fault_fallback"));
        assert!(
            cmdline.contains(" clearcpuid=cx16,popcnt,xsave,"),
            "{cmdline}"
        );
    }
}

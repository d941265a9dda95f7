//! Stopping a VM of several vCPUs to save it: the vCPU that sees the guest's ready byte leads;
//! every other vCPU is pulled out of KVM_RUN, saves its own registers on its own thread, and
//! parks. The leader hands every vCPU's state over and ends; the event loop assembles and
//! writes the snapshot (a vCPU thread only reads its own registers) and gives its verdict.
//!
//! A vCPU is pulled out by setting `immediate_exit` in its kvm_run page and sending its thread
//! a signal with a no-op handler: the signal ends a KVM_RUN in progress, and the flag makes the
//! next one return at once (after KVM completes any port or MMIO access the vCPU was in), so
//! neither a vCPU in the guest nor one between two KVM_RUNs can miss it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;

use crate::lifecycle::ExitReason;
use crate::vstate::snapshot::VcpuState;

/// How long the leader waits for the other vCPUs to park: a signal ends KVM_RUN at once, even
/// on kvm-pvm; this only bounds a vCPU thread that never comes back.
const PARK_LIMIT: Duration = Duration::from_secs(20);

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for the kick signal (without one the signal would end the
/// process). Once per process, before vCPU threads start.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), ignore)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

struct Thread {
    id: libc::pthread_t,
    /// The vCPU's kvm_run page (mapped for the VM's life).
    run: usize,
}

#[derive(Default)]
struct Progress {
    threads: Vec<Option<Thread>>,
    states: Vec<Option<VcpuState>>,
    failed: Option<String>,
    /// Every vCPU's state, once the leader has collected them, for the event loop.
    handed_over: Option<Vec<VcpuState>>,
    /// The event loop's verdict, which every parked vCPU then reports too.
    outcome: Option<ExitReason>,
}

pub struct Pause {
    /// The MSRs each vCPU saves.
    pub msrs: Vec<u32>,
    /// Set by the first vCPU to see the ready byte: the leader.
    claimed: AtomicBool,
    pausing: AtomicBool,
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Pause {
    pub fn new(msrs: Vec<u32>, cpus: usize) -> Pause {
        Pause {
            msrs,
            claimed: AtomicBool::new(false),
            pausing: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                threads: (0..cpus).map(|_| None).collect(),
                states: (0..cpus).map(|_| None).collect(),
                handed_over: None,
                failed: None,
                outcome: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by each vCPU thread as it starts running the guest.
    pub fn register(&self, index: usize, run: &mut kvm_run) {
        let mut p = self.progress();
        if let Some(slot) = p.threads.get_mut(index) {
            // SAFETY: pthread_self has no preconditions.
            let id = unsafe { libc::pthread_self() };
            *slot = Some(Thread {
                id,
                run: run as *mut kvm_run as usize,
            });
        }
        let pausing = self.pausing.load(Ordering::Acquire);
        drop(p);
        // A vCPU that starts after the others were kicked kicks itself.
        if pausing {
            run.immediate_exit = 1;
        }
    }

    pub fn pausing(&self) -> bool {
        self.pausing.load(Ordering::Acquire)
    }

    /// True for the vCPU that saw the ready byte first, once.
    pub fn lead(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Pulls every vCPU but `leader` out of the guest.
    pub fn kick_others(&self, leader: usize) {
        self.pausing.store(true, Ordering::Release);
        let p = self.progress();
        for (index, thread) in p.threads.iter().enumerate() {
            let Some(thread) = thread else { continue };
            if index == leader {
                continue;
            }
            // SAFETY: the page stays mapped while the VM exists; KVM reads the byte at entry.
            unsafe { (*(thread.run as *mut kvm_run)).immediate_exit = 1 };
            // SAFETY: the thread is a live vCPU thread of this process (they never end
            // before the process does).
            unsafe { libc::pthread_kill(thread.id, kick_signal()) };
        }
    }

    /// A kicked vCPU's registers (or why they could not be read); then it waits for the
    /// verdict and returns it.
    pub fn park(&self, index: usize, state: Result<VcpuState, String>) -> ExitReason {
        let mut p = self.progress();
        match state {
            Ok(state) => {
                if let Some(slot) = p.states.get_mut(index) {
                    *slot = Some(state);
                }
            }
            Err(why) => {
                p.failed.get_or_insert(format!("vCPU {index}: {why}"));
            }
        }
        self.changed.notify_all();
        loop {
            if let Some(outcome) = &p.outcome {
                return outcome.clone();
            }
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Every vCPU's state in index order, the leader's own put in; an error names a vCPU
    /// that never started or never parked.
    pub fn collect(&self, leader: usize, own: VcpuState) -> Result<Vec<VcpuState>, String> {
        let deadline = Instant::now() + PARK_LIMIT;
        let mut p = self.progress();
        if let Some(slot) = p.states.get_mut(leader) {
            *slot = Some(own);
        }
        if let Some(index) = p.threads.iter().position(Option::is_none) {
            return Err(format!(
                "vCPU {index} never started, so its state cannot be saved"
            ));
        }
        loop {
            if let Some(why) = &p.failed {
                return Err(why.clone());
            }
            if p.states.iter().all(Option::is_some) {
                return Ok(p.states.iter_mut().filter_map(Option::take).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing = p.states.iter().position(Option::is_none).unwrap_or(0);
                return Err(format!(
                    "vCPU {missing} did not stop within {} s",
                    PARK_LIMIT.as_secs()
                ));
            }
            p = self
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The leader's last act: every vCPU's state, for the event loop to save.
    pub fn hand_over(&self, states: Vec<VcpuState>) {
        self.progress().handed_over = Some(states);
    }

    /// What the leader handed over; None if it never did (the VM did not stop to be saved).
    pub fn take_states(&self) -> Option<Vec<VcpuState>> {
        self.progress().handed_over.take()
    }

    /// Releases the parked vCPUs with the verdict (the VM ends either way).
    pub fn finish(&self, outcome: ExitReason) {
        self.progress().outcome = Some(outcome);
        self.changed.notify_all();
    }
}

//! What each vmpod-vmm thread may ask of the host kernel: one allowlist per kind of thread,
//! each syscall with the reason it is there. Anything else kills the process with SIGSYS.
//!
//! Every thread installs its own filter before the guest runs its first instruction (see
//! [`StartGate`]). By then every file the VM uses is open: kernel, initrd, disks, tap, console,
//! the vsock and disk-control sockets, and a template's snapshot files. Three kinds of thread:
//! - the **event loop** (the main thread): device queues, the vsock muxer, the disk-control
//!   socket, stop signals. It opens nothing for writing and makes only Unix sockets.
//! - a **vCPU**: KVM_RUN and the exits it hands to the device bus; the vCPU that sees the
//!   template's ready byte also writes the snapshot into the files opened at start-up.
//! - the **virtio-fs** worker (only with a shared directory): the FUSE server, which creates,
//!   renames and removes files under the shared directory; kept off the event loop so the
//!   event loop's list stays free of every file-writing syscall.
//!
//! Limits we hold ourselves to: 40 distinct syscalls for the event loop, 24 for a vCPU.

use std::sync::{Arc, Condvar, Mutex};

use vmpod_devices::seccomp::{
    arg_eq, mprotect_no_exec, not_at_cwd, one_of, AllowlistBuilder, Filter, SeccompError,
};

pub const EVENT_LOOP_LIMIT: usize = 40;
pub const VCPU_LIMIT: usize = 24;

/// Whether the threads confine themselves. `Off` is a debugging switch (vmpod-vmm's hidden
/// `--no-seccomp`); nothing in vmpod passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    On,
    Off,
}

/// The filters of one VM, built once before any thread starts.
#[derive(Clone)]
pub struct Filters {
    pub event_loop: Filter,
    pub vcpu: Filter,
    pub fs_worker: Filter,
}

impl Filters {
    pub fn new() -> Result<Filters, SeccompError> {
        Ok(Filters {
            event_loop: event_loop()?,
            vcpu: vcpu()?,
            fs_worker: fs_worker()?,
        })
    }
}

/// Installs `filter` on the calling thread unless confinement is off.
pub fn confine(mode: Seccomp, filter: &Filter) -> Result<(), SeccompError> {
    match mode {
        Seccomp::On => filter.apply_to_thread(),
        Seccomp::Off => Ok(()),
    }
}

/// Holds every thread that runs guest work until the event loop has confined itself too, so
/// no guest instruction runs, and no guest request is served, before all filters are in place.
#[derive(Default)]
pub struct StartGate {
    open: Mutex<Option<bool>>,
    changed: Condvar,
}

impl StartGate {
    /// Lets the waiting threads go (`go`), or tells them to end without running anything.
    pub fn open(&self, go: bool) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(go);
        self.changed.notify_all();
    }

    /// Waits for [`StartGate::open`]; true if the thread is to go on.
    pub fn wait(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(go) = *open {
                return go;
            }
            open = self.changed.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// How a thread of guest work starts: it confines itself, then waits at the gate.
#[derive(Clone)]
pub struct ThreadStart {
    pub mode: Seccomp,
    pub filter: Filter,
    pub gate: Arc<StartGate>,
}

impl ThreadStart {
    /// Ok(true) when the thread is confined and may go on; Ok(false) when the VM ended
    /// before it started.
    pub fn enter(&self) -> Result<bool, SeccompError> {
        confine(self.mode, &self.filter)?;
        Ok(self.gate.wait())
    }
}

// KVM's ioctl request numbers (linux/kvm.h), as _IO/_IOR/_IOW/_IOWR of type 0xAE.
const KVMIO: u64 = 0xae;
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(2, nr, std::mem::size_of::<T>())
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(1, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(3, nr, std::mem::size_of::<T>())
}

use kvm_bindings as kb;
pub const KVM_RUN: u64 = io(0x80);
const KVM_GET_REGS: u64 = ior::<kb::kvm_regs>(0x81);
const KVM_SET_REGS: u64 = iow::<kb::kvm_regs>(0x82);
const KVM_GET_SREGS: u64 = ior::<kb::kvm_sregs>(0x83);
const KVM_SET_SREGS: u64 = iow::<kb::kvm_sregs>(0x84);
const KVM_GET_MSRS: u64 = iowr::<kb::kvm_msrs>(0x88);
const KVM_GET_FPU: u64 = ior::<kb::kvm_fpu>(0x8c);
const KVM_GET_LAPIC: u64 = ior::<kb::kvm_lapic_state>(0x8e);
const KVM_GET_MP_STATE: u64 = ior::<kb::kvm_mp_state>(0x98);
const KVM_SET_MP_STATE: u64 = iow::<kb::kvm_mp_state>(0x99);
const KVM_GET_VCPU_EVENTS: u64 = ior::<kb::kvm_vcpu_events>(0x9f);
const KVM_GET_DEBUGREGS: u64 = ior::<kb::kvm_debugregs>(0xa1);
const KVM_GET_XSAVE: u64 = ior::<kb::kvm_xsave>(0xa4);
const KVM_GET_XCRS: u64 = ior::<kb::kvm_xcrs>(0xa6);
const KVM_GET_IRQCHIP: u64 = iowr::<kb::kvm_irqchip>(0x62);
const KVM_GET_PIT2: u64 = ior::<kb::kvm_pit_state2>(0x9f);
const KVM_GET_CLOCK: u64 = ior::<kb::kvm_clock_data>(0x7c);
const KVM_GET_CPUID2: u64 = iowr::<kb::kvm_cpuid2>(0x91);

/// The syscalls of Rust's and glibc's own machinery, the same on every thread.
fn runtime(list: AllowlistBuilder) -> AllowlistBuilder {
    list
        // Mutexes, condition variables, the start gate.
        .any(libc::SYS_futex)
        // The allocator: the main thread's heap grows by brk; new arenas and large blocks are
        // mappings; freed ones are returned.
        .any(libc::SYS_brk)
        .any(libc::SYS_mmap)
        .any(libc::SYS_munmap)
        .any(libc::SYS_mremap)
        .any(libc::SYS_madvise)
        // glibc grows a thread's heap arena by changing its protection (never to executable).
        .rules(libc::SYS_mprotect, mprotect_no_exec())
        // Instant::now, where the clock source has no vDSO path.
        .any(libc::SYS_clock_gettime)
        // The process's end: exit status, or abort() after a panic (which also blocks
        // signals and raises SIGABRT at itself).
        .any(libc::SYS_exit_group)
        // Rust's stack-overflow guard: a thread's signal stack is unregistered as it ends.
        .any(libc::SYS_sigaltstack)
        .any(libc::SYS_rt_sigprocmask)
        .any(libc::SYS_getpid)
        .any(libc::SYS_gettid)
        .any(libc::SYS_tgkill)
}

/// The main thread once the VM runs.
pub fn event_loop() -> Result<Filter, SeccompError> {
    runtime(AllowlistBuilder::new("event loop"))
        // The event loop's and the vsock muxer's epoll sets.
        .any(libc::SYS_epoll_wait)
        .any(libc::SYS_epoll_ctl)
        // Eventfds (queue kicks, interrupts, reset), the signalfd, the tap, vsock and control
        // sockets, stderr for logs.
        .any(libc::SYS_read)
        .any(libc::SYS_write)
        // Block requests at an offset.
        .any(libc::SYS_pread64)
        .any(libc::SYS_pwrite64)
        // A block flush request; a template's state and memory files, written here once the
        // vCPUs have stopped, reach the disk before the VMM reports them saved.
        .any(libc::SYS_fdatasync)
        // Host clients of the vsock and disk-control sockets; std reads and writes a Unix
        // stream with recv and send (MSG_NOSIGNAL), to connected sockets only (no address).
        .any(libc::SYS_accept4)
        .any(libc::SYS_recvfrom)
        .rules(libc::SYS_sendto, vec![arg_eq(4, 0)])
        // A guest-initiated vsock stream connects to `<uds>_<port>`: Unix sockets only.
        .rules(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)])
        .any(libc::SYS_connect)
        // vsock half-close (the guest's SHUTDOWN).
        .any(libc::SYS_shutdown)
        // An accepted or connected socket made non-blocking (set_nonblocking is FIONBIO); a
        // template's VM-wide state, read once its vCPUs have stopped (the interrupt
        // controllers, the PIT, the clock).
        .rules(
            libc::SYS_ioctl,
            one_of(
                1,
                &[libc::FIONBIO, KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK],
            ),
        )
        // Closed connections, ejected images.
        .any(libc::SYS_close)
        // virtio-rng's entropy; std's HashMap keys.
        .any(libc::SYS_getrandom)
        // `insert SLOT PATH` on the disk-control socket: the image comes open with the line
        // (recvmsg, SCM_RIGHTS) and is measured (statx, or the end of a block device).
        .any(libc::SYS_recvmsg)
        .any(libc::SYS_statx)
        .any(libc::SYS_lseek)
        // At the VM's end, its own sockets (vsock, disk control) are removed.
        .any(libc::SYS_unlink)
        .build()
}

/// A vCPU thread once it runs the guest.
pub fn vcpu() -> Result<Filter, SeccompError> {
    let kvm = one_of(
        1,
        &[
            // The guest runs.
            KVM_RUN,
            // An AP started at the address the guest names (kvm-pvm's AP start port).
            KVM_GET_SREGS,
            KVM_SET_SREGS,
            KVM_SET_REGS,
            KVM_SET_MP_STATE,
            // The guest RIP named when a vCPU crashes; the rest reads a vCPU's state for a
            // template.
            KVM_GET_REGS,
            KVM_GET_MSRS,
            KVM_GET_FPU,
            KVM_GET_LAPIC,
            KVM_GET_MP_STATE,
            KVM_GET_VCPU_EVENTS,
            KVM_GET_DEBUGREGS,
            KVM_GET_XSAVE,
            KVM_GET_XCRS,
            KVM_GET_CPUID2,
        ],
    );
    runtime(AllowlistBuilder::new("vCPU"))
        .rules(libc::SYS_ioctl, kvm)
        // Serial output to the console, interrupt and lifecycle eventfds.
        .any(libc::SYS_write)
        // A driver's device reset drops the device's open handles (vsock streams, FUSE
        // files), which also leave the muxer's epoll set.
        .any(libc::SYS_close)
        .any(libc::SYS_epoll_ctl)
        // The template's leader kicks the other vCPUs out of KVM_RUN with a signal, whose
        // no-op handler returns through rt_sigreturn.
        .any(libc::SYS_rt_sigreturn)
        // A vCPU thread that ends (its guest stopped) exits.
        .any(libc::SYS_exit)
        .build()
}

/// The virtio-fs worker: the FUSE server over the shared directory (devices/src/fs/). It
/// reaches files only beneath the shared directory (openat2 RESOLVE_BENEATH, one name at a
/// time), so what it may write is that directory's, not the host's.
pub fn fs_worker() -> Result<Filter, SeccompError> {
    runtime(AllowlistBuilder::new("virtio-fs"))
        // Its own event loop: the queue's eventfd in, the interrupt's eventfd out.
        .any(libc::SYS_epoll_wait)
        .any(libc::SYS_epoll_ctl)
        .any(libc::SYS_read)
        .any(libc::SYS_write)
        // Lookups (O_PATH, RESOLVE_BENEATH) and opens of files by the guest, creating ones
        // included; openat reopens an O_PATH inode through its /proc/self/fd directory
        // descriptor, and never by a path from the working directory.
        .any(libc::SYS_openat2)
        .rules(libc::SYS_openat, not_at_cwd(0))
        .any(libc::SYS_close)
        // Attributes and directory listings.
        .any(libc::SYS_newfstatat)
        .any(libc::SYS_statx)
        .any(libc::SYS_fstatfs)
        .any(libc::SYS_getdents64)
        .any(libc::SYS_lseek)
        .any(libc::SYS_readlinkat)
        // File data.
        .any(libc::SYS_pread64)
        .any(libc::SYS_pwrite64)
        .any(libc::SYS_fsync)
        .any(libc::SYS_fdatasync)
        .any(libc::SYS_fallocate)
        .any(libc::SYS_ftruncate)
        // What the guest changes in the shared directory.
        .any(libc::SYS_mkdirat)
        .any(libc::SYS_mknodat)
        .any(libc::SYS_symlinkat)
        .any(libc::SYS_linkat)
        .any(libc::SYS_unlinkat)
        .any(libc::SYS_renameat2)
        .any(libc::SYS_fchownat)
        .any(libc::SYS_fchmodat)
        .any(libc::SYS_utimensat)
        // Extended attributes (user.*; trusted.* and security.* are refused before this).
        .any(libc::SYS_getxattr)
        .any(libc::SYS_setxattr)
        .any(libc::SYS_listxattr)
        .any(libc::SYS_removexattr)
        // Whose uid creates files (the guest's caller gets them by fchownat).
        .any(libc::SYS_geteuid)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_devices::seccomp::assert_confines;

    #[test]
    fn each_thread_kind_stays_within_its_syscall_limit() {
        let filters = Filters::new().unwrap();
        for filter in [&filters.event_loop, &filters.vcpu, &filters.fs_worker] {
            eprintln!("{}: {} syscalls", filter.name(), filter.syscall_count());
        }
        assert!(
            filters.event_loop.syscall_count() <= EVENT_LOOP_LIMIT,
            "event loop: {}",
            filters.event_loop.syscall_count()
        );
        assert!(
            filters.vcpu.syscall_count() <= VCPU_LIMIT,
            "vCPU: {}",
            filters.vcpu.syscall_count()
        );
    }

    #[test]
    fn kvm_request_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_SREGS, 0x4138_ae84);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_GET_CPUID2, 0xc008_ae91);
    }

    #[test]
    fn no_thread_may_exec_fork_mount_trace_or_load_bpf() {
        let filters = Filters::new().unwrap();
        for filter in [&filters.event_loop, &filters.vcpu, &filters.fs_worker] {
            for syscall in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_mount,
                libc::SYS_ptrace,
                libc::SYS_bpf,
                libc::SYS_setns,
                libc::SYS_unshare,
            ] {
                assert!(!filter.allows(syscall), "{}: {syscall}", filter.name());
            }
        }
        for syscall in [
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_mkdirat,
            libc::SYS_renameat2,
        ] {
            assert!(!filters.event_loop.allows(syscall), "event loop: {syscall}");
        }
    }

    fn getpid() -> i32 {
        // SAFETY: getpid has no arguments and cannot fail.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        i32::from(pid <= 0)
    }

    #[test]
    fn the_event_loop_filter_kills_every_forbidden_probe_and_lets_getpid_through() {
        assert_confines(&event_loop().unwrap(), getpid);
    }

    #[test]
    fn the_vcpu_filter_kills_every_forbidden_probe_and_lets_getpid_through() {
        assert_confines(&vcpu().unwrap(), getpid);
    }

    #[test]
    fn the_fs_worker_filter_kills_every_forbidden_probe_and_lets_getpid_through() {
        // Its openat may create files, but only relative to a directory descriptor: the
        // probes' openat from the working directory is killed like the rest.
        assert_confines(&fs_worker().unwrap(), getpid);
    }
}

//! vmpod-vmm's threads are confined while a guest runs: every thread has its filter, and a
//! forbidden syscall made from inside a running VMM (injected with ptrace) kills it with SIGSYS.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A running tiny guest with 2 vCPUs and a shared directory (so the virtio-fs thread exists),
/// past its boot; killed when dropped.
struct WaitingVm {
    child: Child,
    _scratch: Scratch,
}

impl WaitingVm {
    fn start(name: &str, extra: &[&str]) -> WaitingVm {
        require_kvm();
        let scratch = Scratch::new(name);
        let console = scratch.path("console.log");
        let share = scratch.path("share");
        std::fs::create_dir(&share).unwrap();
        let config = scratch.path("vm.json");
        let json = serde_json::json!({
            "kernel": tiny_guest(),
            "memory_mib": 16,
            "cpus": 2,
            "cmdline": "tiny=wait",
            "console": console,
            "fs": {"tag": "share", "shared_dir": share},
        });
        std::fs::write(&config, json.to_string()).unwrap();
        let child = Command::new(vmm_binary())
            .arg("--config")
            .arg(&config)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmpod-vmm");
        let mut vm = WaitingVm {
            child,
            _scratch: scratch,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("tiny: waiting")
        {
            if let Ok(Some(status)) = vm.child.try_wait() {
                panic!("vmpod-vmm ended before the guest waited: {status}");
            }
            assert!(Instant::now() < deadline, "guest never reached its wait");
            std::thread::sleep(Duration::from_millis(5));
        }
        vm
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Each thread's name and the status lines that start with `keys`.
    fn threads(&self) -> Vec<(String, Vec<String>)> {
        let tasks = format!("/proc/{}/task", self.pid());
        let mut threads: Vec<_> = std::fs::read_dir(&tasks)
            .unwrap()
            .map(|task| {
                let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
                let name = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Name:"))
                    .unwrap()
                    .trim()
                    .to_string();
                let lines = status
                    .lines()
                    .filter(|l| {
                        l.starts_with("Seccomp:")
                            || l.starts_with("Seccomp_filters:")
                            || l.starts_with("NoNewPrivs:")
                    })
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
                (name, lines)
            })
            .collect();
        threads.sort();
        threads
    }

    /// The thread id of the thread called `name`.
    fn tid(&self, name: &str) -> i32 {
        let tasks = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(&tasks)
            .unwrap()
            .map(|task| task.unwrap().path())
            .find(|path| {
                std::fs::read_to_string(path.join("comm"))
                    .unwrap_or_default()
                    .trim()
                    == name
            })
            .and_then(|path| path.file_name()?.to_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no thread {name}"))
    }

    /// Waits for the VMM's end, at most 10 s.
    fn ended(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for WaitingVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_thread_of_a_running_vm_has_exactly_its_own_filter_and_no_new_privileges() {
    let vm = WaitingVm::start("seccomp-status", &[]);
    // Each thread installs one filter and none inherits another's: the event loop confines
    // itself after it has started the others.
    let mut confined = ["NoNewPrivs: 1", "Seccomp: 2", "Seccomp_filters: 1"].map(String::from);
    confined.sort();
    // KVM's own worker (kvm-nx-lpage-recovery) lives in the process but runs only kernel
    // code; every thread of ours must be confined.
    let mut seen: Vec<_> = vm
        .threads()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("kvm-"))
        .collect();
    for (_, lines) in &mut seen {
        lines.sort();
    }
    let names: Vec<_> = seen.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["vcpu0", "vcpu1", "virtio-fs", "vmpod-vmm"]);
    for (name, lines) in &seen {
        assert_eq!(lines, &confined, "thread {name}");
    }
}

#[test]
fn the_debugging_switch_leaves_the_threads_unconfined() {
    let vm = WaitingVm::start("seccomp-off", &["--no-seccomp"]);
    for (name, lines) in vm.threads() {
        if name.starts_with("kvm-") {
            continue;
        }
        assert!(
            lines.contains(&"Seccomp: 0".to_string()),
            "{name}: {lines:?}"
        );
    }
}

/// Stops thread `tid` at its next syscall entry (PTRACE_SEIZE, interrupt, PTRACE_SYSCALL),
/// replaces the syscall with `nr(args)`, and lets it go. With `returns`, the thread is stopped
/// again when the injected syscall returns, and sees `returns` as the result of the syscall
/// it meant to make.
fn inject(tid: i32, nr: i64, args: [u64; 3], returns: Option<u64>) {
    // SAFETY: ptrace on a thread of our own child; `regs` is a valid user_regs_struct for
    // GETREGS/SETREGS; status is a valid out-pointer.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, tid, 0, libc::PTRACE_O_TRACESYSGOOD),
            0,
            "seize: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
        // Run to the next syscall entry: a blocked epoll_wait or futex restarts after the
        // interrupt, and that restart is an entry too.
        assert_eq!(libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, 0), 0);
        assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
        assert!(
            libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTRAP | 0x80,
            "not at a syscall stop: {status:#x}"
        );
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(
            libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut _),
            0
        );
        regs.orig_rax = nr as u64;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        assert_eq!(
            libc::ptrace(libc::PTRACE_SETREGS, tid, 0, &regs as *const _),
            0
        );
        if let Some(result) = returns {
            assert_eq!(libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, 0), 0);
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
            assert!(libc::WIFSTOPPED(status), "the thread ended: {status:#x}");
            assert_eq!(
                libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut _),
                0
            );
            assert_eq!(regs.rax, tid_group_leader(tid), "getpid's result");
            regs.rax = result;
            assert_eq!(
                libc::ptrace(libc::PTRACE_SETREGS, tid, 0, &regs as *const _),
                0
            );
        }
        libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
    }
}

/// The process id of the thread `tid` (the main thread's id).
fn tid_group_leader(tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn assert_killed_by_injection(thread: &str, nr: i64, args: [u64; 3]) {
    let mut vm = WaitingVm::start(&format!("seccomp-inject-{thread}-{nr}"), &[]);
    let tid = vm.tid(thread);
    inject(tid, nr, args, None);
    let status = vm
        .ended()
        .expect("the VMM lived on after a forbidden syscall");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{thread} ran syscall {nr}: {status}"
    );
}

#[test]
fn a_socket_other_than_unix_injected_into_the_event_loop_kills_the_vmm() {
    assert_killed_by_injection(
        "vmpod-vmm",
        libc::SYS_socket,
        [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0],
    );
}

#[test]
fn an_open_for_writing_injected_into_the_event_loop_kills_the_vmm() {
    assert_killed_by_injection(
        "vmpod-vmm",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            0,
            (libc::O_RDWR | libc::O_CREAT) as u64,
        ],
    );
}

#[test]
fn an_allowed_syscall_injected_into_the_event_loop_leaves_the_vm_running() {
    let mut vm = WaitingVm::start("seccomp-inject-getpid", &[]);
    let tid = vm.tid("vmpod-vmm");
    // The event loop waits in epoll_wait; it sees 0 (no events) and waits again.
    inject(tid, libc::SYS_getpid, [0, 0, 0], Some(0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "the VMM ended after getpid"
    );
}

#[test]
fn a_socket_other_than_unix_injected_into_a_vcpu_kills_the_vmm() {
    // The interrupt takes the vCPU out of KVM_RUN; its next syscall is KVM_RUN again.
    assert_killed_by_injection(
        "vcpu0",
        libc::SYS_socket,
        [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0],
    );
}

#[test]
fn an_open_for_writing_injected_into_a_vcpu_kills_the_vmm() {
    assert_killed_by_injection(
        "vcpu1",
        libc::SYS_openat,
        [libc::AT_FDCWD as u64, 0, libc::O_WRONLY as u64],
    );
}

//! The mechanics of vmpod's seccomp filters (rust-vmm's `seccompiler`): an allowlist compiled
//! to a BPF program whose default action kills the whole process with SIGSYS, and the two ways
//! to install it. Each program keeps its own allowlist, with the reason for every syscall, in
//! one file of its own (vmpod-vmm: vmm/src/seccomp.rs; vmpod-vhost-user:
//! devices/src/vhost_user_seccomp.rs).
//!
//! Killing rather than trapping: a process with a SIGSYS handler would have to log from inside
//! a signal handler, and a compromised thread could install its own. The kernel records the
//! killed process's syscall number in its audit log; the parent sees "killed by signal 31".

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCondition, SeccompFilter, TargetArch,
};
pub use seccompiler::{SeccompCmpOp, SeccompRule};

/// Syscall number → the argument rules of which one must match (empty: any arguments).
pub type Allowlist = BTreeMap<i64, Vec<SeccompRule>>;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {name} seccomp filter: {source}")]
    Build {
        name: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {name} seccomp filter: {source}")]
    Install {
        name: &'static str,
        source: seccompiler::Error,
    },
    #[error("the {name} seccomp filter allows syscall {syscall} twice")]
    Duplicate { name: &'static str, syscall: i64 },
}

/// One thread kind's (or one process's) allowlist, built entry by entry so that a syscall
/// listed twice is a bug found when the list is built, not a rule silently replaced.
pub struct AllowlistBuilder {
    name: &'static str,
    list: Allowlist,
    duplicate: Option<i64>,
}

impl AllowlistBuilder {
    pub fn new(name: &'static str) -> Self {
        AllowlistBuilder {
            name,
            list: Allowlist::new(),
            duplicate: None,
        }
    }

    /// Allows `syscall` with any arguments.
    pub fn any(self, syscall: libc::c_long) -> Self {
        self.rules(syscall, Vec::new())
    }

    /// Allows `syscall` when one of `rules` matches its arguments.
    pub fn rules(mut self, syscall: libc::c_long, rules: Vec<SeccompRule>) -> Self {
        if self.list.insert(syscall, rules).is_some() {
            self.duplicate.get_or_insert(syscall);
        }
        self
    }

    pub fn build(self) -> Result<Filter, SeccompError> {
        if let Some(syscall) = self.duplicate {
            return Err(SeccompError::Duplicate {
                name: self.name,
                syscall,
            });
        }
        Ok(Filter {
            name: self.name,
            list: self.list,
        })
    }
}

/// A built allowlist, ready to compile and install.
#[derive(Clone)]
pub struct Filter {
    name: &'static str,
    list: Allowlist,
}

impl Filter {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How many distinct syscalls the filter lets through.
    pub fn syscall_count(&self) -> usize {
        self.list.len()
    }

    pub fn allows(&self, syscall: libc::c_long) -> bool {
        self.list.contains_key(&syscall)
    }

    pub fn compile(&self) -> Result<BpfProgram, SeccompError> {
        let build = |source| SeccompError::Build {
            name: self.name,
            source,
        };
        let filter = SeccompFilter::new(
            self.list.clone(),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(build)?;
        filter.try_into().map_err(build)
    }

    /// Confines the calling thread (and threads it starts later). seccompiler sets
    /// PR_SET_NO_NEW_PRIVS first, which an unprivileged process needs to install a filter.
    pub fn apply_to_thread(&self) -> Result<(), SeccompError> {
        let program = self.compile()?;
        seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install {
            name: self.name,
            source,
        })
    }

    /// Confines every thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC).
    pub fn apply_to_process(&self) -> Result<(), SeccompError> {
        let program = self.compile()?;
        seccompiler::apply_filter_all_threads(&program).map_err(|source| SeccompError::Install {
            name: self.name,
            source,
        })
    }
}

/// A rule on one argument, compared as 64 bits.
pub fn arg_eq(index: u8, value: u64) -> SeccompRule {
    rule(&[(index, SeccompCmpOp::Eq, value)])
}

/// A rule of several conditions on the arguments, all of which must hold.
pub fn rule(conditions: &[(u8, SeccompCmpOp, u64)]) -> SeccompRule {
    let conditions = conditions
        .iter()
        .map(|(index, op, value)| {
            // An argument index above 5 is a bug in a list, found by its tests.
            SeccompCondition::new(*index, SeccompCmpArgLen::Qword, op.clone(), *value)
                .expect("argument index within 0..=5")
        })
        .collect();
    SeccompRule::new(conditions).expect("a rule has at least one condition")
}

/// One rule per allowed value of argument `index` (an ioctl's request numbers, say).
pub fn one_of(index: u8, values: &[u64]) -> Vec<SeccompRule> {
    values.iter().map(|value| arg_eq(index, *value)).collect()
}

/// A path call (openat, and the like) only relative to a directory descriptor, never to the
/// working directory: an absolute path ignores the descriptor, so `AT_FDCWD` is the only way
/// such a call reaches the whole filesystem. `index` is the descriptor's argument.
pub fn not_at_cwd(index: u8) -> Vec<SeccompRule> {
    let condition = SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Ne,
        u64::from(libc::AT_FDCWD as u32),
    )
    .expect("argument index within 0..=5");
    vec![SeccompRule::new(vec![condition]).expect("a rule has at least one condition")]
}

/// openat whose flags ask for nothing but reading (O_CLOEXEC, O_NONBLOCK, O_DIRECTORY,
/// O_NOFOLLOW, O_LARGEFILE and O_PATH allowed; O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND,
/// O_TMPFILE refused).
pub fn openat_read_only() -> Vec<SeccompRule> {
    let writing = (libc::O_WRONLY
        | libc::O_RDWR
        | libc::O_CREAT
        | libc::O_TRUNC
        | libc::O_APPEND
        | libc::O_TMPFILE) as u64;
    vec![rule(&[(2, SeccompCmpOp::MaskedEq(writing), 0)])]
}

/// mprotect that never makes memory executable (glibc changes a heap arena's protection).
pub fn mprotect_no_exec() -> Vec<SeccompRule> {
    vec![rule(&[(
        2,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )])]
}

/// For tests: runs `probe` in a forked child that first installs `filter` on itself, and
/// returns how the child ended. The child never returns into the test harness.
pub fn run_confined(filter: &Filter, probe: impl FnOnce() -> i32) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let program = match filter.compile() {
        Ok(program) => program,
        Err(e) => panic!("{e}"),
    };
    // SAFETY: the child only installs the filter and runs `probe` (raw syscalls, no locks the
    // parent's other threads may hold), then leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match seccompiler::apply_filter(&program) {
            Ok(()) => probe(),
            Err(_) => 100,
        };
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: pid is our own child; status is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    std::process::ExitStatus::from_raw(status)
}

/// A syscall made in a confined child: its name and the call (returning the child's status).
pub type Probe = (&'static str, fn() -> i32);

/// For tests: the raw syscalls a VMM thread must never make, each as a probe for
/// [`run_confined`].
pub fn forbidden_probes() -> Vec<Probe> {
    fn call(nr: libc::c_long, args: [libc::c_long; 6]) -> i32 {
        // SAFETY: a raw syscall with plain integer arguments (null pointers where the kernel
        // would read memory); the filter is expected to stop it before the kernel runs it.
        unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) as i32 }
    }
    vec![
        ("socket(AF_INET)", || {
            call(
                libc::SYS_socket,
                [libc::AF_INET as _, libc::SOCK_STREAM as _, 0, 0, 0, 0],
            )
        }),
        ("socket(AF_NETLINK)", || {
            call(
                libc::SYS_socket,
                [libc::AF_NETLINK as _, libc::SOCK_RAW as _, 0, 0, 0, 0],
            )
        }),
        ("openat(O_RDWR|O_CREAT)", || {
            let path = c"/tmp/vmpod-seccomp-probe".as_ptr();
            call(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as _,
                    path as _,
                    (libc::O_RDWR | libc::O_CREAT) as _,
                    0o600,
                    0,
                    0,
                ],
            )
        }),
        ("openat(O_WRONLY)", || {
            let path = c"/dev/null".as_ptr();
            call(
                libc::SYS_openat,
                [libc::AT_FDCWD as _, path as _, libc::O_WRONLY as _, 0, 0, 0],
            )
        }),
        ("execve", || {
            let path = c"/bin/true".as_ptr();
            call(libc::SYS_execve, [path as _, 0, 0, 0, 0, 0])
        }),
        ("fork", || call(libc::SYS_fork, [0; 6])),
        ("clone of a process", || {
            call(libc::SYS_clone, [libc::SIGCHLD as _, 0, 0, 0, 0, 0])
        }),
        ("clone3", || call(libc::SYS_clone3, [0; 6])),
        ("mount", || call(libc::SYS_mount, [0; 6])),
        ("ptrace", || {
            call(libc::SYS_ptrace, [libc::PTRACE_TRACEME as _, 0, 0, 0, 0, 0])
        }),
        ("bpf", || call(libc::SYS_bpf, [0; 6])),
        ("setns", || call(libc::SYS_setns, [0; 6])),
        ("ioctl(TIOCSTI)", || {
            call(libc::SYS_ioctl, [0, libc::TIOCSTI as _, 0, 0, 0, 0])
        }),
    ]
}

/// For tests: panics unless every forbidden probe kills a child confined by `filter` with
/// SIGSYS, and a child that makes only `allowed` syscalls exits normally with status 0.
pub fn assert_confines(filter: &Filter, allowed: fn() -> i32) {
    use std::os::unix::process::ExitStatusExt;
    for (name, probe) in forbidden_probes() {
        let status = run_confined(filter, probe);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "the {} filter let {name} through ({status})",
            filter.name()
        );
    }
    let status = run_confined(filter, allowed);
    assert_eq!(
        status.code(),
        Some(0),
        "a child making allowed syscalls under the {} filter: {status}",
        filter.name()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn getpid_only() -> Filter {
        AllowlistBuilder::new("test")
            .any(libc::SYS_getpid)
            .any(libc::SYS_exit_group)
            .rules(libc::SYS_openat, openat_read_only())
            .build()
            .unwrap()
    }

    #[test]
    fn a_syscall_listed_twice_is_refused_by_name() {
        let err = AllowlistBuilder::new("twice")
            .any(libc::SYS_read)
            .any(libc::SYS_read)
            .build()
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "the twice seccomp filter allows syscall {} twice",
                libc::SYS_read
            )
        );
    }

    #[test]
    fn a_minimal_filter_kills_every_forbidden_probe_and_lets_getpid_and_reading_through() {
        assert_confines(&getpid_only(), || {
            // SAFETY: getpid and a read-only openat of a path that exists; the fd leaks into
            // a child that exits at once.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    c"/dev/null".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            i32::from(pid <= 0 || fd < 0)
        });
    }
}

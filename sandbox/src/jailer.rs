//! The steps of a jailed launch, in the Firecracker jailer's order, as `vmpod-jailer` runs
//! them: descriptors closed but the ones passed, a cleared environment, resource limits, new
//! mount, ipc, uts and pid namespaces, the jail directory as the root (read-only system
//! directories and the asked binds in it, a fresh /proc), the sandbox's own uid and gid with
//! no capabilities and no new privileges, then exec.
//!
//! The pid namespace only takes effect for children, so the jailer forks once: the child is
//! pid 1 of the new namespace and becomes the program; the jailer stays outside as its parent,
//! waits for it and ends the same way. The owner's SIGKILL (PDEATHSIG) ends the jailer, whose
//! end sends the program SIGKILL (its own PDEATHSIG, which the kernel forces on a namespace's
//! init when it comes from the parent namespace), and with pid 1 the whole namespace goes.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("bad arguments: {0}")]
    Usage(String),
    #[error("cannot {what}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn os(what: impl Into<String>) -> JailerError {
    JailerError::Os {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// A host path made visible inside the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute, inside the jail.
    pub target: PathBuf,
    pub writable: bool,
}

/// What `vmpod-jailer` is asked to do (its command line, `jail.rs` writes it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JailSpec {
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub binds: Vec<Bind>,
    /// Descriptors the program inherits; every other one is closed.
    pub keep_fds: Vec<RawFd>,
    pub nofile: u64,
    pub fsize: u64,
    pub nproc: u64,
    /// Keeps the capabilities a file server needs to give a guest's files their owners and
    /// modes ([`FILE_CAPS`]), for a program serving the sandbox's shared directory.
    pub file_caps: bool,
    /// `cgroup.procs` files the jailer joins first (vm_cgroup.rs).
    pub cgroups: Vec<PathBuf>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// What serving host volumes takes: chown to the guest's owners, reading and writing
/// whatever the guest's owners may, setting modes and set-id bits on files of any owner.
/// The program holds them only inside its jail, whose binds are read-only but the volumes.
pub const FILE_CAPS: [u32; 4] = [
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    3, // CAP_FOWNER
    4, // CAP_FSETID
];

/// System directories every dynamically linked program needs, read-only (symlinks such as
/// /lib → usr/lib are copied as symlinks).
const SYSTEM_PATHS: [&str; 6] = [
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
];

impl JailSpec {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--root".into(),
            self.root.clone().into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--nofile".into(),
            self.nofile.to_string().into(),
            "--fsize".into(),
            self.fsize.to_string().into(),
            "--nproc".into(),
            self.nproc.to_string().into(),
        ];
        for bind in &self.binds {
            let mut pair = bind.source.clone().into_os_string();
            pair.push("=");
            pair.push(&bind.target);
            args.push(if bind.writable { "--bind" } else { "--bind-ro" }.into());
            args.push(pair);
        }
        if self.file_caps {
            args.push("--file-caps".into());
        }
        for procs in &self.cgroups {
            args.push("--cgroup".into());
            args.push(procs.clone().into());
        }
        for fd in &self.keep_fds {
            args.push("--keep-fd".into());
            args.push(fd.to_string().into());
        }
        args.push("--".into());
        args.push(self.program.clone().into());
        args.extend(self.args.iter().cloned());
        args
    }

    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<JailSpec, JailerError> {
        let mut spec = JailSpec::default();
        let mut args = args.into_iter();
        let usage = |m: &str| JailerError::Usage(m.to_string());
        while let Some(flag) = args.next() {
            if flag == "--" {
                spec.program = args
                    .next()
                    .ok_or_else(|| usage("no program after --"))?
                    .into();
                spec.args = args.collect();
                break;
            }
            if flag == "--file-caps" {
                spec.file_caps = true;
                continue;
            }
            let value = args
                .next()
                .ok_or_else(|| usage(&format!("{} takes a value", flag.to_string_lossy())))?;
            let text = value.to_string_lossy().to_string();
            let number = |what: &str| {
                text.parse::<u64>()
                    .map_err(|_| usage(&format!("{what} takes a number, not {text:?}")))
            };
            match flag.to_str().unwrap_or_default() {
                "--root" => spec.root = value.into(),
                "--cgroup" => spec.cgroups.push(value.into()),
                "--uid" => spec.uid = number("--uid")? as u32,
                "--gid" => spec.gid = number("--gid")? as u32,
                "--nofile" => spec.nofile = number("--nofile")?,
                "--fsize" => spec.fsize = number("--fsize")?,
                "--nproc" => spec.nproc = number("--nproc")?,
                "--keep-fd" => spec.keep_fds.push(number("--keep-fd")? as RawFd),
                f @ ("--bind" | "--bind-ro") => {
                    let (source, target) = text
                        .split_once('=')
                        .ok_or_else(|| usage(&format!("{f} takes SOURCE=TARGET")))?;
                    spec.binds.push(Bind {
                        source: source.into(),
                        target: target.into(),
                        writable: f == "--bind",
                    });
                }
                other => return Err(usage(&format!("unknown flag {other}"))),
            }
        }
        if spec.program.as_os_str().is_empty() || !spec.root.is_absolute() {
            return Err(usage("a --root and a program after -- are needed"));
        }
        if spec.uid == 0 || spec.gid == 0 {
            return Err(usage("the jail's uid and gid must not be root's"));
        }
        Ok(spec)
    }
}

fn cstring(path: &Path) -> Result<CString, JailerError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailerError::Usage(format!("{} holds a NUL byte", path.display())))
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<(), JailerError> {
    if rc < 0 {
        Err(os(what()))
    } else {
        Ok(())
    }
}

/// Closes every descriptor above stderr but `keep`.
fn close_others(keep: &[RawFd]) -> Result<(), JailerError> {
    let mut keep: Vec<u32> = keep.iter().map(|fd| *fd as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep.into_iter().filter(|fd| *fd >= 3) {
        if fd > from {
            // SAFETY: close_range only closes descriptors; none of those closed is in use.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
            check(rc as libc::c_int, || "close inherited descriptors".into())?;
        }
        // SAFETY: fcntl on a descriptor number only changes that descriptor's flags.
        let flags = unsafe { libc::fcntl(fd as RawFd, libc::F_GETFD) };
        if flags < 0 {
            return Err(os(format!("keep descriptor {fd}: it is not open")));
        }
        // SAFETY: as above.
        unsafe { libc::fcntl(fd as RawFd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
        from = fd + 1;
    }
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
    check(rc as libc::c_int, || "close inherited descriptors".into())
}

fn set_limit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    name: &str,
) -> Result<(), JailerError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit for the call.
    check(unsafe { libc::setrlimit(resource, &limit) }, || {
        format!("set {name} to {value}")
    })
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Result<(), JailerError> {
    crate::shared::mount(source, target, fstype, flags).map_err(|e| JailerError::Os {
        what: format!(
            "mount {} at {}",
            source.unwrap_or(Path::new("none")).display(),
            target.display()
        ),
        source: e,
    })
}

/// Binds `source` at `target` under the new root, read-only unless `writable`, never a device
/// or a set-uid program.
fn bind(root: &Path, source: &Path, target: &Path, writable: bool) -> Result<(), JailerError> {
    let inside = root.join(target.strip_prefix("/").unwrap_or(target));
    let meta = std::fs::symlink_metadata(source).map_err(|e| JailerError::Os {
        what: format!("bind {}", source.display()),
        source: e,
    })?;
    let made = |e| JailerError::Os {
        what: format!("make {}", inside.display()),
        source: e,
    };
    if let Some(parent) = inside.parent() {
        std::fs::create_dir_all(parent).map_err(made)?;
    }
    if meta.file_type().is_symlink() {
        let link = std::fs::read_link(source).map_err(made)?;
        if std::fs::symlink_metadata(&inside).is_err() {
            std::os::unix::fs::symlink(link, &inside).map_err(made)?;
        }
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&inside).map_err(made)?;
    } else if std::fs::symlink_metadata(&inside).is_err() {
        std::fs::File::create(&inside).map_err(made)?;
    }
    mount(Some(source), &inside, None, libc::MS_BIND | libc::MS_REC)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &inside, None, flags)
}

/// Mount namespace: nothing propagates back to the host, while what the host later binds
/// into a shared mount (volumes added to the shared directory, images put in a disk slot)
/// reaches the jail; the root becomes `spec.root` with
/// the system directories, the binds and a /proc of the new pid namespace; the old root goes.
fn enter_root(spec: &JailSpec) -> Result<(), JailerError> {
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_SLAVE)?;
    mount(
        Some(&spec.root),
        &spec.root,
        None,
        libc::MS_BIND | libc::MS_REC,
    )?;
    for path in SYSTEM_PATHS.iter().map(Path::new).filter(|p| p.exists()) {
        bind(&spec.root, path, path, false)?;
    }
    for b in &spec.binds {
        bind(&spec.root, &b.source, &b.target, b.writable)?;
    }
    let proc_dir = spec.root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(|e| JailerError::Os {
        what: format!("make {}", proc_dir.display()),
        source: e,
    })?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    let root = cstring(&spec.root)?;
    let dot = CString::new(".").unwrap_or_default();
    // SAFETY: chdir, pivot_root and umount2 take NUL-terminated paths that outlive the calls.
    unsafe {
        check(libc::chdir(root.as_ptr()), || {
            format!("enter {}", spec.root.display())
        })?;
        let rc = libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int;
        check(rc, || format!("pivot_root into {}", spec.root.display()))?;
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH), || {
            "detach the host's root".into()
        })?;
        let slash = CString::new("/").unwrap_or_default();
        check(libc::chdir(slash.as_ptr()), || {
            "enter the jail's root".into()
        })
    }
}

/// The sandbox's uid and gid, no supplementary groups, no capability in any set (bounding and
/// ambient included) but [`FILE_CAPS`] where asked, no new privileges.
fn drop_privileges(spec: &JailSpec) -> Result<(), JailerError> {
    let kept: u64 = if spec.file_caps {
        FILE_CAPS.iter().fold(0, |mask, cap| mask | 1 << cap)
    } else {
        0
    };
    // SAFETY: these calls take plain integers and change only this process's credentials.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), || {
            "clear supplementary groups".into()
        })?;
        check(libc::setresgid(spec.gid, spec.gid, spec.gid), || {
            format!("set gid {}", spec.gid)
        })?;
        let rc = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        check(rc, || "clear ambient capabilities".into())?;
        for cap in (0..=63).filter(|cap| kept & 1 << cap == 0) {
            // Capabilities past the kernel's last fail with EINVAL: there is nothing to drop.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        if kept != 0 {
            let rc = libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            check(rc, || "keep capabilities across the uid change".into())?;
        }
        check(libc::setresuid(spec.uid, spec.uid, spec.uid), || {
            format!("set uid {}", spec.uid)
        })?;
    }
    set_capabilities(kept)?;
    // SAFETY: prctl with integer arguments changes only this process's attributes.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        || "set no_new_privs".into(),
    )
}

/// Leaves `kept` (a mask) in the effective, permitted and inheritable sets and raises it as
/// ambient, the one set a non-root uid keeps across exec; with none kept, every set is empty
/// (the uid change emptied two; the inheritable set survives it).
fn set_capabilities(kept: u64) -> Result<(), JailerError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| {
        let bits = (kept >> shift) as u32;
        Data {
            effective: bits,
            permitted: bits,
            inheritable: bits,
        }
    };
    let data = [half(0), half(32)];
    // SAFETY: header and data have the layout capset(2) takes for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(rc as libc::c_int, || "set capabilities".into())?;
    for cap in (0..64u64).filter(|cap| kept & 1 << cap != 0) {
        // SAFETY: prctl with integer arguments changes only this process's capabilities.
        let rc =
            unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) };
        check(rc, || format!("keep capability {cap} across exec"))?;
    }
    Ok(())
}

/// The kernel clears PDEATHSIG when the credentials change: it is set again, and the parent is
/// checked once more (it may have died between the two), through `parent_alive`, the read end
/// of a pipe the jailer holds open for as long as it lives.
fn die_with_jailer(parent_alive: &OwnedFd) -> Result<(), JailerError> {
    // SAFETY: prctl with integer arguments changes only this process's attributes.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        || "set the parent-death signal".into(),
    )?;
    let mut poll = libc::pollfd {
        fd: parent_alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready != 0 {
        // SAFETY: _exit ends this process at once; the parent is gone.
        unsafe { libc::_exit(137) };
    }
    Ok(())
}

/// The program's child side: everything after the fork, ending in exec.
fn become_program(spec: &JailSpec, parent_alive: OwnedFd) -> JailerError {
    match prepare_and_exec(spec, parent_alive) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn prepare_and_exec(spec: &JailSpec, parent_alive: OwnedFd) -> Result<Never, JailerError> {
    let program = std::fs::File::open(&spec.program).map_err(|e| JailerError::Os {
        what: format!("open {}", spec.program.display()),
        source: e,
    })?;
    let hostname = b"vmpod";
    // SAFETY: the buffer holds the length given.
    check(
        unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) },
        || "set the jail's hostname".into(),
    )?;
    enter_root(spec)?;
    drop_privileges(spec)?;
    die_with_jailer(&parent_alive)?;
    drop(parent_alive);
    let mut argv: Vec<CString> = vec![cstring(&spec.program)?];
    for arg in &spec.args {
        argv.push(
            CString::new(arg.as_bytes())
                .map_err(|_| JailerError::Usage("an argument holds a NUL byte".into()))?,
        );
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let empty = CString::default();
    // SAFETY: argv and envp are null-terminated arrays of strings that outlive the call; the
    // program was opened before the root changed.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            program.as_raw_fd(),
            empty.as_ptr(),
            argv_ptrs.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    Err(os(format!("execute {}", spec.program.display())))
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}

/// Waits for the program and ends as it did; stop signals sent to the jailer reach it.
fn wait_as_parent(child: libc::pid_t) -> ! {
    CHILD.store(child, std::sync::atomic::Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `forward` only calls kill, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int to fill in.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: _exit ends this process.
            unsafe { libc::_exit(125) };
        }
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // SAFETY: the default action, then the same signal: the jailer ends as its child did
        // (its core limit is 0, so no core is written).
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    // SAFETY: _exit ends this process.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// Runs the jailed launch; returns only on an error before the fork or in the child.
pub fn run(spec: &JailSpec) -> JailerError {
    match launch(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn launch(spec: &JailSpec) -> Result<Never, JailerError> {
    for procs in &spec.cgroups {
        std::fs::write(procs, std::process::id().to_string()).map_err(|e| JailerError::Os {
            what: format!("join the cgroup of {}", procs.display()),
            source: e,
        })?;
    }
    close_others(&spec.keep_fds)?;
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    set_limit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    set_limit(libc::RLIMIT_NOFILE, spec.nofile, "RLIMIT_NOFILE")?;
    set_limit(libc::RLIMIT_FSIZE, spec.fsize, "RLIMIT_FSIZE")?;
    set_limit(libc::RLIMIT_NPROC, spec.nproc, "RLIMIT_NPROC")?;
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
    // SAFETY: unshare takes flags only; the jailer is single-threaded.
    check(unsafe { libc::unshare(flags) }, || {
        "make the jail's namespaces (mount, ipc, uts, pid)".into()
    })?;
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    check(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
        || "make the parent-alive pipe".into(),
    )?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: the jailer is single-threaded, so the child may run any code after the fork.
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(os("fork the jail's first process")),
        0 => {
            drop(write_end);
            let e = become_program(spec, read_end);
            eprintln!("vmpod-jailer: {}", crate::error::chain(&e));
            // SAFETY: _exit ends this process; the jailer reports the status.
            unsafe { libc::_exit(126) }
        }
        child => {
            drop(read_end);
            // The program's descriptors are its own: the jailer keeps none of them open.
            close_others(&[write_end.as_raw_fd()])?;
            // Held (never written) until the jailer ends: the child sees it close then.
            std::mem::forget(write_end);
            wait_as_parent(child)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_survives_its_command_line() {
        let spec = JailSpec {
            root: "/run/vmpod/x/jail".into(),
            uid: 50_000_001,
            gid: 50_000_001,
            binds: vec![Bind {
                source: "/a b".into(),
                target: "/guest".into(),
                writable: false,
            }],
            keep_fds: vec![3, 7],
            nofile: 1024,
            fsize: 1 << 30,
            nproc: 64,
            file_caps: true,
            cgroups: vec!["/sys/fs/cgroup/pids/vmpod-x/cgroup.procs".into()],
            program: "/usr/bin/qemu-system-x86_64".into(),
            args: vec!["-M".into(), "microvm".into()],
        };
        assert_eq!(JailSpec::from_args(spec.to_args()).ok(), Some(spec));
    }

    #[test]
    fn root_uid_is_refused() {
        let args = [
            "--root",
            "/j",
            "--uid",
            "0",
            "--gid",
            "5",
            "--",
            "/bin/true",
        ];
        let parsed = JailSpec::from_args(args.iter().map(OsString::from));
        assert!(matches!(parsed, Err(JailerError::Usage(_))));
    }
}

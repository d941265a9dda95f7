//! What `vmpod-jailer` is asked to do, and its command line both ways (`jail.rs` writes it,
//! the jailer reads it back).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use super::error::JailerError;

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

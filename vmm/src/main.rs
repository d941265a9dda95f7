//! `vmpod-vmm`: boots one microVM from flags or a JSON config and exits when it stops.
//!
//! Exit status: 0 the guest stopped (reset/poweroff), 1 the VM could not be built (the reason is
//! on stderr), 2 the guest kernel panicked, 3 the guest crashed (triple fault, KVM error),
//! 128+N stopped by signal N.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vmpod_vmm::config::{Console, DiskConfig, VmConfig};
use vmpod_vmm::seccomp::Seccomp;

#[derive(Parser, Debug)]
#[command(
    name = "vmpod-vmm",
    version,
    about = "Runs one KVM microVM until its guest stops"
)]
struct Args {
    /// Guest kernel: vmlinux (PVH or 64-bit ELF) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs to hand to the kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (the VMM prepends its machine options).
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs (1-254).
    #[arg(long)]
    cpus: Option<u64>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// Serial console: stdout, off, or a file path.
    #[arg(long)]
    console: Option<String>,
    /// A virtio-blk disk: PATH[,ro][,serial=ID]; repeat for more (vda, vdb, ... in order).
    #[arg(long = "disk", value_name = "PATH[,ro][,serial=ID]", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// Add a virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// JSON config (a file, or fd:N); flags override its fields, disks add to its list.
    #[arg(long)]
    config: Option<String>,
    /// Debugging only: leave the threads' seccomp filters off.
    #[arg(long, hide = true)]
    no_seccomp: bool,
}

fn parse_disk(spec: &str) -> Result<DiskConfig, String> {
    let mut parts = spec.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("a disk needs a path")?;
    let mut disk = DiskConfig {
        path: Some(PathBuf::from(path)),
        read_only: false,
        serial: None,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => disk.read_only = true,
            Some(("serial", id)) => disk.serial = Some(id.to_string()),
            _ => return Err(format!("unknown disk option '{option}' (ro, serial=ID)")),
        }
    }
    Ok(disk)
}

impl Args {
    fn into_config(self) -> Result<VmConfig, vmpod_vmm::config::ConfigError> {
        let mut config = match &self.config {
            Some(source) => VmConfig::from_source(source)?,
            None => VmConfig::default(),
        };
        if let Some(kernel) = self.kernel {
            config.kernel = kernel;
        }
        if let Some(initrd) = self.initrd {
            config.initrd = Some(initrd);
        }
        if let Some(cmdline) = self.cmdline {
            config.cmdline = cmdline;
        }
        if let Some(cpus) = self.cpus {
            config.cpus = cpus;
        }
        if let Some(memory) = self.memory {
            config.memory_mib = memory;
        }
        if let Some(console) = self.console {
            config.console = Console::parse(&console);
        }
        config.disks.extend(self.disks);
        config.rng |= self.rng;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    // A core dump or a debugger of the same uid would read guest memory.
    // SAFETY: prctl with integer arguments changes only this process's attributes.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();

    // Usage errors exit 1 like every other failure to build the VM; 2 means a guest panic.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    let seccomp = match args.no_seccomp {
        true => Seccomp::Off,
        false => Seccomp::On,
    };
    let result = args
        .into_config()
        .map_err(vmpod_vmm::VmmError::from)
        .and_then(|config| vmpod_vmm::run(&config, started, seccomp));
    match result {
        Ok(reason) => {
            let code = reason.exit_code();
            if code != 0 {
                eprintln!("vmpod-vmm: {reason}");
            }
            ExitCode::from(code as u8)
        }
        Err(e) => {
            eprintln!("vmpod-vmm: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its sources as one line, skipping sources whose text the parent already holds.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

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
use vmpod_vmm::config::{Console, VmConfig};

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
    /// JSON config (a file, or fd:N); flags override its fields.
    #[arg(long)]
    config: Option<String>,
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
        Ok(config)
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();

    let result = Args::parse()
        .into_config()
        .map_err(vmpod_vmm::VmmError::from)
        .and_then(|config| vmpod_vmm::run(&config, started));
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

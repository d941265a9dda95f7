//! `vmpod template build|ls|rm`: the VM templates `vmpod run` restores instead of booting.

use crate::prepare::{prepare, RunArgs};
use crate::{chain, Failure};
use vmpod_sandbox::template::Store;

#[derive(clap::Subcommand)]
pub enum TemplateCommand {
    /// Build the template a `vmpod run` with these options would restore (it is otherwise
    /// built on first need).
    Build(Box<RunArgs>),
    /// List the templates.
    #[command(alias = "list")]
    Ls,
    /// Remove templates by key.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn store() -> Result<Store, Failure> {
    Store::open().map_err(|e| Failure::runtime(chain(&e)))
}

pub fn run(command: TemplateCommand) -> Result<i32, Failure> {
    match command {
        TemplateCommand::Build(args) => build(&args),
        TemplateCommand::Ls => {
            println!(
                "{:<17} {:<9} {:>5} {:>8} {:>6} {:>4} {:>9} {:>9}  CMDLINE",
                "KEY", "BACKEND", "CPUS", "MEMORY", "SLOTS", "NIC", "STATE", "BUILT IN"
            );
            for t in store()?.list() {
                let l = &t.meta.wanted.layout;
                println!(
                    "{:<17} {:<9} {:>5} {:>6}Mi {:>6} {:>4} {:>7}Ki {:>8.1}s  {}",
                    t.key,
                    l.backend,
                    l.cpus,
                    l.memory_mib,
                    l.slots,
                    if l.nic { "yes" } else { "no" },
                    t.meta.state_bytes >> 10,
                    t.meta.build_ms as f64 / 1000.0,
                    l.cmdline
                );
            }
            Ok(0)
        }
        TemplateCommand::Rm { keys } => {
            let store = store()?;
            for key in &keys {
                store.remove(key).map_err(|e| Failure::runtime(chain(&e)))?;
                println!("{key}");
            }
            Ok(0)
        }
    }
}

fn build(args: &RunArgs) -> Result<i32, Failure> {
    let p = prepare(args)?;
    let started = std::time::Instant::now();
    let template = vmpod_sandbox::ensure_template(
        p.hypervisor,
        p.cpus,
        p.memory_mib,
        p.layers.len(),
        p.netns.is_some(),
        &vmpod_sandbox::kernel_cmdline(p.debug, &p.kernel_args),
    )
    .map_err(|e| Failure::runtime(format!("build the template: {}", chain(&e))))?;
    eprintln!(
        "vmpod: template {} ready in {:.1} s ({} KiB of device state)",
        template.key,
        started.elapsed().as_secs_f64(),
        template.meta.state_bytes >> 10
    );
    println!("{}", template.key);
    Ok(0)
}

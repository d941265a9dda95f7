//! vmpod: run a container in its own microVM.
//!
//!   vmpod run [OPTIONS] --rootfs DIR CMD [ARG...]

mod rootfs;
mod run;
mod signals;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vmpod",
    version,
    about = "Run containers in their own microVMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container, in a new microVM.
    Run(run::RunArgs),
}

/// docker's convention: the runtime itself failed.
pub const EXIT_RUNTIME: i32 = 125;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_RUNTIME } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.command {
        Command::Run(args) => run::run(args),
    };
    std::process::exit(code);
}

//! vmpod: run containers in their own microVMs.
//!
//!   vmpod run [OPTIONS] IMAGE [CMD [ARG...]]     (or --rootfs DIR CMD [ARG...])
//!   vmpod ps | exec | kill | rm | logs             (background containers, `run -d`)
//!   vmpod pull IMAGE, vmpod image import | ls | rm, vmpod images
//!   vmpod template build | ls | rm

mod commands;
mod containers;
mod image;
mod launch;
mod monitor;
mod notice;
mod prepare;
mod publish;
mod pull;
mod rootfs;
mod run;
mod session;
mod signals;
mod template;
mod timing;
mod volumes;

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
    Run(Box<prepare::RunArgs>),
    /// List background containers.
    Ps {
        /// Also those that have exited.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Run a command in a running container.
    Exec(commands::exec::ExecArgs),
    /// Send a signal to a container's main process (default KILL).
    Kill {
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        container: String,
    },
    /// Remove containers (-f: also running ones).
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print a container's output.
    Logs {
        #[arg(short = 'f', long)]
        follow: bool,
        container: String,
    },
    /// Pull an image from a registry (docker's names: `alpine` is docker.io/library/alpine:latest).
    Pull { image: String },
    /// Manage images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List images.
    Images,
    /// Manage VM templates.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// What this host's vmpod uses and why: config, KVM, backend, guest files, stores.
    Info,
    /// A background container's owner (started by `run -d`).
    #[command(name = "__monitor", hide = true)]
    Monitor { id: String },
}

/// docker's convention: the runtime itself failed.
pub const EXIT_RUNTIME: i32 = 125;

/// A command that could not do its work: docker's exit status for it and a one-line reason.
#[derive(Debug)]
pub struct Failure(pub i32, pub String);

impl Failure {
    pub fn runtime(message: impl Into<String>) -> Failure {
        Failure(EXIT_RUNTIME, message.into())
    }
}

pub use vmpod_sandbox::error::chain;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_RUNTIME } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Ps { all } => commands::ps::ps(all),
        Command::Exec(args) => commands::exec::exec(args),
        Command::Kill { signal, container } => commands::kill::kill(&container, &signal),
        Command::Rm { force, containers } => commands::rm::rm(&containers, force),
        Command::Logs { follow, container } => commands::logs::logs(&container, follow),
        Command::Pull { image } => pull::run(&image),
        Command::Image(command) => image::run(command),
        Command::Images => image::list(),
        Command::Template(command) => template::run(command),
        Command::Info => commands::info::info(),
        Command::Monitor { id } => Ok(monitor::monitor(&id)),
    };
    let code = match result {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            eprintln!("vmpod: {message}");
            code
        }
    };
    std::process::exit(code);
}

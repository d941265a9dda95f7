//! vmpod-jailer: runs one of a sandbox's VM processes in its jail (vmpod_sandbox::jailer).
//!
//! `vmpod-jailer --root DIR --uid U --gid G --nofile N --fsize N --nproc N
//! [--bind[-ro] SOURCE=TARGET]... [--keep-fd N]... -- PROGRAM ARGS...`

use std::process::ExitCode;
use vmpod_sandbox::jailer::{run, JailSpec};

fn main() -> ExitCode {
    let error = match JailSpec::from_args(std::env::args_os().skip(1)) {
        Ok(spec) => run(&spec),
        Err(e) => e,
    };
    eprintln!("vmpod-jailer: {}", vmpod_sandbox::error::chain(&error));
    ExitCode::from(125)
}

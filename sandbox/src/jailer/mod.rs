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

mod child;
mod credentials;
mod error;
mod launch;
mod root;
mod spec;

pub use error::JailerError;
pub use launch::run;
pub use spec::{Bind, JailSpec, FILE_CAPS};

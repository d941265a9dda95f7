//! The jailer's one error, and the small helpers every step uses to make it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

pub fn os(what: impl Into<String>) -> JailerError {
    JailerError::Os {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

pub fn cstring(path: &Path) -> Result<CString, JailerError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailerError::Usage(format!("{} holds a NUL byte", path.display())))
}

pub fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<(), JailerError> {
    if rc < 0 {
        Err(os(what()))
    } else {
        Ok(())
    }
}

/// What a step returns that never returns when it succeeds (it ends in exec).
pub enum Never {}

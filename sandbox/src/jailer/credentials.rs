//! The credential drop: the sandbox's own uid and gid, no capability but the file server's
//! where asked, no new privileges.

use super::error::{check, JailerError};
use super::spec::{JailSpec, FILE_CAPS};

/// The sandbox's uid and gid, no supplementary groups, no capability in any set (bounding and
/// ambient included) but [`FILE_CAPS`] where asked, no new privileges.
pub fn drop_privileges(spec: &JailSpec) -> Result<(), JailerError> {
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

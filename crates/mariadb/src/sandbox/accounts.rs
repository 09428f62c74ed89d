//! The system accounts a sandbox server may run as: whether we are root, user and group
//! lookups, and handing files over to the server's user.

use super::SandboxError;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether the effective uid is 0, without libc: the owner of `/proc/self`
/// is the effective uid; `id -u` is the fallback.
pub fn is_root() -> bool {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// uid and primary gid of a system user (getpwnam_r).
pub fn lookup_user(name: &str) -> Result<(u32, u32), SandboxError> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| SandboxError::InvalidOptions(format!("bad user name {name:?}")))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized memory owned here.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(SandboxError::InvalidOptions(format!(
            "unknown system user {name:?}"
        )));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// gid of a system group (getgrnam_r).
pub fn lookup_group(name: &str) -> Result<u32, SandboxError> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| SandboxError::InvalidOptions(format!("bad group name {name:?}")))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in lookup_user.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(SandboxError::InvalidOptions(format!(
            "unknown system group {name:?}"
        )));
    }
    Ok(grp.gr_gid)
}

/// chown without following a final symlink.
pub fn chown_path(path: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| SandboxError::io(format!("cannot chown {} to {uid}:{gid}", path.display()), e))
}

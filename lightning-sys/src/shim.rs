//! The error bridge of the C++ shims over libtorch: a shim function returns NULL on success,
//! else a malloc'd message (the C++ exception's text) that [`take_message`] reads and frees.
//!
//! A crate with its own shim (lightning-dist's c10d shim) includes `lsys_common.h` (its
//! `lsys::guard` turns every exception into such a message; the directory is published to
//! build scripts as `DEP_LIGHTNING_SYS_INCLUDE`) and reads the messages with [`take_message`].

use std::ffi::{c_char, CStr};

use tch::TchError;

unsafe extern "C" {
    fn lsys_free_string(s: *mut c_char);
}

/// The message of a shim call's return value (`None`: it succeeded), freed on the C side.
///
/// # Safety
/// `err` must be the return value of a shim function: NULL, or a message from
/// `lsys::dup`/`lsys::guard` that nothing else frees or uses afterwards (it is freed here).
pub unsafe fn take_message(err: *mut c_char) -> Option<String> {
    if err.is_null() {
        return None;
    }
    // SAFETY: (the caller's) a non-null return is a NUL-terminated string the shim allocated.
    let message = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .trim_end()
        .to_owned();
    // SAFETY: freed once, by the shim's allocator.
    unsafe { lsys_free_string(err) };
    Some(message)
}

/// ATen's message as tch reports its own errors. `err` is a shim function's return value.
pub(crate) fn check(op: &str, err: *mut c_char) -> Result<(), TchError> {
    // SAFETY: every caller passes a shim function's return value, once.
    match unsafe { take_message(err) } {
        None => Ok(()),
        Some(message) => Err(TchError::Torch(format!("{op}: {message}"))),
    }
}

//! The shim's C interface (`csrc/ldist.h`) and the one place its error strings become
//! [`DistError`]s (read and freed by lightning-sys's error bridge).

use std::ffi::{c_char, c_int};

use torch_sys::C_tensor;

use crate::error::{DistError, Result};

#[repr(C)]
pub(crate) struct LdistStore {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct LdistPg {
    _private: [u8; 0],
}
#[repr(C)]
pub(crate) struct LdistReducer {
    _private: [u8; 0],
}

unsafe extern "C" {
    pub(crate) fn ldist_free_bytes(p: *mut u8);

    pub(crate) fn ldist_store_tcp_new(
        host: *const c_char,
        host_len: usize,
        port: u16,
        world_size: i64,
        is_server: c_int,
        wait_for_workers: c_int,
        timeout_ms: i64,
        out: *mut *mut LdistStore,
    ) -> *mut c_char;
    pub(crate) fn ldist_store_free(s: *mut LdistStore);
    pub(crate) fn ldist_store_port(s: *mut LdistStore, out: *mut u16) -> *mut c_char;
    pub(crate) fn ldist_store_set(
        s: *mut LdistStore,
        key: *const c_char,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> *mut c_char;
    pub(crate) fn ldist_store_get(
        s: *mut LdistStore,
        key: *const c_char,
        key_len: usize,
        value: *mut *mut u8,
        value_len: *mut usize,
    ) -> *mut c_char;
    pub(crate) fn ldist_store_add(
        s: *mut LdistStore,
        key: *const c_char,
        key_len: usize,
        delta: i64,
        out: *mut i64,
    ) -> *mut c_char;
    pub(crate) fn ldist_store_check(
        s: *mut LdistStore,
        keys: *const *const c_char,
        key_lens: *const usize,
        n: usize,
        out: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn ldist_store_wait(
        s: *mut LdistStore,
        keys: *const *const c_char,
        key_lens: *const usize,
        n: usize,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn ldist_store_delete_key(
        s: *mut LdistStore,
        key: *const c_char,
        key_len: usize,
        out: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn ldist_store_num_keys(s: *mut LdistStore, out: *mut i64) -> *mut c_char;
    pub(crate) fn ldist_store_wait_for_workers(s: *mut LdistStore) -> *mut c_char;
    pub(crate) fn ldist_store_set_timeout(s: *mut LdistStore, timeout_ms: i64) -> *mut c_char;

    pub(crate) fn ldist_pg_new_gloo(
        store: *mut LdistStore,
        prefix: *const c_char,
        prefix_len: usize,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut LdistPg,
    ) -> *mut c_char;
    pub(crate) fn ldist_pg_new_nccl(
        store: *mut LdistStore,
        prefix: *const c_char,
        prefix_len: usize,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut LdistPg,
    ) -> *mut c_char;
    pub(crate) fn ldist_nccl_compiled() -> c_int;
    pub(crate) fn ldist_pg_free(pg: *mut LdistPg);
    pub(crate) fn ldist_pg_all_reduce(
        pg: *mut LdistPg,
        ts: *const *mut C_tensor,
        n: usize,
        op: c_int,
    ) -> *mut c_char;
    pub(crate) fn ldist_pg_broadcast(
        pg: *mut LdistPg,
        ts: *const *mut C_tensor,
        n: usize,
        root: c_int,
    ) -> *mut c_char;
    pub(crate) fn ldist_pg_all_gather(
        pg: *mut LdistPg,
        t: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub(crate) fn ldist_pg_all_gather_into(
        pg: *mut LdistPg,
        out: *mut C_tensor,
        t: *const C_tensor,
    ) -> *mut c_char;
    pub(crate) fn ldist_pg_reduce_scatter_into(
        pg: *mut LdistPg,
        out: *mut C_tensor,
        t: *const C_tensor,
        op: c_int,
    ) -> *mut c_char;
    pub(crate) fn ldist_pg_barrier(pg: *mut LdistPg) -> *mut c_char;
    pub(crate) fn ldist_pg_broadcast_coalesced(
        pg: *mut LdistPg,
        ts: *const *mut C_tensor,
        n: usize,
        buffer_bytes: usize,
        root: c_int,
    ) -> *mut c_char;

    pub(crate) fn ldist_reducer_new(
        pg: *mut LdistPg,
        params: *const *mut C_tensor,
        n: usize,
        bucket_bytes_cap: i64,
        first_bucket_bytes_cap: i64,
        find_unused_parameters: c_int,
        gradient_as_bucket_view: c_int,
        init_sync: c_int,
        out: *mut *mut LdistReducer,
    ) -> *mut c_char;
    pub(crate) fn ldist_reducer_free(r: *mut LdistReducer);
    pub(crate) fn ldist_reducer_pre_forward(
        r: *mut LdistReducer,
        require_sync: c_int,
        rebuilt: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn ldist_reducer_prepare_for_backward(
        r: *mut LdistReducer,
        outputs: *const *mut C_tensor,
        n: usize,
    ) -> *mut c_char;
    pub(crate) fn ldist_reducer_bucket_count(r: *mut LdistReducer, out: *mut usize) -> *mut c_char;
    pub(crate) fn ldist_grad_mode_enabled() -> c_int;
}

/// Turns the shim's return value into a `Result` (c10d's message as a [`DistError`]).
pub(crate) fn check(op: &'static str, err: *mut c_char) -> Result<()> {
    // SAFETY: every caller passes a shim function's return value, once.
    match unsafe { lightning_sys::shim::take_message(err) } {
        None => Ok(()),
        Some(message) => Err(DistError::C10d { op, message }),
    }
}

/// The raw tensor pointers of `tensors`, for the shim (which copies the `at::Tensor` handles;
/// it never changes the handle objects, only the storage they share).
pub(crate) fn tensor_ptrs<'a>(
    tensors: impl IntoIterator<Item = &'a tch::Tensor>,
) -> Vec<*mut C_tensor> {
    tensors
        .into_iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

pub(crate) fn millis(op: &'static str, d: std::time::Duration) -> Result<i64> {
    i64::try_from(d.as_millis()).map_err(|_| DistError::InvalidArgument {
        op,
        message: format!("timeout {d:?} is too long"),
    })
}

//! c10d's `TCPStore`: the key-value store ranks rendezvous through.

use std::ffi::c_char;
use std::ptr::NonNull;
use std::time::Duration;

use crate::env::{ClusterEnv, ClusterKind};
use crate::error::{DistError, Result};
use crate::ffi::{self, check, millis};

/// How to create or join a [`Store`] (c10d's `TCPStoreOptions`).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The server's address (`MASTER_ADDR`).
    pub host: String,
    /// The server's port (`MASTER_PORT`); 0 on a server picks a free port ([`Store::port`]).
    pub port: u16,
    /// The number of store clients the server waits for (the world size, server included
    /// when it also runs a rank). `None`: unknown, nobody waits.
    pub world_size: Option<usize>,
    /// Whether this instance hosts the store (rank 0, unless a launcher agent hosts it).
    pub is_server: bool,
    /// Whether a server blocks in its constructor until `world_size` clients have joined.
    pub wait_for_workers: bool,
    /// Limit for connecting and for every `get`/`wait`.
    pub timeout: Duration,
}

impl StoreOptions {
    /// Options for a client of `host:port`: no worker count, c10d's 300 s default timeout.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        StoreOptions {
            host: host.into(),
            port,
            world_size: None,
            is_server: false,
            wait_for_workers: true,
            timeout: Duration::from_secs(300),
        }
    }
}

/// A c10d `TCPStore` handle (server or client). Thread-safe, as c10d's client is.
///
/// Process groups made from a store use their own key prefix in it (see
/// [`ProcessGroup`](crate::ProcessGroup)), so the launcher's own keys cannot collide with theirs.
pub struct Store {
    raw: NonNull<ffi::LdistStore>,
}

// SAFETY: c10d's TCPStore serializes its client socket with a mutex; the handle is never
// mutated from Rust.
unsafe impl Send for Store {}
// SAFETY: as above.
unsafe impl Sync for Store {}

impl Store {
    /// Creates or joins a store as `opts` says; a server binds its port here, a client
    /// connects (retrying until `opts.timeout`).
    pub fn tcp(opts: &StoreOptions) -> Result<Store> {
        const OP: &str = "TCPStore::new";
        let world = match opts.world_size {
            Some(n) => i64::try_from(n).map_err(|_| DistError::InvalidArgument {
                op: OP,
                message: format!("world size {n} is too large"),
            })?,
            None => -1,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid (ptr, len) host string; `raw` is written on success only.
        check(OP, unsafe {
            ffi::ldist_store_tcp_new(
                opts.host.as_ptr().cast(),
                opts.host.len(),
                opts.port,
                world,
                opts.is_server.into(),
                opts.wait_for_workers.into(),
                millis(OP, opts.timeout)?,
                &mut raw,
            )
        })?;
        Ok(Store {
            raw: NonNull::new(raw).expect("ldist_store_tcp_new returned no handle"),
        })
    }

    /// Hosts a store on `host:port` for `world_size` ranks without waiting for them (a
    /// launcher agent's store, or rank 0's before its group). Port 0 picks a free port.
    pub fn server(host: &str, port: u16, world_size: usize, timeout: Duration) -> Result<Store> {
        Store::tcp(&StoreOptions {
            world_size: Some(world_size),
            is_server: true,
            wait_for_workers: false,
            timeout,
            ..StoreOptions::new(host, port)
        })
    }

    /// Joins the store at `host:port` as a client.
    pub fn client(host: &str, port: u16, timeout: Duration) -> Result<Store> {
        Store::tcp(&StoreOptions {
            timeout,
            ..StoreOptions::new(host, port)
        })
    }

    pub(crate) fn raw(&self) -> *mut ffi::LdistStore {
        self.raw.as_ptr()
    }

    /// The port the store listens on (a server created with port 0 reports the one it got).
    pub fn port(&self) -> Result<u16> {
        let mut port = 0;
        // SAFETY: live handle, valid out pointer.
        check("TCPStore::port", unsafe {
            ffi::ldist_store_port(self.raw(), &mut port)
        })?;
        Ok(port)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        // SAFETY: valid (ptr, len) pairs.
        check("TCPStore::set", unsafe {
            ffi::ldist_store_set(
                self.raw(),
                key.as_ptr().cast(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    /// The value of `key`, waiting for it to be set up to the store's timeout.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: valid key; on success the shim hands us a malloc'd buffer of `len` bytes.
        check("TCPStore::get", unsafe {
            ffi::ldist_store_get(
                self.raw(),
                key.as_ptr().cast(),
                key.len(),
                &mut data,
                &mut len,
            )
        })?;
        // SAFETY: `data` holds `len` initialized bytes; freed once, by the shim's allocator.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ffi::ldist_free_bytes(data) };
        Ok(value)
    }

    /// Adds `delta` to the integer at `key` (created as 0) and returns the new value: the
    /// store's atomic counter.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let mut out = 0;
        // SAFETY: valid key and out pointer.
        check("TCPStore::add", unsafe {
            ffi::ldist_store_add(self.raw(), key.as_ptr().cast(), key.len(), delta, &mut out)
        })?;
        Ok(out)
    }

    /// Whether every key in `keys` is set (does not wait).
    pub fn check(&self, keys: &[&str]) -> Result<bool> {
        let (ptrs, lens) = key_arrays(keys);
        let mut out = 0;
        // SAFETY: `keys.len()` valid (ptr, len) pairs.
        check("TCPStore::check", unsafe {
            ffi::ldist_store_check(
                self.raw(),
                ptrs.as_ptr(),
                lens.as_ptr(),
                keys.len(),
                &mut out,
            )
        })?;
        Ok(out != 0)
    }

    /// Waits until every key in `keys` is set, up to the store's timeout.
    pub fn wait(&self, keys: &[&str]) -> Result<()> {
        self.wait_raw(keys, -1)
    }

    /// Waits until every key in `keys` is set, up to `timeout`.
    pub fn wait_timeout(&self, keys: &[&str], timeout: Duration) -> Result<()> {
        self.wait_raw(keys, millis("TCPStore::wait", timeout)?)
    }

    fn wait_raw(&self, keys: &[&str], timeout_ms: i64) -> Result<()> {
        let (ptrs, lens) = key_arrays(keys);
        // SAFETY: `keys.len()` valid (ptr, len) pairs.
        check("TCPStore::wait", unsafe {
            ffi::ldist_store_wait(
                self.raw(),
                ptrs.as_ptr(),
                lens.as_ptr(),
                keys.len(),
                timeout_ms,
            )
        })
    }

    /// Deletes `key`; whether it existed.
    pub fn delete_key(&self, key: &str) -> Result<bool> {
        let mut out = 0;
        // SAFETY: valid key and out pointer.
        check("TCPStore::delete_key", unsafe {
            ffi::ldist_store_delete_key(self.raw(), key.as_ptr().cast(), key.len(), &mut out)
        })?;
        Ok(out != 0)
    }

    /// The number of keys in the store (c10d's own bookkeeping keys included).
    pub fn num_keys(&self) -> Result<i64> {
        let mut out = 0;
        // SAFETY: valid out pointer.
        check("TCPStore::num_keys", unsafe {
            ffi::ldist_store_num_keys(self.raw(), &mut out)
        })?;
        Ok(out)
    }

    /// Blocks until `world_size` clients have joined (c10d's `waitForWorkers`; a no-op when
    /// the store was made without a world size).
    pub fn wait_for_workers(&self) -> Result<()> {
        // SAFETY: live handle.
        check("TCPStore::wait_for_workers", unsafe {
            ffi::ldist_store_wait_for_workers(self.raw())
        })
    }

    /// Changes the timeout of later `get`/`wait` calls.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        const OP: &str = "TCPStore::set_timeout";
        // SAFETY: live handle.
        check(OP, unsafe {
            ffi::ldist_store_set_timeout(self.raw(), millis(OP, timeout)?)
        })
    }
}

fn key_arrays(keys: &[&str]) -> (Vec<*const c_char>, Vec<usize>) {
    (
        keys.iter().map(|k| k.as_ptr().cast()).collect(),
        keys.iter().map(|k| k.len()).collect(),
    )
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and freed once.
        unsafe { ffi::ldist_store_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl ClusterEnv {
    /// Connects to the job's rendezvous store on `port` as c10d's `env://` rendezvous does:
    /// global rank 0 hosts it and waits for all `world_size` ranks to join, the others
    /// connect, unless torchrun's agent hosts it (then every rank, rank 0 too, is a client).
    pub fn store(&self, port: u16, timeout: Duration) -> Result<Store> {
        let agent = matches!(self.kind, ClusterKind::TorchElastic { agent_store: true });
        if self.rank == 0 && !agent {
            Store::server(&self.master_addr, port, self.world_size, timeout)
        } else {
            Store::client(&self.master_addr, port, timeout)
        }
    }
}

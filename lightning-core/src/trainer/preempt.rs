//! Preemption: SIGTERM and SIGUSR1 (what SLURM and cloud schedulers send before a kill) set a
//! flag; the loop checks it after every training step, saves a checkpoint and stops cleanly.

use crate::error::{Error, Result};
use signal_hook::consts::{SIGTERM, SIGUSR1};
use signal_hook::SigId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The registered handlers; unregistered on drop (the default actions come back).
pub(crate) struct Preemption {
    flag: Arc<AtomicBool>,
    ids: Vec<SigId>,
}

impl Preemption {
    /// Installs the handlers (none when `enabled` is false).
    pub fn install(enabled: bool) -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        if enabled {
            for sig in [SIGTERM, SIGUSR1] {
                let id =
                    signal_hook::flag::register(sig, Arc::clone(&flag)).map_err(|e| Error::Io {
                        context: format!("installing the preemption handler for signal {sig}"),
                        source: e,
                    })?;
                ids.push(id);
            }
        }
        Ok(Preemption { flag, ids })
    }

    /// Whether a signal arrived.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

impl Drop for Preemption {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

//! Checkpoint writing, synchronous or in the background.
//!
//! Every file goes through the trainer's [`CheckpointIO`] (local files: atomic and durable;
//! object storage: an upload that appears only once complete). Async mode wraps it: the step
//! loop only takes a snapshot (every tensor copied to host memory, pinned when the tensor is
//! on a GPU), then a thread serializes and writes it with the IO's `save_checkpoint`. At most
//! one save is in flight: the next one waits for it (the wait is logged). A failed background
//! save is reported by the next call into the saver ([`Saver::poll`] every step) and by
//! [`Saver::finish`] at the end of `fit`, which returns only once every pending save is
//! durable.
//!
//! What must follow a save ([`AfterSave`]: deleting the file it replaced, pointing `last` at
//! it) is handed to the saver with [`Saver::when_durable`] and runs once the file is durable,
//! never when its write failed.

use crate::callbacks::AfterSave;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::storage::CheckpointIO;
use crate::value::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tch::{Device, Tensor};

/// A background write and what follows it.
struct Pending {
    path: PathBuf,
    handle: JoinHandle<Result<(), checkpoint::CheckpointError>>,
    then: Vec<AfterSave>,
}

/// Writes checkpoints for the trainer.
pub(crate) struct Saver {
    asynchronous: bool,
    io: Arc<dyn CheckpointIO>,
    pending: Option<Pending>,
    /// Saves that failed so far (lets the trainer tell save errors from other errors).
    pub failures: usize,
}

impl Saver {
    pub fn new(asynchronous: bool, io: Arc<dyn CheckpointIO>) -> Self {
        Saver {
            asynchronous,
            io,
            pending: None,
            failures: 0,
        }
    }

    /// Whether writes run on the writer thread (their inputs must then be snapshots).
    #[cfg_attr(not(feature = "distributed"), allow(dead_code))]
    pub fn is_async(&self) -> bool {
        self.asynchronous
    }

    /// Saves `ckpt` to `path` through the IO (which creates its folder): directly, or (async)
    /// after a consistent snapshot.
    pub fn save(&mut self, path: &Path, ckpt: Value) -> Result<()> {
        if !self.asynchronous {
            let r = self.io.save_checkpoint(&ckpt, path).map_err(save_err(path));
            self.failures += usize::from(r.is_err());
            return r;
        }
        let snap = snapshot(&ckpt);
        let io = self.io.clone();
        let owned = path.to_owned();
        self.run(path, move || io.save_checkpoint(&snap, &owned))
    }

    /// Runs the write `job` for `path`: now, or (async) on the writer thread once the save
    /// before it is done. Its inputs must already be a snapshot (host copies). What
    /// [`Saver::when_durable`] queues after it runs once it succeeded.
    pub fn run(
        &mut self,
        path: &Path,
        job: impl FnOnce() -> Result<(), checkpoint::CheckpointError> + Send + 'static,
    ) -> Result<()> {
        if !self.asynchronous {
            let r = job().map_err(save_err(path));
            self.failures += usize::from(r.is_err());
            return r;
        }
        if self.pending.is_some() {
            let t = Instant::now();
            self.wait()?;
            tracing::info!(
                "async checkpoint: waited {:?} for the previous save before {}",
                t.elapsed(),
                path.display()
            );
        }
        let handle = std::thread::Builder::new()
            .name("ckpt-writer".into())
            .spawn(job)
            .map_err(|e| Error::Io {
                context: format!("starting the checkpoint writer for {}", path.display()),
                source: e,
            })?;
        self.pending = Some(Pending {
            path: path.to_owned(),
            handle,
            then: vec![],
        });
        Ok(())
    }

    /// Runs `action` once every save so far is durable: now when none is in flight, else
    /// when the background write finishes (and never if it fails).
    pub fn when_durable(&mut self, action: AfterSave) -> Result<()> {
        match &mut self.pending {
            Some(p) => p.then.push(action),
            None => action.apply(&*self.io)?,
        }
        Ok(())
    }

    /// Finishes a background save that is done (reporting its error, running what follows
    /// it); does not block.
    pub fn poll(&mut self) -> Result<()> {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.handle.is_finished())
        {
            return self.wait();
        }
        Ok(())
    }

    /// Blocks until the save in flight (if any) is durable; returns its error.
    pub fn wait(&mut self) -> Result<()> {
        let r = self.join();
        self.failures += usize::from(r.is_err());
        r
    }

    fn join(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let written = match p.handle.join() {
            Ok(r) => r.map_err(save_err(&p.path)),
            Err(_) => Err(Error::Msg(format!(
                "the checkpoint writer for {} panicked",
                p.path.display()
            ))),
        };
        if written.is_err() {
            for action in &p.then {
                tracing::warn!(
                    "not done because saving {} failed: {action:?}",
                    p.path.display()
                );
            }
            return written;
        }
        for action in p.then {
            action.apply(&*self.io)?;
        }
        Ok(())
    }

    /// Like [`Saver::wait`]; called when `fit` ends.
    pub fn finish(&mut self) -> Result<()> {
        self.wait()
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!("{e}");
        }
    }
}

fn save_err(path: &Path) -> impl FnOnce(checkpoint::CheckpointError) -> Error + '_ {
    move |source| Error::Save {
        path: path.to_owned(),
        source,
    }
}

/// A deep copy of the tree with every tensor copied to host memory: later in-place updates
/// (optimizer steps) cannot change what is written.
pub(crate) fn snapshot(v: &Value) -> Value {
    match v {
        Value::Tensor(t) => Value::Tensor(host_copy(t)),
        Value::List(xs) => Value::List(xs.iter().map(snapshot).collect()),
        Value::Tuple(xs) => Value::Tuple(xs.iter().map(snapshot).collect()),
        Value::Dict(d) => Value::Dict(d.iter().map(|(k, x)| (k.clone(), snapshot(x))).collect()),
        Value::OrderedDict(d) => {
            Value::OrderedDict(d.iter().map(|(k, x)| (k.clone(), snapshot(x))).collect())
        }
        other => other.clone(),
    }
}

pub(crate) fn host_copy(t: &Tensor) -> Tensor {
    let t = t.detach();
    if t.device() == Device::Cpu {
        return t.copy();
    }
    // Pinned, so the device->host copy runs at full bus speed; where it cannot be had,
    // pageable: the snapshot is slower, never lost.
    let mut dst = crate::cuda::pinned_host(&t.size(), t.kind())
        .unwrap_or_else(|| Tensor::empty(t.size(), (t.kind(), Device::Cpu)));
    dst.copy_(&t);
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DefaultCheckpointIO;

    #[test]
    fn snapshot_is_independent_of_later_in_place_updates() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        let mut tree = Value::dict();
        tree.insert("w", w.shallow_clone());
        let snap = snapshot(&tree);
        let mut w2 = w.shallow_clone();
        let _ = w2.f_add_scalar_(5.0).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(snap.get("w").unwrap().as_tensor().unwrap()).unwrap(),
            vec![1.0, 2.0]
        );
        assert_eq!(Vec::<f32>::try_from(&w).unwrap(), vec![6.0, 7.0]);
    }

    #[test]
    fn async_save_writes_the_snapshot_not_later_updates() {
        let dir = tempfile::tempdir().unwrap();
        let big = Tensor::ones([1 << 20], (tch::Kind::Float, Device::Cpu));
        let mut tree = Value::dict();
        tree.insert("w", big.shallow_clone());
        let mut saver = Saver::new(true, Arc::new(DefaultCheckpointIO));
        let (a, b) = (dir.path().join("a.ckpt"), dir.path().join("b.ckpt"));
        saver.save(&a, tree.clone()).unwrap();
        // Training goes on while the file is written: in-place updates right after.
        let mut w = big.shallow_clone();
        let _ = w.f_mul_scalar_(3.0).unwrap();
        saver.save(&b, tree).unwrap(); // waits for `a` (one in flight)
        let _ = w.f_add_scalar_(1.0).unwrap();
        saver.finish().unwrap();
        let read = |p: &Path| {
            crate::checkpoint::load(p)
                .unwrap()
                .get("w")
                .unwrap()
                .as_tensor()
                .unwrap()
                .sum(tch::Kind::Double)
                .double_value(&[])
        };
        assert_eq!(read(&a), (1 << 20) as f64);
        assert_eq!(read(&b), 3.0 * (1 << 20) as f64);
    }

    #[test]
    fn a_failed_background_save_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut saver = Saver::new(true, Arc::new(DefaultCheckpointIO));
        // a non-empty directory where the file should go: the final rename fails
        let bad = dir.path().join("x.ckpt");
        std::fs::create_dir_all(bad.join("occupied")).unwrap();
        saver.save(&bad, Value::dict()).unwrap();
        saver
            .when_durable(AfterSave::Remove(dir.path().join("keep")))
            .unwrap();
        std::fs::write(dir.path().join("keep"), "old").unwrap();
        let e = saver.finish().unwrap_err().to_string();
        assert!(e.contains("x.ckpt"), "{e}");
        // what was to follow the failed save did not run
        assert!(dir.path().join("keep").exists());
    }
}

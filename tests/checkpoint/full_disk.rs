//! A real full disk for the local checkpoint writer: a small tmpfs (mounted by the test, as
//! root; elsewhere it skips and says why) fills up during training. The failing save names
//! the path and the bytes it needed, leaves no temporary file, training stops (the default
//! save-error policy), and every checkpoint written before still verifies and loads.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::ModelCheckpoint;
use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use trainer_util::{data, Tiny, TinyHp};

/// A tmpfs of `size` mounted over a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _holder: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot (not root, no permission to mount).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: mounting a tmpfs needs root".into());
        }
        let holder = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = holder.path().to_path_buf();
        let target = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let opts = CString::new(format!("size={size}")).map_err(|e| e.to_string())?;
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs on {} refused: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs {
            dir,
            _holder: holder,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path; a lazy unmount cannot fail on a busy mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_full_disk_fails_the_save_cleanly_and_keeps_every_earlier_checkpoint() {
    let _serial = trainer_util::serial();
    for asynchronous in [false, true] {
        let fs = match Tmpfs::mount("96k") {
            Ok(fs) => fs,
            Err(why) => {
                println!("SKIP: no tmpfs to fill ({why}); the full-disk path is not tested here");
                return;
            }
        };
        let ck = fs.dir.join("ck");
        let mc = ModelCheckpoint::builder()
            .dirpath(&ck)
            .filename("{epoch}")
            .save_top_k(-1)
            .build()
            .unwrap();
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let root = tempfile::tempdir().unwrap();
        let mut t = Trainer::builder()
            .enable_progress_bar(false)
            .enable_model_summary(false)
            .seed(3)
            .default_root_dir(root.path())
            .logger(false)
            .max_epochs(500)
            .async_checkpointing(asynchronous)
            .callback(mc)
            .build()
            .unwrap();
        let err = t
            .fit(&mut m, &data(40, 8, true), None)
            .expect_err("the tmpfs fills up before 500 checkpoints")
            .to_string();
        let tag = format!("async={asynchronous}");
        println!("{tag}: {err}");
        assert!(err.contains("not enough space"), "{tag}: {err}");
        assert!(err.contains("bytes needed"), "{tag}: {err}");
        assert!(
            err.contains(&ck.display().to_string()) && err.contains(".ckpt"),
            "{tag}: the error names the file: {err}"
        );
        assert!(t.current_epoch() < 500, "{tag}: training stopped");
        // Only whole checkpoints are left: no temporary file of the failed save.
        let left = files(&ck);
        assert!(
            left.len() >= 2,
            "{tag}: earlier checkpoints were written: {left:?}"
        );
        for name in &left {
            assert!(
                name.starts_with("epoch=") && name.ends_with(".ckpt"),
                "{tag}: a leftover that is not a checkpoint: {name} in {left:?}"
            );
            let p = ck.join(name);
            checkpoint::verify(&p).unwrap_or_else(|e| panic!("{tag}: {name}: {e}"));
            let v = checkpoint::load(&p).unwrap();
            assert!(v.get("state_dict").is_some(), "{tag}: {name}");
        }
        // Epochs 0..n-1 each saved once, in order, with nothing skipped.
        let want: Vec<String> = (0..left.len()).map(|e| format!("epoch={e}.ckpt")).collect();
        let mut got = left.clone();
        got.sort_by_key(|n| {
            n.trim_start_matches("epoch=")
                .trim_end_matches(".ckpt")
                .parse::<u64>()
                .unwrap_or(u64::MAX)
        });
        assert_eq!(got, want, "{tag}");
    }
}

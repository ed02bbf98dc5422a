//! Where checkpoints live: [`CheckpointIO`], Lightning's checkpoint-IO plugin, and the only
//! code that knows paths and URLs.
//!
//! The trainer writes, reads, lists, links and deletes checkpoint files only through a
//! [`CheckpointIO`]. The default, [`DefaultCheckpointIO`], picks the storage by the path, as
//! Lightning's fsspec paths do:
//! - a local path: the durable atomic writer of [`crate::checkpoint::save`] (temporary file,
//!   fsync, rename), symlinks for `last`;
//! - `s3://bucket/key`, `gs://`, `az://` (and `abfs[s]://`, `adl://`, `azure://`), and the
//!   in-process `memory://`: object storage through the `object_store` crate, with
//!   credentials and endpoints from the environment as it reads them (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...; for S3 the
//!   `AWS_PROFILE` of `~/.aws/credentials` and `~/.aws/config` fills in the rest). Saves are
//!   streamed multipart uploads that appear only once complete; `last` is a server-side copy.
//!   A failed request is retried with backoff ([`RETRIES_ENV`] sets how many times).
//!
//! [`crate::checkpoint::load`], [`crate::checkpoint::save`] and [`crate::checkpoint::verify`]
//! accept URLs too, so `load_from_checkpoint("s3://...")`, hparams files and `lightning-ckpt`
//! work on object storage without a trainer. Object storage is lightning-core's
//! `object-storage` cargo feature (on by default); without it a URL is an error naming it.
//!
//! A custom [`CheckpointIO`] (set with `Trainer::builder().checkpoint_io(..)`) replaces the
//! default for every file the trainer touches; async checkpointing wraps whichever is set
//! (the snapshot is taken on the step thread, the IO's `save_checkpoint` runs on the writer
//! thread).
//!
//! ```
//! # #[cfg(feature = "object-storage")] {
//! use lightning_core::storage::{CheckpointIO, DefaultCheckpointIO};
//! use lightning_core::Value;
//! use std::path::Path;
//!
//! let io = DefaultCheckpointIO;
//! let mut ckpt = Value::dict();
//! ckpt.insert("epoch", 3i64);
//! let url = Path::new("memory://doc-bucket/run/last.ckpt");
//! io.save_checkpoint(&ckpt, url)?;
//! assert!(io.exists(url)?);
//! assert_eq!(io.load_checkpoint(url)?, ckpt);
//! assert_eq!(io.list(Path::new("memory://doc-bucket/run"))?.len(), 1);
//! io.remove_checkpoint(url)?;
//! assert!(!io.exists(url)?);
//! # }
//! # Ok::<(), lightning_core::checkpoint::CheckpointError>(())
//! ```

//! The files, from the bottom up: `local.rs` (the local file system: atomic durable writes,
//! `last` symlinks, listings, stale temporary files), `urls.rs` (what is a URL), `object.rs`
//! (object storage; `aws_profile.rs` reads `~/.aws`; without the `object-storage` feature
//! `object_disabled.rs`, which refuses every URL), `files.rs` (whole files at a path or URL:
//! picks one of the two), `checkpoint_io.rs` (the plugin, over the checkpoint format).

#[cfg(feature = "object-storage")]
mod aws_profile;
mod checkpoint_io;
pub(crate) mod files;
pub(crate) mod local;
#[cfg(feature = "object-storage")]
pub(crate) mod object;
// Without the feature, every URL is an error naming it.
#[cfg(not(feature = "object-storage"))]
pub(crate) mod object_disabled;
#[cfg(not(feature = "object-storage"))]
pub(crate) use object_disabled as object;
mod urls;

pub use checkpoint_io::{CheckpointIO, DefaultCheckpointIO};
pub use files::{copy, copy_atomically, list_dirs, read};
pub use local::{remove_stale_temp_files, StoredFile};
#[cfg(feature = "object-storage")]
pub use object::RETRIES_ENV;
pub use urls::is_url;

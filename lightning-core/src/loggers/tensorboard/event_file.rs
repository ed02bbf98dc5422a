//! An event file: TFRecord framing around serialized [`Event`]s, as tensorboard's
//! `EventFileWriter` / `RecordWriter` write it. Each record is the data's length (u64, little
//! endian), the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of the data.

use super::proto::{Event, SourceMetadata, What};
use crate::loggers::{create_dir, io_err, LoggerError};
use prost::Message;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// TFRecord's masked CRC-32C (Castagnoli): the CRC rotated right by 15 bits plus a constant,
/// so that a CRC of data holding CRCs stays well distributed.
pub(crate) fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
pub(crate) fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Seconds since the epoch, as Python's `time.time()`.
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The per-process count in event file names (tensorboard's `_global_uid`).
static FILE_COUNT: AtomicU64 = AtomicU64::new(0);

/// The machine's name, as Python's `socket.gethostname()`.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc {
        0 if end > 0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
        _ => "localhost".to_owned(),
    }
}

/// An open event file in a log directory.
pub(crate) struct EventFileWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl std::fmt::Debug for EventFileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFileWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl EventFileWriter {
    /// Creates `dir` and `events.out.tfevents.<secs>.<host>.<pid>.<n>` in it, writes the
    /// file-version event and flushes it (a reader sees a valid file at once).
    pub fn create(dir: &Path) -> Result<Self, LoggerError> {
        create_dir(dir)?;
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.{}",
            now() as u64,
            hostname(),
            std::process::id(),
            FILE_COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = File::create(&path).map_err(io_err(format!("creating {}", path.display())))?;
        let mut w = EventFileWriter {
            path,
            file: BufWriter::new(file),
        };
        w.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
            source_metadata: Some(SourceMetadata {
                writer: "lightning_rs.TensorBoardLogger".into(),
            }),
        })?;
        w.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event (buffered until [`EventFileWriter::flush`]).
    pub fn write(&mut self, event: &Event) -> Result<(), LoggerError> {
        let record = frame(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .map_err(io_err(format!("writing {}", self.path.display())))
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> Result<(), LoggerError> {
        self.file
            .flush()
            .map_err(io_err(format!("writing {}", self.path.display())))
    }
}

//! The `torch.save` zip container: stored (uncompressed) entries under one prefix folder,
//! record data aligned to 64 bytes by a local-header extra field (id `0x4246`, "FB"),
//! CRC-32 per record, ZIP64 end records always present.
//!
//! Written here rather than with the `zip` crate because torch's layout needs the exact "FB"
//! padding field before each record (so records can be memory-mapped in place) and because
//! the writer streams multi-GiB tensor memory straight to the file, computing the CRC on the
//! way, with data descriptors as torch's own writer does. The reader is ours so that every
//! size is checked against the file's length before anything is allocated.

use super::error::CheckpointError;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Record data starts on multiples of this many bytes (torch's `.storage_alignment`).
pub const ALIGNMENT: u64 = 64;
const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
/// General-purpose flags: bit 3 (sizes and CRC in a data descriptor), bit 11 (UTF-8 names).
const FLAGS: u16 = 0x0808;
const U32_MAX: u64 = 0xFFFF_FFFF;
/// Bytes fed to the CRC and the file at a time, so the CRC'd chunk is still in cache.
const CHUNK: usize = 1 << 20;

struct CentralEntry {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
}

/// Streams zip records to `w`, tracking offsets for the central directory.
pub struct ZipWriter<W: Write> {
    w: W,
    pos: u64,
    entries: Vec<CentralEntry>,
}

impl<W: Write> ZipWriter<W> {
    /// A writer at offset 0 of `w`.
    pub fn new(w: W) -> Self {
        ZipWriter {
            w,
            pos: 0,
            entries: Vec::new(),
        }
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Writes one stored record whose data is the concatenation of `parts`, aligned to 64.
    pub fn add(&mut self, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
        let size: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let big = size >= U32_MAX;
        let offset = self.pos;
        let zip64_len = if big { 20 } else { 0 };
        let start = offset + 30 + name.len() as u64 + zip64_len + 4;
        let pad = (ALIGNMENT - start % ALIGNMENT) % ALIGNMENT;
        let mut h = Vec::with_capacity(30 + name.len() + 84);
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&(if big { 45u16 } else { 20u16 }).to_le_bytes());
        h.extend_from_slice(&FLAGS.to_le_bytes());
        h.extend_from_slice(&[0; 10]); // method 0 (stored), time, date, crc (in descriptor)
        let small = if big { U32_MAX as u32 } else { 0 };
        h.extend_from_slice(&small.to_le_bytes());
        h.extend_from_slice(&small.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&((zip64_len + 4 + pad) as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        if big {
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&16u16.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
        }
        h.extend_from_slice(b"FB");
        h.extend_from_slice(&(pad as u16).to_le_bytes());
        h.resize(h.len() + pad as usize, b'Z');
        self.put(&h)?;
        let mut crc = crc32fast::Hasher::new();
        for part in parts {
            for chunk in part.chunks(CHUNK) {
                crc.update(chunk);
                self.put(chunk)?;
            }
        }
        let crc = crc.finalize();
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&DESCRIPTOR_SIG.to_le_bytes());
        d.extend_from_slice(&crc.to_le_bytes());
        if big {
            d.extend_from_slice(&size.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
        } else {
            d.extend_from_slice(&(size as u32).to_le_bytes());
            d.extend_from_slice(&(size as u32).to_le_bytes());
        }
        self.put(&d)?;
        self.entries.push(CentralEntry {
            name: name.to_owned(),
            crc,
            size,
            offset,
        });
        Ok(())
    }

    /// Writes the central directory and the ZIP64 and classic end records; returns the writer
    /// and the total number of bytes written.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        let cd_start = self.pos;
        let mut cd = Vec::new();
        for e in &self.entries {
            let big_size = e.size >= U32_MAX;
            let big_off = e.offset >= U32_MAX;
            let mut extra = Vec::new();
            if big_size {
                extra.extend_from_slice(&e.size.to_le_bytes());
                extra.extend_from_slice(&e.size.to_le_bytes());
            }
            if big_off {
                extra.extend_from_slice(&e.offset.to_le_bytes());
            }
            cd.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            cd.extend_from_slice(&0x031Eu16.to_le_bytes()); // made by: unix, 3.0
            cd.extend_from_slice(&(if big_size || big_off { 45u16 } else { 20u16 }).to_le_bytes());
            cd.extend_from_slice(&FLAGS.to_le_bytes());
            cd.extend_from_slice(&[0; 6]); // method, time, date
            cd.extend_from_slice(&e.crc.to_le_bytes());
            let s = if big_size { U32_MAX } else { e.size } as u32;
            cd.extend_from_slice(&s.to_le_bytes());
            cd.extend_from_slice(&s.to_le_bytes());
            cd.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            let extra_len = if extra.is_empty() { 0 } else { extra.len() + 4 };
            cd.extend_from_slice(&(extra_len as u16).to_le_bytes());
            cd.extend_from_slice(&[0; 8]); // comment len, disk, internal + external attrs
            cd.extend_from_slice(&[0; 2]);
            let o = if big_off { U32_MAX } else { e.offset } as u32;
            cd.extend_from_slice(&o.to_le_bytes());
            cd.extend_from_slice(e.name.as_bytes());
            if !extra.is_empty() {
                cd.extend_from_slice(&1u16.to_le_bytes());
                cd.extend_from_slice(&(extra.len() as u16).to_le_bytes());
                cd.extend_from_slice(&extra);
            }
        }
        self.put(&cd)?;
        let cd_size = cd.len() as u64;
        let n = self.entries.len() as u64;
        let z64_start = self.pos;
        let mut end = Vec::with_capacity(98);
        end.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
        end.extend_from_slice(&44u64.to_le_bytes());
        end.extend_from_slice(&0x031Eu16.to_le_bytes());
        end.extend_from_slice(&45u16.to_le_bytes());
        end.extend_from_slice(&[0; 8]); // this disk, disk with the directory
        end.extend_from_slice(&n.to_le_bytes());
        end.extend_from_slice(&n.to_le_bytes());
        end.extend_from_slice(&cd_size.to_le_bytes());
        end.extend_from_slice(&cd_start.to_le_bytes());
        end.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
        end.extend_from_slice(&0u32.to_le_bytes());
        end.extend_from_slice(&z64_start.to_le_bytes());
        end.extend_from_slice(&1u32.to_le_bytes());
        end.extend_from_slice(&EOCD_SIG.to_le_bytes());
        end.extend_from_slice(&[0; 4]);
        let n16 = n.min(0xFFFF) as u16;
        end.extend_from_slice(&n16.to_le_bytes());
        end.extend_from_slice(&n16.to_le_bytes());
        end.extend_from_slice(&(cd_size.min(U32_MAX) as u32).to_le_bytes());
        end.extend_from_slice(&(cd_start.min(U32_MAX) as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.put(&end)?;
        Ok((self.w, self.pos))
    }
}

/// The bytes a record of `size` bytes named `name` occupies at most, headers included (for
/// "bytes needed" estimates before writing).
pub fn record_overhead(name: &str) -> u64 {
    30 + name.len() as u64 + 24 + ALIGNMENT + 24 + 46 + name.len() as u64 + 28
}

/// One record of an archive being read.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Full name, prefix included.
    pub name: String,
    /// Offset of the record's data in the file.
    pub data_offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 from the central directory.
    pub crc: u32,
}

/// A `torch.save` zip opened for reading; every offset has been checked against the file.
pub struct ZipReader {
    path: PathBuf,
    file: File,
    /// Where the archive starts in `file` (a DCP `.distcp` file holds archives back to back).
    base: u64,
    len: u64,
    prefix: String,
    entries: Vec<Entry>,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}
fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl ZipReader {
    /// Opens the local file `path` and reads its directory (a URL goes through
    /// `crate::checkpoint::load`, which downloads it first).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        Self::from_file(
            path,
            File::open(path).map_err(|e| CheckpointError::io(path, e))?,
        )
    }

    /// Reads the directory of `file`, opened from `path` (named in errors).
    pub fn from_file(path: &Path, file: File) -> Result<Self, CheckpointError> {
        let len = file
            .metadata()
            .map_err(|e| CheckpointError::io(path, e))?
            .len();
        Self::from_range(path, file, 0, len)
    }

    /// Reads the directory of the archive that fills `len` bytes of `file` from `base`: its
    /// offsets are relative to `base`, and nothing outside the range is read.
    pub fn from_range(
        path: &Path,
        file: File,
        base: u64,
        len: u64,
    ) -> Result<Self, CheckpointError> {
        let mut r = ZipReader {
            path: path.to_owned(),
            file,
            base,
            len,
            prefix: String::new(),
            entries: Vec::new(),
        };
        r.read_directory()?;
        Ok(r)
    }

    fn fmt(&self, msg: impl Into<String>) -> CheckpointError {
        CheckpointError::Format {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    fn truncated(&self, what: impl Into<String>, end: u64) -> CheckpointError {
        CheckpointError::Truncated {
            path: self.path.clone(),
            what: what.into(),
            needed: end,
            len: self.len,
        }
    }

    /// Reads `len` bytes at `offset`, after checking they lie inside the file.
    pub fn read_at(&self, what: &str, offset: u64, len: u64) -> Result<Vec<u8>, CheckpointError> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| self.fmt(format!("{what}: offset overflow")))?;
        if end > self.len {
            return Err(self.truncated(what, end));
        }
        let n = usize::try_from(len).map_err(|_| self.fmt(format!("{what}: too large")))?;
        let mut buf = vec![0u8; n];
        self.fill_at(what, offset, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from `offset` (bounds already checked by the caller or by [`Self::read_at`]).
    pub fn fill_at(&self, what: &str, offset: u64, buf: &mut [u8]) -> Result<(), CheckpointError> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(self.truncated(what, offset.saturating_add(buf.len() as u64)));
        }
        self.file
            .read_exact_at(buf, self.base + offset)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    self.truncated(what, offset + buf.len() as u64)
                } else {
                    CheckpointError::io(&self.path, e)
                }
            })
    }

    fn read_directory(&mut self) -> Result<(), CheckpointError> {
        if self.len < 22 {
            return Err(self.fmt(format!(
                "not a zip archive ({} bytes, too short for an end-of-directory record)",
                self.len
            )));
        }
        let tail_len = self.len.min(22 + 0xFFFF + 20 + 56);
        let tail = self.read_at("end records", self.len - tail_len, tail_len)?;
        let eocd = (0..=tail.len() - 22)
            .rev()
            .find(|&i| le32(&tail, i) == EOCD_SIG as u64)
            .ok_or_else(|| {
                let magic = tail.get(..4).map(|m| m == b"PK\x03\x04").unwrap_or(false);
                if magic || self.len == tail_len && tail.starts_with(b"PK\x03\x04") {
                    self.truncated(
                        "zip end-of-directory record (file cut short?)",
                        self.len + 22,
                    )
                } else {
                    self.fmt(
                        "not a zip archive (no end-of-directory record); torch.save files are zips",
                    )
                }
            })?;
        let mut n = le16(&tail, eocd + 10);
        let mut cd_size = le32(&tail, eocd + 12);
        let mut cd_off = le32(&tail, eocd + 16);
        if eocd >= 20 && le32(&tail, eocd - 20) == ZIP64_LOCATOR_SIG as u64 {
            let z64 = le64(&tail, eocd - 20 + 8);
            let rec = self.read_at("zip64 end record", z64, 56)?;
            if le32(&rec, 0) != ZIP64_EOCD_SIG as u64 {
                return Err(self.fmt(format!("bad zip64 end record signature at offset {z64}")));
            }
            n = le64(&rec, 32);
            cd_size = le64(&rec, 40);
            cd_off = le64(&rec, 48);
        }
        let cd_end = cd_off
            .checked_add(cd_size)
            .ok_or_else(|| self.fmt("central directory offset overflow"))?;
        if cd_end > self.len {
            return Err(self.truncated("central directory", cd_end));
        }
        if n > cd_size / 46 {
            return Err(self.fmt(format!(
                "central directory claims {n} entries in {cd_size} bytes"
            )));
        }
        let cd = self.read_at("central directory", cd_off, cd_size)?;
        let mut at = 0usize;
        let mut entries = Vec::with_capacity(n as usize);
        for i in 0..n {
            if at + 46 > cd.len() || le32(&cd, at) != CENTRAL_SIG as u64 {
                return Err(self.fmt(format!("central directory entry {i} is corrupt")));
            }
            let flags = le16(&cd, at + 8);
            let method = le16(&cd, at + 10);
            let crc = le32(&cd, at + 16) as u32;
            let mut csize = le32(&cd, at + 20);
            let mut size = le32(&cd, at + 24);
            let nlen = le16(&cd, at + 28) as usize;
            let elen = le16(&cd, at + 30) as usize;
            let clen = le16(&cd, at + 32) as usize;
            let mut offset = le32(&cd, at + 42);
            let body = at + 46;
            if body + nlen + elen + clen > cd.len() {
                return Err(self.fmt(format!("central directory entry {i} runs past its end")));
            }
            let name = std::str::from_utf8(&cd[body..body + nlen])
                .map_err(|_| self.fmt(format!("entry {i} has a non-UTF-8 name")))?
                .to_owned();
            // zip64 extra: present fields appear in the order size, csize, offset.
            let mut x = body + nlen;
            let xend = x + elen;
            while x + 4 <= xend {
                let id = le16(&cd, x);
                let l = le16(&cd, x + 2) as usize;
                let mut p = x + 4;
                if p + l > xend {
                    return Err(self.fmt(format!("entry {name}: extra field runs past its end")));
                }
                if id == 1 {
                    for field in [&mut size, &mut csize, &mut offset] {
                        if *field == U32_MAX && p + 8 <= x + 4 + l {
                            *field = le64(&cd, p);
                            p += 8;
                        }
                    }
                }
                x += 4 + l;
            }
            at = xend + clen;
            if flags & 1 != 0 {
                return Err(CheckpointError::Unsupported {
                    path: self.path.clone(),
                    what: format!("encrypted zip entry {name}"),
                });
            }
            if method != 0 || csize != size {
                return Err(CheckpointError::Unsupported {
                    path: self.path.clone(),
                    what: format!(
                        "compressed zip entry {name} (method {method}); torch.save stores records uncompressed"
                    ),
                });
            }
            entries.push((name, offset, size, crc));
        }
        let prefix = match entries.first() {
            Some((name, ..)) => match name.split_once('/') {
                Some((p, _)) if !p.is_empty() => p.to_owned(),
                _ => return Err(self.fmt(format!("entry {name} is not under a prefix folder"))),
            },
            None => return Err(self.fmt("empty zip archive")),
        };
        let mut seen = std::collections::HashSet::new();
        for (name, offset, size, crc) in entries {
            let rest = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(|| {
                    self.fmt(format!(
                        "entry {name} is outside the archive folder {prefix}/"
                    ))
                })?;
            if rest.split('/').any(|c| c == ".." || c.is_empty()) || name.contains('\\') {
                return Err(self.fmt(format!("entry name {name:?} is not a plain relative path")));
            }
            if !seen.insert(name.clone()) {
                return Err(self.fmt(format!("duplicate entry {name}")));
            }
            let lh = self.read_at(&format!("local header of {name}"), offset, 30)?;
            if le32(&lh, 0) != LOCAL_SIG as u64 {
                return Err(self.fmt(format!(
                    "bad local header signature for {name} at offset {offset}"
                )));
            }
            let data_offset = offset + 30 + le16(&lh, 26) + le16(&lh, 28);
            let end = data_offset
                .checked_add(size)
                .ok_or_else(|| self.fmt(format!("{name}: size overflow")))?;
            if end > self.len {
                return Err(self.truncated(format!("record {name}"), end));
            }
            self.entries.push(Entry {
                name,
                data_offset,
                size,
                crc,
            });
        }
        self.prefix = prefix;
        Ok(())
    }

    /// The archive's prefix folder (`archive` for ours).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where the archive starts in its file (0 for a `.ckpt`).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The archive's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The record `<prefix>/<rel>`, if present.
    pub fn entry(&self, rel: &str) -> Option<&Entry> {
        let full = format!("{}/{rel}", self.prefix);
        self.entries.iter().find(|e| e.name == full)
    }

    /// All records.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Checks a record's bytes against its CRC-32.
    pub fn check_crc(&self, e: &Entry, data: &[u8]) -> Result<(), CheckpointError> {
        self.check_crc_value(e, crc32fast::hash(data))
    }

    /// Reads a record in 1 MiB chunks and checks its CRC-32 (constant memory).
    pub fn check_entry(&self, e: &Entry) -> Result<(), CheckpointError> {
        let mut buf = vec![0u8; e.size.min(1 << 20) as usize];
        let mut crc = crc32fast::Hasher::new();
        let mut off = 0u64;
        while off < e.size {
            let n = (e.size - off).min(buf.len() as u64) as usize;
            self.fill_at(&e.name, e.data_offset + off, &mut buf[..n])?;
            crc.update(&buf[..n]);
            off += n as u64;
        }
        self.check_crc_value(e, crc.finalize())
    }

    /// Checks a CRC-32 computed by the caller against the record's.
    pub fn check_crc_value(&self, e: &Entry, found: u32) -> Result<(), CheckpointError> {
        if found != e.crc {
            return Err(CheckpointError::Crc {
                path: self.path.clone(),
                record: e.name.clone(),
                expected: e.crc,
                found,
            });
        }
        Ok(())
    }

    /// Reads a whole record into memory, CRC-checked.
    pub fn read_record(&self, rel: &str, verify: bool) -> Result<Vec<u8>, CheckpointError> {
        let e = self
            .entry(rel)
            .ok_or_else(|| self.fmt(format!("missing record {}/{rel}", self.prefix)))?
            .clone();
        let data = self.read_at(&e.name, e.data_offset, e.size)?;
        if verify {
            self.check_crc(&e, &data)?;
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_aligned_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.zip");
        let mut w = ZipWriter::new(File::create(&p).unwrap());
        w.add("archive/data.pkl", &[b"hello"]).unwrap();
        w.add("archive/data/0", &[&[1u8; 100], &[2u8; 3]]).unwrap();
        w.finish().unwrap();
        let r = ZipReader::open(&p).unwrap();
        assert_eq!(r.prefix(), "archive");
        for e in r.entries() {
            assert_eq!(e.data_offset % ALIGNMENT, 0, "{}", e.name);
        }
        assert_eq!(r.read_record("data.pkl", true).unwrap(), b"hello");
        assert_eq!(r.read_record("data/0", true).unwrap().len(), 103);
    }
}

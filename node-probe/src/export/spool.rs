//! The disk spool: one protobuf-encoded `Batch` per file, written atomically (temporary file,
//! fsync, rename), with a size cap enforced by evicting the oldest files.
//!
//! Each file is framed: [`MAGIC`], the payload length (u64 LE) and its CRC-32 (u32 LE), then the
//! payload. A truncated protobuf can still decode (to a batch with fewer rows, which would then be
//! acknowledged and its missing rows lost without a trace), so [`Spool::read`] refuses a file whose
//! length or checksum does not match, and the exporter moves it aside with [`Spool::quarantine`]
//! instead of deleting it. Files without the magic are the unframed files of earlier versions and
//! are returned as they are (their decode is the only check they get).
//!
//! File names are `<run start ns, 20 digits>-<sequence, 20 digits>-<boot id>.batch`, so the
//! lexical order of the keys (names without the extension) is the order in which the batches
//! were made, across runs: oldest first. Files left by an earlier run are picked up by
//! [`Spool::open`]; leftover temporary files (a crash mid-write) are deleted there.
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Extension of spool files.
const EXT: &str = "batch";
/// Suffix of temporary files.
const TMP: &str = ".tmp";
/// First bytes of a framed spool file (format 1).
pub const MAGIC: &[u8; 8] = b"ISPOOL1\n";
/// Magic, length and checksum.
const HEADER: usize = 8 + 8 + 4;
/// Subdirectory for files that failed their checks.
pub const QUARANTINE_DIR: &str = "corrupt";
/// Quarantined files kept (oldest deleted beyond this), so that a disk full of bad files stays
/// bounded.
pub const QUARANTINE_KEEP: usize = 32;

/// A spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// File system error.
    #[error("spool {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A spool file failed its length or checksum check, or is empty.
    #[error("spool file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// A single batch larger than the whole spool.
    #[error("batch of {size} bytes exceeds the spool cap of {cap} bytes")]
    TooLarge {
        /// Encoded batch size.
        size: u64,
        /// The cap.
        cap: u64,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The spool key of batch `sequence` of the run that started at `run_start_ns` with `boot_id`.
pub fn key(run_start_ns: u64, sequence: u64, boot_id: &str) -> String {
    format!("{run_start_ns:020}-{sequence:020}-{boot_id}")
}

/// The sequence number in a key made by [`key`].
pub fn key_sequence(key: &str) -> Option<u64> {
    let mut parts = key.splitn(3, '-');
    let _start: u64 = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(seq)
}

/// Whether `dir` exists or can be created, and files can be created in it.
pub fn writable_dir(dir: &Path) -> bool {
    if create_dir(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}{TMP}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A spool directory and its index.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    files: BTreeMap<String, u64>,
    bytes: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, indexing the batches already there.
    /// The cap is not enforced here: call [`Spool::evict_over_cap`].
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        create_dir(dir).map_err(io("create", dir))?;
        let mut files = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let entry = entry.map_err(io("list", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let path = entry.path();
            if name.ends_with(TMP) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(&format!(".{EXT}")) else {
                continue;
            };
            if key_sequence(stem).is_none() {
                continue;
            }
            let meta = entry.metadata().map_err(io("stat", &path))?;
            if !meta.is_file() {
                continue;
            }
            bytes += meta.len();
            files.insert(stem.to_owned(), meta.len());
        }
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            files,
            bytes,
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{EXT}"))
    }

    /// Evicts the oldest files until the spool is within its cap; returns their keys.
    pub fn evict_over_cap(&mut self) -> Vec<String> {
        self.evict_except(None)
    }

    /// Evicts oldest-first, never `keep`, until the spool is within its cap.
    fn evict_except(&mut self, keep: Option<&str>) -> Vec<String> {
        let mut evicted = Vec::new();
        while self.bytes > self.max_bytes {
            let Some(k) = self
                .files
                .keys()
                .find(|k| Some(k.as_str()) != keep)
                .cloned()
            else {
                break;
            };
            let size = self.files.remove(&k).unwrap_or(0);
            self.bytes -= size;
            // A file that cannot be removed is forgotten anyway, so the loop ends.
            let _ = std::fs::remove_file(self.path(&k));
            evicted.push(k);
        }
        evicted
    }

    /// Writes `data` under `key` atomically and durably (fsync), then evicts the oldest other
    /// files as needed to stay within the cap (a failed write evicts nothing); returns the
    /// evicted keys.
    pub fn write(&mut self, key: &str, data: &[u8]) -> Result<Vec<String>, SpoolError> {
        self.write_with(key, data, true)
    }

    /// [`Spool::write`], with `sync: false` skipping the fsync: the file survives the process
    /// (a SIGKILL) but not a power loss. For write-ahead copies of batches still in memory.
    pub fn write_with(
        &mut self,
        key: &str,
        data: &[u8],
        sync: bool,
    ) -> Result<Vec<String>, SpoolError> {
        let size = (HEADER + data.len()) as u64;
        if size > self.max_bytes {
            return Err(SpoolError::TooLarge {
                size,
                cap: self.max_bytes,
            });
        }
        let old = self.files.remove(key);
        if let Some(old) = old {
            self.bytes -= old;
        }
        let tmp = self.dir.join(format!(".{key}{TMP}"));
        let dst = self.path(key);
        let res = (|| {
            // Owner-only: a batch holds request metadata (paths, ids, models).
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(&frame_header(data))
                .and_then(|()| f.write_all(data))
                .map_err(io("write", &tmp))?;
            if sync {
                f.sync_data().map_err(io("sync", &tmp))?;
            }
            std::fs::rename(&tmp, &dst).map_err(io("rename", &dst))
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            // A previous version under this key is still in place.
            if let Some(old) = old {
                self.files.insert(key.to_owned(), old);
                self.bytes += old;
            }
            return Err(e);
        }
        self.files.insert(key.to_owned(), size);
        self.bytes += size;
        Ok(self.evict_except(Some(key)))
    }

    /// Reads the batch stored under `key`: the payload of a framed file whose length and
    /// checksum match, or an earlier version's unframed file as it is.
    pub fn read(&self, key: &str) -> Result<Vec<u8>, SpoolError> {
        let p = self.path(key);
        let mut data = std::fs::read(&p).map_err(io("read", &p))?;
        match unframe(&data) {
            Ok(Some(range)) => {
                data.truncate(range.end);
                data.drain(..range.start);
                Ok(data)
            }
            Ok(None) => Ok(data),
            Err(reason) => Err(SpoolError::Corrupt { path: p, reason }),
        }
    }

    /// Moves the file under `key` into the quarantine subdirectory (keeping at most
    /// [`QUARANTINE_KEEP`] files there, oldest deleted first) and forgets it; returns its new
    /// path. A file that cannot be moved is deleted, so a bad file is never read twice.
    pub fn quarantine(&mut self, key: &str) -> Result<PathBuf, SpoolError> {
        if let Some(size) = self.files.remove(key) {
            self.bytes -= size;
        }
        let src = self.path(key);
        let qdir = self.dir.join(QUARANTINE_DIR);
        let dst = qdir.join(format!("{key}.{EXT}"));
        let moved = create_dir(&qdir).and_then(|()| std::fs::rename(&src, &dst));
        if let Err(e) = moved {
            let _ = std::fs::remove_file(&src);
            return Err(io("quarantine", &src)(e));
        }
        let mut kept: Vec<PathBuf> = std::fs::read_dir(&qdir)
            .map_err(io("list", &qdir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        kept.sort();
        let excess = kept.len().saturating_sub(QUARANTINE_KEEP);
        for old in &kept[..excess] {
            let _ = std::fs::remove_file(old);
        }
        Ok(dst)
    }

    /// Deletes the batch stored under `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> Result<bool, SpoolError> {
        let Some(size) = self.files.remove(key) else {
            return Ok(false);
        };
        self.bytes -= size;
        let p = self.path(key);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io("remove", &p)(e)),
        }
    }

    /// Whether `key` is stored.
    pub fn contains(&self, key: &str) -> bool {
        self.files.contains_key(key)
    }

    /// Stored keys, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Number of stored batches.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// No stored batches.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Bytes stored.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The header of a framed file holding `data`.
fn frame_header(data: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
    h[16..].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
    h
}

/// The payload's range in a framed file, `None` for an unframed (earlier version's) file, or why
/// the file is corrupt.
fn unframe(file: &[u8]) -> Result<Option<std::ops::Range<usize>>, String> {
    if file.is_empty() {
        return Err("empty file".into());
    }
    if !file.starts_with(MAGIC) {
        // A prefix of the magic is a framed file cut inside its header.
        if MAGIC.starts_with(file) {
            return Err(format!("{} bytes, cut inside the header", file.len()));
        }
        return Ok(None);
    }
    let Some(h) = file.get(..HEADER) else {
        return Err(format!("{} bytes, cut inside the header", file.len()));
    };
    let len = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(h[16..].try_into().unwrap_or_default());
    let have = (file.len() - HEADER) as u64;
    if have != len {
        return Err(format!("payload is {have} bytes, header says {len}"));
    }
    let payload = &file[HEADER..];
    let got = crc32fast::hash(payload);
    if got != crc {
        return Err(format!("checksum {got:08x}, header says {crc:08x}"));
    }
    Ok(Some(HEADER..file.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keys_sort_oldest_first() {
        let a = key(5, 10, "boot-a");
        let b = key(5, 9, "boot-a");
        let c = key(6, 1, "boot-b");
        assert!(b < a && a < c);
        assert_eq!(key_sequence(&a), Some(10));
        assert_eq!(key_sequence("x-1-y"), None);
        assert_eq!(key_sequence("1-2"), None);
        assert_eq!(key_sequence(&key(1, 2, "a-b-c")), Some(2));
    }

    /// Bytes a payload of `n` bytes takes on disk.
    const fn on_disk(n: u64) -> u64 {
        HEADER as u64 + n
    }

    #[test]
    fn write_read_remove() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("spool");
        let mut s = Spool::open(&dir, 1000).expect("open");
        assert!(s.is_empty());
        let k = key(1, 1, "b");
        assert!(s.write(&k, b"hello").expect("write").is_empty());
        assert!(s.contains(&k));
        assert_eq!(s.bytes(), on_disk(5));
        assert_eq!(s.read(&k).expect("read"), b"hello");
        let file = std::fs::read(dir.join(format!("{k}.batch"))).expect("file");
        assert!(file.starts_with(MAGIC));
        // Rewriting the same key replaces it.
        s.write(&k, b"hi").expect("write");
        assert_eq!(s.bytes(), on_disk(2));
        assert_eq!(names(&dir), vec![format!("{k}.batch")]);
        assert!(s.remove(&k).expect("remove"));
        assert!(!s.remove(&k).expect("remove"));
        assert_eq!(s.bytes(), 0);
        assert!(names(&dir).is_empty());
        assert!(s.read(&k).is_err());
    }

    #[test]
    fn cap_evicts_oldest() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(d.path(), on_disk(10) * 2 + 5).expect("open");
        assert!(s.write(&key(1, 1, "b"), &[0u8; 10]).expect("w").is_empty());
        assert!(s.write(&key(1, 2, "b"), &[0u8; 10]).expect("w").is_empty());
        let ev = s.write(&key(1, 3, "b"), &[0u8; 10]).expect("w");
        assert_eq!(ev, vec![key(1, 1, "b")]);
        // Three files do not fit: the first was evicted to make room for the third.
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), on_disk(10) * 2);
        let keys: Vec<&str> = s.keys().collect();
        assert_eq!(keys, vec![key(1, 2, "b"), key(1, 3, "b")]);
        let ev = s.write(&key(1, 4, "b"), &[0u8; 40]).expect("w");
        assert_eq!(ev, vec![key(1, 2, "b"), key(1, 3, "b")]);
        assert_eq!(s.bytes(), on_disk(40));
        assert_eq!(names(d.path()), vec![format!("{}.batch", key(1, 4, "b"))]);
        let big = on_disk(10) * 2 + 6 - HEADER as u64;
        assert!(matches!(
            s.write(&key(1, 5, "b"), &vec![0u8; big as usize]),
            Err(SpoolError::TooLarge { .. })
        ));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn persists_across_instances() {
        let d = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(d.path(), 1 << 20).expect("open");
            s.write(&key(1, 2, "old"), b"two").expect("w");
            s.write(&key(1, 1, "old"), b"one").expect("w");
        }
        // Debris from a crash mid-write, and unrelated files, are not batches.
        std::fs::write(d.path().join(".x.tmp"), b"partial").expect("w");
        std::fs::write(d.path().join("README"), b"x").expect("w");
        std::fs::write(d.path().join("junk.batch"), b"x").expect("w");
        let mut s = Spool::open(d.path(), 1 << 20).expect("reopen");
        let keys: Vec<String> = s.keys().map(str::to_owned).collect();
        assert_eq!(keys, vec![key(1, 1, "old"), key(1, 2, "old")]);
        assert_eq!(s.bytes(), on_disk(3) * 2);
        assert_eq!(s.read(&keys[0]).expect("read"), b"one");
        assert!(!d.path().join(".x.tmp").exists());
        // A smaller cap on the next start evicts the oldest.
        drop(s);
        s = Spool::open(d.path(), on_disk(3)).expect("reopen");
        assert_eq!(s.evict_over_cap(), vec![key(1, 1, "old")]);
        assert_eq!(s.len(), 1);
        assert!(!d
            .path()
            .join(format!("{}.batch", key(1, 1, "old")))
            .exists());
    }

    /// Writes one good file, damages it with `damage`, reopens and reads it.
    fn read_damaged(damage: impl FnOnce(&mut Vec<u8>)) -> Result<Vec<u8>, SpoolError> {
        let d = tempfile::tempdir().expect("tempdir");
        let k = key(1, 1, "b");
        Spool::open(d.path(), 1 << 20)
            .expect("open")
            .write(&k, b"a batch of some length")
            .expect("w");
        let p = d.path().join(format!("{k}.batch"));
        let mut bytes = std::fs::read(&p).expect("r");
        damage(&mut bytes);
        std::fs::write(&p, &bytes).expect("w");
        Spool::open(d.path(), 1 << 20).expect("reopen").read(&k)
    }

    #[test]
    fn damaged_files_are_refused() {
        let corrupt = |r: Result<Vec<u8>, SpoolError>| match r {
            Err(SpoolError::Corrupt { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        };
        // Cut anywhere (inside the header or the payload), emptied, or a bit flipped.
        for cut in [0, 3, 8, 15, HEADER, HEADER + 1, HEADER + 21] {
            let why = corrupt(read_damaged(|b| b.truncate(cut)));
            assert!(!why.is_empty(), "cut at {cut}");
        }
        assert_eq!(corrupt(read_damaged(Vec::clear)), "empty file");
        let why = corrupt(read_damaged(|b| b[HEADER + 4] ^= 1));
        assert!(why.starts_with("checksum"), "{why}");
        let why = corrupt(read_damaged(|b| b.extend_from_slice(b"more")));
        assert!(why.contains("header says 22"), "{why}");
        // An earlier version's unframed file is passed through for the decoder to judge.
        assert_eq!(
            read_damaged(|b| *b = b"legacy".to_vec()).expect("legacy"),
            b"legacy"
        );
    }

    #[test]
    fn quarantine_moves_aside_and_stays_bounded() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(d.path(), 1 << 20).expect("open");
        let n = QUARANTINE_KEEP as u64 + 3;
        for i in 1..=n {
            s.write(&key(1, i, "b"), b"x").expect("w");
        }
        for i in 1..=n {
            let to = s.quarantine(&key(1, i, "b")).expect("quarantine");
            assert!(to.exists());
        }
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        let q = names(&d.path().join(QUARANTINE_DIR));
        assert_eq!(q.len(), QUARANTINE_KEEP);
        // The newest are kept.
        assert_eq!(q.last(), Some(&format!("{}.batch", key(1, n, "b"))));
        // The quarantine is not read back as spooled batches on the next start.
        assert!(Spool::open(d.path(), 1 << 20).expect("reopen").is_empty());
    }

    #[test]
    fn writable_dir_checks() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(writable_dir(&d.path().join("a/b")));
        let file = d.path().join("f");
        std::fs::write(&file, b"x").expect("w");
        assert!(!writable_dir(&file.join("sub")));
    }
}

//! The disk spool: one protobuf-encoded `Batch` per file, written atomically (temporary file,
//! fsync, rename), with a size cap enforced by evicting the oldest files.
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

    /// Writes `data` under `key` atomically, then evicts the oldest other files as needed to
    /// stay within the cap (a failed write evicts nothing); returns the evicted keys.
    pub fn write(&mut self, key: &str, data: &[u8]) -> Result<Vec<String>, SpoolError> {
        let size = data.len() as u64;
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
            f.write_all(data).map_err(io("write", &tmp))?;
            f.sync_data().map_err(io("sync", &tmp))?;
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

    /// Reads the batch stored under `key`.
    pub fn read(&self, key: &str) -> Result<Vec<u8>, SpoolError> {
        let p = self.path(key);
        std::fs::read(&p).map_err(io("read", &p))
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

    #[test]
    fn write_read_remove() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("spool");
        let mut s = Spool::open(&dir, 1000).expect("open");
        assert!(s.is_empty());
        let k = key(1, 1, "b");
        assert!(s.write(&k, b"hello").expect("write").is_empty());
        assert!(s.contains(&k));
        assert_eq!(s.bytes(), 5);
        assert_eq!(s.read(&k).expect("read"), b"hello");
        // Rewriting the same key replaces it.
        s.write(&k, b"hi").expect("write");
        assert_eq!(s.bytes(), 2);
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
        let mut s = Spool::open(d.path(), 25).expect("open");
        assert!(s.write(&key(1, 1, "b"), &[0u8; 10]).expect("w").is_empty());
        assert!(s.write(&key(1, 2, "b"), &[0u8; 10]).expect("w").is_empty());
        let ev = s.write(&key(1, 3, "b"), &[0u8; 10]).expect("w");
        assert_eq!(ev, vec![key(1, 1, "b")]);
        // 3 × 10 > 25: the first was evicted to make room for the third.
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 20);
        let keys: Vec<&str> = s.keys().collect();
        assert_eq!(keys, vec![key(1, 2, "b"), key(1, 3, "b")]);
        let ev = s.write(&key(1, 4, "b"), &[0u8; 20]).expect("w");
        assert_eq!(ev, vec![key(1, 2, "b"), key(1, 3, "b")]);
        assert_eq!(s.bytes(), 20);
        assert_eq!(names(d.path()), vec![format!("{}.batch", key(1, 4, "b"))]);
        assert!(matches!(
            s.write(&key(1, 5, "b"), &[0u8; 26]),
            Err(SpoolError::TooLarge { size: 26, cap: 25 })
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
        assert_eq!(s.bytes(), 6);
        assert_eq!(s.read(&keys[0]).expect("read"), b"one");
        assert!(!d.path().join(".x.tmp").exists());
        // A smaller cap on the next start evicts the oldest.
        drop(s);
        s = Spool::open(d.path(), 4).expect("reopen");
        assert_eq!(s.evict_over_cap(), vec![key(1, 1, "old")]);
        assert_eq!(s.len(), 1);
        assert!(!d
            .path()
            .join(format!("{}.batch", key(1, 1, "old")))
            .exists());
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

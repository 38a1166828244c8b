//! Uprobes attached as targets map libraries: one attachment per distinct file, released when no
//! target maps it any more.
//!
//! Engines, CUDA and NCCL are often loaded with `dlopen` long after a process starts, so the
//! libraries a target maps are read from `/proc/PID/maps` when it becomes a target, at exec, at
//! fork and at every rescan. A file is named by (device, inode) — the same library seen through
//! different paths or mount namespaces is one file — and opened through `/proc/PID/root/…` so that
//! a library inside a container is found. Attachments are for all processes (the kernel programs
//! filter by the target set), so one link per hook per file serves every target that maps it.
//!
//! A file no target maps stays attached for a while (`linger`) before it is released: a child
//! forked by a target maps its parent's libraries until it execs, and an engine restarting maps
//! the same files again. Releasing is slow (the kernel waits for RCU grace periods per link), so
//! links are detached on a thread of their own ([`detach`]), never on the main loop.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

mod detach;
use detach::Detacher;

use crate::hooks::{self, UprobeHook};
use crate::probe::{Probe, UprobeLink};

/// A mapped file: (device, inode).
pub type FileKey = (u64, u64);

/// Counters, exported as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UprobeStats {
    /// Files currently attached.
    pub files: u64,
    /// Links currently held.
    pub links: u64,
    /// Attachments made since start.
    pub attached_total: u64,
    /// Files released since start (no target mapped them any more).
    pub released_total: u64,
    /// Attach failures (symbol missing, file unreadable).
    pub failures_total: u64,
    /// Releases detached on the main loop because the detach queue was full.
    pub detached_inline_total: u64,
    /// Periodic maps reads ([`Uprobes::sync_pid_paced`]).
    pub maps_reads: u64,
}

/// How long a file no target maps stays attached, by default.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(30);

struct Attached {
    path: PathBuf,
    links: Vec<UprobeLink>,
    users: HashSet<u32>,
    /// Since when no target maps it.
    idle_since: Option<Instant>,
}

impl Attached {
    fn expired(&self, now: Instant, linger: Duration) -> bool {
        self.idle_since
            .is_some_and(|t| now.saturating_duration_since(t) >= linger)
    }
}

/// The uprobe attachments of one node-probe.
pub struct Uprobes {
    files: HashMap<FileKey, Attached>,
    by_pid: HashMap<u32, HashSet<FileKey>>,
    /// Files that failed to attach, not retried until their users are gone.
    failed: HashSet<FileKey>,
    stats: UprobeStats,
    linger: Duration,
    detacher: Detacher,
    /// When the periodic rescan reads each target's maps again.
    pace: HashMap<u32, Pace>,
}

/// The longest wait between two periodic reads of a process's maps whose libraries have not
/// changed: a library it loads later (`dlopen` of the CUDA driver, NCCL) is found within this
/// long, or at its next exec or fork.
pub const MAPS_MAX_INTERVAL: Duration = Duration::from_secs(30);

/// Periodic maps reads of one process: reading a large engine's `/proc/PID/maps` is the
/// costliest part of a rescan (the kernel formats every mapping), and it rarely changes once
/// the engine has started, so the interval doubles while nothing changes.
#[derive(Debug, Clone, Copy)]
struct Pace {
    next: Instant,
    every: Duration,
}

impl Pace {
    /// The pace after a read at `now` that found the libraries `changed` (or not).
    fn after(prev: Option<Pace>, changed: bool, now: Instant, base: Duration) -> Self {
        let every = match prev {
            Some(p) if !changed => (p.every * 2).min(MAPS_MAX_INTERVAL).max(base),
            _ => base,
        };
        Self {
            next: now + every,
            every,
        }
    }
}

/// One mapped file of interest in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedLib {
    /// (device, inode).
    pub key: FileKey,
    /// Path inside the process's mount namespace.
    pub path: String,
}

/// Parses `/proc/PID/maps` content: the distinct files whose name matches some uprobe hook's
/// library.
pub fn matching_libs(maps: &str) -> Vec<MappedLib> {
    let mut out: Vec<MappedLib> = Vec::new();
    for line in maps.lines() {
        // addr perms offset dev inode path
        let mut f = line.splitn(6, ' ');
        let (Some(_), Some(_), Some(_), Some(dev), Some(inode), Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = path.trim_start();
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        let Some(dev) = parse_dev(dev) else { continue };
        let name = path.rsplit('/').next().unwrap_or(path);
        if !hooks::uprobes().any(|h| hooks::library_matches(h.library, name)) {
            continue;
        }
        let key = (dev, inode);
        if !out.iter().any(|m| m.key == key) {
            out.push(MappedLib {
                key,
                path: path.to_string(),
            });
        }
    }
    out
}

fn parse_dev(s: &str) -> Option<u64> {
    let (maj, min) = s.split_once(':')?;
    Some((u64::from_str_radix(maj, 16).ok()? << 32) | u64::from_str_radix(min, 16).ok()?)
}

impl Uprobes {
    /// Nothing attached; a file no target maps is released after `linger`.
    pub fn new(linger: Duration) -> Self {
        Self {
            files: HashMap::new(),
            by_pid: HashMap::new(),
            failed: HashSet::new(),
            stats: UprobeStats::default(),
            linger,
            detacher: Detacher::start(),
            pace: HashMap::new(),
        }
    }

    /// The periodic rescan's [`Self::sync_pid`]: reads `pid`'s maps when due. The first read
    /// and a read after a change come `base` apart; each read that finds the same libraries
    /// doubles the wait, up to [`MAPS_MAX_INTERVAL`]. Returns whether it read them.
    pub fn sync_pid_paced(
        &mut self,
        probe: &mut Probe,
        proc_root: &Path,
        pid: u32,
        (now, base): (Instant, Duration),
    ) -> bool {
        let prev = self.pace.get(&pid).copied();
        if prev.is_some_and(|p| now < p.next) {
            return false;
        }
        let changed = self.sync_pid(probe, proc_root, pid);
        self.pace.insert(pid, Pace::after(prev, changed, now, base));
        self.stats.maps_reads += 1;
        true
    }

    /// Counters.
    pub fn stats(&self) -> UprobeStats {
        let mut s = self.stats;
        s.files = self.files.len() as u64;
        s.links = self.files.values().map(|a| a.links.len() as u64).sum();
        s
    }

    /// Whether `pid` maps an attached file.
    pub fn maps_hooked_library(&self, pid: u32) -> bool {
        self.by_pid.get(&pid).is_some_and(|s| !s.is_empty())
    }

    /// Reads a target's maps and attaches what it maps and is not yet attached; files it no
    /// longer maps are released when no other target maps them. A read that fails (a process
    /// in the middle of an exec, or gone) changes nothing: a gone target is forgotten at its
    /// exit or when it leaves the target set, and releasing a live one's files here would
    /// detach probes another target is about to need.
    ///
    /// Returns whether the set of hooked files it maps changed. Called at a target's exec and
    /// fork, it also restarts the pace of the periodic reads ([`Self::sync_pid_paced`]).
    pub fn sync_pid(&mut self, probe: &mut Probe, proc_root: &Path, pid: u32) -> bool {
        let maps_path = proc_root.join(pid.to_string()).join("maps");
        let Ok(maps) = std::fs::read_to_string(&maps_path) else {
            return false;
        };
        let libs = matching_libs(&maps);
        let now: HashSet<FileKey> = libs.iter().map(|l| l.key).collect();
        for lib in &libs {
            // A file whose old links are still being detached is attached at a later sync.
            if !self.files.contains_key(&lib.key)
                && !self.failed.contains(&lib.key)
                && !self.detacher.is_pending(&lib.key)
            {
                let root_path = proc_root
                    .join(pid.to_string())
                    .join("root")
                    .join(lib.path.trim_start_matches('/'));
                self.attach_file(probe, lib, &root_path);
            }
            if let Some(a) = self.files.get_mut(&lib.key) {
                a.users.insert(pid);
                a.idle_since = None;
            }
        }
        let before = self.by_pid.insert(pid, now.clone()).unwrap_or_default();
        for gone in before.difference(&now) {
            self.release_user(*gone, pid);
        }
        if self.by_pid.get(&pid).is_some_and(HashSet::is_empty) {
            self.by_pid.remove(&pid);
        }
        before != now
    }

    /// Restarts the pace of `pid`'s periodic maps reads (its exec or fork: new mappings).
    pub fn repace(&mut self, pid: u32) {
        self.pace.remove(&pid);
    }

    fn attach_file(&mut self, probe: &mut Probe, lib: &MappedLib, path: &Path) {
        let name = lib.path.rsplit('/').next().unwrap_or(&lib.path).to_string();
        let wanted: Vec<UprobeHook> = hooks::uprobes()
            .filter(|h| hooks::library_matches(h.library, &name))
            .collect();
        let symbols: Vec<&str> = wanted
            .iter()
            .map(|h| hooks::plain_symbol(h.symbol))
            .collect();
        // Past prologues the kernel would single-step (CUDA driver entry points).
        let skips = crate::entry::probe_skips(path, &symbols);
        let mut links = Vec::new();
        for (h, skip) in wanted.iter().zip(skips) {
            match probe.attach_uprobe(h, path, skip) {
                Ok(mut l) => {
                    self.stats.attached_total += 1;
                    links.append(&mut l);
                }
                Err(e) => {
                    self.stats.failures_total += 1;
                    warn!(library = %lib.path, symbol = h.symbol, error = %e, "cannot attach uprobe");
                }
            }
        }
        if links.is_empty() {
            self.failed.insert(lib.key);
            return;
        }
        info!(library = %lib.path, hooks = wanted.len(), "uprobes attached");
        self.files.insert(
            lib.key,
            Attached {
                path: path.to_owned(),
                links,
                users: HashSet::new(),
                idle_since: None,
            },
        );
    }

    fn release_user(&mut self, key: FileKey, pid: u32) {
        let Some(a) = self.files.get_mut(&key) else {
            return;
        };
        a.users.remove(&pid);
        if a.users.is_empty() && a.idle_since.is_none() {
            a.idle_since = Some(Instant::now());
        }
    }

    /// Releases the files no target has mapped for `linger`.
    pub fn sweep(&mut self, probe: &mut Probe, now: Instant) {
        let expired: Vec<FileKey> = self
            .files
            .iter()
            .filter(|(_, a)| a.expired(now, self.linger))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.release_file(probe, key);
        }
    }

    /// Releases every file (at shutdown) and waits until their links are detached.
    pub fn release_all(&mut self, probe: &mut Probe) {
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        for key in keys {
            self.release_file(probe, key);
        }
        self.by_pid.clear();
        self.detacher.shutdown();
    }

    fn release_file(&mut self, probe: &mut Probe, key: FileKey) {
        let Some(a) = self.files.remove(&key) else {
            return;
        };
        let links = a
            .links
            .into_iter()
            .filter_map(|l| probe.take_uprobe_link(l))
            .collect();
        if !self.detacher.detach(key, links) {
            self.stats.detached_inline_total += 1;
        }
        self.stats.released_total += 1;
        info!(library = %a.path.display(), "uprobes released (no target maps it)");
    }

    /// A target is gone: its files are released once no target has mapped them for `linger`.
    pub fn forget_pid(&mut self, pid: u32) {
        self.pace.remove(&pid);
        let Some(keys) = self.by_pid.remove(&pid) else {
            return;
        };
        for k in keys {
            self.release_user(k, pid);
        }
        // A file that failed may be another build next time.
        let live: HashSet<FileKey> = self.by_pid.values().flatten().copied().collect();
        self.failed.retain(|k| live.contains(k));
    }

    /// Pids holding attachments or a maps-read pace.
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .by_pid
            .keys()
            .chain(self.pace.keys())
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_reads_back_off_while_nothing_changes() {
        let (t0, base) = (Instant::now(), Duration::from_secs(5));
        let mut p = Pace::after(None, false, t0, base);
        let mut waits = vec![p.every.as_secs()];
        for _ in 0..5 {
            p = Pace::after(Some(p), false, p.next, base);
            waits.push(p.every.as_secs());
        }
        assert_eq!(waits, [5, 10, 20, 30, 30, 30]);
        // A change (a library loaded) brings the reads back to the base interval.
        let p = Pace::after(Some(p), true, p.next, base);
        assert_eq!(p.every, base);
    }

    use super::*;

    #[test]
    fn parses_maps() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1311 /usr/bin/python3.11
7f10a0000000-7f10a0100000 r-xp 00010000 fd:01 98765 /opt/venv/lib/python3.11/site-packages/llama_cpp/lib/libllama.so
7f10a0100000-7f10a0200000 r--p 00110000 fd:01 98765 /opt/venv/lib/python3.11/site-packages/llama_cpp/lib/libllama.so
7f10b0000000-7f10b0100000 r-xp 00000000 00:2f 12 /tmp/x/libllama.so.0 (deleted)
7f10c0000000-7f10c0100000 r-xp 00000000 08:10 77 /srv/with space/libllama.so.1
7f10d0000000-7f10d0100000 r-xp 00000000 fd:01 5 /usr/lib/libllamax.so
7ffd0000000-7ffd0001000 rw-p 00000000 00:00 0 [stack]
";
        let libs = matching_libs(maps);
        assert_eq!(libs.len(), 2, "{libs:?}");
        assert_eq!(libs[0].key, ((0xfd << 32) | 1, 98765));
        assert!(libs[0].path.ends_with("lib/libllama.so"));
        assert_eq!(libs[1].path, "/srv/with space/libllama.so.1");
        assert_eq!(libs[1].key, ((8 << 32) | 0x10, 77));
        assert!(matching_libs("garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn a_file_expires_only_after_linger_without_users() {
        let t0 = Instant::now();
        let mut a = Attached {
            path: PathBuf::from("/x"),
            links: Vec::new(),
            users: HashSet::new(),
            idle_since: None,
        };
        let linger = Duration::from_secs(30);
        assert!(!a.expired(t0 + linger * 2, linger), "in use");
        a.idle_since = Some(t0);
        assert!(!a.expired(t0 + Duration::from_secs(29), linger));
        assert!(a.expired(t0 + linger, linger));
        assert!(a.expired(t0 + Duration::ZERO, Duration::ZERO), "no linger");
    }
}

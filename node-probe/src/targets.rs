//! Which processes are traced.
//!
//! A [`Selector`] names targets by pid and by command-line pattern; descendants of targets are
//! targets too (vLLM's EngineCore and Worker are children of the API server). At start a /proc
//! scan computes the initial set; afterwards the kernel adds children at fork and removes
//! processes at exit, and userspace matches every exec against the patterns.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use inferscope_common::TargetReason;
use regex::Regex;

/// Bad target selection on the command line.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    /// A `--pid` that does not exist.
    #[error("no such process: pid {0}")]
    NoSuchPid(u32),
    /// A `--pid` that names a thread, not a process.
    #[error("pid {tid} is a thread of process {pid}: pass --pid {pid}")]
    Thread {
        /// The thread id given.
        tid: u32,
        /// Its process.
        pid: u32,
    },
    /// A pattern that is not a valid regular expression.
    #[error("invalid {flag} pattern {pattern:?}: {reason}")]
    BadPattern {
        /// `--cmdline` or `--cgroup`.
        flag: &'static str,
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// Nothing to trace.
    #[error("no targets: give at least one --pid, --cmdline or --cgroup")]
    Empty,
}

/// One process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
    /// Start time in clock ticks since boot (`stat` field 22): with the pid, names one process
    /// even when the pid is reused.
    pub start_ticks: u64,
    /// Exited and not yet reaped (state `Z` or `X`).
    pub dead: bool,
    /// Effective user id (owner of `/proc/PID`).
    pub uid: u32,
}

/// Reads one process from `proc_root` (normally `/proc`); `None` if it is gone or a kernel
/// thread.
pub fn read_proc(proc_root: &Path, pid: u32) -> Option<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses; skip to the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on: state, ppid, ... starttime is field 22.
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let start_ticks = f.nth(17)?.parse().ok()?;
    let dead = state == "Z" || state == "X";
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).ok()?);
    let raw = std::fs::read(dir.join("cmdline")).ok()?;
    let cmdline = raw
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Some(ProcInfo {
        pid,
        ppid,
        cmdline,
        start_ticks,
        dead,
        uid,
    })
}

/// The cgroup paths of `pid` (`/proc/PID/cgroup`: the v2 path and each v1 hierarchy's), but
/// those under a systemd user manager (`…/user@UID.service/…`), the one subtree an unprivileged
/// user may create cgroups in: a user cannot name a cgroup so that `--cgroup` picks it up.
/// A container's path names its pod and container (`/kubepods/…/pod<UID>/<container id>`,
/// `…/docker-<id>.scope`).
pub fn cgroup_paths(proc_root: &Path, pid: u32) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter(|p| !p.contains("/user@"))
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The program of a command line, for logs: the file name of its first word. Arguments (which
/// can hold API keys) are never logged.
pub fn program_of(cmdline: &str) -> &str {
    let first = cmdline.split(' ').next().unwrap_or_default();
    first.rsplit('/').next().unwrap_or(first)
}

/// Whose processes `--cmdline` patterns may select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidRule {
    /// Only processes of these users. The default is root's (`[0]`): a local user cannot start a
    /// process that root's node-probe would trace and export. `--cmdline-uid` adds users.
    Only(Vec<u32>),
    /// Any user's (`--cmdline-any-uid`).
    Any,
}

impl UidRule {
    /// Whether a process of `uid` may be selected by a pattern.
    pub fn allows(&self, uid: u32) -> bool {
        match self {
            Self::Only(v) => v.contains(&uid),
            Self::Any => true,
        }
    }
}

/// All live processes under `proc_root` (zombies are left out: they run nothing and their pid
/// may be reused as soon as they are reaped).
pub fn scan(proc_root: &Path) -> Vec<ProcInfo> {
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_proc(proc_root, pid))
        .filter(|p| !p.dead)
        .collect()
}

/// The thread-group id of `pid` from `/proc/PID/status` (differs from `pid` for a thread).
fn tgid_of(proc_root: &Path, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// How targets are chosen.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Named processes: pid and start time (a later process reusing the pid is not one).
    pids: Vec<(u32, u64)>,
    patterns: Vec<Regex>,
    /// Whose processes patterns may select (named pids are traced whoever owns them).
    uids: UidRule,
    /// `--cgroup` patterns, matched against the process's cgroup paths (any user's).
    cgroups: Vec<Regex>,
    /// Where `/proc` is (for the cgroup paths).
    proc_root: PathBuf,
    /// Whether descendants of targets are traced.
    pub follow_children: bool,
    /// A pid never to trace (node-probe itself).
    pub exclude: u32,
}

impl Selector {
    /// Validates the selection: pids must exist under `proc_root`, patterns must compile.
    pub fn new(
        proc_root: &Path,
        pids: &[u32],
        (patterns, cgroups): (&[String], &[String]),
        follow_children: bool,
    ) -> Result<Self, SelectorError> {
        if pids.is_empty() && patterns.is_empty() && cgroups.is_empty() {
            return Err(SelectorError::Empty);
        }
        let mut named = Vec::with_capacity(pids.len());
        for &p in pids {
            let info = (p != 0).then(|| read_proc(proc_root, p)).flatten();
            let Some(info) = info.filter(|i| !i.dead) else {
                return Err(SelectorError::NoSuchPid(p));
            };
            if let Some(tgid) = tgid_of(proc_root, p).filter(|&t| t != p) {
                return Err(SelectorError::Thread { tid: p, pid: tgid });
            }
            named.push((p, info.start_ticks));
        }
        let compile = |v: &[String], flag: &'static str| {
            v.iter()
                .map(|p| {
                    Regex::new(p).map_err(|e| SelectorError::BadPattern {
                        flag,
                        pattern: p.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            pids: named,
            patterns: compile(patterns, "--cmdline")?,
            uids: UidRule::Only(vec![0]),
            cgroups: compile(cgroups, "--cgroup")?,
            proc_root: proc_root.to_owned(),
            follow_children,
            exclude: std::process::id(),
        })
    }

    /// True when patterns are in use (so every exec must be checked).
    pub fn has_patterns(&self) -> bool {
        !self.patterns.is_empty() || !self.cgroups.is_empty()
    }

    /// Whose processes patterns select (default: root's only).
    pub fn with_uids(mut self, uids: UidRule) -> Self {
        self.uids = uids;
        self
    }

    /// Whether a process is selected by a pattern: its command line matches one and its user
    /// is allowed, or one of its cgroup paths matches a `--cgroup` pattern.
    pub fn matches(&self, p: &ProcInfo) -> bool {
        (self.uids.allows(p.uid) && self.patterns.iter().any(|r| r.is_match(&p.cmdline)))
            || (!self.cgroups.is_empty()
                && cgroup_paths(&self.proc_root, p.pid)
                    .iter()
                    .any(|c| self.cgroups.iter().any(|r| r.is_match(c))))
    }

    /// The target set for a snapshot of processes: named pids, pattern matches, and (when
    /// following children) all their descendants.
    pub fn initial(&self, procs: &[ProcInfo]) -> BTreeMap<u32, TargetReason> {
        let mut out = BTreeMap::new();
        for p in procs {
            if p.pid == self.exclude {
                continue;
            }
            if self.pids.contains(&(p.pid, p.start_ticks)) {
                out.insert(p.pid, TargetReason::Pid);
            } else if self.matches(p) {
                out.insert(p.pid, TargetReason::Pattern);
            }
        }
        if self.follow_children {
            let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
            for p in procs {
                children.entry(p.ppid).or_default().push(p.pid);
            }
            let mut stack: Vec<u32> = out.keys().copied().collect();
            while let Some(pid) = stack.pop() {
                for &c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
                    if c != self.exclude && !out.contains_key(&c) {
                        out.insert(c, TargetReason::Child);
                        stack.push(c);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, cmd: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            cmdline: cmd.into(),
            start_ticks: u64::from(pid) * 10,
            dead: false,
            uid: 0,
        }
    }

    fn sel(pids: &[u32], pats: &[&str], children: bool) -> Selector {
        Selector {
            pids: pids.iter().map(|&p| (p, u64::from(p) * 10)).collect(),
            patterns: pats.iter().map(|s| Regex::new(s).unwrap()).collect(),
            uids: UidRule::Only(vec![0]),
            cgroups: Vec::new(),
            proc_root: PathBuf::from("/proc"),
            follow_children: children,
            exclude: 999,
        }
    }

    #[test]
    fn pids_patterns_and_descendants() {
        let procs = vec![
            p(1, 0, "/sbin/init"),
            p(10, 1, "vllm serve model --port 8000"),
            p(11, 10, "VLLM::EngineCore"),
            p(12, 11, "VLLM::Worker"),
            p(20, 1, "python3 other.py"),
            p(21, 20, "child"),
            p(999, 1, "node-probe --cmdline vllm serve"),
        ];
        let t = sel(&[], &["vllm serve"], true).initial(&procs);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(t[&10], TargetReason::Pattern);
        assert_eq!(t[&12], TargetReason::Child);

        let t = sel(&[20], &[], false).initial(&procs);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![20]);
        let t = sel(&[20], &[], true).initial(&procs);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![20, 21]);

        // Pid 20 exited and a new process reused its number: not a target.
        let mut reused = procs.clone();
        reused[4].start_ticks += 1;
        let t = sel(&[20], &[], true).initial(&reused);
        assert!(t.is_empty(), "{t:?}");
    }

    #[test]
    fn patterns_select_only_allowed_users() {
        let mut theirs = p(30, 1, "/usr/bin/python3 -m vllm serve --api-key sk-123");
        theirs.uid = 1000;
        let procs = vec![p(10, 1, "vllm serve m"), theirs];
        let t = sel(&[], &["vllm serve"], true).initial(&procs);
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            vec![10],
            "root's only"
        );
        let s = sel(&[], &["vllm serve"], true).with_uids(UidRule::Only(vec![0, 1000]));
        assert_eq!(s.initial(&procs).len(), 2);
        let s = sel(&[], &["vllm serve"], true).with_uids(UidRule::Any);
        assert_eq!(s.initial(&procs).len(), 2);
        // A named pid is traced whoever owns it.
        let t = sel(&[30], &[], true).initial(&procs);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![30]);
        assert_eq!(program_of(&procs[1].cmdline), "python3");
        assert_eq!(program_of("vllm serve m"), "vllm");
    }

    #[test]
    fn validation() {
        let root = Path::new("/proc");
        assert!(matches!(
            Selector::new(root, &[], (&[], &[]), true),
            Err(SelectorError::Empty)
        ));
        let e = Selector::new(root, &[u32::MAX - 1], (&[], &[]), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("no such process: pid {}", u32::MAX - 1)
        );
        let e = Selector::new(root, &[], (&["(".into()], &[]), true).unwrap_err();
        assert!(e.to_string().contains("invalid --cmdline pattern"), "{e}");
        let e = Selector::new(root, &[], (&[], &["[".into()]), true).unwrap_err();
        assert!(
            e.to_string().contains("invalid --cgroup pattern \"[\""),
            "{e}"
        );
        // Our own cgroup paths are readable, and a pattern on them selects us.
        let me = std::process::id();
        let paths = cgroup_paths(root, me);
        assert!(!paths.is_empty());
        let exact = format!("^{}$", regex::escape(&paths[0]));
        let s = Selector::new(root, &[], (&[], &[exact]), true).unwrap();
        assert!(s.has_patterns());
        assert!(s.matches(&read_proc(root, me).unwrap()));
        let me = std::process::id();
        let s = Selector::new(root, &[me], (&[], &[]), true).unwrap();
        assert_eq!(s.exclude, me);
        // A thread id (of a thread alive while it is checked) is refused, naming its process.
        let msg = std::thread::spawn(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            Selector::new(Path::new("/proc"), &[tid], (&[], &[]), true)
                .unwrap_err()
                .to_string()
        })
        .join()
        .unwrap();
        assert!(
            msg.contains(&format!("is a thread of process {me}")),
            "{msg}"
        );
    }

    #[test]
    fn reads_own_proc_entry() {
        let me = read_proc(Path::new("/proc"), std::process::id()).expect("self in /proc");
        assert!(me.ppid > 0);
        assert!(!me.cmdline.is_empty());
        assert!(scan(Path::new("/proc")).iter().any(|p| p.pid == me.pid));
        assert!(read_proc(Path::new("/proc"), u32::MAX - 1).is_none());
    }
}

//! `--cgroup REGEX` selects processes by their cgroup path (how a pod or container is named on
//! a Kubernetes node), whoever runs them: one already in the cgroup when node-probe starts, and
//! one that enters it and execs later; a process outside is not traced.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;

const MARKER: &str = "inferscope-cgroup-target-marker";

/// The cgroup v2 mount, else a v1 hierarchy every kernel has (`pids`), from /proc/self/mounts.
fn cgroup_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut v1 = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_, dir, "cgroup2", ..] => return Some(PathBuf::from(dir)),
            [_, dir, "cgroup", _, opts, ..] if opts.split(',').any(|o| o == "pids") => {
                v1 = Some(PathBuf::from(dir));
            }
            _ => {}
        }
    }
    v1
}

/// A cgroup of our own, removed (after its processes) when dropped.
struct Cgroup {
    dir: PathBuf,
    kids: Vec<Child>,
}

impl Cgroup {
    fn create(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("create cgroup (root needed)");
        Self {
            dir,
            kids: Vec::new(),
        }
    }

    /// Moves `pid` into it.
    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("cgroup.procs");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for c in &mut self.kids {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn talker(uid: Option<u32>) -> Child {
    socketpair_talker(uid, MARKER)
}

#[test]
fn processes_are_selected_by_cgroup_path() {
    if !bpf_or_skip("processes_are_selected_by_cgroup_path") {
        return;
    }
    let Some(root) = cgroup_root() else {
        assert!(
            std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() != Ok("1"),
            "no cgroup file system mounted"
        );
        eprintln!("SKIPPED processes_are_selected_by_cgroup_path: no cgroup file system");
        return;
    };
    let name = format!("inferscope-cgroup-test-{}", std::process::id());
    let mut cg = Cgroup::create(&root, &name);
    // nobody's process in the cgroup before node-probe starts, one of root's outside it.
    let inside = talker(Some(65534));
    cg.adopt(inside.id());
    let outside = talker(None);
    cg.kids.push(inside);
    cg.kids.push(outside);
    std::thread::sleep(Duration::from_millis(300));
    let pattern = format!("^/{}$", regex_escape(&name));
    let mut probe = start_probe(&["--cgroup", &pattern]);
    // One that enters the cgroup, then execs: the exec path.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec /usr/bin/python3 -c \"{TALKER_CODE}\" {MARKER}",
        cg.dir.display()
    );
    let later = Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("sh");
    cg.kids.push(later);
    probe.drain_for(Duration::from_secs(3));
    let seen = pids_talking(&probe);
    let ids: Vec<u64> = cg.kids.iter().map(|c| u64::from(c.id())).collect();
    for c in &mut cg.kids {
        assert!(
            c.try_wait().unwrap().is_none(),
            "talker {} still running",
            c.id()
        );
    }
    assert!(
        seen.contains(&ids[0]),
        "nobody's process in the cgroup traced: {seen:?} {ids:?}"
    );
    assert!(
        seen.contains(&ids[2]),
        "the process that entered and exec'ed traced: {seen:?} {ids:?}"
    );
    assert!(
        !seen.contains(&ids[1]),
        "the process outside not traced: {seen:?} {ids:?}"
    );
}

/// `regex::escape` without the dependency: the name holds letters, digits and '-'.
fn regex_escape(s: &str) -> String {
    s.replace('-', "\\-")
}

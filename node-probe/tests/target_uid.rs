//! `--cmdline` selects only root's processes by default: a local user cannot start a process
//! that matches the pattern and have root's node-probe trace and export it, neither one running
//! when node-probe starts nor one exec'ed later. `--cmdline-uid` opts a user in.
mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::*;

const MARKER: &str = "inferscope-uid-target-marker";

fn talker(uid: Option<u32>) -> Child {
    socketpair_talker(uid, MARKER)
}

/// Root's shell that matches the pattern, waits until node-probe has surely made it a target,
/// then becomes nobody's talker through `setpriv` (exec without a fork: the same pid).
fn talker_after_root_shell() -> Child {
    let script = format!(
        "sleep 0.5; exec setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c \"{TALKER_CODE}\" {MARKER}"
    );
    Command::new("sh")
        .args(["-c", &script, MARKER])
        .spawn()
        .expect("spawn shell talker")
}

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn other_users_processes_are_not_targeted_by_default() {
    if !bpf_or_skip("other_users_processes_are_not_targeted_by_default") {
        return;
    }
    let mut kids = Kill(vec![talker(None), talker(Some(65534))]);
    std::thread::sleep(Duration::from_millis(300));
    let mut probe = start_probe(&["--cmdline", MARKER]);
    // One of each started after node-probe: the exec path.
    kids.0.push(talker(None));
    kids.0.push(talker(Some(65534)));
    // A pattern target that execs as another user is chosen again, and dropped.
    kids.0.push(talker_after_root_shell());
    probe.drain_for(Duration::from_secs(3));
    let seen = pids_talking(&probe);
    let ids: Vec<u64> = kids.0.iter().map(|c| u64::from(c.id())).collect();
    for c in &mut kids.0 {
        assert!(
            c.try_wait().unwrap().is_none(),
            "talker {} still running",
            c.id()
        );
    }
    let owner = |pid: u64| {
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(format!("/proc/{pid}")).unwrap())
    };
    assert_eq!(
        (owner(ids[1]), owner(ids[3]), owner(ids[4])),
        (65534, 65534, 65534)
    );
    assert!(
        seen.contains(&ids[0]) && seen.contains(&ids[2]),
        "root's talkers traced: {seen:?} {ids:?}"
    );
    assert!(
        !seen.contains(&ids[1]) && !seen.contains(&ids[3]) && !seen.contains(&ids[4]),
        "nobody's talkers not traced: {seen:?} {ids:?}"
    );
    drop(probe);

    // Opted in.
    let mut probe = start_probe(&["--cmdline", MARKER, "--cmdline-uid", "65534"]);
    probe.drain_for(Duration::from_secs(2));
    let seen = pids_talking(&probe);
    assert!(
        seen.contains(&ids[1]),
        "with --cmdline-uid 65534: {seen:?} {ids:?}"
    );
}

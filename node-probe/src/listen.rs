//! Listening TCP ports of target processes, from /proc: a connection whose local port is one of
//! these is the server side of an HTTP exchange, and its data arrivals are timestamped.
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// Socket inodes held open by `pid`.
fn socket_inodes(proc_root: &Path, pid: u32) -> HashSet<u64> {
    let Ok(rd) = std::fs::read_dir(proc_root.join(format!("{pid}/fd"))) else {
        return HashSet::new();
    };
    rd.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        let s = link.to_str()?;
        s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// Parses `/proc/net/tcp`-format text: `(local port, inode)` of sockets in LISTEN state.
pub fn parse_listeners(text: &str) -> Vec<(u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            Some((port, f[9].parse().ok()?))
        })
        .collect()
}

/// Ports on which `pid` listens (TCP over IPv4 and IPv6, in its network namespace).
pub fn listening_ports(proc_root: &Path, pid: u32) -> BTreeSet<u16> {
    let inodes = socket_inodes(proc_root, pid);
    if inodes.is_empty() {
        return BTreeSet::new();
    }
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(proc_root.join(format!("{pid}/net/{f}"))).ok())
        .flat_map(|t| parse_listeners(&t))
        .filter(|(_, ino)| inodes.contains(ino))
        .map(|(p, _)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:223D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 39593 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:223D 0100007F:9A9E 01 00000000:00000000 00:00000000 00000000     0        0 39600 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_listeners(t), vec![(8765, 39593)]);
        assert!(parse_listeners("garbage\n1 2 3").is_empty());
    }

    #[test]
    fn finds_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = listening_ports(Path::new("/proc"), std::process::id());
        assert!(ports.contains(&port), "{ports:?} lacks {port}");
    }
}

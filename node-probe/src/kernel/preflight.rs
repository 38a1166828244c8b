//! Checks that fail early with one clear line instead of a verifier or permission error later.

/// Capability numbers from `<linux/capability.h>`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Missing privilege.
#[derive(Debug, thiserror::Error)]
#[error(
    "node-probe needs root, or CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), to load eBPF programs; \
     running as uid {uid} without them"
)]
pub struct PrivilegeError {
    /// Effective uid.
    pub uid: u32,
}

/// Effective capability mask from `/proc/self/status` (`CapEff`).
fn effective_caps(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// True when `caps` allow loading and attaching tracing programs.
pub fn caps_sufficient(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Fails when the process cannot load tracing programs.
pub fn check_privileges() -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if caps_sufficient(effective_caps(&status)) {
        Ok(())
    } else {
        Err(PrivilegeError { uid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert!(caps_sufficient(u64::MAX));
        assert!(caps_sufficient(1 << CAP_SYS_ADMIN));
        assert!(caps_sufficient((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!caps_sufficient(1 << CAP_BPF));
        assert!(!caps_sufficient(0));
        assert_eq!(
            effective_caps("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            0x1ff_ffff_ffff
        );
        assert_eq!(effective_caps("nothing"), 0);
    }

    #[test]
    fn message_names_what_is_missing() {
        let m = PrivilegeError { uid: 1000 }.to_string();
        assert!(m.contains("CAP_BPF") && m.contains("uid 1000"), "{m}");
    }
}

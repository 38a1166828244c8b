//! Tracepoint record formats from tracefs.
use std::path::{Path, PathBuf};

/// Where tracefs is usually mounted (newer kernels, then the debugfs path).
pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The first tracefs root that has an `events` directory.
pub fn tracefs_root() -> Option<PathBuf> {
    TRACEFS_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Byte offset of `field` in the record of tracepoint `category/name`, if the kernel has it.
pub fn field_offset(root: &Path, category: &str, name: &str, field: &str) -> Option<u32> {
    let text =
        std::fs::read_to_string(root.join("events").join(category).join(name).join("format"))
            .ok()?;
    parse_field_offset(&text, field)
}

/// Parses a tracepoint `format` file and returns the offset of `field`.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    for line in format.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = decl.split(';');
        let decl = parts.next()?.trim();
        let name = decl.rsplit([' ', '*']).next()?.split('[').next()?;
        if name != field {
            continue;
        }
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("offset:") {
                return v.trim().parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &str = "name: sched_process_exit\nID: 300\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";

    #[test]
    fn finds_fields() {
        assert_eq!(parse_field_offset(EXIT, "group_dead"), Some(32));
        assert_eq!(parse_field_offset(EXIT, "comm"), Some(8));
        assert_eq!(parse_field_offset(EXIT, "pid"), Some(24));
        assert_eq!(parse_field_offset(EXIT, "nope"), None);
        assert_eq!(parse_field_offset("garbage\nfield:", "pid"), None);
    }
}

//! The hook table: every kernel program node-probe attaches, and where, declared once.
//!
//! Tracepoints and raw tracepoints are attached at start, per [`Family`]. Uprobes are attached
//! per library *file* as targets map it (see [`crate::uprobes`]): a [`Point::Uprobe`] names the
//! library by file-name pattern and the function by symbol. Every uprobe hook shares the two
//! generic kernel programs `uprobe_call` / `uretprobe_call`; the attach cookie carries the
//! [`HookId`], and userspace decodes the saved registers per hook.
//!
//! A new hook: a row in [`HOOKS`] (with a new [`HookId`] in its family's range for a uprobe),
//! decoding where its events are consumed (an engine follower, `gpu/` later).

/// Stable ids of uprobe hooks (the attach cookie). Never renumber, only append. Ranges:
/// 1–99 engine libraries, 100–299 CUDA runtime and driver (reserved), 300–399 NCCL (reserved),
/// 400–499 TLS libraries (reserved).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookId {
    /// llama.cpp `int32_t llama_decode(struct llama_context *, struct llama_batch)`: one
    /// forward step. The batch is passed by value in memory, so `n_tokens` (its first field)
    /// is the first stack word.
    LlamaDecode = 1,
}

impl HookId {
    /// Decodes a raw id.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::LlamaDecode),
            _ => None,
        }
    }
}

/// What a hook is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A classic tracepoint `category:name`.
    Tracepoint {
        /// tracefs category.
        category: &'static str,
        /// Tracepoint name.
        name: &'static str,
    },
    /// A raw tracepoint.
    RawTracepoint {
        /// Tracepoint name.
        name: &'static str,
    },
    /// A function in a shared library or executable, in every process that maps it (the
    /// kernel programs filter by the target set).
    Uprobe {
        /// File name of the library: `libllama.so` matches `libllama.so`, `libllama.so.0`,
        /// `libllama.so.0.1`.
        library: &'static str,
        /// Symbol; a version suffix (`cudaLaunchKernel@@libcudart.so.12`) is allowed and
        /// resolved to the plain dynamic symbol.
        symbol: &'static str,
        /// Also attach the return probe (the call is reported at its return, with its
        /// duration and return value).
        ret: bool,
        /// The hook id (cookie).
        id: HookId,
    },
}

/// Which group of hooks a row belongs to; groups are attached together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Process fork/exec/exit (keeps the target set current).
    Lifecycle,
    /// Socket syscalls, one tracepoint pair per syscall (`--syscall-hook tracepoint`).
    SyscallsTracepoint,
    /// Socket syscalls through one raw `sys_enter`/`sys_exit` pair (`--syscall-hook raw`).
    SyscallsRaw,
    /// Wire-side arrival times (`sk_data_ready`, Linux >= 6.3; optional).
    Arrivals,
    /// Engine libraries (uprobes, attached as targets map them).
    EngineLibraries,
}

/// One row of the hook table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Group.
    pub family: Family,
    /// Kernel program name (entry program for a uprobe).
    pub program: &'static str,
    /// Where it attaches.
    pub point: Point,
}

const fn tp(program: &'static str) -> Hook {
    Hook {
        family: Family::SyscallsTracepoint,
        program,
        point: Point::Tracepoint {
            category: "syscalls",
            name: program,
        },
    }
}

/// Syscall tracepoints in attach order: each exit before its entry, so an entry recorded is
/// always consumed.
macro_rules! syscall_pairs {
    ($($sc:literal),*) => {
        [$(tp(concat!("sys_exit_", $sc)), tp(concat!("sys_enter_", $sc)),)* tp("sys_enter_close")]
    };
}

const SYSCALL_HOOKS: [Hook; 23] = syscall_pairs!(
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "accept",
    "accept4", "connect"
);

/// Name of the generic uprobe entry program.
pub const UPROBE_PROGRAM: &str = "uprobe_call";
/// Name of the generic uprobe return program.
pub const URETPROBE_PROGRAM: &str = "uretprobe_call";

const OTHER_HOOKS: [Hook; 7] = [
    Hook {
        family: Family::Lifecycle,
        program: "sched_process_fork",
        point: Point::RawTracepoint {
            name: "sched_process_fork",
        },
    },
    Hook {
        family: Family::Lifecycle,
        program: "sched_process_exec",
        point: Point::RawTracepoint {
            name: "sched_process_exec",
        },
    },
    Hook {
        family: Family::Lifecycle,
        program: "sched_process_exit",
        point: Point::Tracepoint {
            category: "sched",
            name: "sched_process_exit",
        },
    },
    // Exit first, as for the tracepoint pairs.
    Hook {
        family: Family::SyscallsRaw,
        program: "raw_sys_exit",
        point: Point::RawTracepoint { name: "sys_exit" },
    },
    Hook {
        family: Family::SyscallsRaw,
        program: "raw_sys_enter",
        point: Point::RawTracepoint { name: "sys_enter" },
    },
    Hook {
        family: Family::Arrivals,
        program: "sk_data_ready",
        point: Point::RawTracepoint {
            name: "sk_data_ready",
        },
    },
    Hook {
        family: Family::EngineLibraries,
        program: UPROBE_PROGRAM,
        point: Point::Uprobe {
            library: "libllama.so",
            symbol: "llama_decode",
            ret: true,
            id: HookId::LlamaDecode,
        },
    },
];

/// Every hook, in attach order within each family.
pub fn hooks() -> impl Iterator<Item = &'static Hook> {
    SYSCALL_HOOKS.iter().chain(OTHER_HOOKS.iter())
}

/// The hooks of one family.
pub fn family(f: Family) -> impl Iterator<Item = &'static Hook> {
    hooks().filter(move |h| h.family == f)
}

/// A uprobe hook's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UprobeHook {
    /// Library file-name pattern.
    pub library: &'static str,
    /// Symbol as written in the table.
    pub symbol: &'static str,
    /// With a return probe.
    pub ret: bool,
    /// Id (cookie).
    pub id: HookId,
}

/// Every uprobe hook.
pub fn uprobes() -> impl Iterator<Item = UprobeHook> {
    hooks().filter_map(|h| match h.point {
        Point::Uprobe {
            library,
            symbol,
            ret,
            id,
        } => Some(UprobeHook {
            library,
            symbol,
            ret,
            id,
        }),
        _ => None,
    })
}

/// The hook name of a uprobe call record (its symbol), for printing.
pub fn hook_name(id: u16) -> Option<&'static str> {
    uprobes()
        .find(|u| u.id as u16 == id)
        .map(|u| plain_symbol(u.symbol))
}

/// Whether a file name is the library `pattern` (exactly, or followed by a version suffix).
pub fn library_matches(pattern: &str, file_name: &str) -> bool {
    file_name
        .strip_prefix(pattern)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The dynamic symbol behind a table symbol: `name@@VERSION` and `name@VERSION` name `name`
/// (the ELF dynamic symbol table keeps versions apart from names).
pub fn plain_symbol(symbol: &str) -> &str {
    symbol.split('@').next().unwrap_or(symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        // Each syscall's exit is attached before its entry.
        let names: Vec<_> = family(Family::SyscallsTracepoint)
            .map(|h| h.program)
            .collect();
        for (i, n) in names.iter().enumerate() {
            if let Some(sc) = n.strip_prefix("sys_enter_") {
                if sc != "close" {
                    let exit = names.iter().position(|x| *x == format!("sys_exit_{sc}"));
                    assert!(exit.is_some_and(|e| e < i), "{n}");
                }
            }
        }
        assert_eq!(names.len(), 23);
        // Uprobe ids are unique and decode back.
        let ids: Vec<u16> = uprobes().map(|u| u.id as u16).collect();
        let mut dedup = ids.clone();
        dedup.dedup();
        assert_eq!(ids, dedup);
        for id in ids {
            assert!(HookId::from_u16(id).is_some());
        }
        assert_eq!(hook_name(HookId::LlamaDecode as u16), Some("llama_decode"));
    }

    #[test]
    fn library_and_symbol_names() {
        assert!(library_matches("libllama.so", "libllama.so"));
        assert!(library_matches("libllama.so", "libllama.so.0.0.1"));
        assert!(!library_matches("libllama.so", "libllama.sox"));
        assert!(!library_matches("libcuda.so", "libcudart.so.12"));
        assert!(library_matches("libcuda.so", "libcuda.so.1"));
        assert_eq!(
            plain_symbol("cudaLaunchKernel@@libcudart.so.12"),
            "cudaLaunchKernel"
        );
        assert_eq!(plain_symbol("llama_decode"), "llama_decode");
    }
}

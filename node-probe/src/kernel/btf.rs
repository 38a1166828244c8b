//! Kernel struct offsets from the running kernel's BTF.
//!
//! The kernel programs have no CO-RE relocations, so every layout they use is resolved here, at
//! start, and handed to them in [`inferscope_common::ProbeConfig`]. A member path such as
//! `__sk_common.skc_num` descends through named members and, where a name is not found directly,
//! through anonymous structs and unions.
use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use inferscope_common::KernelOffsets;

/// Default location of the kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why offsets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// No BTF file: the kernel was built without `CONFIG_DEBUG_INFO_BTF`.
    #[error(
        "kernel BTF not found at {0}: inferscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Missing(PathBuf),
    /// The file exists but could not be parsed.
    #[error("kernel BTF at {path} could not be read: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A struct or member the probe needs is not in this kernel.
    #[error("kernel BTF has no {0}: this kernel's layout is not supported")]
    NoMember(String),
}

/// Parsed BTF with member-offset lookups.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Parses the BTF at `path` (normally [`VMLINUX_BTF`]).
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing(path.to_owned()));
        }
        let btf = Btf::from_file(path).map_err(|e| BtfError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { btf })
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NoMember(format!("struct {name}")))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoMember(format!("struct {name}")))
    }

    /// Strips typedefs and qualifiers and returns the struct/union behind `t`, if any.
    fn as_composite(&self, mut t: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::TypeTag(_) => {
                    let bt = t.as_btf_type()?;
                    t = self.btf.resolve_chained_type(bt).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Bit offset of `name` inside `s`, looking into anonymous members.
    fn member_bits(&self, s: &btf_rs::Struct, name: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                let t = self.btf.resolve_chained_type(m).ok()?;
                return Some((m.bit_offset(), t));
            }
        }
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if !mname.is_empty() {
                continue;
            }
            let t = self.btf.resolve_chained_type(m).ok()?;
            if let Some(inner) = self.as_composite(t) {
                if let Some((off, t)) = self.member_bits(&inner, name, depth + 1) {
                    return Some((m.bit_offset() + off, t));
                }
            }
        }
        None
    }

    /// Byte offset of the member path `path` (dot-separated) inside `struct strukt`.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::NoMember(format!("{strukt}.{path}"));
        let mut cur = self.find_struct(strukt)?;
        let mut bits = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, t) = self.member_bits(&cur, part, 0).ok_or_else(missing)?;
            bits += off;
            if parts.peek().is_some() {
                cur = self.as_composite(t).ok_or_else(missing)?;
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(missing());
        }
        Ok(bits / 8)
    }

    /// Resolves every offset the kernel programs use.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let o = |s: &str, p: &str| self.offset_of(s, p);
        let regs = self.syscall_regs()?;
        Ok(KernelOffsets {
            task_files: o("task_struct", "files")?,
            task_tgid: o("task_struct", "tgid")?,
            task_pid: o("task_struct", "pid")?,
            task_comm: o("task_struct", "comm")?,
            files_fdt: o("files_struct", "fdt")?,
            fdtable_max_fds: o("fdtable", "max_fds")?,
            fdtable_fd: o("fdtable", "fd")?,
            file_inode: o("file", "f_inode")?,
            file_private_data: o("file", "private_data")?,
            inode_mode: o("inode", "i_mode")?,
            inode_ino: o("inode", "i_ino")?,
            socket_type: o("socket", "type")?,
            socket_sk: o("socket", "sk")?,
            socket_alloc_inode: o("socket_alloc", "vfs_inode")?,
            sock_socket: o("sock", "sk_socket")?,
            skc_family: o("sock", "__sk_common.skc_family")?,
            skc_num: o("sock", "__sk_common.skc_num")?,
            skc_dport: o("sock", "__sk_common.skc_dport")?,
            skc_rcv_saddr: o("sock", "__sk_common.skc_rcv_saddr")?,
            skc_daddr: o("sock", "__sk_common.skc_daddr")?,
            skc_v6_rcv_saddr: o("sock", "__sk_common.skc_v6_rcv_saddr")?,
            skc_v6_daddr: o("sock", "__sk_common.skc_v6_daddr")?,
            unix_peer: o("unix_sock", "peer")?,
            tcp_write_seq: o("tcp_sock", "write_seq")?,
            tcp_copied_seq: o("tcp_sock", "copied_seq")?,
            tcp_rcv_nxt: o("tcp_sock", "rcv_nxt")?,
            sock_protocol: o("sock", "sk_protocol")?,
            regs_arg0: regs.0,
            regs_arg1: regs.1,
            regs_arg2: regs.2,
            regs_syscall_nr: regs.3,
            // Kernels built without network namespaces have an empty `possible_net_t`.
            skc_net: o("sock", "__sk_common.skc_net.net").unwrap_or(u32::MAX),
            net_ns_inum: o("net", "ns.inum").unwrap_or(0),
            regs_sp: o("pt_regs", "sp")?,
            // x86-64 pushes the return address; arm64 keeps it in the link register.
            stack_arg_skip: if cfg!(target_arch = "aarch64") { 0 } else { 8 },
            _pad: 0,
        })
    }

    /// `pt_regs` slots of the first three syscall arguments and of the syscall number, for
    /// the architecture node-probe was built for.
    fn syscall_regs(&self) -> Result<(u32, u32, u32, u32), BtfError> {
        let o = |p: &str| self.offset_of("pt_regs", p);
        if cfg!(target_arch = "aarch64") {
            // x0 is overwritten by the return value; the kernel keeps the first argument.
            let regs = o("regs")?;
            Ok((o("orig_x0")?, regs + 8, regs + 16, o("syscallno")?))
        } else {
            Ok((o("di")?, o("si")?, o("dx")?, o("orig_ax")?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = KernelBtf::open(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("must fail");
        let msg = err.to_string();
        assert!(msg.contains("CONFIG_DEBUG_INFO_BTF"), "{msg}");
        assert!(msg.contains("/nonexistent/vmlinux"), "{msg}");
    }

    #[test]
    fn garbage_btf_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("inferscope-btf-{}", std::process::id()));
        std::fs::write(&dir, b"not btf at all").unwrap();
        let err = KernelBtf::open(&dir).err().expect("must fail");
        std::fs::remove_file(&dir).ok();
        assert!(err.to_string().contains("could not be read"), "{err}");
    }

    /// On a machine with kernel BTF, the offsets resolve and are plausible.
    #[test]
    fn offsets_from_running_kernel() {
        let p = Path::new(VMLINUX_BTF);
        if !p.exists() {
            eprintln!("skipping: no {VMLINUX_BTF}");
            return;
        }
        let btf = KernelBtf::open(p).expect("parse vmlinux BTF");
        let o = btf.kernel_offsets().expect("all offsets");
        // sock_common starts the struct sock; its fields sit in the first 128 bytes.
        assert!(o.skc_family < 128 && o.skc_num < 128 && o.skc_dport < 128);
        assert_eq!(
            o.skc_dport + 2,
            o.skc_num,
            "skc_dport and skc_num are adjacent"
        );
        assert_eq!(o.skc_daddr + 4, o.skc_rcv_saddr);
        assert!(o.tcp_write_seq > 0 && o.tcp_copied_seq > 0);
        assert!(o.socket_alloc_inode > 0);
        if cfg!(target_arch = "x86_64") {
            // The ptrace ABI's layout, which BTF must agree with.
            assert_eq!(
                (o.regs_arg0, o.regs_arg1, o.regs_arg2, o.regs_syscall_nr),
                (112, 104, 96, 120)
            );
            assert_eq!((o.regs_sp, o.stack_arg_skip), (152, 8));
        }
        assert!(
            o.skc_net != u32::MAX && o.skc_net < 128,
            "skc_net in sock_common"
        );
        assert!(o.net_ns_inum > 0);
    }
}

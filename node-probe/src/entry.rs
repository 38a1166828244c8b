//! Where a uprobe goes inside a probed function. At the symbol itself, unless its first
//! instruction is one the kernel can only single-step out of line (an extra trap per call):
//! the CUDA driver's exported entry points all begin with such a RIP-relative compare,
//!
//! ```text
//! 81 3d <rel32> <imm32>   cmpl $magic, rel(%rip)
//! 74 <rel8>               je   → return CUDA_ERROR_DEINITIALIZED
//! ff 25 <rel32>           jmp  *table(%rip)
//! ```
//!
//! and a uprobe on the `je` (a branch, which x86 uprobes emulate) sees the same registers and
//! stack (neither instruction moves `rsp` or writes an argument register), at a third of the
//! cost measured by `uprobe-cost --cuda`. Only this exact byte pattern is moved; anything else
//! keeps the symbol's address.
use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

/// The driver trampoline's first instruction (`cmpl $imm32, rel32(%rip)`), then `je rel8`.
const CMP_RIP_IMM32: [u8; 2] = [0x81, 0x3d];
const CMP_LEN: usize = 10;
const JE_REL8: u8 = 0x74;

/// Bytes to skip at the start of a function whose first bytes are `code`: 10 for the
/// compare-then-branch prologue above, else 0.
pub fn skip_for(code: &[u8]) -> u64 {
    let cmp_then_je =
        code.len() > CMP_LEN && code[..2] == CMP_RIP_IMM32 && code[CMP_LEN] == JE_REL8;
    if cmp_then_je {
        CMP_LEN as u64
    } else {
        0
    }
}

/// For each of `symbols`, the offset past it at which to probe it in the ELF file at `path`
/// (0 when the symbol or its bytes cannot be read: the symbol itself is always a correct
/// place). The file is read once.
pub fn probe_skips(path: &Path, symbols: &[&str]) -> Vec<u64> {
    let parsed = std::fs::read(path).ok();
    let file = parsed.as_deref().and_then(|d| object::File::parse(d).ok());
    symbols
        .iter()
        .map(|s| file.as_ref().map_or(0, |f| skip_in(f, s)))
        .collect()
}

fn skip_in(file: &object::File<'_>, symbol: &str) -> u64 {
    let Some(sym) = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok(symbol) && s.is_definition())
    else {
        return 0;
    };
    let code = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .and_then(|sec| {
            let bytes = sec.data().ok()?;
            let at = usize::try_from(sym.address().checked_sub(sec.address())?).ok()?;
            bytes.get(at..at + 16)
        });
    code.map(skip_for).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_driver_prologue_is_skipped() {
        // cuLaunchKernel of driver 535.
        let drv = [
            0x81, 0x3d, 0x3e, 0x93, 0x8d, 0x01, 0x00, 0xba, 0x1c, 0x32, 0x74, 0x0c, 0xff, 0x25,
            0xc6, 0x18,
        ];
        assert_eq!(skip_for(&drv), 10);
        // A compare not followed by je, an ordinary prologue, too short.
        let mut other = drv;
        other[10] = 0x75;
        assert_eq!(skip_for(&other), 0);
        assert_eq!(
            skip_for(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5]),
            0
        );
        assert_eq!(skip_for(&drv[..10]), 0);
    }

    #[test]
    fn unreadable_files_keep_the_symbol() {
        assert_eq!(probe_skips(Path::new("/nonexistent"), &["x"]), [0]);
        assert_eq!(
            probe_skips(Path::new("/proc/self/status"), &["x", "y"]),
            [0, 0]
        );
    }
}

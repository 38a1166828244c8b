use which::which;

/// Rebuild the eBPF object when bpf-linker changes (a new LLVM can change codegen).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run scripts/setup.sh base");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}

//! Builds the kernel programs (`probe-ebpf`) for `bpfel-unknown-none` with the nightly toolchain
//! and bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! `INFERSCOPE_EBPF_TOOLCHAIN` selects a toolchain other than `nightly` (e.g. a dated nightly).
//! `INFERSCOPE_EBPF_STUB=1` leaves an empty object instead (for the fuzz targets under `fuzz/`,
//! whose instrumented build cannot build a BPF target): such a node-probe refuses to load.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=INFERSCOPE_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=INFERSCOPE_EBPF_STUB");
    if std::env::var("INFERSCOPE_EBPF_STUB").as_deref() == Ok("1") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("probe-ebpf");
        std::fs::write(&out, b"").context("writing the stub object")?;
        return Ok(());
    }
    let toolchain = std::env::var("INFERSCOPE_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        Some(t) if !t.is_empty() => aya_build::Toolchain::Custom(t),
        _ => aya_build::Toolchain::Nightly,
    };
    // aya-build echoes the inner cargo's stderr as cargo warnings; keep only real diagnostics.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .context("node-probe has no parent dir")?
        .join("probe-ebpf");
    // aya-build watches root_dir for the eBPF crate's sources; the common crate is watched too.
    let ebpf = root.join("ebpf");
    let ebpf_dir = ebpf.to_str().context("non-UTF-8 path")?;
    println!("cargo:rerun-if-changed={}", root.join("common").display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "probe-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        toolchain,
    )
    .context(
        "building the eBPF programs failed: is bpf-linker installed? run scripts/setup.sh base",
    )
}

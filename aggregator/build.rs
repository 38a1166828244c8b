//! Embeds the web UI (`query-ui/dist`, built by `scripts/setup.sh ui`) into the aggregator.
//!
//! Writes `$OUT_DIR/ui_assets.rs`: `UI_BUILT` and `ASSETS`, a sorted list of
//! `(path relative to dist, include_bytes!(…))`. Without a built UI the list is empty and the
//! aggregator serves a page saying how to build it; the Rust build never fails for it.
//!
//! `INFERSCOPE_UI_DIST` overrides the directory. Cargo re-runs this script when anything under
//! `dist` changes, or, while there is no `dist`, when anything under `query-ui` changes (so a UI
//! built after the aggregator is picked up by the next `cargo build`).
use std::path::{Path, PathBuf};

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            walk(&path, root, out);
        } else if ft.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            out.push((rel.replace('\\', "/"), path.clone()));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ui = manifest.join("..").join("query-ui");
    println!("cargo:rerun-if-env-changed=INFERSCOPE_UI_DIST");
    println!("cargo:rerun-if-changed=build.rs");
    let dist = std::env::var_os("INFERSCOPE_UI_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| ui.join("dist"));

    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        println!("cargo:rerun-if-changed={}", dist.display());
        walk(&dist, &dist, &mut files);
    } else if ui.is_dir() {
        println!("cargo:rerun-if-changed={}", ui.display());
        println!(
            "cargo:warning=query-ui/dist not found: the aggregator will serve a placeholder page at / (run scripts/setup.sh ui, then rebuild)"
        );
    }
    files.sort();

    let mut code = String::new();
    code.push_str("/// Whether the UI was built when the aggregator was compiled.\n");
    code.push_str(&format!(
        "pub const UI_BUILT: bool = {};\n",
        !files.is_empty()
    ));
    code.push_str("/// The UI's files: path relative to `dist`, contents. Sorted by path.\n");
    code.push_str("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for (rel, path) in &files {
        let abs = path.canonicalize().unwrap_or_else(|_| path.clone());
        code.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            abs.to_string_lossy()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ui_assets.rs");
    // Write only on change, so an unchanged UI does not touch the file.
    if std::fs::read_to_string(&out).ok().as_deref() != Some(code.as_str()) {
        std::fs::write(&out, code).expect("write ui_assets.rs");
    }
}

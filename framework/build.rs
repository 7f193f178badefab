//! Captures what a run-time plugin must share with the program that loads it (see
//! `src/plugin/`): the compiler version and a digest of the framework's code (comments and
//! formatting excluded: `build/digest.rs`).

#[path = "build/digest.rs"]
mod digest;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/digest.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| panic!("could not run `{rustc} --version`: tram records the compiler version for plugin checks"));
    println!("cargo:rustc-env=TRAM_RUSTC_VERSION={version}");

    // The code digest (build/digest.rs) of every source file but the test-support module
    // (`src/testing/`, feature `testing`: code no plugin shares), in sorted order: two builds
    // of the framework from different code must not exchange trait objects; comments, doc
    // comments, formatting and unit tests do not count.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect(&root.join("src"), &mut files);
    files.sort();
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&root).unwrap_or(f).to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            (rel, text)
        })
        .filter(|(rel, _)| !rel.starts_with("src/testing/"))
        .collect();
    let h = digest::code_digest(sources.iter().map(|(p, s)| (p.as_str(), s.as_str())));
    println!("cargo:rustc-env=TRAM_SOURCE_DIGEST={h:016x}");
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

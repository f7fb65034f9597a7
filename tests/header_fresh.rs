//! `include/ghostgrad.h` is exactly what cbindgen generates from `src/ffi/` and
//! `cbindgen.toml`: a stale header fails here. `GHOSTGRAD_BLESS=1` writes the fresh one.

use std::path::Path;

const REGENERATE: &str = "GHOSTGRAD_BLESS=1 cargo test --test header_fresh";

fn generate(root: &Path) -> String {
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("reading cbindgen.toml");
    // Only the ABI module is parsed (`mod.rs` and the submodules it declares): every exported
    // type is defined there (no `cargo metadata`).
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen could not generate the header from src/ffi/");
    let mut bytes = Vec::new();
    bindings.write(&mut bytes);
    String::from_utf8(bytes).expect("cbindgen wrote UTF-8")
}

#[test]
fn checked_in_header_matches_the_generated_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("include/ghostgrad.h");
    let fresh = generate(root);
    if std::env::var_os("GHOSTGRAD_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != fresh {
        let first_diff = current
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(fresh.lines().count()));
        panic!(
            "include/ghostgrad.h is stale (first difference at line {}: checked in {:?}, generated {:?}).\n\
             Regenerate it with:\n    {REGENERATE}",
            first_diff + 1,
            current.lines().nth(first_diff).unwrap_or("<end of file>"),
            fresh.lines().nth(first_diff).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn header_declares_every_exported_function() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = abi_sources(root);
    let header = generate(root);
    let exported: Vec<&str> = src
        .split("extern \"C\" fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.starts_with("gg_"))
        .collect();
    assert!(exported.len() >= 15, "found only {exported:?}");
    for name in exported {
        assert!(header.contains(&format!("{name}(")), "`{name}` is missing from the generated header");
    }
}

/// The text of every file of the ABI module `src/ffi/`, concatenated in name order.
fn abi_sources(root: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(root.join("src/ffi"))
        .expect("reading src/ffi")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect::<Vec<_>>().join("\n")
}

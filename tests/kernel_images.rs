//! The embedded kernel images: SASS for every listed architecture, every kernel entry point in
//! every image, PTX for the interpreter. Skipped (with a visible message) only when the crate was
//! built without nvcc; CI builds with GHOSTGRAD_REQUIRE_KERNELS=1, where that cannot happen.

use ghostgrad::kernels::{self, parse_fatbin, ptx_entry_names, KERNEL_FILES};

fn built() -> bool {
    if !kernels::KERNELS_BUILT {
        assert!(
            std::env::var("GHOSTGRAD_REQUIRE_KERNELS").is_err(),
            "GHOSTGRAD_REQUIRE_KERNELS is set but the crate was built without kernels"
        );
        eprintln!("kernel_images: built without nvcc; nothing to check");
        return false;
    }
    true
}

#[test]
fn every_kernel_file_is_embedded() {
    if !built() {
        return;
    }
    let mut names: Vec<&str> = KERNEL_FILES.iter().map(|f| f.name).collect();
    names.sort();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "cu").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    assert_eq!(names, on_disk);
}

#[test]
fn fatbin_has_sass_for_every_arch_and_every_entry_point() {
    if !built() {
        return;
    }
    for file in KERNEL_FILES {
        let entries = parse_fatbin(file.fatbin).unwrap_or_else(|e| panic!("{}: {e}", file.name));
        let kernels = ptx_entry_names(file.ptx);
        assert!(!kernels.is_empty(), "{}: no entry points in PTX", file.name);
        for &arch in kernels::CUDA_ARCHS {
            let elf = entries
                .iter()
                .find(|e| e.kind == 2 && e.arch == arch)
                .unwrap_or_else(|| panic!("{}: no SASS for sm_{arch}", file.name));
            assert_eq!(&elf.payload[..4], b"\x7fELF", "{} sm_{arch}: payload is not an ELF", file.name);
            for k in &kernels {
                let found = elf.payload.windows(k.len()).any(|w| w == k.as_bytes());
                assert!(found, "{}: kernel {k} missing from sm_{arch} SASS", file.name);
            }
        }
        let lowest = kernels::CUDA_ARCHS[0];
        assert!(
            entries.iter().any(|e| e.kind == 1 && e.arch == lowest),
            "{}: no PTX for compute_{lowest} (forward compatibility with newer GPUs)",
            file.name
        );
    }
}

#[test]
fn interpreter_ptx_targets_sm80_and_names_every_dtype_instantiation() {
    if !built() {
        return;
    }
    let names = kernels::all_kernel_names();
    for f in KERNEL_FILES {
        assert!(f.ptx.contains(".target sm_80"), "{}: unexpected PTX target", f.name);
    }
    for base in ["ghost_dot_gram", "ghost_dot_dense", "factored_grad"] {
        for dt in ["f32", "bf16", "f16"] {
            let k = format!("{base}_{dt}");
            assert!(names.contains(&k), "missing kernel {k}; have {names:?}");
        }
    }
    // ghg's combined query: formed per factor dtype, read by the Gram pass as an f32 query.
    for dt in ["f32", "bf16", "f16"] {
        let k = format!("ghg_query_{dt}");
        assert!(names.contains(&k), "missing kernel {k}; have {names:?}");
    }
    for dt in ["bf16", "f16"] {
        // model_ghg's combined query meets bf16 / f16 training factors in tied cross terms too.
        for base in ["ghost_dot_gram_qf32", "cross_gram_qf32"] {
            let k = format!("{base}_{dt}");
            assert!(names.contains(&k), "missing kernel {k}; have {names:?}");
        }
    }
    for k in ["finalize_partials_f32", "rows_dot_f32"] {
        assert!(names.iter().any(|n| n == k), "missing kernel {k}");
    }
}

#[test]
fn ptxas_reports_no_register_spills() {
    if !built() {
        return;
    }
    let report = kernels::PTXAS_REPORT;
    let entries = report.lines().filter(|l| l.contains("Compiling entry function")).count();
    let spill_lines: Vec<&str> = report.lines().filter(|l| l.contains("spill stores")).collect();
    // One stack/spill line per compiled entry point: the report is complete, not silently empty.
    assert!(entries > 0, "empty ptxas report");
    assert_eq!(spill_lines.len(), entries, "ptxas report lacks spill lines:\n{report}");
    let spills: Vec<&str> =
        spill_lines.into_iter().filter(|l| !l.contains("0 bytes spill stores, 0 bytes spill loads")).collect();
    assert!(spills.is_empty(), "register spills:\n{}", spills.join("\n"));
}

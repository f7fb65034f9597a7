//! The embedded kernel images, both sets: SASS for every listed architecture (the SM read from
//! each cubin's ELF header), every kernel entry point in every image, PTX for the driver's JIT
//! and for the interpreter (ISA ≤ 8.8 for the CUDA 12 set). Skipped (with a visible message) only
//! when the crate was built without that set's toolchain; CI builds with
//! GHOSTGRAD_REQUIRE_KERNELS=1, where that cannot happen.

use ghostgrad::kernels::select::{embedded_sets, SetContents};
use ghostgrad::kernels::{
    self, cubin_sm, parse_fatbin, ptx_entry_names, ptx_isa_version, ptx_target, ImageSet, CUDA12_FILES, KERNEL_FILES,
};

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

fn built12() -> bool {
    if !kernels::CUDA12_BUILT {
        assert!(
            std::env::var("GHOSTGRAD_REQUIRE_KERNELS").is_err(),
            "GHOSTGRAD_REQUIRE_KERNELS is set but the crate was built without the CUDA 12 image set"
        );
        eprintln!("kernel_images: built without NVRTC 12 / ptxas 12; no CUDA 12 set to check");
        return false;
    }
    true
}

/// The `.cu` stems in kernels/.
fn kernel_files_on_disk() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "cu").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    on_disk
}

/// Whether a cubin defines kernel `name` (its code section `.text.<name>`).
fn cubin_has_kernel(elf: &[u8], name: &str) -> bool {
    let section = format!(".text.{name}\0");
    elf.windows(section.len()).any(|w| w == section.as_bytes())
}

#[test]
fn every_kernel_file_is_embedded() {
    if !built() {
        return;
    }
    let mut names: Vec<&str> = KERNEL_FILES.iter().map(|f| f.name).collect();
    names.sort();
    assert_eq!(names, kernel_files_on_disk());
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
            assert_eq!(cubin_sm(&elf.payload), Ok(arch), "{}: ELF header of the sm_{arch} entry", file.name);
            assert_eq!(&file.fatbin[elf.offset..elf.offset + 4], b"\x7fELF", "{}: payload offset", file.name);
            for k in &kernels {
                assert!(cubin_has_kernel(&elf.payload, k), "{}: kernel {k} missing from sm_{arch} SASS", file.name);
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

#[test]
fn cuda12_set_has_a_cubin_for_every_arch_with_every_kernel() {
    if !built12() {
        return;
    }
    let mut names: Vec<&str> = CUDA12_FILES.iter().map(|f| f.name).collect();
    names.sort();
    assert_eq!(names, kernel_files_on_disk());
    assert!(!kernels::CUDA12_ARCHS.is_empty());
    for file in CUDA12_FILES {
        let entries = ptx_entry_names(file.interp_ptx);
        assert!(!entries.is_empty(), "{}: no entry points", file.name);
        // The same kernels as the CUDA 13 set's file of that name, and in the JIT PTX.
        if let Some(f13) = KERNEL_FILES.iter().find(|f| f.name == file.name) {
            assert_eq!(entries, ptx_entry_names(f13.ptx), "{}: entry points differ between the sets", file.name);
        }
        assert_eq!(entries, ptx_entry_names(file.jit_ptx.0), "{}: JIT PTX entry points", file.name);
        let archs: Vec<u32> = file.cubins.iter().map(|(a, _)| *a).collect();
        assert_eq!(archs, kernels::CUDA12_ARCHS, "{}: cubin list", file.name);
        for &(arch, cubin) in file.cubins {
            assert_eq!(cubin_sm(cubin), Ok(arch), "{} sm_{arch}: ELF header", file.name);
            for k in &entries {
                assert!(cubin_has_kernel(cubin, k), "{}: kernel {k} missing from the sm_{arch} cubin", file.name);
            }
        }
    }
}

#[test]
fn cuda12_ptx_is_isa_8_at_most_8_8_for_the_lowest_arch_and_sm80() {
    if !built12() {
        return;
    }
    let lowest = kernels::CUDA12_ARCHS[0];
    for file in CUDA12_FILES {
        assert_eq!(file.jit_ptx.1, lowest, "{}: JIT PTX architecture", file.name);
        for (what, ptx, target) in [
            ("JIT", file.jit_ptx.0, format!("sm_{lowest}")),
            ("interpreter", file.interp_ptx, format!("sm_{}", kernels::INTERP_PTX_ARCH)),
        ] {
            let isa = ptx_isa_version(ptx).unwrap_or_else(|| panic!("{} {what} PTX: no .version", file.name));
            assert!((8, 0) <= isa && isa <= (8, 8), "{} {what} PTX: ISA {isa:?} (R525-R575 need ≤ 8.8)", file.name);
            assert_eq!(ptx_target(ptx), Some(target.as_str()), "{} {what} PTX: .target", file.name);
        }
    }
}

#[test]
fn cuda12_ptxas_reports_no_register_spills() {
    if !built12() {
        return;
    }
    let report = kernels::CUDA12_PTXAS_REPORT;
    let compiled = report.lines().filter(|l| l.contains("Compiling entry function")).count();
    let expected: usize = CUDA12_FILES.iter().map(|f| ptx_entry_names(f.interp_ptx).len() * f.cubins.len()).sum();
    assert_eq!(compiled, expected, "one ptxas entry per kernel and architecture:\n{report}");
    let spill_lines: Vec<&str> = report.lines().filter(|l| l.contains("spill stores")).collect();
    assert_eq!(spill_lines.len(), compiled, "ptxas report lacks spill lines:\n{report}");
    let spills: Vec<&str> =
        spill_lines.into_iter().filter(|l| !l.contains("0 bytes spill stores, 0 bytes spill loads")).collect();
    assert!(spills.is_empty(), "register spills (CUDA 12):\n{}", spills.join("\n"));
}

#[test]
fn embedded_sets_describe_what_was_built() {
    let sets = embedded_sets();
    let find = |s: ImageSet| -> Option<&SetContents> { sets.iter().find(|c| c.set == s) };
    assert_eq!(find(ImageSet::Cuda13).is_some(), kernels::KERNELS_BUILT);
    assert_eq!(find(ImageSet::Cuda12).is_some(), kernels::CUDA12_BUILT);
    if let Some(c) = find(ImageSet::Cuda12) {
        assert_eq!(c.sass, kernels::CUDA12_ARCHS);
        assert!(c.ptx_isa <= (8, 8), "{:?}", c.ptx_isa);
    }
    if let Some(c) = find(ImageSet::Cuda13) {
        assert_eq!(c.sass, kernels::CUDA_ARCHS);
        assert!(c.ptx_isa >= (9, 0), "nvcc 13 emits ISA 9.x: {:?}", c.ptx_isa);
    }
}

#[cfg(feature = "interp")]
#[test]
fn interpreter_parses_both_sets_and_every_opcode_is_allowlisted() {
    use ghostgrad::runtime::interp::InterpRuntime;
    use ghostgrad::runtime::KernelRuntime;
    let allowed = ptx_interp::supported_opcode_forms();
    for set in [ImageSet::Cuda13, ImageSet::Cuda12] {
        if !set.built() {
            assert!(std::env::var("GHOSTGRAD_REQUIRE_KERNELS").is_err(), "{set} not built");
            continue;
        }
        let rt = InterpRuntime::with_images(set).unwrap_or_else(|e| panic!("{set}: {e}"));
        assert_eq!(rt.images(), set);
        let d = rt.describe();
        assert!(d.contains(&format!("kernel images: {set} compute_80 PTX")), "{d}");
        for (name, ptx) in set.interp_ptx() {
            let m = ptx_interp::Module::parse(ptx).unwrap_or_else(|e| panic!("{set} {name}.ptx: {e}"));
            let outside: Vec<String> = m.opcode_forms().difference(&allowed).cloned().collect();
            assert!(outside.is_empty(), "{set} {name}: opcode forms outside the allowlist: {outside:?}");
        }
    }
}

/// `GHOSTGRAD_INTERP_IMAGES` selects the set `InterpRuntime::new` (every interpreter test's
/// runtime) executes; scripts/test.sh runs this binary beside gpu_interp with it set to cuda12.
#[cfg(feature = "interp")]
#[test]
fn interp_images_env_selects_the_set_of_every_interpreter_test() {
    use ghostgrad::runtime::interp::{InterpRuntime, INTERP_IMAGES_ENV};
    use ghostgrad::runtime::KernelRuntime;
    let want = match std::env::var(INTERP_IMAGES_ENV).as_deref() {
        Ok("cuda12") => ImageSet::Cuda12,
        Ok("") | Ok("cuda13") | Err(_) => ImageSet::Cuda13,
        Ok(other) => {
            assert!(InterpRuntime::new().is_err(), "{INTERP_IMAGES_ENV}={other} accepted");
            return;
        }
    };
    if !want.built() {
        assert!(std::env::var("GHOSTGRAD_REQUIRE_KERNELS").is_err(), "{want} not built");
        return;
    }
    let rt = InterpRuntime::new().unwrap();
    assert_eq!(rt.images(), want);
    assert!(rt.describe().contains(&format!("kernel images: {want} ")), "{}", rt.describe());
    eprintln!("interpreter: {}", rt.describe());
}

//! Compiles every `kernels/*.cu` with nvcc and embeds the results.
//!
//! For each kernel file two images are produced:
//! * a fatbin with SASS for every architecture in `GHOSTGRAD_CUDA_ARCHS` (default
//!   75,80,86,89,90,100,120) plus PTX for the lowest one — what the CUDA driver loads;
//! * plain `-O3 -lineinfo` PTX for `compute_80` — what the PTX interpreter executes in tests.
//!
//! nvcc is searched in this order: `$GHOSTGRAD_NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`,
//! `$PATH`, and the project's own toolchain folder `.toolchain/cuda` that
//! `scripts/setup-cuda.sh` fills from PyPI. Without nvcc the crate still builds (CPU backends
//! only) and says so with a cargo warning, unless `GHOSTGRAD_REQUIRE_KERNELS=1`, in which case
//! the build fails: CI sets it so that the kernels can never be skipped silently.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &[u32] = &[75, 80, 86, 89, 90, 100, 120];
/// The architecture of the PTX that the interpreter executes.
const INTERP_PTX_ARCH: u32 = 80;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "GHOSTGRAD_NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "GHOSTGRAD_CUDA_ARCHS",
        "GHOSTGRAD_REQUIRE_KERNELS",
        "GHOSTGRAD_NO_CUDA",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let require = env::var("GHOSTGRAD_REQUIRE_KERNELS")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();

    let archs = match env::var("GHOSTGRAD_CUDA_ARCHS") {
        Ok(s) if !s.trim().is_empty() => parse_archs(&s),
        _ => DEFAULT_ARCHS.to_vec(),
    };

    // GHOSTGRAD_NO_CUDA=1 builds as if no CUDA toolchain existed (used by the tests of that path).
    let no_cuda = env::var("GHOSTGRAD_NO_CUDA").is_ok_and(|v| v == "1");
    let nvcc = if no_cuda { None } else { find_nvcc(&manifest) };
    let Some(nvcc) = nvcc else {
        let msg = "nvcc not found: building ghostgrad without CUDA kernels (CPU backends only). \
                   Run `bash scripts/setup-cuda.sh` to install nvcc into .toolchain/, or set \
                   GHOSTGRAD_NVCC / CUDA_HOME.";
        if require {
            panic!("GHOSTGRAD_REQUIRE_KERNELS is set but {msg}");
        }
        println!("cargo:warning={msg}");
        write_generated(&out_dir, &[], &archs, "", "", false);
        return;
    };

    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string())
        .unwrap_or_default();

    // Compile files in parallel: fatbins for 7 architectures dominate the build time.
    let results: Vec<Result<(String, String), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let nvcc = &nvcc;
                let out_dir = &out_dir;
                let kernel_dir = &kernel_dir;
                let archs = &archs;
                scope.spawn(move || compile_one(nvcc, kernel_dir, src, out_dir, archs))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut stems = Vec::new();
    let mut report = String::new();
    let mut failures = Vec::new();
    for (src, res) in sources.iter().zip(results) {
        match res {
            Ok((stem, rep)) => {
                stems.push(stem);
                report.push_str(&rep);
            }
            Err(e) => failures.push(format!("{}: {e}", src.display())),
        }
    }
    if !failures.is_empty() {
        panic!("CUDA kernel compilation failed:\n{}", failures.join("\n"));
    }
    write_generated(&out_dir, &stems, &archs, &report, &version, true);
}

fn parse_archs(s: &str) -> Vec<u32> {
    let mut v: Vec<u32> = s
        .split([',', ' ', ';'])
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.trim_start_matches("sm_")
                .trim_start_matches("compute_")
                .parse()
                .unwrap_or_else(|_| panic!("GHOSTGRAD_CUDA_ARCHS: cannot parse `{x}`"))
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    assert!(!v.is_empty(), "GHOSTGRAD_CUDA_ARCHS is empty");
    v
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Ok(p) = env::var("GHOSTGRAD_NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        panic!("GHOSTGRAD_NVCC={} does not name a file", p.display());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = env::var(var) {
            let p = PathBuf::from(root).join("bin").join(exe);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join(exe);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let local = manifest.join(".toolchain/cuda/nvidia/cu13/bin").join(exe);
    local.is_file().then_some(local)
}

fn compile_one(
    nvcc: &Path,
    kernel_dir: &Path,
    src: &Path,
    out_dir: &Path,
    archs: &[u32],
) -> Result<(String, String), String> {
    let stem = src.file_stem().unwrap().to_string_lossy().to_string();
    let common = |cmd: &mut Command| {
        cmd.arg("-O3")
            .arg("-lineinfo")
            .arg("--std=c++17")
            .arg("-Werror")
            .arg("all-warnings")
            .arg("-I")
            .arg(kernel_dir);
    };
    // PTX for the interpreter.
    let ptx = out_dir.join(format!("{stem}.ptx"));
    let mut cmd = Command::new(nvcc);
    common(&mut cmd);
    cmd.arg("-ptx")
        .arg(format!("-arch=compute_{INTERP_PTX_ARCH}"))
        .arg(src)
        .arg("-o")
        .arg(&ptx);
    run(&mut cmd)?;
    // Fatbin with SASS for every architecture plus PTX for the lowest one.
    let fatbin = out_dir.join(format!("{stem}.fatbin"));
    let mut cmd = Command::new(nvcc);
    common(&mut cmd);
    cmd.arg("-fatbin").arg("-Xptxas").arg("-v").arg("-no-compress");
    for a in archs {
        cmd.arg("-gencode").arg(format!("arch=compute_{a},code=sm_{a}"));
    }
    let lo = archs[0];
    cmd.arg("-gencode").arg(format!("arch=compute_{lo},code=compute_{lo}"));
    cmd.arg(src).arg("-o").arg(&fatbin);
    let stderr = run(&mut cmd)?;
    let mut report = String::new();
    // "ptxas info" lines, and the indented continuation after "Function properties" that
    // carries the stack frame and spill counts.
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("ptxas info    : ") {
            let _ = writeln!(report, "{stem}: {rest}");
        } else if line.starts_with("    ") && line.contains("spill") {
            let _ = writeln!(report, "{stem}: {}", line.trim());
        }
    }
    Ok((stem, report))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(format!("{:?} failed:\n{stderr}", cmd));
    }
    Ok(stderr)
}

fn write_generated(
    out_dir: &Path,
    stems: &[String],
    archs: &[u32],
    report: &str,
    version: &str,
    built: bool,
) {
    let mut s = String::new();
    s.push_str("// @generated by build.rs\n");
    let _ = writeln!(s, "pub const KERNELS_BUILT: bool = {built};");
    let _ = writeln!(s, "pub const NVCC_VERSION: &str = {version:?};");
    let _ = writeln!(s, "pub const CUDA_ARCHS: &[u32] = &{archs:?};");
    let _ = writeln!(s, "pub const INTERP_PTX_ARCH: u32 = {INTERP_PTX_ARCH};");
    let _ = writeln!(s, "pub const PTXAS_REPORT: &str = {report:?};");
    s.push_str("pub const KERNEL_FILES: &[KernelFile] = &[\n");
    for stem in stems {
        let _ = writeln!(
            s,
            "    KernelFile {{ name: {stem:?}, ptx: include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.ptx\")), \
             fatbin: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.fatbin\")) }},"
        );
    }
    s.push_str("];\n");
    fs::write(out_dir.join("kernel_images.rs"), s).unwrap();
}

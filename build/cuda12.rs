//! The CUDA 12 image set: every `kernels/*.cu` compiled by NVRTC 12.9 (dlopened from
//! `libnvrtc.so.12`) to PTX per virtual architecture (ISA 8.8), then assembled by ptxas 12.9 into
//! one cubin per listed SM. PyPI ships neither nvcc, fatbinary nor nvlink for CUDA 12, so the
//! cubins and the PTX of the lowest architecture are embedded one by one and the runtime picks
//! (`src/kernels/select.rs`). These load on every driver from R525 (CUDA 12.0) on.
//!
//! Found in `$GHOSTGRAD_CUDA12_HOME`, else `.toolchain/cuda12` (`scripts/setup-cuda.sh`); both
//! the PyPI layout (`nvidia/cuda_nvrtc/lib`, `nvidia/cuda_nvcc/bin`, `nvidia/cuda_runtime/include`)
//! and a toolkit layout (`lib64`, `bin`, `include`) are accepted.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the CUDA 12 tools live.
pub struct Toolchain {
    pub nvrtc: PathBuf,
    pub ptxas: PathBuf,
    pub includes: Vec<PathBuf>,
}

pub fn find_toolchain(manifest: &Path) -> Result<Toolchain, String> {
    let root = match std::env::var("GHOSTGRAD_CUDA12_HOME") {
        Ok(r) if !r.is_empty() => PathBuf::from(r),
        _ => manifest.join(".toolchain/cuda12"),
    };
    let pip = root.join("nvidia");
    let (nvrtc, ptxas, includes) = if pip.is_dir() {
        (
            pip.join("cuda_nvrtc/lib/libnvrtc.so.12"),
            pip.join("cuda_nvcc/bin/ptxas"),
            vec![pip.join("cuda_runtime/include"), pip.join("cuda_nvcc/include")],
        )
    } else {
        (root.join("lib64/libnvrtc.so.12"), root.join("bin/ptxas"), vec![root.join("include")])
    };
    for (what, p) in [("libnvrtc.so.12", &nvrtc), ("ptxas", &ptxas), ("cuda_fp16.h", &includes[0].join("cuda_fp16.h"))] {
        if !p.is_file() {
            return Err(format!("CUDA 12 {what} not found at {}", p.display()));
        }
    }
    Ok(Toolchain { nvrtc, ptxas, includes })
}

type NvrtcResult = c_int;
type Program = *mut c_void;

/// The NVRTC entry points build.rs uses (see nvrtc.h).
pub struct Nvrtc {
    _lib: libloading::Library,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> NvrtcResult,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut Program) -> NvrtcResult,
    error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
}

// SAFETY: NVRTC's API is thread safe for distinct programs (nvrtc.h, "Thread safety").
unsafe impl Sync for Nvrtc {}

impl Nvrtc {
    pub fn load(path: &Path) -> Result<Self, String> {
        // SAFETY: loading NVIDIA's NVRTC library runs no code of ours; symbols are typed as in nvrtc.h.
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).map_err(|e| format!("{}: {e}", String::from_utf8_lossy($name)))?
                };
            }
            Ok(Nvrtc {
                version: sym!(b"nvrtcVersion\0"),
                create: sym!(b"nvrtcCreateProgram\0"),
                compile: sym!(b"nvrtcCompileProgram\0"),
                log_size: sym!(b"nvrtcGetProgramLogSize\0"),
                log: sym!(b"nvrtcGetProgramLog\0"),
                ptx_size: sym!(b"nvrtcGetPTXSize\0"),
                ptx: sym!(b"nvrtcGetPTX\0"),
                destroy: sym!(b"nvrtcDestroyProgram\0"),
                error_string: sym!(b"nvrtcGetErrorString\0"),
                _lib: lib,
            })
        }
    }

    pub fn version(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two out-parameters.
        unsafe { (self.version)(&mut a, &mut b) };
        (a, b)
    }

    fn check(&self, r: NvrtcResult, call: &str) -> Result<(), String> {
        if r == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static string for any code.
        let s = unsafe { CStr::from_ptr((self.error_string)(r)) }.to_string_lossy();
        Err(format!("{call}: {s}"))
    }

    /// Compiles `source` (named `name` in messages) with `options`; returns the PTX, or the log
    /// as the error. A non-empty log (a warning) is an error too, as `-Werror all-warnings` is
    /// for nvcc.
    pub fn compile_to_ptx(&self, source: &str, name: &str, options: &[String]) -> Result<String, String> {
        let src = CString::new(source).map_err(|e| e.to_string())?;
        let cname = CString::new(name).map_err(|e| e.to_string())?;
        let opts: Vec<CString> = options.iter().map(|o| CString::new(o.as_str()).unwrap()).collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: all strings are NUL-terminated and outlive the calls; the program is destroyed below.
        unsafe {
            self.check(
                (self.create)(&mut prog, src.as_ptr(), cname.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
                "nvrtcCreateProgram",
            )?;
            let r = (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let mut n = 0usize;
            let mut log = String::new();
            if (self.log_size)(prog, &mut n) == 0 && n > 1 {
                let mut buf = vec![0u8; n];
                (self.log)(prog, buf.as_mut_ptr() as *mut c_char);
                log = String::from_utf8_lossy(&buf[..n - 1]).trim().to_string();
            }
            let out = if let Err(e) = self.check(r, "nvrtcCompileProgram") {
                Err(format!("{e}\n{log}"))
            } else if !log.is_empty() {
                Err(format!("NVRTC warnings (treated as errors):\n{log}"))
            } else {
                let mut n = 0usize;
                self.check((self.ptx_size)(prog, &mut n), "nvrtcGetPTXSize")?;
                let mut buf = vec![0u8; n];
                self.check((self.ptx)(prog, buf.as_mut_ptr() as *mut c_char), "nvrtcGetPTX")?;
                buf.truncate(n.saturating_sub(1));
                String::from_utf8(buf).map_err(|e| e.to_string())
            };
            (self.destroy)(&mut prog);
            out
        }
    }
}

/// NVRTC cannot see the host's C headers; `stddef.h` / `stdint.h` (all that kernels may include
/// from the C library) become these, with NVRTC's built-in `size_t` / `ptrdiff_t`.
pub fn write_shim_headers(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let stddef = "// NVRTC-only stand-in for <stddef.h>: size_t and ptrdiff_t are built into NVRTC.\n\
                  #pragma once\n#ifndef NULL\n#define NULL 0\n#endif\n\
                  #define offsetof(t, m) __builtin_offsetof(t, m)\n";
    let stdint = "// NVRTC-only stand-in for <stdint.h> (device ABI: LP64).\n#pragma once\n\
                  typedef signed char int8_t; typedef unsigned char uint8_t;\n\
                  typedef short int16_t; typedef unsigned short uint16_t;\n\
                  typedef int int32_t; typedef unsigned int uint32_t;\n\
                  typedef long long int64_t; typedef unsigned long long uint64_t;\n\
                  typedef long long intptr_t; typedef unsigned long long uintptr_t;\n";
    fs::write(dir.join("stddef.h"), stddef)?;
    fs::write(dir.join("stdint.h"), stdint)?;
    fs::write(dir.join("cstddef"), "#pragma once\n#include <stddef.h>\nnamespace std { using ::size_t; using ::ptrdiff_t; }\n")?;
    fs::write(
        dir.join("cstdint"),
        "#pragma once\n#include <stdint.h>\nnamespace std { using ::int8_t; using ::uint8_t; using ::int16_t; \
         using ::uint16_t; using ::int32_t; using ::uint32_t; using ::int64_t; using ::uint64_t; }\n",
    )?;
    Ok(())
}

/// Output names inside `dir` (shared with the generated Rust).
pub fn ptx_name(stem: &str, arch: u32) -> String {
    format!("{stem}.compute_{arch}.ptx")
}
pub fn cubin_name(stem: &str, arch: u32) -> String {
    format!("{stem}.sm_{arch}.cubin")
}

/// NVRTC → PTX for every architecture in `ptx_archs` (which holds `sass_archs`), ptxas → cubin
/// for every one of `sass_archs`, in `dir`. Returns ptxas' `-v` lines, prefixed with the stem.
#[allow(clippy::too_many_arguments)]
pub fn compile_one(
    nvrtc: &Nvrtc,
    tc: &Toolchain,
    shim: &Path,
    kernel_dir: &Path,
    src: &Path,
    dir: &Path,
    sass_archs: &[u32],
    ptx_archs: &[u32],
) -> Result<String, String> {
    let stem = src.file_stem().unwrap().to_string_lossy().to_string();
    let source = fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut report = String::new();
    for &arch in ptx_archs {
        let mut opts = vec![
            format!("--gpu-architecture=compute_{arch}"),
            "-default-device".to_string(),
            "--std=c++17".to_string(),
            "-lineinfo".to_string(),
            format!("-I{}", kernel_dir.display()),
        ];
        opts.extend(tc.includes.iter().map(|i| format!("-I{}", i.display())));
        opts.push(format!("-I{}", shim.display()));
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        let ptx = nvrtc.compile_to_ptx(&source, &name, &opts).map_err(|e| format!("compute_{arch}: {e}"))?;
        let ptx_path = dir.join(ptx_name(&stem, arch));
        fs::write(&ptx_path, &ptx).map_err(|e| e.to_string())?;
        if !sass_archs.contains(&arch) {
            continue;
        }
        let cubin = dir.join(cubin_name(&stem, arch));
        let out = Command::new(&tc.ptxas)
            .arg(format!("-arch=sm_{arch}"))
            .args(["-O3", "-lineinfo", "-v", "--warning-as-error"])
            .arg(&ptx_path)
            .arg("-o")
            .arg(&cubin)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", tc.ptxas.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("ptxas -arch=sm_{arch} failed:\n{stderr}"));
        }
        super::ptxas_report_lines(&stem, &stderr, &mut report);
    }
    Ok(report)
}

/// The generated Rust for the CUDA 12 set (`CUDA12_*` constants).
pub fn generated(dir_rel: &str, stems: &[String], sass: &[u32], jit_arch: u32, interp_arch: u32) -> String {
    let mut s = String::from("pub const CUDA12_FILES: &[Cuda12File] = &[\n");
    let inc = |name: String| format!("concat!(env!(\"OUT_DIR\"), \"/{dir_rel}/{name}\")");
    for stem in stems {
        let _ = writeln!(s, "    Cuda12File {{\n        name: {stem:?},");
        let _ = writeln!(s, "        jit_ptx: (include_str!({}), {jit_arch}),", inc(ptx_name(stem, jit_arch)));
        let _ = writeln!(s, "        interp_ptx: include_str!({}),", inc(ptx_name(stem, interp_arch)));
        s.push_str("        cubins: &[\n");
        for &a in sass {
            let _ = writeln!(s, "            ({a}, include_bytes!({})),", inc(cubin_name(stem, a)));
        }
        s.push_str("        ],\n    },\n");
    }
    s.push_str("];\n");
    s
}

//! The tensor-core tile primitives of `kernels/mma_tile.cuh`, each executed by the PTX
//! interpreter (memcheck, initcheck, shared and global racecheck on) in the test kernels of
//! `kernels/tests/mma_tile_test.cu` against a host computation, with a distinct value in every
//! element. The test kernels are compiled here with the nvcc that build.rs would find: they are
//! not part of the shipped images.
//!
//! One test compiles the kernels a second time with `MT_PLANTED_LAYOUT_ERROR` (a wrong lane →
//! row/k mapping in `mt_ldsm_a`) and requires the GEMM check to fail, so a fragment-layout
//! error cannot pass these tests unnoticed.
#![cfg(feature = "interp")]

use std::path::{Path, PathBuf};
use std::process::Command;

use ptx_interp::{Device, LaunchConfig, Module, Options, ParamValue};

fn nvcc() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("GHOSTGRAD_NVCC") {
        cands.push(p.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(r) = std::env::var(var) {
            cands.push(Path::new(&r).join("bin").join(exe));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        cands.extend(std::env::split_paths(&path).map(|d| d.join(exe)));
    }
    cands.push(manifest.join(".toolchain/cuda/nvidia/cu13/bin").join(exe));
    cands.into_iter().find(|p| p.is_file()).expect("nvcc (as build.rs finds it) is needed to compile the tile test kernels")
}

/// The test kernels as compute_80 PTX, compiled like build.rs compiles the shipped kernels.
fn test_module(defines: &[&str]) -> Module {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let out = std::env::temp_dir().join(format!(
        "ghostgrad-mma-tile-{}-{}.ptx",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut cmd = Command::new(nvcc());
    cmd.args(["-O3", "-lineinfo", "--std=c++17", "-Werror", "all-warnings", "-ptx", "-arch=compute_80", "-I"])
        .arg(manifest.join("kernels"));
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    cmd.arg(manifest.join("kernels/tests/mma_tile_test.cu")).arg("-o").arg(&out);
    let o = cmd.output().expect("run nvcc");
    assert!(o.status.success(), "nvcc failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let ptx = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let m = Module::parse(&ptx).unwrap();
    let allowed = ptx_interp::supported_opcode_forms();
    for f in m.opcode_forms() {
        assert!(allowed.contains(f.as_str()), "{f} not in the interpreter's allowlist");
    }
    m
}

/// Deterministic distinct-ish pseudo-random values (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Copy, Debug)]
enum Half {
    Bf16,
    F16,
}

impl Half {
    /// 16-bit pattern and exact value of element `i`: mantissa from the low bits of `i`,
    /// exponent from the next 4 bits (magnitudes in [2^-7, 2^9)), so the first 2048 (bf16) /
    /// 16384 (f16) indices all give distinct values.
    fn element(self, i: usize) -> (u16, f64) {
        match self {
            Half::Bf16 => {
                let bits = (120 + ((i / 128) % 16) as u16) << 7 | (i % 128) as u16;
                (bits, f32::from_bits((bits as u32) << 16) as f64)
            }
            Half::F16 => {
                let bits = (8 + ((i / 1024) % 16) as u16) << 10 | (i % 1024) as u16;
                (bits, half::f16::from_bits(bits).to_f64())
            }
        }
    }
}

/// `count` elements: the values of [`Half::element`] in a random order, with random signs.
fn matrix(h: Half, count: usize, salt: u64) -> (Vec<u16>, Vec<f64>) {
    let mut idx: Vec<usize> = (0..count).collect();
    let mut r = Rng(salt);
    for i in (1..count).rev() {
        idx.swap(i, (r.next() % (i as u64 + 1)) as usize);
    }
    let mut bits = Vec::with_capacity(count);
    let mut vals = Vec::with_capacity(count);
    for &i in &idx {
        let (b, v) = h.element(i);
        let neg = r.next() & 1 == 1;
        bits.push(if neg { b ^ 0x8000 } else { b });
        vals.push(if neg { -v } else { v });
    }
    (bits, vals)
}

fn launch(m: &Module, dev: &mut Device, name: &str, block: u32, params: &[ParamValue], seed: u64) -> Result<(), String> {
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [block, 1, 1], dynamic_shared_bytes: 0 };
    let opts = Options { schedule_seed: seed, ..Options::default() };
    dev.launch(m, name, &cfg, params, &opts).map(|_| ()).map_err(|e| e.to_string())
}

fn upload_u16(dev: &mut Device, v: &[u16]) -> u64 {
    let p = dev.alloc((2 * v.len()).max(16) as u64).unwrap();
    dev.write(p, bytemuck::cast_slice(v)).unwrap();
    p
}
fn upload_u8(dev: &mut Device, v: &[u8]) -> u64 {
    let p = dev.alloc(v.len().max(1) as u64).unwrap();
    dev.write(p, v).unwrap();
    p
}
fn upload_f32(dev: &mut Device, v: &[f32]) -> u64 {
    let p = dev.alloc((4 * v.len()) as u64).unwrap();
    dev.write(p, bytemuck::cast_slice(v)).unwrap();
    p
}
fn read_f32(dev: &Device, p: u64, len: usize) -> Vec<f32> {
    bytemuck::cast_slice::<u8, f32>(&dev.read(p, 4 * len as u64).unwrap()).to_vec()
}

/// `|got − want| ≤ γ_K Σ|products|` (MATH §8): exact products, K f32 additions.
fn check_gemm(what: &str, got: &[f32], want: &[f64], mag: &[f64], k: usize) -> Result<(), String> {
    let gamma = (k + 2) as f64 * f32::EPSILON as f64 / 2.0;
    let bad: Vec<String> = (0..want.len())
        .filter(|&i| !((got[i] as f64 - want[i]).abs() <= gamma * mag[i] + 1e-30))
        .take(8)
        .map(|i| format!("  [{i}] got {} want {} (bound {:e})", got[i], want[i], gamma * mag[i]))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: mismatches\n{}", bad.join("\n")))
    }
}

/// out = X Yᵀ through tile_gemm_nt_<ty> with rows masked by keep_x / keep_y (masked rows hold NaN
/// and must be zero-filled, never read), output NaN-poisoned.
#[allow(clippy::too_many_arguments)]
fn gemm_nt(m: &Module, h: Half, mm: usize, n: usize, k: usize, ld_pad: usize, async_: bool, seed: u64) -> Result<(), String> {
    let ld = k + ld_pad; // the kernel's row stride is K: pad 0 keeps it dense
    assert_eq!(ld, k);
    let (mut xb, xv) = matrix(h, mm * k, seed * 31 + 1);
    let (mut yb, yv) = matrix(h, n * k, seed * 31 + 2);
    let keep_x: Vec<u8> = (0..mm).map(|r| (r % 5 != 3) as u8).collect();
    let keep_y: Vec<u8> = (0..n).map(|r| (r % 7 != 2) as u8).collect();
    let nan = match h {
        Half::Bf16 => 0x7fc0u16,
        Half::F16 => 0x7e00,
    };
    for r in 0..mm {
        if keep_x[r] == 0 {
            xb[r * k..(r + 1) * k].fill(nan);
        }
    }
    for r in 0..n {
        if keep_y[r] == 0 {
            yb[r * k..(r + 1) * k].fill(nan);
        }
    }
    let mut dev = Device::new();
    let (px, py) = (upload_u16(&mut dev, &xb), upload_u16(&mut dev, &yb));
    let (kx, ky) = (upload_u8(&mut dev, &keep_x), upload_u8(&mut dev, &keep_y));
    let po = upload_f32(&mut dev, &vec![f32::NAN; mm * n]);
    let name = match h {
        Half::Bf16 => "tile_gemm_nt_bf16",
        Half::F16 => "tile_gemm_nt_f16",
    };
    let params = [
        ParamValue::U64(px),
        ParamValue::U64(py),
        ParamValue::U64(kx),
        ParamValue::U64(ky),
        ParamValue::U64(po),
        ParamValue::U32(mm as u32),
        ParamValue::U32(n as u32),
        ParamValue::U32(k as u32),
        ParamValue::U32(async_ as u32),
    ];
    launch(m, &mut dev, name, 256, &params, seed)?;
    let got = read_f32(&dev, po, mm * n);
    let mut want = vec![0f64; mm * n];
    let mut mag = vec![0f64; mm * n];
    for r in 0..mm {
        for c in 0..n {
            if keep_x[r] != 0 && keep_y[c] != 0 {
                for i in 0..k {
                    want[r * n + c] += xv[r * k + i] * yv[c * k + i];
                    mag[r * n + c] += (xv[r * k + i] * yv[c * k + i]).abs();
                }
            }
        }
    }
    check_gemm(&format!("{name} M={mm} N={n} K={k} async={async_} seed={seed}"), &got, &want, &mag, k)
}

/// Shapes crossing every tile edge: K not a multiple of 8 / 16 / 32 (plain loads), multiples
/// of 8 (cp.async with zero-filled tail chunks), several chunks (3-stage ring wraps).
fn gemm_nt_cases(m: &Module) -> Result<(), String> {
    let mut seed = 0;
    for h in [Half::Bf16, Half::F16] {
        for &(mm, n, k, async_) in &[
            (64, 64, 32, true),
            (64, 64, 136, true),
            (37, 50, 104, true),
            (1, 1, 8, true),
            (64, 64, 45, false),
            (19, 64, 7, false),
            (64, 33, 131, false),
        ] {
            seed += 1;
            gemm_nt(m, h, mm, n, k, 0, async_, seed)?;
        }
    }
    Ok(())
}

#[test]
fn stage_ldmatrix_and_mma_tiles_compute_x_times_y_transposed() {
    let m = test_module(&[]);
    gemm_nt_cases(&m).unwrap();
}

#[test]
fn a_planted_fragment_layout_error_is_caught() {
    let m = test_module(&["MT_PLANTED_LAYOUT_ERROR"]);
    // The kernel still runs cleanly (same addresses, permuted): only the values can tell.
    match gemm_nt_cases(&m) {
        Err(e) => assert!(e.contains("mismatches"), "expected wrong values, got: {e}"),
        Ok(()) => panic!("the tile GEMM check passed with a wrong mt_ldsm_a lane mapping"),
    }
}

#[test]
fn ldmatrix_trans_reads_k_major_b_tiles() {
    let m = test_module(&[]);
    for seed in 0..2u64 {
        let (xb, xv) = matrix(Half::Bf16, 64 * 64, 100 + seed);
        let (yb, yv) = matrix(Half::Bf16, 64 * 32, 200 + seed);
        let mut dev = Device::new();
        let (px, py) = (upload_u16(&mut dev, &xb), upload_u16(&mut dev, &yb));
        let po = upload_f32(&mut dev, &vec![f32::NAN; 64 * 32]);
        launch(&m, &mut dev, "tile_gemm_nn_bf16", 256, &[ParamValue::U64(px), ParamValue::U64(py), ParamValue::U64(po)], seed)
            .unwrap();
        let got = read_f32(&dev, po, 64 * 32);
        let mut want = vec![0f64; 64 * 32];
        let mut mag = vec![0f64; 64 * 32];
        for r in 0..64 {
            for c in 0..32 {
                for i in 0..64 {
                    want[r * 32 + c] += xv[r * 64 + i] * yv[i * 32 + c];
                    mag[r * 32 + c] += (xv[r * 64 + i] * yv[i * 32 + c]).abs();
                }
            }
        }
        check_gemm("tile_gemm_nn_bf16 (ldmatrix .trans)", &got, &want, &mag, 64).unwrap();
    }
}

#[test]
fn accumulator_hadamard_and_fixed_order_reductions() {
    let m = test_module(&[]);
    // Distinct small integers: every product and sum is exact in f32, whatever the order.
    let x: Vec<f32> = (0..512).map(|i| (i as f32) - 256.0).collect();
    let y: Vec<f32> = (0..512).map(|i| ((i * 37) % 512) as f32 * 0.5 - 100.0).collect();
    let mut dev = Device::new();
    let (px, py) = (upload_f32(&mut dev, &x), upload_f32(&mut dev, &y));
    let ph = upload_f32(&mut dev, &[f32::NAN; 512]);
    let pr = upload_f32(&mut dev, &[f32::NAN; 16]);
    let pc = upload_f32(&mut dev, &[f32::NAN; 32]);
    let params = [ParamValue::U64(px), ParamValue::U64(py), ParamValue::U64(ph), ParamValue::U64(pr), ParamValue::U64(pc)];
    launch(&m, &mut dev, "tile_reduce_f32", 32, &params, 3).unwrap();
    let had = read_f32(&dev, ph, 512);
    let rows = read_f32(&dev, pr, 16);
    let cols = read_f32(&dev, pc, 32);
    for i in 0..512 {
        assert_eq!(had[i], x[i] * y[i], "hadamard[{i}]");
    }
    for r in 0..16 {
        let want: f64 = (0..32).map(|c| (x[r * 32 + c] * y[r * 32 + c]) as f64).sum();
        assert_eq!(rows[r] as f64, want, "row sum {r}");
    }
    for c in 0..32 {
        let want: f64 = (0..16).map(|r| (x[r * 32 + c] * y[r * 32 + c]) as f64).sum();
        assert_eq!(cols[c] as f64, want, "column sum {c}");
    }
}

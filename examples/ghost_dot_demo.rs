//! Ghost dot-products of one GPT-2 MLP layer (c_fc, 768→3072), the README's main job:
//! `score[n] = <G_n, G_val>`, how much one SGD step on training sequence n moves the validation
//! loss (In-Run Data Shapley, first order; MATH.md §1), computed from the layer's factors
//! without ever forming a per-sample gradient, and checked against the naive method that
//! materializes every `G_n = B_nᵀ A_n` (MATH.md §6).
//!
//! ```text
//! cargo run --release --no-default-features --example ghost_dot_demo -- [--seed N] [--cpu]
//! ```
//! Runs on CUDA device 0 when ghostgrad was built with kernels and a driver is present (else on
//! the fast CPU backend, saying why); `--cpu` forces the CPU. Exits non-zero if ghostgrad and the
//! naive method disagree.

use std::process::ExitCode;
use std::time::Instant;

use gemm::Parallelism;
use ghostgrad::{Accumulate, Context, FormChoice, FormRequest, LayerShape, QueryFactors, Segments, Tensor, TensorMut, TrainFactors};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const D_IN: usize = 768;
const D_OUT: usize = 3072;
/// Training sequences and tokens per sequence.
const N: usize = 8;
const T: usize = 64;
/// Validation rows (one validation batch summed into one gradient).
const Q: usize = 64;
/// Agreement required between ghostgrad and the naive method, relative to max |score|.
const TOLERANCE: f64 = 1e-3;

// ---- counting allocator: peak live heap bytes during a call, above the level before it ----

#[path = "../benches/support/peak_alloc.rs"]
mod peak_alloc;

#[global_allocator]
static ALLOC: peak_alloc::CountingAlloc = peak_alloc::CountingAlloc;

/// Runs `f` once: its result, wall time in seconds, and peak extra heap bytes.
fn measured<R>(f: impl FnOnce() -> R) -> (R, f64, usize) {
    let start = Instant::now();
    let (r, peak) = peak_alloc::peak_extra_bytes(f);
    (r, start.elapsed().as_secs_f64(), peak)
}

// ---- factors with realistic structure ----

struct Factors {
    a: Vec<f32>,
    b: Vec<f32>,
    aq: Vec<f32>,
    bq: Vec<f32>,
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller; rand's distributions crate is not a dependency.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Activations: post-LayerNorm-like rows dominated by a few shared directions (GPT-2 residual
/// streams have a handful of massive dimensions) plus isotropic noise. Output gradients: a
/// shared "loss direction" plus noise, scaled per sequence by a log-normal factor, so per-sample
/// gradient norms vary by an order of magnitude as in real training.
fn make_factors(seed: u64) -> Factors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let unit = |rng: &mut ChaCha8Rng, d: usize| {
        let v: Vec<f32> = (0..d).map(|_| gaussian(rng)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let dirs_a: Vec<Vec<f32>> = (0..4).map(|_| unit(&mut rng, D_IN)).collect();
    let dir_b = unit(&mut rng, D_OUT);
    let weights_a = [12.0f32, 6.0, 3.0, 1.5];
    let activation_rows = |rng: &mut ChaCha8Rng, rows: usize| {
        let mut out = Vec::with_capacity(rows * D_IN);
        for _ in 0..rows {
            let coef: Vec<f32> = weights_a.iter().map(|w| w * gaussian(rng)).collect();
            for i in 0..D_IN {
                let dominant: f32 = coef.iter().zip(&dirs_a).map(|(c, d)| c * d[i]).sum();
                out.push(dominant + 0.3 * gaussian(rng) / (D_IN as f32).sqrt() * 8.0);
            }
        }
        out
    };
    let a = activation_rows(&mut rng, N * T);
    let aq = activation_rows(&mut rng, Q);
    let gradient_rows = |rng: &mut ChaCha8Rng, seqs: usize, rows: usize, base: f32| {
        let mut out = Vec::with_capacity(seqs * rows * D_OUT);
        for _ in 0..seqs {
            let seq_scale = base * (0.8 * gaussian(rng)).exp();
            for _ in 0..rows {
                let along = gaussian(rng);
                for o in 0..D_OUT {
                    out.push(seq_scale * (0.5 * along * dir_b[o] + gaussian(rng) / (D_OUT as f32).sqrt()));
                }
            }
        }
        out
    };
    let b = gradient_rows(&mut rng, N, T, 1e-3);
    let bq = gradient_rows(&mut rng, 1, Q, 1e-3);
    Factors { a, b, aq, bq }
}

// ---- the naive method: materialize every G_n and G_val, then dot ----

/// `dst[D_OUT, D_IN] = Σ_r b_rᵀ a_r` over `rows` rows (a GEMM with k = rows).
fn outer_sum(dst: &mut [f32], a: &[f32], b: &[f32], rows: usize, par: Parallelism) {
    assert!(dst.len() == D_OUT * D_IN && a.len() == rows * D_IN && b.len() == rows * D_OUT);
    // SAFETY: dst is D_OUT×D_IN row-major; lhs = Bᵀ (stride D_OUT along k, 1 along m); rhs = A
    // (stride 1 along n, D_IN along k); all within the asserted lengths.
    unsafe {
        gemm::gemm(
            D_OUT, D_IN, rows, dst.as_mut_ptr(), 1, D_IN as isize, false, b.as_ptr(), D_OUT as isize, 1, a.as_ptr(), 1,
            D_IN as isize, 0.0, 1.0, false, false, false, par,
        )
    }
}

fn naive_scores(f: &Factors) -> Vec<f32> {
    let dd = D_IN * D_OUT;
    let mut g = vec![0.0f32; N * dd];
    g.par_chunks_mut(dd).enumerate().for_each(|(n, gn)| {
        outer_sum(gn, &f.a[n * T * D_IN..(n + 1) * T * D_IN], &f.b[n * T * D_OUT..(n + 1) * T * D_OUT], T, Parallelism::None)
    });
    let mut gq = vec![0.0f32; dd];
    outer_sum(&mut gq, &f.aq, &f.bq, Q, Parallelism::Rayon(0));
    g.par_chunks(dd).map(|gn| gn.iter().zip(&gq).map(|(x, y)| (x * y) as f64).sum::<f64>() as f32).collect()
}

// ---- ghostgrad ----

fn layer() -> LayerShape {
    LayerShape::new(D_IN as u64, D_OUT as u64)
}

fn ghost_scores_cpu(ctx: &Context, f: &Factors, out: &mut [f32]) -> ghostgrad::Result<FormChoice> {
    let train = TrainFactors { a: Tensor::from(&f.a[..]), b: Tensor::from(&f.b[..]), n: N as u64, t: T as u64, mask: None };
    let query = QueryFactors { aq: Tensor::from(&f.aq[..]), bq: Tensor::from(&f.bq[..]), q: Q as u64, segments: Segments::Single, mask: None };
    ctx.ghost_dot(&layer(), &train, &query, &mut TensorMut::from(out), Accumulate::overwrite(), FormRequest::Auto)
}

/// The GPU branch: factors copied to device 0 with cudarc, ghostgrad launched on the same
/// stream, scores copied back. Returns the scores, the form choice and the seconds from launch
/// to synchronized completion (copies excluded).
///
/// NOTE: this branch could not be run where it was written (no GPU there); it follows the
/// cudarc 0.19 API and ghostgrad's documented safety contract.
fn ghost_scores_cuda(f: &Factors) -> Result<(Vec<f32>, FormChoice, f64), String> {
    use cudarc::driver::{CudaContext, DevicePtr, DevicePtrMut};
    use ghostgrad::{DType, DeviceSlice, DeviceSliceMut};
    let cu = CudaContext::new(0).map_err(|e| format!("{e:?}"))?;
    let stream = cu.new_stream().map_err(|e| format!("{e:?}"))?;
    // SAFETY: `stream` is a live stream of device 0's primary context (cudarc uses the primary
    // context) and outlives `ctx`, which is dropped at the end of this function.
    let ctx = unsafe { Context::cuda_on_stream(0, stream.cu_stream() as _) }.map_err(|e| e.to_string())?;
    let up = |host: &[f32]| stream.clone_htod(host).map_err(|e| format!("{e:?}"));
    let (a, b, aq, bq) = (up(&f.a)?, up(&f.b)?, up(&f.aq)?, up(&f.bq)?);
    let mut out = stream.alloc_zeros::<f32>(N).map_err(|e| format!("{e:?}"))?;
    let start = Instant::now();
    let choice = {
        let (pa, _ga) = a.device_ptr(&stream);
        let (pb, _gb) = b.device_ptr(&stream);
        let (paq, _gaq) = aq.device_ptr(&stream);
        let (pbq, _gbq) = bq.device_ptr(&stream);
        let (po, _go) = out.device_ptr_mut(&stream);
        // SAFETY: each pointer addresses a live cudarc allocation of exactly that many f32 on
        // device 0, which stays allocated (the slices outlive this block) and is used only by
        // work on `stream`, which ghostgrad launches on.
        let (train, query, mut out_t) = unsafe {
            let dev = |p, len: usize| Tensor::from(DeviceSlice::from_raw_parts(p, len as u64, DType::F32));
            (
                TrainFactors { a: dev(pa, f.a.len()), b: dev(pb, f.b.len()), n: N as u64, t: T as u64, mask: None },
                QueryFactors { aq: dev(paq, f.aq.len()), bq: dev(pbq, f.bq.len()), q: Q as u64, segments: Segments::Single, mask: None },
                TensorMut::from(DeviceSliceMut::from_raw_parts(po, N as u64, DType::F32)),
            )
        };
        ctx.ghost_dot(&layer(), &train, &query, &mut out_t, Accumulate::overwrite(), FormRequest::Auto).map_err(|e| e.to_string())?
    };
    stream.synchronize().map_err(|e| format!("{e:?}"))?;
    let secs = start.elapsed().as_secs_f64();
    let scores = stream.clone_dtoh(&out).map_err(|e| format!("{e:?}"))?;
    Ok((scores, choice, secs))
}

fn fmt_bytes(b: usize) -> String {
    match b {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

fn main() -> ExitCode {
    let mut seed = 0u64;
    let mut force_cpu = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cpu" => force_cpu = true,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => {
                    eprintln!("--seed needs an unsigned integer");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("unknown argument {other:?}; usage: ghost_dot_demo [--seed N] [--cpu]");
                return ExitCode::from(2);
            }
        }
    }

    println!("GPT-2 MLP c_fc {D_IN}→{D_OUT}: N = {N} training sequences × T = {T} tokens, validation batch Q = {Q} rows, seed {seed}");
    let f = make_factors(seed);
    let dd_bytes = D_IN * D_OUT * 4;
    println!("one per-sample gradient is {} in f32; the factors of all {N} are {}", fmt_bytes(dd_bytes), fmt_bytes((f.a.len() + f.b.len()) * 4));

    // Where to run: CUDA device 0 if ghostgrad can use it.
    let gpu = if force_cpu {
        println!("backend: cpu (--cpu)");
        false
    } else {
        match Context::cuda(0) {
            Ok(ctx) => {
                println!("backend: {}", ctx.describe());
                true
            }
            Err(e) => {
                println!("backend: cpu — CUDA not used: {e}");
                false
            }
        }
    };

    let (ghost, choice, ghost_secs, ghost_peak) = if gpu {
        match measured(|| ghost_scores_cuda(&f)) {
            (Ok((s, c, secs)), _, peak) => (s, c, secs, peak),
            (Err(e), _, _) => {
                eprintln!("GPU run failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let ctx = Context::cpu();
        println!("cpu backend: {}", ctx.describe());
        let mut out = vec![0.0f32; N];
        if let Err(e) = ghost_scores_cpu(&ctx, &f, &mut out) {
            eprintln!("ghost_dot failed: {e}");
            return ExitCode::FAILURE;
        }
        // Timed second call (the first warmed up threads and caches; the naive one gets the same).
        let (r, secs, peak) = measured(|| ghost_scores_cpu(&ctx, &f, &mut out));
        (out, r.expect("succeeded once already"), secs, peak)
    };
    println!("\nghostgrad form (Auto): {}\n  reason: {}", choice.form, choice.reason);

    let _ = naive_scores(&f);
    let (naive, naive_secs, naive_peak) = measured(|| naive_scores(&f));

    let scale = naive.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    let max_err = ghost.iter().zip(&naive).fold(0.0f64, |m, (&g, &n)| m.max((g as f64 - n as f64).abs()));
    let rel = if scale > 0.0 { max_err / scale } else { max_err };
    let finite = ghost.iter().chain(&naive).all(|x| x.is_finite());

    println!("\n{:>12} {:>14} {:>14}", "", "ghostgrad", "naive");
    println!("{:>12} {:>14} {:>14}", "time", format!("{:.2} ms", ghost_secs * 1e3), format!("{:.2} ms", naive_secs * 1e3));
    println!("{:>12} {:>14} {:>14}", "peak extra", fmt_bytes(ghost_peak), fmt_bytes(naive_peak));
    println!("speed ratio (naive / ghostgrad): {:.1}×", naive_secs / ghost_secs);
    if ghost_peak == 0 {
        println!("memory ratio (naive / ghostgrad): ∞ (ghostgrad allocated nothing on the heap)");
    } else {
        println!("memory ratio (naive / ghostgrad): {:.1}×", naive_peak as f64 / ghost_peak as f64);
    }
    if gpu {
        println!("(GPU: ghostgrad time is launch-to-sync on the device and its memory counts host heap only; naive ran on the CPU)");
    }
    println!("\nfirst per-sample scores <G_n, G_val>:");
    for n in 0..N.min(4) {
        println!("  n = {n}: ghostgrad {:+.6e}   naive {:+.6e}", ghost[n], naive[n]);
    }
    println!("\nmax relative error (max_n |ghost − naive| / max_n |naive|): {rel:.2e} (tolerance {TOLERANCE:.0e})");
    if !finite || rel > TOLERANCE {
        eprintln!("FAILED: ghostgrad and the naive method disagree");
        return ExitCode::FAILURE;
    }
    println!("agreement: ok");
    ExitCode::SUCCESS
}

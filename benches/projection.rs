//! LoGra projections on the CPU: ghostgrad's `kron_project` (`Context::cpu()`) against the two
//! baselines of MATH.md §3/§6 and the GEMM rate of this machine, at the LoGra rows of MATH.md §7
//! scaled for a CPU (N and T shrunk, the layer widths kept): d_in→d_out ∈ {1024→1024, 768→3072},
//! k_i = k_o ∈ {16, 64}, f32, no bias, no mask.
//!
//! Methods, all timed by criterion in the same process:
//! * `kron_project` with `ProjectionKind::Random` (P_i, P_o generated from the seed inside every
//!   call) and with `ProjectionKind::Dense` (the same matrices given);
//! * LogIX-style: `A P_iᵀ`, `B P_oᵀ` (two GEMMs), then the per-token projected outer products
//!   materialized as `[N, T, k_o, k_i]`, then summed over T;
//! * TRAK-style: every per-sample gradient `G_n = B_nᵀ A_n` materialized (`[N, d_out·d_in]`, one
//!   GEMM per sample), then the flattened gradients times a dense Gaussian `[k, d_in·d_out]`
//!   matrix (`k = k_o·k_i`, the same output width). Only where that matrix fits the memory
//!   budget (`GHOSTGRAD_BENCH_DENSE_MAX_BYTES`, default min(4 GiB, MemAvailable/4)); otherwise the
//!   report says it was skipped and why;
//! * two plain f32 GEMMs: one square GEMM with (about) the FLOPs of `kron_project` (the machine's
//!   GEMM rate, reported as "% of GEMM rate"), and the shape-matched skinny GEMM
//!   `[N·T, d_in + d_out + k_o] × [·, k_i]`, exactly kron_project's FLOP count and the best a
//!   projection of this shape can do through a GEMM library.
//!
//! Every baseline uses the same `gemm` crate and rayon. Peak extra memory: a counting global
//! allocator, peak of live heap bytes during one call above the level before it (inputs, outputs
//! and the TRAK matrix are allocated beforehand; the matrix is reported separately as persistent
//! memory). The LogIX result is checked against `kron_project` (same matrices).
//!
//! Writes a markdown section to `target/projection_bench.md` (spliced into BENCHMARKS.md by
//! `scripts/bench.sh`). Knobs: `GHOSTGRAD_BENCH_PROJ_N` (default 4), `GHOSTGRAD_BENCH_PROJ_T`
//! (default 512, LoGra's T), `GHOSTGRAD_BENCH_MEASURE_S` (default 1), `GHOSTGRAD_BENCH_DENSE_MAX_BYTES`.
//! Without `--bench` (e.g. `cargo test --benches`) it only smoke-tests one tiny case.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, SamplingMode};
use gemm::Parallelism;
use ghostgrad::projection::generator::{entry, entry_scale, stream_key};
use ghostgrad::projection::materialize_projection;
use ghostgrad::{
    Accumulate, Context, Distribution, LayerShape, OutColumns, ProjectionKind, ProjectionSpec, Tensor, TensorMut,
    TrainFactors, Which,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------------
// Counting allocator (shared with benches/ghost_dot.rs).

#[path = "support/peak_alloc.rs"]
mod peak_alloc;

#[global_allocator]
static ALLOC: peak_alloc::CountingAlloc = peak_alloc::CountingAlloc;

use peak_alloc::peak_extra_bytes;

// ---------------------------------------------------------------------------------------------
// GEMM through the gemm crate with explicit strides (row stride `rs`, column stride `cs`).

/// `dst[m, n] (row-major, leading dimension ldd) = lhs[m, k] · rhs[k, n]`, element (r, c) of lhs
/// at `lhs[r·l_rs + c·l_cs]`, of rhs at `rhs[r·r_rs + c·r_cs]`.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ldd: usize,
    lhs: &[f32],
    l_rs: usize,
    l_cs: usize,
    rhs: &[f32],
    r_rs: usize,
    r_cs: usize,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(dst.len() > last(m, n, ldd, 1));
    assert!(k == 0 || (lhs.len() > last(m, k, l_rs, l_cs) && rhs.len() > last(k, n, r_rs, r_cs)));
    // SAFETY: the asserts above keep every accessed element inside the three slices; dst is
    // exclusively borrowed and distinct from lhs and rhs; read_dst = false ignores its contents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            false,
            lhs.as_ptr(),
            l_cs as isize,
            l_rs as isize,
            rhs.as_ptr(),
            r_cs as isize,
            r_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// One case.

const SEED: u64 = 0x10_62A;

struct Case {
    d_in: usize,
    d_out: usize,
    k: usize,
    n: usize,
    t: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    /// `P_i [k, d_in]`, `P_o [k, d_out]`: the matrices `ProjectionKind::Random` generates.
    p_in: Vec<f32>,
    p_out: Vec<f32>,
}

impl Case {
    fn new(d_in: usize, d_out: usize, k: usize, n: usize, t: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64((d_in * 7919 + d_out * 31 + k) as u64);
        let mut fill = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
        let (a, b) = (fill(n * t * d_in), fill(n * t * d_out));
        let p_in = materialize_projection(SEED, 0, Which::In, k as u64, d_in as u64, Distribution::Gaussian);
        let p_out = materialize_projection(SEED, 0, Which::Out, k as u64, d_out as u64, Distribution::Gaussian);
        Case { d_in, d_out, k, n, t, a, b, p_in, p_out }
    }
    fn group(&self) -> String {
        format!("proj_l{}x{}_k{}", self.d_in, self.d_out, self.k)
    }
    fn width(&self) -> usize {
        self.k * self.k
    }
    fn flat(&self) -> usize {
        self.d_in * self.d_out
    }
    fn dense_bytes(&self) -> u64 {
        (self.width() as u64) * (self.flat() as u64) * 4
    }
    fn train(&self) -> TrainFactors<'_> {
        TrainFactors { a: Tensor::from(&self.a[..]), b: Tensor::from(&self.b[..]), n: self.n as u64, t: self.t as u64, mask: None }
    }
    fn kron(&self, ctx: &Context, dense: bool, out: &mut [f32]) {
        let kind = if dense {
            ProjectionKind::Dense { p_in: Tensor::from(&self.p_in[..]), p_out: Tensor::from(&self.p_out[..]) }
        } else {
            ProjectionKind::Random { seed: SEED, layer: 0, dist: Distribution::Gaussian }
        };
        let spec = ProjectionSpec { k_i: self.k as u64, k_o: self.k as u64, kind };
        let shape = LayerShape::new(self.d_in as u64, self.d_out as u64);
        let cols = OutColumns { offset: 0, row_stride: self.width() as u64 };
        ctx.kron_project(&shape, &self.train(), &spec, &mut TensorMut::from(out), cols, Accumulate::overwrite())
            .expect("kron_project");
    }

    /// LogIX-style: project every token, materialize `[N, T, k_o, k_i]`, sum over T.
    fn logix(&self, out: &mut [f32]) {
        let (nt, k) = (self.n * self.t, self.k);
        let mut ap = vec![0.0f32; nt * k];
        let mut bp = vec![0.0f32; nt * k];
        // A P_iᵀ: lhs[r, c] = a[r·d_in + c], rhs[c, j] = p_in[j·d_in + c].
        mm(nt, k, self.d_in, &mut ap, k, &self.a, self.d_in, 1, &self.p_in, 1, self.d_in, Parallelism::Rayon(0));
        mm(nt, k, self.d_out, &mut bp, k, &self.b, self.d_out, 1, &self.p_out, 1, self.d_out, Parallelism::Rayon(0));
        let kk = k * k;
        let mut outer = vec![0.0f32; nt * kk];
        outer.par_chunks_mut(kk).enumerate().for_each(|(r, dst)| {
            let (a_r, b_r) = (&ap[r * k..(r + 1) * k], &bp[r * k..(r + 1) * k]);
            for (o, row) in dst.chunks_exact_mut(k).enumerate() {
                let bo = b_r[o];
                row.iter_mut().zip(a_r).for_each(|(d, &x)| *d = bo * x);
            }
        });
        out.par_chunks_mut(kk).enumerate().for_each(|(n, dst)| {
            dst.fill(0.0);
            for tok in outer[n * self.t * kk..(n + 1) * self.t * kk].chunks_exact(kk) {
                dst.iter_mut().zip(tok).for_each(|(d, &x)| *d += x);
            }
        });
    }

    /// TRAK-style: materialize `G [N, d_out·d_in]`, then `Ĝ = G · Pᵀ` with `P [k_o·k_i, d_in·d_out]`.
    fn trak(&self, p_dense: &[f32], out: &mut [f32]) {
        let (dd, w) = (self.flat(), self.width());
        let mut g = vec![0.0f32; self.n * dd];
        let threads = rayon::current_num_threads();
        let per_sample = if self.n >= threads { Parallelism::None } else { Parallelism::Rayon(0) };
        g.par_chunks_mut(dd).enumerate().for_each(|(s, gs)| {
            let (a, b) = (&self.a[s * self.t * self.d_in..], &self.b[s * self.t * self.d_out..]);
            // G_n = B_nᵀ A_n: lhs[o, r] = b[r·d_out + o], rhs[r, i] = a[r·d_in + i].
            mm(self.d_out, self.d_in, self.t, gs, self.d_in, b, 1, self.d_out, a, self.d_in, 1, per_sample);
        });
        // Ĝ[n, j] = Σ_c G[n, c] P[j, c]: rhs[c, j] = p[j·dd + c].
        mm(self.n, w, dd, out, w, &g, dd, 1, p_dense, 1, dd, Parallelism::Rayon(0));
    }

    /// The dense Gaussian JL matrix `[k_o·k_i, d_in·d_out]` of the TRAK baseline (entries of
    /// variance 1/k from the crate's counter-based generator, rows in parallel).
    fn dense_matrix(&self) -> Vec<f32> {
        let (w, dd) = (self.width(), self.flat());
        let key = stream_key(SEED ^ 0x7EA4, 0, Which::In);
        let scale = entry_scale(w as u64, Distribution::Gaussian);
        let mut p = vec![0.0f32; w * dd];
        p.par_chunks_mut(dd).enumerate().for_each(|(j, row)| {
            for (c, x) in row.iter_mut().enumerate() {
                *x = entry(key, j as u32, c as u32, Distribution::Gaussian, scale);
            }
        });
        p
    }

    /// `2·N·T·(d_in·k_i + d_out·k_o + k_i·k_o)` (MATH.md §3).
    fn kron_flops(&self) -> f64 {
        2.0 * (self.n * self.t) as f64 * (self.d_in * self.k + self.d_out * self.k + self.k * self.k) as f64
    }
    /// `2·N·T·d_in·d_out` (materialize) `+ 2·N·k·d_in·d_out` (dense projection).
    fn trak_flops(&self) -> f64 {
        2.0 * (self.n * self.t) as f64 * self.flat() as f64 + 2.0 * self.n as f64 * self.width() as f64 * self.flat() as f64
    }
    /// The shape-matched GEMM `[N·T, d_in + d_out + k] × [·, k]`: exactly `kron_flops`.
    fn matched_gemm(&self) -> GemmShape {
        GemmShape { m: self.n * self.t, n: self.k, k: self.d_in + self.d_out + self.k }
    }
    /// A square GEMM with about `kron_flops` (side rounded to a multiple of 16).
    fn square_gemm(&self) -> GemmShape {
        let side = ((self.kron_flops() / 2.0).cbrt() / 16.0).round().max(1.0) as usize * 16;
        GemmShape { m: side, n: side, k: side }
    }
}

#[derive(Clone, Copy)]
struct GemmShape {
    m: usize,
    n: usize,
    k: usize,
}

impl GemmShape {
    fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
    fn label(&self) -> String {
        format!("{}×{}×{}", self.m, self.n, self.k)
    }
}

/// Inputs and output of one GEMM, allocated once.
struct GemmBufs {
    s: GemmShape,
    lhs: Vec<f32>,
    rhs: Vec<f32>,
    dst: Vec<f32>,
}

impl GemmBufs {
    fn new(s: GemmShape) -> Self {
        GemmBufs { s, lhs: vec![0.5; s.m * s.k], rhs: vec![0.25; s.k * s.n], dst: vec![0.0; s.m * s.n] }
    }
    fn run(&mut self) {
        let s = self.s;
        mm(s.m, s.n, s.k, &mut self.dst, s.n, &self.lhs, s.k, 1, &self.rhs, s.n, 1, Parallelism::Rayon(0));
    }
}

// ---------------------------------------------------------------------------------------------
// Methods and records.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    KronRandom,
    KronDense,
    Logix,
    Trak,
    GemmSquare,
    GemmMatched,
}

impl Method {
    fn id(self) -> &'static str {
        match self {
            Method::KronRandom => "kron_project_random",
            Method::KronDense => "kron_project_dense",
            Method::Logix => "logix_einsum",
            Method::Trak => "trak_dense_jl",
            Method::GemmSquare => "gemm_same_flops",
            Method::GemmMatched => "gemm_shape_matched",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Method::KronRandom => "ghostgrad `kron_project` (random P, generated per call)",
            Method::KronDense => "ghostgrad `kron_project` (dense P given)",
            Method::Logix => "LogIX-style: `[N,T,k_o,k_i]` outer products, sum over T",
            Method::Trak => "TRAK-style: materialize G_n, dense JL `[k, d_in·d_out]`",
            Method::GemmSquare => "plain GEMM, same FLOPs (square)",
            Method::GemmMatched => "plain GEMM, shape-matched `[N·T, d_in+d_out+k]×[·, k]`",
        }
    }
}

struct MethodRecord {
    method: Method,
    flops: f64,
    peak_bytes: usize,
    persistent_bytes: u64,
    gemm: Option<GemmShape>,
}

struct CaseRecord {
    group: String,
    d_in: usize,
    d_out: usize,
    k: usize,
    n: usize,
    t: usize,
    methods: Vec<MethodRecord>,
    /// Why TRAK was skipped, if it was.
    trak_skipped: Option<String>,
    /// max |logix − kron| / max |kron|.
    logix_rel_err: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn rel_err(x: &[f32], reference: &[f32]) -> f64 {
    let scale = reference.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    let err = x.iter().zip(reference).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    if scale > 0.0 {
        err / scale
    } else {
        f64::INFINITY
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let (n, t) = if full { (env_or("GHOSTGRAD_BENCH_PROJ_N", 4usize), env_or("GHOSTGRAD_BENCH_PROJ_T", 512usize)) } else { (2, 3) };
    let shapes: Vec<(usize, usize, usize)> = if full {
        vec![(1024, 1024, 16), (1024, 1024, 64), (768, 3072, 16), (768, 3072, 64)]
    } else {
        vec![(12, 20, 4)]
    };
    let budget: u64 = env_or(
        "GHOSTGRAD_BENCH_DENSE_MAX_BYTES",
        (4u64 << 30).min(mem_available().map_or(u64::MAX, |m| m / 4)),
    );
    let measure = Duration::from_secs_f64(env_or("GHOSTGRAD_BENCH_MEASURE_S", 1.0f64));
    let out_dir = criterion_dir();
    let mut crit = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(measure)
        .nresamples(2000)
        .without_plots()
        .output_directory(&out_dir)
        .configure_from_args();

    let ctx = Context::cpu();
    let mut records = Vec::new();
    for &(d_in, d_out, k) in &shapes {
        let case = Case::new(d_in, d_out, k, n, t);
        let w = case.width();
        let mut out = vec![0.0f32; n * w];
        let mut kron_out = vec![0.0f32; n * w];
        let mut logix_out = vec![0.0f32; n * w];
        // Correctness of the baseline that computes the same thing.
        case.kron(&ctx, false, &mut kron_out);
        case.logix(&mut logix_out);
        let mut dense_out = vec![0.0f32; n * w];
        case.kron(&ctx, true, &mut dense_out);
        assert_eq!(dense_out, kron_out, "random and dense projections of the same matrices differ");
        let logix_rel_err = rel_err(&logix_out, &kron_out);
        assert!(logix_rel_err < 1e-4, "LogIX baseline disagrees with kron_project: {logix_rel_err:e}");

        let trak_skipped = (case.dense_bytes() > budget).then(|| {
            format!(
                "dense JL matrix [{} × {}] f32 = {:.1} GB > memory budget {:.1} GB",
                w,
                case.flat(),
                case.dense_bytes() as f64 / 1e9,
                budget as f64 / 1e9
            )
        });
        if let Some(why) = &trak_skipped {
            eprintln!("{}: TRAK baseline skipped: {why}", case.group());
        }
        let p_dense = if trak_skipped.is_none() { case.dense_matrix() } else { Vec::new() };
        if !full && trak_skipped.is_none() {
            // Smoke run: the TRAK baseline against Ĝ[n, j] = Σ_{o,i} P[j, o·d_in + i] Σ_t b[o] a[i] in f64.
            let mut got = vec![0.0f32; n * w];
            case.trak(&p_dense, &mut got);
            let want: Vec<f32> = (0..n * w)
                .map(|x| {
                    let (s, j) = (x / w, x % w);
                    let mut acc = 0.0f64;
                    for o in 0..d_out {
                        for i in 0..d_in {
                            let g: f64 = (s * t..(s + 1) * t).map(|r| case.b[r * d_out + o] as f64 * case.a[r * d_in + i] as f64).sum();
                            acc += p_dense[j * case.flat() + o * d_in + i] as f64 * g;
                        }
                    }
                    acc as f32
                })
                .collect();
            assert!(rel_err(&got, &want) < 1e-5, "TRAK baseline: {got:?} vs {want:?}");
        }
        let (mut sq, mut matched) = (GemmBufs::new(case.square_gemm()), GemmBufs::new(case.matched_gemm()));

        let mut methods = Vec::new();
        let all = [Method::KronRandom, Method::KronDense, Method::Logix, Method::Trak, Method::GemmSquare, Method::GemmMatched];
        let active: Vec<Method> = all.into_iter().filter(|m| *m != Method::Trak || trak_skipped.is_none()).collect();
        let mut run = |m: Method, out: &mut [f32]| match m {
            Method::KronRandom => case.kron(&ctx, false, out),
            Method::KronDense => case.kron(&ctx, true, out),
            Method::Logix => case.logix(out),
            Method::Trak => case.trak(&p_dense, out),
            Method::GemmSquare => sq.run(),
            Method::GemmMatched => matched.run(),
        };
        for &m in &active {
            run(m, &mut out); // warm-up: lazily grown caches count as no one's memory
            let ((), peak) = peak_extra_bytes(|| run(m, &mut out));
            let (flops, gemm) = match m {
                Method::Trak => (case.trak_flops(), None),
                Method::GemmSquare => (case.square_gemm().flops(), Some(case.square_gemm())),
                Method::GemmMatched => (case.matched_gemm().flops(), Some(case.matched_gemm())),
                _ => (case.kron_flops(), None),
            };
            let persistent = if m == Method::Trak { case.dense_bytes() } else { 0 };
            methods.push(MethodRecord { method: m, flops, peak_bytes: peak, persistent_bytes: persistent, gemm });
        }

        let mut group = crit.benchmark_group(case.group());
        group.sampling_mode(SamplingMode::Flat);
        for &m in &active {
            group.bench_function(m.id(), |bch| bch.iter(|| run(m, black_box(&mut out))));
        }
        group.finish();
        drop(p_dense);
        records.push(CaseRecord { group: case.group(), d_in, d_out, k, n, t, methods, trak_skipped, logix_rel_err });
    }
    crit.final_summary();
    if !full {
        return;
    }
    let report = render(&out_dir, &records, measure, budget);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/projection_bench.md");
    std::fs::create_dir_all(path.parent().unwrap()).expect("create target/");
    std::fs::write(&path, report).expect("write the report");
    eprintln!("report written to {}", path.display());
}

// ---------------------------------------------------------------------------------------------
// Report.

#[path = "support/criterion_report.rs"]
mod criterion_report;
use criterion_report::{criterion_dir, fmt_time, read_timing};

fn fmt_bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

fn render(dir: &Path, records: &[CaseRecord], measure: Duration, budget: u64) -> String {
    let mut s = String::new();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default();
    let date = std::env::var("GHOSTGRAD_BENCH_DATE").unwrap_or_else(|_| "(date not given)".into());
    let _ = writeln!(
        s,
        "Generated by `benches/projection.rs` (`cargo bench --no-default-features --bench projection`, run by \
         `bash scripts/bench.sh`); date: {date}; nproc = {nproc}, rayon threads = {}; load average when written: {load}; \
         criterion 10 samples (flat), {:.1} s measurement, 0.3 s warm-up; times are medians [95 % interval].\n",
        rayon::current_num_threads(),
        measure.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "> **Shared, noisy 2-core machine**: other builds ran during this run, so absolute times and GFLOP/s are low \
         and drift; the ratios between methods of one case (timed side by side) are the meaningful part, to within \
         tens of percent.\n"
    );
    let _ = writeln!(
        s,
        "Workload: MATH.md §7 LoGra rows scaled for a CPU (layer widths kept, N and T shrunk), f32, no bias, no mask. \
         Output of every method: `[N, k_o·k_i]`. FLOPs: kron_project and LogIX `2·N·T·(d_in·k_i + d_out·k_o + k_i·k_o)`; \
         TRAK `2·N·T·d_in·d_out + 2·N·k_o·k_i·d_in·d_out`; GEMM `2·m·n·k`. \"% of GEMM rate\": GFLOP/s over the faster of \
         the two plain GEMMs timed in the same case (a square GEMM of about kron_project's FLOPs, and the \
         shape-matched skinny GEMM of exactly its FLOPs); above 100 % means the load on the machine changed between \
         the two measurements. Peak extra memory: counting allocator, \
         peak live heap bytes during one call above the level before (inputs/outputs excluded); persistent: memory the \
         method keeps between calls (the TRAK matrix). TRAK baseline memory budget: {:.1} GB \
         (`GHOSTGRAD_BENCH_DENSE_MAX_BYTES`, default min(4 GiB, MemAvailable/4)).\n",
        budget as f64 / 1e9
    );
    let _ = writeln!(s, "| layer | k_i×k_o | N | T | method | time [95 % CI] | GFLOP | GFLOP/s | % of GEMM rate | time / kron_project (P given) | peak extra memory | persistent memory |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    let mut summary = Vec::new();
    for r in records {
        let timing = |m: Method| read_timing(dir, &r.group, m.id());
        // This machine's GEMM rate during the case: the faster of its two plain GEMMs.
        let gemm_rate = r
            .methods
            .iter()
            .filter(|m| m.gemm.is_some())
            .filter_map(|m| timing(m.method).map(|t| m.flops / t.median))
            .reduce(f64::max);
        // Baselines get their matrices ready-made: compare them with kron_project given P too.
        let kron_time = timing(Method::KronDense).map(|t| t.median);
        let peak = |m: Method| r.methods.iter().find(|x| x.method == m).map(|x| x.peak_bytes as f64);
        let layer = format!("{}→{}", r.d_in, r.d_out);
        for m in &r.methods {
            if m.method == Method::GemmSquare {
                if let Some(why) = &r.trak_skipped {
                    let _ = writeln!(s, "| {layer} | {k}×{k} | {} | {} | TRAK-style | **skipped**: {why} | | | | | | |", r.n, r.t, k = r.k);
                }
            }
            let tm = timing(m.method);
            let label = match m.gemm {
                Some(g) => format!("{} {}", m.method.label(), g.label()),
                None => m.method.label().to_string(),
            };
            let (time, gflops, frac, rel) = match &tm {
                Some(t) => {
                    let rate = m.flops / t.median;
                    (
                        format!("{} [{}, {}]", fmt_time(t.median), fmt_time(t.lo), fmt_time(t.hi)),
                        format!("{:.1}", rate / 1e9),
                        gemm_rate.map_or("–".into(), |g| format!("{:.0} %", 100.0 * rate / g)),
                        kron_time.map_or("–".into(), |k| format!("{:.2}×", t.median / k)),
                    )
                }
                None => ("–".into(), "–".into(), "–".into(), "–".into()),
            };
            let _ = writeln!(
                s,
                "| {layer} | {k}×{k} | {} | {} | {label} | {time} | {:.2} | {gflops} | {frac} | {rel} | {} | {} |",
                r.n,
                r.t,
                m.flops / 1e9,
                fmt_bytes(m.peak_bytes as f64),
                if m.persistent_bytes > 0 { fmt_bytes(m.persistent_bytes as f64) } else { "–".into() },
                k = r.k,
            );
        }
        let ratio = |m: Method| match (timing(m), kron_time) {
            (Some(t), Some(k)) => format!("{:.2}×", t.median / k),
            _ => "–".into(),
        };
        let mem = |m: Method| match (peak(m), peak(Method::KronDense)) {
            (Some(x), Some(k)) if k > 0.0 => format!("{:.1}×", x / k),
            _ => "–".into(),
        };
        let trak = match &r.trak_skipped {
            Some(_) => "TRAK-style skipped (its matrix does not fit)".to_string(),
            None => format!(
                "TRAK-style {} the time, {} the peak extra memory, plus {} persistent",
                ratio(Method::Trak),
                mem(Method::Trak),
                fmt_bytes(r.methods.iter().find(|m| m.method == Method::Trak).map_or(0.0, |m| m.persistent_bytes as f64))
            ),
        };
        summary.push(format!(
            "- {layer}, k_i = k_o = {}: relative to `kron_project` with P given — LogIX-style {} the time and {} the peak \
             extra memory; {trak}; `kron_project` with P generated per call {} the time.",
            r.k,
            ratio(Method::Logix),
            mem(Method::Logix),
            ratio(Method::KronRandom)
        ));
        notes.push(format!("{layer} k={}: max |LogIX − kron_project| / max |kron_project| = {:.1e}", r.k, r.logix_rel_err));
    }
    let _ = writeln!(s, "\nSummary (ratios of medians and of peak extra memory, same case, same process):\n\n{}", summary.join("\n"));
    let _ = writeln!(
        s,
        "\nChecks made by the bench before timing: `kron_project` with random P equals it with the same P given \
         (bit for bit), and the LogIX baseline matches it to f32 rounding — {}. The TRAK baseline computes a \
         different (unstructured) random projection of the same gradients, so its values are not compared.",
        notes.join("; ")
    );
    s
}

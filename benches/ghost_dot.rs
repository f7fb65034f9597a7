//! Benchmarks of the fast CPU backend (`Context::cpu()`) on GPT-2 MLP layer widths
//! (MATH.md §7: 768→3072 and 3072→768, f32), against the naive baseline of MATH.md §6 and the
//! GEMM rate of this machine measured in the same run.
//!
//! For every layer and T ∈ {32, 128, 512} (N training sequences of T tokens, one validation
//! sequence of Q = T rows, `Segments::Single`) it times
//! * `ghost_dot` with `FormRequest::Auto` (recording the form chosen) and with each form forced,
//!   `ghost_dot_dense`, `factored_grad`, `ghost_gram` and `ghost_sqnorm` (both `Auto`);
//! * `naive`: every per-sample gradient `G_n = B_nᵀ A_n` materialized as `[N, d_out, d_in]`, the
//!   validation gradient likewise, then Frobenius dots — written here with the same `gemm` crate
//!   and rayon, as well as that method can be (what users do today);
//! * two multi-threaded f32 GEMMs through the same `gemm` crate, giving this machine's GEMM rate;
//!
//! and measures the peak extra memory of each op with a counting global allocator: the peak of
//! live heap bytes during one call above the level before it (inputs and outputs are allocated
//! beforehand, so they are excluded; the call is made once before measuring, so that lazily
//! grown caches of the GEMM library count as neither side's extra memory).
//!
//! After criterion has run, the bench reads criterion's `estimates.json` files and writes a
//! markdown report (`scripts/bench.sh` points it at `BENCHMARKS.md` through
//! `GHOSTGRAD_BENCH_REPORT`). Knobs: `GHOSTGRAD_BENCH_N` (default 8), `GHOSTGRAD_BENCH_T`
//! (default `32,128,512`), `GHOSTGRAD_BENCH_MEASURE_S` (criterion measurement time per benchmark,
//! default 1), `GHOSTGRAD_BENCH_CMD` / `GHOSTGRAD_BENCH_DATE` (quoted in the report).
//! Run without `--bench` (e.g. `cargo test --benches`), it only smoke-tests one tiny case.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, SamplingMode};
use gemm::Parallelism;
use ghostgrad::{
    Accumulate, Context, Form, FormChoice, FormRequest, LayerShape, QueryFactors, Segments, Tensor, TensorMut,
    TrainFactors,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------------
// Counting allocator: live heap bytes and their peak, for "peak extra memory" of one call.

#[path = "support/peak_alloc.rs"]
mod peak_alloc;

#[global_allocator]
static ALLOC: peak_alloc::CountingAlloc = peak_alloc::CountingAlloc;

use peak_alloc::peak_extra_bytes;

// ---------------------------------------------------------------------------------------------
// One benchmark case: a layer, N training sequences of T tokens, one validation sequence.

struct Case {
    d_in: usize,
    d_out: usize,
    n: usize,
    t: usize,
    q: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    aq: Vec<f32>,
    bq: Vec<f32>,
}

impl Case {
    fn new(d_in: usize, d_out: usize, n: usize, t: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut fill = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
        let q = t;
        Case { d_in, d_out, n, t, q, a: fill(n * t * d_in), b: fill(n * t * d_out), aq: fill(q * d_in), bq: fill(q * d_out) }
    }
    fn layer(&self) -> String {
        format!("{}→{}", self.d_in, self.d_out)
    }
    /// Criterion group name (only `[A-Za-z0-9_]`, so it is also the directory name).
    fn group(&self) -> String {
        format!("l{}x{}_T{}", self.d_in, self.d_out, self.t)
    }
    fn shape(&self) -> LayerShape {
        LayerShape::new(self.d_in as u64, self.d_out as u64)
    }
    fn train(&self) -> TrainFactors<'_> {
        TrainFactors { a: Tensor::from(&self.a[..]), b: Tensor::from(&self.b[..]), n: self.n as u64, t: self.t as u64, mask: None }
    }
    fn query(&self) -> QueryFactors<'_> {
        QueryFactors {
            aq: Tensor::from(&self.aq[..]),
            bq: Tensor::from(&self.bq[..]),
            q: self.q as u64,
            segments: Segments::Single,
            mask: None,
        }
    }
}

/// Outputs and the dense query matrix, allocated before any measured call.
struct Bufs {
    out_n: Vec<f32>,
    out_nn: Vec<f32>,
    /// `M = Bqᵀ Aq` (the validation gradient) for `ghost_dot_dense`.
    m: Vec<f32>,
    /// Output of `factored_grad`.
    fg: Vec<f32>,
}

impl Bufs {
    fn new(c: &Case, ctx: &Context) -> Self {
        let mut m = vec![0.0f32; c.d_in * c.d_out];
        ctx.factored_grad(&c.shape(), &c.query(), None, &mut TensorMut::from(&mut m[..]), None, Accumulate::overwrite())
            .expect("factored_grad");
        Bufs { out_n: vec![0.0; c.n], out_nn: vec![0.0; c.n * c.n], m, fg: vec![0.0; c.d_in * c.d_out] }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Auto,
    Gram,
    DenseQuery,
    Materialize,
    Dense,
    FactoredGrad,
    GhostGram,
    GhostSqnorm,
    Naive,
}

const OPS: [Op; 9] =
    [Op::Auto, Op::Gram, Op::DenseQuery, Op::Materialize, Op::Dense, Op::FactoredGrad, Op::GhostGram, Op::GhostSqnorm, Op::Naive];

impl Op {
    /// Criterion benchmark id (also its directory name).
    fn id(self) -> &'static str {
        match self {
            Op::Auto => "ghost_dot_auto",
            Op::Gram => "ghost_dot_gram",
            Op::DenseQuery => "ghost_dot_dense_query",
            Op::Materialize => "ghost_dot_materialize",
            Op::Dense => "ghost_dot_dense",
            Op::FactoredGrad => "factored_grad",
            Op::GhostGram => "ghost_gram_auto",
            Op::GhostSqnorm => "ghost_sqnorm_auto",
            Op::Naive => "naive_materialize_then_dot",
        }
    }

    /// Runs the op once; returns the form used (ops with a form) and its reason.
    fn run(self, ctx: &Context, c: &Case, bufs: &mut Bufs) -> Option<FormChoice> {
        let acc = Accumulate::overwrite();
        let dot = |form, out: &mut [f32]| {
            ctx.ghost_dot(&c.shape(), &c.train(), &c.query(), &mut TensorMut::from(out), acc, form).expect("ghost_dot")
        };
        match self {
            Op::Auto => Some(dot(FormRequest::Auto, &mut bufs.out_n)),
            Op::Gram => Some(dot(FormRequest::Force(Form::Gram), &mut bufs.out_n)),
            Op::DenseQuery => Some(dot(FormRequest::Force(Form::DenseQuery), &mut bufs.out_n)),
            Op::Materialize => Some(dot(FormRequest::Force(Form::Materialize), &mut bufs.out_n)),
            Op::Dense => {
                let m = Tensor::from(&bufs.m[..]);
                ctx.ghost_dot_dense(&c.shape(), &c.train(), &m, None, &mut TensorMut::from(&mut bufs.out_n[..]), acc)
                    .expect("ghost_dot_dense");
                None
            }
            Op::FactoredGrad => {
                ctx.factored_grad(&c.shape(), &c.query(), None, &mut TensorMut::from(&mut bufs.fg[..]), None, acc)
                    .expect("factored_grad");
                None
            }
            Op::GhostGram => Some(
                ctx.ghost_gram(&c.shape(), &c.train(), &mut TensorMut::from(&mut bufs.out_nn[..]), acc, FormRequest::Auto)
                    .expect("ghost_gram"),
            ),
            Op::GhostSqnorm => Some(
                ctx.ghost_sqnorm(&c.shape(), &c.train(), &mut TensorMut::from(&mut bufs.out_n[..]), acc, FormRequest::Auto)
                    .expect("ghost_sqnorm"),
            ),
            Op::Naive => {
                naive_ghost_dot(c, &mut bufs.out_n);
                None
            }
        }
    }

    /// FLOPs of the op in the form it used, by the formulas of MATH.md §1 (the useful work of
    /// that algorithm, not counting conversions or zero padding).
    fn flops(self, c: &Case, form: Option<Form>) -> f64 {
        let (n, t, q) = (c.n as f64, c.t as f64, c.q as f64);
        let (di, dout) = (c.d_in as f64, c.d_out as f64);
        let dd = di * dout;
        let dot_flops = |form| match form {
            Form::Gram => 2.0 * n * t * q * (di + dout),
            Form::DenseQuery => 2.0 * q * dd + 2.0 * n * t * dd,
            Form::Materialize => 2.0 * (n * t + q) * dd + 2.0 * n * dd,
        };
        match self {
            Op::Auto | Op::Gram | Op::DenseQuery | Op::Materialize => dot_flops(form.expect("form")),
            Op::Dense => 2.0 * n * t * dd,
            Op::FactoredGrad => 2.0 * q * dd,
            Op::GhostGram => match form.expect("form") {
                Form::Gram => 2.0 * n * n * t * t * (di + dout),
                _ => 2.0 * n * t * dd + 2.0 * n * n * dd,
            },
            Op::GhostSqnorm => match form.expect("form") {
                Form::Gram => 2.0 * n * t * t * (di + dout),
                _ => 2.0 * n * t * dd + 2.0 * n * dd,
            },
            Op::Naive => dot_flops(Form::Materialize),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The naive baseline (MATH.md §6): materialize every G_n, then dot.

/// `dst[d_out, d_in] = Σ_r b_rᵀ a_r` over `rows` rows of `a [rows, d_in]`, `b [rows, d_out]`
/// (row-major): a GEMM with `k = rows`.
fn outer_sum(dst: &mut [f32], a: &[f32], b: &[f32], rows: usize, d_in: usize, d_out: usize, par: Parallelism) {
    assert_eq!(dst.len(), d_out * d_in);
    assert_eq!(a.len(), rows * d_in);
    assert_eq!(b.len(), rows * d_out);
    // SAFETY: dst is d_out×d_in row-major (col stride 1, row stride d_in); lhs = Bᵀ reads
    // b[k*d_out + m] (col stride d_out along k, row stride 1 along m); rhs = A reads
    // a[k*d_in + j] (col stride 1 along j, row stride d_in along k): all within the asserted
    // lengths. read_dst = false, so dst's previous contents are ignored.
    unsafe {
        gemm::gemm(
            d_out,
            d_in,
            rows,
            dst.as_mut_ptr(),
            1,
            d_in as isize,
            false,
            b.as_ptr(),
            d_out as isize,
            1,
            a.as_ptr(),
            1,
            d_in as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    // 16 independent accumulators so the loop vectorizes; summed in f64 at the end.
    let mut acc = [0.0f32; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (xs, ys) in xc.zip(yc) {
        for k in 0..16 {
            acc[k] += xs[k] * ys[k];
        }
    }
    (acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64) as f32
}

/// `out[n] = <G_n, Gq>` by materializing `G [N, d_out, d_in]` and `Gq [d_out, d_in]`.
fn naive_ghost_dot(c: &Case, out: &mut [f32]) {
    let dd = c.d_in * c.d_out;
    let mut g = vec![0.0f32; c.n * dd];
    // One single-threaded GEMM per sample, samples in parallel (N ≥ threads here).
    g.par_chunks_mut(dd).enumerate().for_each(|(s, gs)| {
        let rows = s * c.t..(s + 1) * c.t;
        outer_sum(
            gs,
            &c.a[rows.start * c.d_in..rows.end * c.d_in],
            &c.b[rows.start * c.d_out..rows.end * c.d_out],
            c.t,
            c.d_in,
            c.d_out,
            Parallelism::None,
        );
    });
    let mut gq = vec![0.0f32; dd];
    outer_sum(&mut gq, &c.aq, &c.bq, c.q, c.d_in, c.d_out, Parallelism::Rayon(0));
    // Dots: each G_n split into chunks so that all threads work whatever N is.
    const CHUNK: usize = 1 << 16;
    let per_sample = dd.div_ceil(CHUNK);
    let partial: Vec<f64> = (0..c.n * per_sample)
        .into_par_iter()
        .map(|i| {
            let (s, k) = (i / per_sample, i % per_sample);
            let cols = k * CHUNK..((k + 1) * CHUNK).min(dd);
            dot_f32(&g[s * dd + cols.start..s * dd + cols.end], &gq[cols]) as f64
        })
        .collect();
    for (o, p) in out.iter_mut().zip(partial.chunks(per_sample)) {
        *o = p.iter().sum::<f64>() as f32;
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM rate.

struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
}

impl GemmCase {
    fn id(&self) -> String {
        format!("gemm_{}x{}x{}", self.m, self.n, self.k)
    }
    fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
}

fn gemm_f32(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n);
    // SAFETY: all three matrices are row-major with the asserted sizes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements kept for the report.

struct OpRecord {
    op: Op,
    form: Option<Form>,
    reason: String,
    flops: f64,
    peak_bytes: usize,
}

struct CaseRecord {
    layer: String,
    group: String,
    t: usize,
    n: usize,
    q: usize,
    ops: Vec<OpRecord>,
    /// max_n |auto − naive| / max_n |naive|.
    rel_err_auto_vs_naive: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let (n, ts, gemms) = if full {
        let ts: Vec<usize> = std::env::var("GHOSTGRAD_BENCH_T")
            .unwrap_or_else(|_| "32,128,512".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let gemms = vec![GemmCase { m: 1024, n: 1024, k: 1024 }, GemmCase { m: 768, n: 3072, k: 512 }];
        (env_or("GHOSTGRAD_BENCH_N", 8usize), ts, gemms)
    } else {
        (2, vec![4], vec![GemmCase { m: 64, n: 64, k: 64 }])
    };
    let layers: Vec<(usize, usize)> = if full { vec![(768, 3072), (3072, 768)] } else { vec![(24, 48)] };
    let measure = Duration::from_secs_f64(env_or("GHOSTGRAD_BENCH_MEASURE_S", 1.0f64));
    let out_dir = criterion_dir();

    let mut crit = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(measure)
        .nresamples(2000)
        .without_plots()
        .output_directory(&out_dir)
        .configure_from_args();

    // GEMM rate, through the same gemm crate and thread pool as everything else.
    {
        let mut group = crit.benchmark_group("gemm_rate");
        group.sampling_mode(SamplingMode::Flat);
        for g in &gemms {
            let lhs = vec![0.5f32; g.m * g.k];
            let rhs = vec![0.25f32; g.k * g.n];
            let mut dst = vec![0.0f32; g.m * g.n];
            group.bench_function(g.id(), |bch| bch.iter(|| gemm_f32(black_box(&mut dst), &lhs, &rhs, g.m, g.n, g.k)));
        }
        group.finish();
    }

    let ctx = Context::cpu();
    let mut records = Vec::new();
    for &(d_in, d_out) in &layers {
        for &t in &ts {
            let case = Case::new(d_in, d_out, n, t, (d_in * 1_000_003 + t) as u64);
            let mut bufs = Bufs::new(&case, &ctx);
            // Memory (and forms), each op warmed up once first.
            let mut ops = Vec::new();
            let mut auto_out = Vec::new();
            let mut naive_out = Vec::new();
            for op in OPS {
                op.run(&ctx, &case, &mut bufs);
                let (choice, peak) = peak_extra_bytes(|| op.run(&ctx, &case, &mut bufs));
                match op {
                    Op::Auto => auto_out = bufs.out_n.clone(),
                    Op::Naive => naive_out = bufs.out_n.clone(),
                    _ => {}
                }
                let form = choice.as_ref().map(|c| c.form);
                ops.push(OpRecord {
                    op,
                    form,
                    reason: choice.map(|c| c.reason).unwrap_or_default(),
                    flops: op.flops(&case, form),
                    peak_bytes: peak,
                });
            }
            let scale = naive_out.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
            let err = auto_out.iter().zip(&naive_out).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
            let rel_err = if scale > 0.0 { err / scale } else { err };

            let mut group = crit.benchmark_group(case.group());
            group.sampling_mode(SamplingMode::Flat);
            {
                // The GEMM rate again, minutes from the ops it is compared with (the load drifts).
                let g = &gemms[0];
                let (lhs, rhs, mut dst) = (vec![0.5f32; g.m * g.k], vec![0.25f32; g.k * g.n], vec![0.0f32; g.m * g.n]);
                group.bench_function(g.id(), |bch| bch.iter(|| gemm_f32(black_box(&mut dst), &lhs, &rhs, g.m, g.n, g.k)));
            }
            for op in OPS {
                group.bench_function(op.id(), |bch| bch.iter(|| black_box(op.run(&ctx, &case, &mut bufs))));
            }
            group.finish();
            records.push(CaseRecord {
                layer: case.layer(),
                group: case.group(),
                t: case.t,
                n: case.n,
                q: case.q,
                ops,
                rel_err_auto_vs_naive: rel_err,
            });
        }
    }
    crit.final_summary();

    if !full {
        return;
    }
    let report = render_report(&out_dir, &gemms, &records, measure);
    let path = std::env::var_os("GHOSTGRAD_BENCH_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| out_dir.join("ghostgrad_report.md"));
    let report = keep_gpu_section(&path, report);
    std::fs::write(&path, report).expect("write report");
    eprintln!("report written to {}", path.display());
}

// ---------------------------------------------------------------------------------------------
// Report.

const GPU_HEADING: &str = "## Modeled GPU metrics (PTX interpreter)";

#[path = "support/criterion_report.rs"]
mod criterion_report;
use criterion_report::{criterion_dir, fmt_time, read_timing};

fn fmt_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

fn fmt_ratio(num: f64, den: f64) -> String {
    if den <= 0.0 {
        "∞".into()
    } else {
        format!("{:.1}×", num / den)
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn op_label(op: Op) -> &'static str {
    match op {
        Op::Auto => "ghost_dot (Auto)",
        Op::Gram => "ghost_dot (gram forced)",
        Op::DenseQuery => "ghost_dot (dense-query forced)",
        Op::Materialize => "ghost_dot (materialize forced)",
        Op::Dense => "ghost_dot_dense (M given)",
        Op::FactoredGrad => "factored_grad",
        Op::GhostGram => "ghost_gram (Auto)",
        Op::GhostSqnorm => "ghost_sqnorm (Auto)",
        Op::Naive => "naive: materialize G_n, then dot",
    }
}

fn render_report(dir: &Path, gemms: &[GemmCase], records: &[CaseRecord], measure: Duration) -> String {
    let mut s = String::new();
    let date = std::env::var("GHOSTGRAD_BENCH_DATE").unwrap_or_else(|_| "(date not given)".into());
    let cmd = std::env::var("GHOSTGRAD_BENCH_CMD")
        .unwrap_or_else(|_| "CARGO_TARGET_DIR=target-bench cargo bench --no-default-features --bench ghost_dot".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(s, "# ghostgrad benchmarks: fast CPU backend\n");
    let _ = writeln!(
        s,
        "Generated from one run of the criterion benches in `benches/ghost_dot.rs` (do not edit by hand; \
         rerun `bash scripts/bench.sh`).\n"
    );
    let _ = writeln!(s, "- command: `{cmd}`");
    let _ = writeln!(s, "- date: {date}");
    let _ = writeln!(
        s,
        "- machine: {} — nproc = {nproc}, rayon threads = {}; load average when the report was written: {}",
        cpu_model(),
        rayon::current_num_threads(),
        load_average()
    );
    let _ = writeln!(
        s,
        "- criterion: 10 samples (flat sampling), {:.1} s measurement, 0.5 s warm-up per benchmark; times are \
         criterion's median per call, [95 % interval of the median] where shown",
        measure.as_secs_f64()
    );
    let _ = writeln!(s, "- workload: f32, `Context::cpu()`, N training sequences of T tokens, one validation sequence of Q = T rows (`Segments::Single`), no bias, no mask");
    let _ = writeln!(
        s,
        "\n> **These are CPU timings on a noisy, shared 2-core machine** (other jobs ran at the same time). \
         Absolute times vary from run to run; read the ratios, which come from benchmarks run side by side \
         in the same process minutes apart, and even those only to within tens of percent.\n"
    );

    // GEMM rate.
    let _ = writeln!(s, "## GEMM rate of this machine\n");
    let _ = writeln!(s, "f32, row-major, `gemm` 0.19 with `Parallelism::Rayon(0)` (all threads), same process as the ops below.\n");
    let _ = writeln!(s, "| GEMM m×n×k | time | GFLOP/s |");
    let _ = writeln!(s, "|---|---|---|");
    let mut rate = 0.0f64;
    for g in gemms {
        match read_timing(dir, "gemm_rate", &g.id()) {
            Some(tm) => {
                let r = g.flops() / tm.median / 1e9;
                rate = rate.max(r);
                let _ = writeln!(s, "| {}×{}×{} | {} | {:.1} |", g.m, g.n, g.k, fmt_time(tm.median), r);
            }
            None => {
                let _ = writeln!(s, "| {}×{}×{} | – | – |", g.m, g.n, g.k);
            }
        }
    }
    let _ = writeln!(s, "\nBest of these: **{rate:.1} GFLOP/s**.\n");
    // The same {g0} GEMM timed again inside every case's group, just before its ops: the
    // machine's load drifts over the run, so each op is compared with the rate measured next to it.
    let g0 = &gemms[0];
    let local_rate = |group: &str| read_timing(dir, group, &g0.id()).map(|t| g0.flops() / t.median / 1e9);
    let _ = writeln!(
        s,
        "The {}×{}×{} GEMM is timed again at the start of every case below (the load on this machine drifts during the \
         run); each op's \"% of GEMM rate\" uses the rate measured next to it, or the best rate above when missing.\n",
        g0.m, g0.n, g0.k
    );
    let _ = writeln!(s, "| case | GEMM GFLOP/s measured with it |");
    let _ = writeln!(s, "|---|---|");
    for r in records {
        let _ = writeln!(
            s,
            "| {} T={} | {} |",
            r.layer,
            r.t,
            local_rate(&r.group).map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(s);

    // Summary: auto vs naive.
    let _ = writeln!(s, "## Ghost dot-products (Auto) vs the naive baseline\n");
    let _ = writeln!(
        s,
        "Naive (MATH.md §6): materialize every per-sample gradient `G_n = B_nᵀ A_n` as `[N, d_out, d_in]` and the \
         validation gradient, then Frobenius dots; written in the bench with the same `gemm` crate (one GEMM per \
         sample, samples in parallel) and rayon. Peak extra memory: the peak of live heap bytes during one call \
         above the level before it (counting `#[global_allocator]`; inputs and outputs excluded). Relative error: \
         `max_n |auto − naive| / max_n |naive|`.\n"
    );
    let _ = writeln!(s, "| layer | N | T | Q | auto form | auto time | naive time | speedup (naive/auto) | auto peak extra | naive peak extra | memory ratio (naive/auto) | rel. error |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    struct Verdict {
        label: String,
        t: usize,
        speedup: Option<f64>,
        mem_ratio: f64,
    }
    let mut verdicts = Vec::new();
    for r in records {
        let auto = r.ops.iter().find(|o| o.op == Op::Auto).expect("auto");
        let naive = r.ops.iter().find(|o| o.op == Op::Naive).expect("naive");
        let ta = read_timing(dir, &r.group, Op::Auto.id());
        let tn = read_timing(dir, &r.group, Op::Naive.id());
        let speedup = match (&ta, &tn) {
            (Some(a), Some(n)) => Some(n.median / a.median),
            _ => None,
        };
        let mem_ratio = if auto.peak_bytes == 0 { f64::INFINITY } else { naive.peak_bytes as f64 / auto.peak_bytes as f64 };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1e} |",
            r.layer,
            r.n,
            r.t,
            r.q,
            auto.form.map(|f| f.to_string()).unwrap_or_default(),
            ta.as_ref().map(|t| fmt_time(t.median)).unwrap_or_else(|| "–".into()),
            tn.as_ref().map(|t| fmt_time(t.median)).unwrap_or_else(|| "–".into()),
            speedup.map(|x| format!("**{x:.1}×**")).unwrap_or_else(|| "–".into()),
            fmt_bytes(auto.peak_bytes),
            fmt_bytes(naive.peak_bytes),
            fmt_ratio(naive.peak_bytes as f64, auto.peak_bytes as f64),
            r.rel_err_auto_vs_naive,
        );
        verdicts.push(Verdict { label: format!("{} T={}", r.layer, r.t), t: r.t, speedup, mem_ratio });
    }
    let _ = writeln!(s, "\nWhy Auto chose its form (the cost model's reason, `FormChoice::reason`):\n");
    for r in records {
        let auto = r.ops.iter().find(|o| o.op == Op::Auto).expect("auto");
        let _ = writeln!(s, "- {} T={}: {}", r.layer, r.t, auto.reason);
    }

    // Every op.
    let _ = writeln!(s, "\n## Every op\n");
    let _ = writeln!(
        s,
        "GFLOP: the useful FLOPs of the form used, by the MATH.md §1 formulas (Gram `2·N·T·Q·(d_in+d_out)`; dense-query \
         `2·Q·d_in·d_out + 2·N·T·d_in·d_out`; materialize `2·(N·T+Q)·d_in·d_out + 2·N·d_in·d_out`; `ghost_dot_dense` \
         `2·N·T·d_in·d_out`; `factored_grad` `2·Q·d_in·d_out`; `ghost_gram` Gram `2·N²·T²·(d_in+d_out)`, materialize \
         `2·N·T·d_in·d_out + 2·N²·d_in·d_out`; `ghost_sqnorm` Gram `2·N·T²·(d_in+d_out)`, materialize \
         `2·N·T·d_in·d_out + 2·N·d_in·d_out`). % of GEMM: GFLOP/s over the GEMM rate measured with the case (above).\n"
    );
    let _ = writeln!(s, "| layer | T | op | form | time [95 % CI] | GFLOP | GFLOP/s | % of GEMM rate | peak extra memory |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let mut slow_ops = Vec::new();
    let mut op_count = 0;
    for r in records {
        let rate = local_rate(&r.group).unwrap_or(rate);
        for o in &r.ops {
            let tm = read_timing(dir, &r.group, o.op.id());
            let (time, gflops, frac) = match &tm {
                Some(t) => {
                    let g = o.flops / t.median / 1e9;
                    let frac = if rate > 0.0 { g / rate } else { f64::NAN };
                    if o.op != Op::Naive {
                        op_count += 1;
                        if frac < 0.7 {
                            slow_ops.push(format!("{} T={} {} ({:.0} %)", r.layer, r.t, op_label(o.op), frac * 100.0));
                        }
                    }
                    (format!("{} [{}, {}]", fmt_time(t.median), fmt_time(t.lo), fmt_time(t.hi)), format!("{g:.1}"), format!("{:.0} %", frac * 100.0))
                }
                None => ("–".into(), "–".into(), "–".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
                r.layer,
                r.t,
                op_label(o.op),
                o.form.map(|f| f.to_string()).unwrap_or_else(|| "–".into()),
                time,
                o.flops / 1e9,
                gflops,
                frac,
                fmt_bytes(o.peak_bytes)
            );
        }
    }

    // Targets.
    let _ = writeln!(s, "\n## Acceptance targets\n");
    let timed: Vec<&Verdict> = verdicts.iter().filter(|v| v.speedup.is_some()).collect();
    let slower: Vec<String> =
        timed.iter().filter(|v| v.speedup.unwrap() < 1.0).map(|v| format!("{} ({:.2}×)", v.label, v.speedup.unwrap())).collect();
    let short: Vec<&&Verdict> = timed.iter().filter(|v| v.t <= 128).collect();
    let short_miss: Vec<String> =
        short.iter().filter(|v| v.speedup.unwrap() < 5.0).map(|v| format!("{} ({:.1}×)", v.label, v.speedup.unwrap())).collect();
    let mem_miss: Vec<String> =
        verdicts.iter().filter(|v| v.mem_ratio < 20.0).map(|v| format!("{} ({:.1}×)", v.label, v.mem_ratio)).collect();
    let verdict = |ok: bool| if ok { "**holds**" } else { "**does not hold**" };
    let min_speedup = timed.iter().map(|v| v.speedup.unwrap()).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        s,
        "- Auto never slower than naive: {} (smallest speedup {:.2}× over {} cases){}",
        verdict(slower.is_empty() && !timed.is_empty()),
        min_speedup,
        timed.len(),
        if slower.is_empty() { String::new() } else { format!("; slower: {}", slower.join(", ")) }
    );
    let min_short = short.iter().map(|v| v.speedup.unwrap()).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        s,
        "- ≥ 5× faster than naive where T ≤ 128: {} (smallest {:.1}× over {} cases){}",
        verdict(short_miss.is_empty() && !short.is_empty()),
        min_short,
        short.len(),
        if short_miss.is_empty() { String::new() } else { format!("; below: {}", short_miss.join(", ")) }
    );
    let min_mem = verdicts.iter().map(|v| v.mem_ratio).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        s,
        "- ≥ 20× less peak extra memory than naive: {} (smallest ratio {}){}",
        verdict(mem_miss.is_empty() && !verdicts.is_empty()),
        if min_mem.is_infinite() { "∞: Auto allocated nothing".into() } else { format!("{min_mem:.1}×") },
        if mem_miss.is_empty() { String::new() } else { format!("; below: {}", mem_miss.join(", ")) }
    );
    let _ = writeln!(
        s,
        "- Each op ≥ 70 % of the GEMM rate (goal): {} ({} of {} op/case pairs below){}",
        verdict(slow_ops.is_empty() && op_count > 0),
        slow_ops.len(),
        op_count,
        if slow_ops.is_empty() { String::new() } else { format!(": {}", slow_ops.join("; ")) }
    );
    let _ = writeln!(s, "\n{GPU_HEADING}\n\npending: filled by the interpreter benches");
    s
}

/// Keeps the GPU section of an existing report (filled by another bench) instead of the
/// placeholder, so that regenerating the CPU numbers does not erase it.
fn keep_gpu_section(path: &Path, fresh: String) -> String {
    let Ok(old) = std::fs::read_to_string(path) else { return fresh };
    let Some(start) = old.find(GPU_HEADING) else { return fresh };
    let body_start = start + GPU_HEADING.len();
    let end = old[body_start..].find("\n## ").map(|i| body_start + i + 1).unwrap_or(old.len());
    let section = &old[start..end];
    if section.contains("pending: filled by the interpreter benches") {
        return fresh;
    }
    let at = fresh.find(GPU_HEADING).expect("heading");
    let mut out = fresh[..at].to_string();
    out.push_str(section.trim_end());
    out.push('\n');
    out
}

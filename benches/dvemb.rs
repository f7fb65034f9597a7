//! DVEmb reverse sweep on the fast CPU backend (`Context::cpu()`), MATH.md §5/§7: the per-step
//! recursion (memory-bound: every step reads `M` twice and writes it once, `k²` floats, for
//! `4·b·k²` flops) against the blocked form (one pass over `M` per block of `R` rows).
//!
//! Cases: `k ∈ {256, 1024}`, batch 16 per step, `S` steps chosen so that one sweep does a few
//! GFLOP (each criterion sample is one whole sweep from `M = 0`). Throughput is reported in
//! "elements" = the per-step recursion's flops `4·R·k²`, so criterion's elem/s **is** the
//! effective FLOP rate and rates of different algorithms compare directly as speed. The table
//! printed at the end also gives the executed-flop rate of the blocked form (which does
//! `≈ 4·P·k` more, P = row pairs of different steps in a block).
//!
//! With the `interp` feature it then prints a **modeled** H100 comparison of the two GPU plans
//! (k = 1024, 16 steps of 16 rows): the PTX interpreter executes 2 CTAs of every launch and
//! scales its counters; modeled time per launch = max(warp instructions / issue rate, global
//! sectors × 32 B / 3.35 TB/s), no caches (so re-reads count as DRAM traffic). A model, not a
//! measurement — no GPU was used.
//!
//! Algorithms: `PerStep`, `Auto`, and `MaxRows(r)` for every r in `GHOSTGRAD_BENCH_DVEMB_ROWS`
//! (default `64,256`; values equal to Auto's choice are skipped).
//! Knobs: `GHOSTGRAD_BENCH_MEASURE_S` (criterion measurement time per case, default 3).
//! Without `--bench` (e.g. `cargo test --benches`) it smoke-tests one tiny case.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use ghostgrad::dvemb::{auto_block_rows, Blocking, DvembReport, DvembSteps, LossReduction};
use ghostgrad::{Context, OutColumns, Tensor, TensorMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    k: usize,
    grads: Vec<f32>,
    rows: Vec<u64>,
    etas: Vec<f64>,
}

impl Case {
    fn new(k: usize, batch: usize, steps: usize) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(k as u64);
        let scale = 1.0 / (k as f32).sqrt();
        let grads = (0..batch * steps * k).map(|_| (r.random::<f32>() - 0.5) * scale).collect();
        Case { k, grads, rows: vec![batch as u64; steps], etas: vec![0.01; steps] }
    }

    fn run(&self, ctx: &Context, blocking: Blocking, m: &mut [f32], e: &mut [f32]) -> DvembReport {
        m.fill(0.0);
        let steps = DvembSteps { rows: &self.rows, etas: &self.etas, loss: LossReduction::Mean };
        ctx.dvemb_block(
            &Tensor::from(&self.grads[..]),
            OutColumns { offset: 0, row_stride: self.k as u64 },
            self.k as u64,
            &steps,
            &mut TensorMut::from(m),
            &mut TensorMut::from(e),
            blocking,
        )
        .expect("dvemb_block")
    }
}

fn label(b: Blocking) -> String {
    match b {
        Blocking::PerStep => "per_step".into(),
        Blocking::MaxRows(r) => format!("blocked_r{r}"),
        Blocking::Auto => "auto".into(),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let measure = Duration::from_secs_f64(std::env::var("GHOSTGRAD_BENCH_MEASURE_S").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0));
    // (k, batch, steps): 4·R·k² = 4.3 GFLOP (k = 1024, R = 1024) and 2.1 GFLOP (k = 256, R = 8192).
    let extra_rows: Vec<u64> = std::env::var("GHOSTGRAD_BENCH_DVEMB_ROWS")
        .unwrap_or_else(|_| "64,256".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let cases: Vec<(usize, usize, usize)> = if full { vec![(256, 16, 512), (1024, 16, 64)] } else { vec![(24, 3, 5)] };
    let mut crit = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(measure)
        .without_plots()
        .configure_from_args();
    let ctx = Context::cpu();
    let mut summary = Vec::new();
    for &(k, batch, steps) in &cases {
        let case = Case::new(k, batch, steps);
        let r = batch * steps;
        let mut blockings = vec![Blocking::PerStep, Blocking::Auto];
        blockings.extend(extra_rows.iter().filter(|&&r| r != auto_block_rows(k as u64)).map(|&r| Blocking::MaxRows(r)));
        let (mut m, mut e) = (vec![0.0f32; k * k], vec![0.0f32; r * k]);
        let mut group = crit.benchmark_group(format!("dvemb_k{k}_b{batch}_s{steps}"));
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements((4 * r * k * k) as u64));
        for &b in &blockings {
            group.bench_function(label(b), |bch| bch.iter(|| black_box(case.run(&ctx, b, &mut m, &mut e))));
        }
        group.finish();
        // One timed sweep per algorithm for the executed-flop table (criterion's numbers are
        // the ones to quote; this only adds the executed rate).
        for &b in &blockings {
            let t0 = Instant::now();
            let rep = case.run(&ctx, b, &mut m, &mut e);
            let s = t0.elapsed().as_secs_f64();
            summary.push(format!(
                "| {k} | {batch} | {steps} | {} | {:.3} | {:.1} | {:.1} |",
                label(b),
                s,
                rep.recursion_flops / s / 1e9,
                rep.executed_flops / s / 1e9
            ));
        }
    }
    crit.final_summary();
    #[cfg(feature = "interp")]
    gpu_model(if full { (1024, 16, 16) } else { (24, 3, 4) });
    println!("\n| k | batch | steps | algorithm | one sweep (s) | effective GFLOP/s (4·R·k²) | executed GFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    for line in summary {
        println!("{line}");
    }
}

/// Modeled H100 time of the per-step and blocked GPU plans (see the module docs).
#[cfg(feature = "interp")]
fn gpu_model((k, batch, steps): (usize, usize, usize)) {
    use ghostgrad::runtime::interp::InterpRuntime;
    use ghostgrad::DType;
    use ptx_interp::Options;
    use std::sync::Arc;
    // H100 SXM: 132 SMs × 4 schedulers × 1.98 GHz warp issue; 3.35 TB/s DRAM.
    const ISSUE_PER_S: f64 = 132.0 * 4.0 * 1.98e9;
    const DRAM_BYTES_PER_S: f64 = 3.35e12;
    let case = Case::new(k, batch, steps);
    let r = batch * steps;
    println!("\nModeled H100 (PTX interpreter counters, 2 CTAs per launch executed, no caches): k = {k}, {steps} steps × {batch} rows");
    println!("| algorithm | launches | modeled DRAM bytes | warp instructions | modeled time (µs) | effective TFLOP/s (4·R·k²) |");
    println!("|---|---|---|---|---|---|");
    for b in [Blocking::PerStep, Blocking::MaxRows(r as u64)] {
        let rt = Arc::new(InterpRuntime::new().expect("kernels built"));
        rt.set_options(Options { sample_ctas: Some(2), initcheck: false, racecheck: false, global_racecheck: false, ..Options::default() })
            .unwrap();
        let ctx = Context::with_runtime(rt.clone());
        let g = rt.upload(&case.grads, DType::F32).unwrap();
        let mut m = rt.alloc_f32((k * k) as u64, 0.0).unwrap();
        let mut e = rt.alloc_f32((r * k) as u64, 0.0).unwrap();
        let st = DvembSteps { rows: &case.rows, etas: &case.etas, loss: LossReduction::Mean };
        let rep = ctx
            .dvemb_block(&g.view().into(), OutColumns { offset: 0, row_stride: k as u64 }, k as u64, &st, &mut m.view_mut().into(), &mut e.view_mut().into(), b)
            .expect("interp dvemb");
        let recs = rt.take_records().unwrap();
        let (mut bytes, mut instr, mut time) = (0.0f64, 0.0f64, 0.0f64);
        for rec in &recs {
            let by = rec.report.counters.global_sectors() as f64 * 32.0;
            let wi = rec.report.counters.warp_instructions as f64;
            bytes += by;
            instr += wi;
            time += (wi / ISSUE_PER_S).max(by / DRAM_BYTES_PER_S);
        }
        println!(
            "| {} | {} | {:.3e} | {:.3e} | {:.2} | {:.2} |",
            label(b),
            recs.len(),
            bytes,
            instr,
            time * 1e6,
            rep.recursion_flops / time / 1e12
        );
    }
}

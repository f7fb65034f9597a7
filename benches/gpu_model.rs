//! Modeled GPU metrics of every kernel at benchmark shapes, from the PTX interpreter's counters
//! (a sample of CTAs executed, counters scaled to the whole grid): global sectors per request
//! and total modeled DRAM traffic against the minimum-bytes floor of MATH.md, shared-memory bank
//! conflicts, SIMT efficiency, and a modeled H100 time. Everything here is a **model** computed
//! from PTX-level counts — no caches, no latency, no ptxas transformations — not a measurement.
//!
//! `cargo bench --bench gpu_model` writes `target/gpu_model.md` (spliced into BENCHMARKS.md by
//! scripts/bench.sh). Under `cargo test` (no `--bench` flag) it runs a small smoke shape instead.

use std::fmt::Write as _;
use std::sync::Arc;

use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime, LaunchRecord};
use ghostgrad::{Accumulate, Context, DType, Form, FormRequest, LayerShape, QueryFactors, Segments, TrainFactors};
use half::bf16;
use ptx_interp::Options;

/// H100 SXM: 132 SMs × 4 warp schedulers × 1.98 GHz boost — one warp instruction per scheduler
/// per clock is the issue bound of a CUDA-core kernel.
const H100_WARP_ISSUE_PER_S: f64 = 132.0 * 4.0 * 1.98e9;

struct Shape {
    name: &'static str,
    n: u64,
    t: u64,
    q: u64,
    d_in: u64,
    d_out: u64,
}

fn data(len: u64, salt: u64) -> Vec<bf16> {
    // A cheap deterministic pattern: values never matter for the counters, only addresses do.
    (0..len).map(|i| bf16::from_f32((((i * 2654435761 + salt) % 1997) as f32 / 1997.0) - 0.5)).collect()
}

fn upload(rt: &InterpRuntime, v: &[bf16]) -> InterpBuffer {
    rt.upload(v, DType::BF16).unwrap()
}

struct Row {
    op: String,
    rec: LaunchRecord,
    flops: f64,
    min_bytes: f64,
}

fn run_shape(s: &Shape, sample: u32, out: &mut String) {
    let rt = Arc::new(InterpRuntime::new().expect("kernels built"));
    rt.set_options(Options {
        sample_ctas: Some(sample),
        initcheck: false, // sampled launches leave most partial sums unwritten
        racecheck: false,
        global_racecheck: false,
        ..Options::default()
    })
    .unwrap();
    let ctx = Context::with_runtime(rt.clone());
    let shape = LayerShape::new(s.d_in, s.d_out);
    let a = upload(&rt, &data(s.n * s.t * s.d_in, 1));
    let b = upload(&rt, &data(s.n * s.t * s.d_out, 2));
    let aq = upload(&rt, &data(s.q * s.d_in, 3));
    let bq = upload(&rt, &data(s.q * s.d_out, 4));
    let train = TrainFactors { a: a.view().into(), b: b.view().into(), n: s.n, t: s.t, mask: None };
    let query = QueryFactors { aq: aq.view().into(), bq: bq.view().into(), q: s.q, segments: Segments::Single, mask: None };
    let (n, t, q, di, dout) = (s.n as f64, s.t as f64, s.q as f64, s.d_in as f64, s.d_out as f64);
    let se = 2.0;
    let mut rows = Vec::new();
    let mut result = rt.alloc_f32(s.n, 0.0).unwrap();
    for form in [Form::Gram, Form::DenseQuery, Form::Materialize] {
        rt.take_records().unwrap();
        ctx.ghost_dot(&shape, &train, &query, &mut result.view_mut().into(), Accumulate::overwrite(), FormRequest::Force(form))
            .unwrap();
        for rec in rt.take_records().unwrap() {
            let k = rec.plan.kernel.clone();
            let (flops, min_bytes) = if k.starts_with("ghost_dot_gram") {
                (2.0 * n * t * q * (di + dout), se * (n * t + q) * (di + dout) + 4.0 * n)
            } else if k.starts_with("ghost_dot_dense") {
                (2.0 * n * t * di * dout, se * n * t * (di + dout) + 4.0 * di * dout)
            } else if k.starts_with("factored_grad") {
                let rows = if rec.plan.grid[2] as u64 == s.n { n * t } else { q };
                let batch = rec.plan.grid[2] as f64;
                (2.0 * rows * di * dout, se * rows * (di + dout) + 4.0 * batch * di * dout)
            } else if k.starts_with("rows_dot") {
                (2.0 * n * di * dout, 4.0 * (n + 1.0) * di * dout)
            } else {
                (0.0, 4.0 * 2.0 * rec.plan.ctas() as f64)
            };
            rows.push(Row { op: format!("ghost_dot ({form})"), rec, flops, min_bytes });
        }
    }
    let _ = writeln!(
        out,
        "\n### {} — N={} T={} Q={} d_in={} d_out={}, bf16 inputs ({} CTA(s) of each launch executed, counters scaled)\n",
        s.name, s.n, s.t, s.q, s.d_in, s.d_out, sample
    );
    out.push_str(
        "| op | kernel | CTAs | warp instr | SIMT eff | sectors/req | modeled DRAM / min bytes | bank conflicts / shared req | modeled H100 time (issue / memory / floor) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let c = &r.rec.report.counters;
        let m = r.rec.report.roofline(r.flops, r.min_bytes, false);
        let issue = c.warp_instructions as f64 / H100_WARP_ISSUE_PER_S;
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {:.3e} | {:.3} | {:.2} | {:.2e} / {:.2e} = {:.2} | {:.3} | {:.1} µs / {:.1} µs / {:.1} µs |",
            r.op,
            r.rec.plan.kernel,
            r.rec.report.total_ctas,
            c.warp_instructions as f64,
            c.simt_efficiency(),
            c.sectors_per_request(),
            m.modeled_dram_bytes,
            r.min_bytes,
            m.modeled_dram_bytes / r.min_bytes.max(1.0),
            if c.shared_requests == 0 { 0.0 } else { c.shared_bank_conflicts as f64 / c.shared_requests as f64 },
            issue * 1e6,
            m.memory_time_s * 1e6,
            m.floor_time_s * 1e6,
        );
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mut out = String::new();
    out.push_str(
        "All numbers below are a MODEL from the PTX interpreter's counters, not a GPU measurement: \
         'modeled DRAM' counts every distinct 32-byte global sector a warp request touches as DRAM \
         traffic (no L1/L2 reuse, so re-reads of a tile by several CTAs count each time); the issue \
         time is warp instructions / (132 SMs × 4 schedulers × 1.98 GHz); the floor is MATH.md's \
         minimum bytes / 3.35 TB/s.\n",
    );
    if bench {
        let shapes = [
            Shape { name: "GPT-2 MLP c_fc", n: 16, t: 512, q: 512, d_in: 768, d_out: 3072 },
            Shape { name: "GPT-2 MLP c_proj", n: 16, t: 512, q: 512, d_in: 3072, d_out: 768 },
        ];
        for s in &shapes {
            eprintln!("gpu_model: {} ...", s.name);
            run_shape(s, 2, &mut out);
        }
        out.push_str("\n### ptxas resource usage (sm_80 and sm_90, from build.rs's `-Xptxas -v`)\n\n```\n");
        let mut current = String::new();
        for line in ghostgrad::kernels::PTXAS_REPORT.lines() {
            if let Some(rest) = line.split_once("Compiling entry function '") {
                current = rest.1.replace("' for '", " ").trim_end_matches('\'').to_string();
            } else if (current.ends_with("sm_80") || current.ends_with("sm_90"))
                && (line.contains("registers") || line.contains("spill"))
            {
                let _ = writeln!(out, "{current:<32} {}", line.split_once(": ").map_or(line, |x| x.1));
            }
        }
        out.push_str("```\n");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gpu_model.md");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &out).unwrap();
        println!("{out}");
        eprintln!("gpu_model: wrote {}", path.display());
    } else {
        // Smoke run under `cargo test --all-targets`: the same code path at a tiny shape.
        run_shape(&Shape { name: "smoke", n: 2, t: 40, q: 24, d_in: 40, d_out: 70 }, 1, &mut out);
        assert!(out.contains("ghost_dot_gram_bf16") && out.contains("rows_dot_f32"), "{out}");
    }
}

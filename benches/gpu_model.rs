//! Modeled GPU metrics of every kernel at benchmark shapes, from the PTX interpreter's counters
//! (a sample of CTAs executed, counters scaled to the whole grid) through the per-pipe model of
//! `ptx_interp::perf` (H100 SXM; A100 totals beside): issue, FP32, ALU, LSU, shared-memory
//! wavefronts, L1 sectors and the tensor pipe at the mma.sync rate, the L2 model (sectors
//! requested, modeled L2 hits, modeled DRAM bytes), occupancy from ptxas registers and the
//! launch's shared memory, waves and latency hiding. Everything here is a **model** computed
//! from PTX-level counts — not a measurement; ptxas transformations are not seen.
//!
//! Every public operation that launches kernels is driven through `Context` on an
//! `InterpRuntime`, so the plans are the production ones. One row per launched kernel, then one
//! row per operation: the modeled operation time (Σ over its launches of max over pipes and
//! memory levels) against the operation's floor: max(MATH.md min bytes / 3.35 TB/s, FLOPs /
//! 989 TFLOP/s) for bf16/f16 operations (tensor-core roofline), max(min bytes / 3.35 TB/s,
//! FLOPs / 67 TFLOP/s) for f32 ones.
//!
//! `cargo bench --bench gpu_model` writes `target/gpu_model.md` (spliced into BENCHMARKS.md by
//! scripts/bench.sh). Under `cargo test` (no `--bench` flag) it runs every operation at a small
//! smoke shape and checks that every kernel family embedded in the crate was modeled.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime, LaunchRecord};
use ghostgrad::{
    Accumulate, Blocking, Context, DType, Distribution, DvembLayer, DvembSteps, EmbeddingForm, Form, FormChoice,
    FormRequest, GhgLayer, GhgUse, LayerKind, LayerShape, LayerUse, LossReduction, ModelForms, OutColumns, ParamProjection, ProjectionKind,
    ProjectionSpec, QueryFactors, ScoreDims, ScoreMode, Segments, Tensor, TensorMut, TokenFactors, TrainFactors, UseQuery, UseTrain,
    Which,
};
use half::bf16;
use ptx_interp::Options;

use ptx_interp::perf::{self, GpuSpec, PerfModel, A100_SXM, H100_SXM};

fn data(len: u64, salt: u64) -> Vec<bf16> {
    // A cheap deterministic pattern: values never matter for the counters, only addresses do.
    (0..len).map(|i| bf16::from_f32((((i * 2654435761 + salt) % 1997) as f32 / 1997.0) - 0.5)).collect()
}

fn data_f32(len: u64, salt: u64) -> Vec<f32> {
    data(len, salt).into_iter().map(f32::from).collect()
}

/// One operation call: its kernels' records and the operation's FLOPs and minimum bytes.
struct OpRun {
    op: String,
    records: Vec<LaunchRecord>,
    flops: f64,
    min_bytes: f64,
    /// bf16/f16 inputs: the floor uses the dense tensor-core rate
    tensor_floor: bool,
}

impl OpRun {
    /// The operation's floor on `gpu`: max(min bytes / DRAM bandwidth, FLOPs / rate), the rate
    /// being the dense tensor peak for bf16/f16 operations and FP32 otherwise.
    fn floor_s(&self, gpu: &GpuSpec) -> f64 {
        let rate = if self.tensor_floor { gpu.dense_tensor_peak_flops } else { gpu.fp32_flops };
        (self.min_bytes / gpu.dram_bytes_per_s).max(self.flops / rate)
    }
}

fn tensor_rows(mut ops: Vec<OpRun>) -> Vec<OpRun> {
    ops.iter_mut().for_each(|o| o.tensor_floor = true);
    ops
}

struct Model {
    rt: Arc<InterpRuntime>,
    ctx: Context,
}

impl Model {
    /// A model whose launch plans see a device of compute capability `sm`: 75 gives the FMA
    /// kernels (no tensor cores), 90 the H100's plans (tensor-core kernels where they exist).
    fn new(sample: u32, sm: u32) -> Self {
        let rt = Arc::new(InterpRuntime::new().expect("kernels built"));
        rt.set_sm_version(sm);
        rt.set_options(Options {
            sample_ctas: Some(sample),
            initcheck: false, // sampled launches leave most partial sums unwritten
            racecheck: false,
            global_racecheck: false,
            ..Options::default()
        })
        .unwrap();
        let ctx = Context::with_runtime(rt.clone());
        Model { rt, ctx }
    }

    fn bf16(&self, len: u64, salt: u64) -> InterpBuffer {
        self.rt.upload(&data(len, salt), DType::BF16).unwrap()
    }

    fn f32(&self, len: u64, salt: u64) -> InterpBuffer {
        self.rt.upload(&data_f32(len, salt), DType::F32).unwrap()
    }

    /// Runs `f` and collects the launches it made.
    fn run(&self, op: String, flops: f64, min_bytes: f64, f: impl FnOnce(&Context)) -> OpRun {
        self.rt.take_records().unwrap();
        f(&self.ctx);
        OpRun { op, records: self.rt.take_records().unwrap(), flops, min_bytes, tensor_floor: false }
    }
}

/// Σ over the chosen forms of their modeled FLOPs and bytes (cost.rs, from MATH.md §1).
fn chosen_cost(choices: &[FormChoice]) -> (f64, f64) {
    choices.iter().fold((0.0, 0.0), |(f, b), c| {
        let cost = c.costs.iter().find(|x| x.form == c.form).expect("chosen form has a cost");
        (f + cost.flops, b + cost.bytes)
    })
}

struct LinearShape {
    name: &'static str,
    n: u64,
    t: u64,
    q: u64,
    d_in: u64,
    d_out: u64,
}

/// ghost_dot in each forced form, and ghg (first + second order, auto form) with T_v = q.
fn linear_ops(m: &Model, s: &LinearShape) -> Vec<OpRun> {
    let shape = LayerShape::new(s.d_in, s.d_out);
    let a = m.bf16(s.n * s.t * s.d_in, 1);
    let b = m.bf16(s.n * s.t * s.d_out, 2);
    let aq = m.bf16(s.q * s.d_in, 3);
    let bq = m.bf16(s.q * s.d_out, 4);
    let ad = m.bf16(s.q * s.d_in, 5);
    let bd = m.bf16(s.q * s.d_out, 6);
    let train = TrainFactors { a: a.view().into(), b: b.view().into(), n: s.n, t: s.t, mask: None };
    let query = QueryFactors { aq: aq.view().into(), bq: bq.view().into(), q: s.q, segments: Segments::Single, mask: None };
    let mut result = m.rt.alloc_f32(s.n, 0.0).unwrap();
    let mut ops = Vec::new();
    for form in [Form::Gram, Form::DenseQuery, Form::Materialize] {
        let choice = m.ctx.choose_form(&shape, &train, &query, FormRequest::Force(form)).unwrap();
        let (flops, bytes) = chosen_cost(std::slice::from_ref(&choice));
        ops.push(m.run(format!("ghost_dot ({form})"), flops, bytes, |ctx| {
            ctx.ghost_dot(&shape, &train, &query, &mut result.view_mut().into(), Accumulate::overwrite(), FormRequest::Force(form))
                .unwrap();
        }));
    }
    let layer = GhgLayer {
        shape,
        train,
        a_val: aq.view().into(),
        b_val: bq.view().into(),
        a_dot: ad.view().into(),
        b_dot: bd.view().into(),
        t_v: s.q,
        val_mask: None,
    };
    // Minimum bytes of the fused op: each training tile read once, the four validation factor
    // matrices once, one f32 per sample written.
    let min_bytes = 2.0 * ((s.n * s.t + 2 * s.q) * (s.d_in + s.d_out)) as f64 + 4.0 * s.n as f64;
    // Two passes per layer (ghg_query_<dt> forms the combined query, MATH.md §2): the FLOPs are
    // those of the combined (a_val, comb) pass and the (ȧ, b_val) pass, i.e. the reported
    // choices without the (a_val, ḃ) slot (index 1 of a one-layer call).
    let mut ghg = |label: &str, form: FormRequest| {
        let mut flops = 0.0;
        let mut run = m.run(format!("ghg ({label})"), 0.0, min_bytes, |ctx| {
            let choices = ctx.ghg(&[layer], 1e-3, &mut result.view_mut().into(), Accumulate::overwrite(), form).unwrap();
            flops = chosen_cost(&[choices[0].clone(), choices[2].clone()]).0;
        });
        run.flops = flops;
        run
    };
    let auto = ghg("auto", FormRequest::Auto);
    // The combined pass reads an f32 query beside bf16 factors: in the Gram form that is its own
    // kernel (ghost_dot_gram_qf32_*), modeled here even where the cost model picks another form.
    let auto_gram = auto.records.iter().any(|r| r.plan.kernel.starts_with("ghost_dot_gram_qf32"));
    ops.push(auto);
    if !auto_gram {
        ops.push(ghg("Gram", FormRequest::Force(Form::Gram)));
    }
    ops
}

struct ProjShape {
    name: &'static str,
    n: u64,
    t: u64,
    d_in: u64,
    d_out: u64,
    k: u64,
    n_test: u64,
}

/// kron_project (random Gaussian, in-kernel), projection_matrix, influence_scores on one
/// train block of N·(k·k)… rows, the embedding projection, the second moments of the
/// preconditioners (raw Fisher, K-FAC factors, EK-FAC correction), accumulate_values.
fn projection_ops(m: &Model, s: &ProjShape) -> Vec<OpRun> {
    let shape = LayerShape::new(s.d_in, s.d_out);
    let a = m.bf16(s.n * s.t * s.d_in, 7);
    let b = m.bf16(s.n * s.t * s.d_out, 8);
    let train = TrainFactors { a: a.view().into(), b: b.view().into(), n: s.n, t: s.t, mask: None };
    let (k_i, k_o) = (s.k, s.k);
    let width = k_i * k_o;
    let spec = ProjectionSpec { k_i, k_o, kind: ProjectionKind::Random { seed: 7, layer: 0, dist: Distribution::Gaussian } };
    let mut out = m.rt.alloc_f32(s.n * width, 0.0).unwrap();
    let (n, t, di, dout, ki, ko) = (s.n as f64, s.t as f64, s.d_in as f64, s.d_out as f64, k_i as f64, k_o as f64);
    let mut ops = vec![m.run(
        format!("kron_project (random, k={k_o}x{k_i})"),
        2.0 * n * t * (di * ki + dout * ko + ki * ko),
        2.0 * n * t * (di + dout) + 4.0 * n * ki * ko,
        |ctx| {
            ctx.kron_project(&shape, &train, &spec, &mut out.view_mut().into(), OutColumns { offset: 0, row_stride: width }, Accumulate::overwrite())
                .unwrap();
        },
    )];
    let mut pm = m.rt.alloc_f32(k_i * s.d_in, 0.0).unwrap();
    ops.push(m.run(format!("projection_matrix ({k_i}x{})", s.d_in), 0.0, 4.0 * ki * di, |ctx| {
        ctx.projection_matrix(7, 0, Which::In, k_i, s.d_in, Distribution::Gaussian, &mut pm.view_mut().into()).unwrap();
    }));
    // Scores of n_test preconditioned test rows against a block of 8·N… training rows.
    let n_block = 64 * s.n;
    let test = m.f32(s.n_test * width, 9);
    let block = m.f32(n_block * width, 10);
    let mut scores = m.rt.alloc_f32(s.n_test * n_block, 0.0).unwrap();
    let (nt, nb, kk) = (s.n_test as f64, n_block as f64, width as f64);
    ops.push(m.run(
        format!("influence_scores ({}x{} x k={width})", s.n_test, n_block),
        2.0 * nt * nb * kk,
        4.0 * (nt * kk + nb * kk + nt * nb),
        |ctx| {
            ctx.influence_scores(
                &test.view().into(),
                &block.view().into(),
                ScoreDims { n_test: s.n_test, n_block, k: width },
                &mut scores.view_mut().into(),
                ScoreMode::Dot,
                None,
                Accumulate::overwrite(),
            )
            .unwrap();
        },
    ));
    // Embedding layer (token ids into a GPT-2-sized vocabulary, random P_i: a column gather).
    let vocab = 50_257u64;
    let ids: Vec<i32> = (0..s.n * s.t).map(|i| ((i * 7919) % vocab) as i32).collect();
    let ids_dev = m.rt.upload(&ids, DType::I32).unwrap();
    let emb_shape = LayerShape::new(vocab, s.d_out);
    let tokens = TokenFactors { ids: ids_dev.view().into(), b: b.view().into(), n: s.n, t: s.t, mask: None };
    ops.push(m.run(
        format!("kron_project_embedding (V={vocab}, k={k_o}x{k_i})"),
        2.0 * n * t * (dout * ko + ki * ko),
        n * t * (4.0 + 2.0 * dout) + 4.0 * n * ki * ko,
        |ctx| {
            ctx.kron_project_embedding(&emb_shape, &tokens, &spec, &mut out.view_mut().into(), OutColumns { offset: 0, row_stride: width }, Accumulate::overwrite())
                .unwrap();
        },
    ));
    // Second moments for the preconditioners: raw Fisher of the train block, K-FAC factors of
    // the layer (fused with the projection) and of the embedding, EK-FAC correction.
    let mut fisher = m.rt.alloc_f32(width * width, 0.0).unwrap();
    ops.push(m.run(format!("projected_fisher ({n_block} x k={width})"), 2.0 * nb * kk * kk, 4.0 * (nb * kk + kk * kk), |ctx| {
        ctx.projected_fisher(&block.view().into(), n_block, width, OutColumns { offset: 0, row_stride: width }, &mut fisher.view_mut().into(), Accumulate::overwrite())
            .unwrap();
    }));
    let (mut c_a, mut c_b) = (m.rt.alloc_f32(k_i * k_i, 0.0).unwrap(), m.rt.alloc_f32(k_o * k_o, 0.0).unwrap());
    ops.push(m.run(
        format!("kfac_covariances (k_i={k_i}, k_o={k_o})"),
        2.0 * n * t * (di * ki + dout * ko + ki * ki + ko * ko),
        2.0 * n * t * (di + dout) + 4.0 * (ki * ki + ko * ko),
        |ctx| {
            let layer = ghostgrad::ProjectLayer { shape, train, proj: spec };
            ctx.kfac_covariances(layer, &mut c_a.view_mut().into(), &mut c_b.view_mut().into(), Accumulate::overwrite()).unwrap();
        },
    ));
    // k > 64: each token projected once (project_rows), then syrk over the projected rows,
    // instead of the fused kernel's (k/64)² tile projections.
    let k2 = 128u64;
    let k2f = k2 as f64;
    let (mut c_a2, mut c_b2) = (m.rt.alloc_f32(k2 * k2, 0.0).unwrap(), m.rt.alloc_f32(k2 * k2, 0.0).unwrap());
    ops.push(m.run(
        format!("kfac_covariances (k_i=k_o={k2}: project_rows + syrk)"),
        2.0 * n * t * (di * k2f + dout * k2f + 2.0 * k2f * k2f),
        2.0 * n * t * (di + dout) + 8.0 * k2f * k2f,
        |ctx| {
            let layer = ghostgrad::ProjectLayer { shape, train, proj: ProjectionSpec { k_i: k2, k_o: k2, ..spec } };
            ctx.kfac_covariances(layer, &mut c_a2.view_mut().into(), &mut c_b2.view_mut().into(), Accumulate::overwrite()).unwrap();
        },
    ));
    ops.push(m.run(
        format!("kfac_covariances (embedding V={vocab})"),
        2.0 * n * t * (dout * ko + ki * ki + ko * ko),
        n * t * (4.0 + 2.0 * dout) + 4.0 * (ki * ki + ko * ko),
        |ctx| {
            let layer = ghostgrad::EmbeddingLayer { shape: emb_shape, train: tokens, proj: spec };
            ctx.kfac_covariances(layer, &mut c_a.view_mut().into(), &mut c_b.view_mut().into(), Accumulate::overwrite()).unwrap();
        },
    ));
    let (q_b, q_a) = (m.f32(k_o * k_o, 12), m.f32(k_i * k_i, 13));
    let mut lambda = m.rt.alloc_f32(width, 0.0).unwrap();
    ops.push(m.run(
        format!("ekfac_eigen_correction ({n_block} x {k_o}x{k_i})"),
        2.0 * nb * (ko * ki * ki + ko * ko * ki),
        4.0 * (nb * kk + ko * ko + ki * ki + kk),
        |ctx| {
            ctx.ekfac_eigen_correction(
                &block.view().into(),
                n_block,
                k_o,
                k_i,
                OutColumns { offset: 0, row_stride: width },
                &q_b.view().into(),
                &q_a.view().into(),
                &mut lambda.view_mut().into(),
                Accumulate::overwrite(),
            )
            .unwrap();
        },
    ));
    // Value accumulation of one step's batch into a 50k-sample table.
    let nv = 4096u64;
    let values = m.f32(nv, 11);
    let ids: Vec<i32> = (0..nv).map(|i| ((i * 7919) % 50_000) as i32).collect();
    let ids = m.rt.upload(&ids, DType::I32).unwrap();
    let mut phi = m.rt.upload(&vec![0.0f64; 50_000], DType::F64).unwrap();
    ops.push(m.run(format!("accumulate_values ({nv} values)"), nv as f64, nv as f64 * (4.0 + 4.0 + 16.0), |ctx| {
        let values: Tensor<'_> = values.view().into();
        let ids: Tensor<'_> = ids.view().into();
        ctx.accumulate_values(&values, &ids, &mut phi.view_mut().into()).unwrap();
    }));
    ops
}


#[allow(clippy::too_many_arguments)]
fn use_of<'a>(param: u32, kind: LayerKind, t: u64, q: u64, x: &'a InterpBuffer, b: &'a InterpBuffer, qx: &'a InterpBuffer, qb: &'a InterpBuffer) -> LayerUse<'a> {
    LayerUse {
        param,
        kind,
        train: UseTrain { x: x.view().into(), b: b.view().into(), t, mask: None },
        query: ghostgrad::QuerySide::Factors(UseQuery { x: qx.view().into(), b: qb.view().into(), q, segments: Segments::Single, mask: None }),
    }
}

struct ModelShape {
    name: &'static str,
    n: u64,
    t: u64,
    q: u64,
    vocab: u64,
    d: u64,
}

/// A transformer's edge layers in one `model_dot`: the token embedding tied to the LM head
/// (param 0: both own terms and the two cross terms) and a LayerNorm (param 1), in each
/// embedding form.
fn model_ops(m: &Model, s: &ModelShape) -> Vec<OpRun> {
    let (nt, q, vocab, d) = (s.n * s.t, s.q, s.vocab, s.d);
    let ids: Vec<i32> = (0..nt).map(|i| ((i * 7919) % vocab) as i32).collect();
    let qids: Vec<i32> = (0..q).map(|i| ((i * 104_729) % vocab) as i32).collect();
    let ids = m.rt.upload(&ids, DType::I32).unwrap();
    let qids = m.rt.upload(&qids, DType::I32).unwrap();
    let (emb_b, qemb_b) = (m.bf16(nt * d, 12), m.bf16(q * d, 13));
    let (lm_a, lm_b) = (m.bf16(nt * d, 14), m.bf16(nt * vocab, 15));
    let (qlm_a, qlm_b) = (m.bf16(q * d, 16), m.bf16(q * vocab, 17));
    let (ln_x, ln_b) = (m.bf16(nt * d, 18), m.bf16(nt * d, 19));
    let (qln_x, qln_b) = (m.bf16(q * d, 20), m.bf16(q * d, 21));
    let uses = [
        use_of(0, LayerKind::Embedding { vocab, d }, s.t, q, &ids, &emb_b, &qids, &qemb_b),
        use_of(0, LayerKind::linear(d, vocab, false), s.t, q, &lm_a, &lm_b, &qlm_a, &qlm_b),
        use_of(1, LayerKind::Norm { d, has_bias: true }, s.t, q, &ln_x, &ln_b, &qln_x, &qln_b),
    ];
    let (ntf, qf, vf, df) = (nt as f64, q as f64, vocab as f64, d as f64);
    // Minimum bytes: every factor read once (ids 4 B, bf16 2 B), one f32 per sample written.
    let min_bytes = 4.0 * (ntf + qf) + 2.0 * (ntf + qf) * (df + df + vf + 2.0 * df) + 4.0 * s.n as f64;
    // FLOPs of the Gram forms: LM head 2·NT·Q·(d + vocab); cross terms 2 × 2·NT·Q·d; LayerNorm
    // 2·(NT + Q)·d·2 (weight and bias) + 2·N·d·2; the embedding's own term in each form.
    let base = 2.0 * ntf * qf * (df + vf) + 4.0 * ntf * qf * df + 4.0 * (ntf + qf) * df + 4.0 * s.n as f64 * df;
    let mut out = m.rt.alloc_f32(s.n, 0.0).unwrap();
    let mut ops = Vec::new();
    for (form, emb_flops) in [
        (EmbeddingForm::MaskedGram, 2.0 * df * ntf * qf),
        (EmbeddingForm::ScatterGather, qf * df + 2.0 * ntf * df),
    ] {
        let forms = ModelForms { linear: FormRequest::Auto, embedding: Some(form) };
        ops.push(m.run(format!("model_dot (tied wte/LM head + LayerNorm, embedding {form:?})"), base + emb_flops, min_bytes, |ctx| {
            ctx.model_dot(s.n, &uses, &mut out.view_mut().into(), Accumulate::overwrite(), forms).unwrap();
        }));
    }
    // model_ghg over the same model (first + second order): b_dot for every use, x_dot for the
    // LM head and the LayerNorm (none for the ids). Two model passes: the combined query
    // (x_val, −η·b_val + (η²/2)·ḃ) — f32 beside the bf16 training factors, so the tied
    // cross terms run cross_gram_qf32_* — with model_dot's FLOPs (embedding by cost: the
    // cheaper of the two forms above), then (ẋ, b_val) without bias: the LM head's own term
    // 2·NT·Q·(d + vocab), the embedding (train) × LM head (ẋ query) cross term 2·NT·Q·d, the
    // LayerNorm weight 2·(NT + Q)·d + 2·N·d.
    let (bd_emb, bd_lm, bd_ln) = (m.bf16(q * d, 22), m.bf16(q * vocab, 23), m.bf16(q * d, 24));
    let (xd_lm, xd_ln) = (m.bf16(q * d, 25), m.bf16(q * d, 26));
    let dots: [(&InterpBuffer, Option<&InterpBuffer>); 3] = [(&bd_emb, None), (&bd_lm, Some(&xd_lm)), (&bd_ln, Some(&xd_ln))];
    let gu: Vec<GhgUse<'_>> = uses
        .iter()
        .zip(dots)
        .map(|(u, (bd, xd))| GhgUse {
            param: u.param,
            kind: u.kind,
            train: u.train,
            val: *u.query.factors().unwrap(),
            x_dot: xd.map(|x| x.view().into()),
            b_dot: bd.view().into(),
        })
        .collect();
    let emb_auto = (2.0 * df * ntf * qf).min(qf * df + 2.0 * ntf * df);
    let ghg_flops = base + emb_auto + 2.0 * ntf * qf * (df + vf) + 2.0 * ntf * qf * df + 2.0 * (ntf + qf) * df + 2.0 * s.n as f64 * df;
    let ghg_bytes = min_bytes + 2.0 * qf * (df + vf + df) + 2.0 * qf * (df + df);
    let mut phi = m.rt.alloc_f32(s.n, 0.0).unwrap();
    ops.push(m.run("model_ghg (same model, first + second order, two model passes)".into(), ghg_flops, ghg_bytes, |ctx| {
        ctx.model_ghg(s.n, &gu, 1e-3, &mut phi.view_mut().into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
    }));
    // model_sqnorm's FLOPs are not modeled: its row reports the traffic against the input floor.
    let mut sq = m.rt.alloc_f32(s.n, 0.0).unwrap();
    ops.push(m.run("model_sqnorm (same model)".into(), 0.0, min_bytes, |ctx| {
        ctx.model_sqnorm(s.n, &uses, &mut sq.view_mut().into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
    }));
    // LoGra over the same parameters: wte projected once for both uses (64×64), the LayerNorm
    // [d, 2] onto 64×2. FLOPs (MATH.md §3 per use): lookup 2·NT·(d·k + k²) (the vocabulary side
    // is a gather), LM head 2·NT·(d·k + vocab·k + k²), norm 4·NT·d + 2·N·(2·d·k + 2·k·2).
    let k = 64u64;
    let kf = k as f64;
    let params = [
        ParamProjection { param: 0, proj: ProjectionSpec { k_i: k, k_o: k, kind: ProjectionKind::Random { seed: 3, layer: 0, dist: Distribution::Rademacher } } },
        ParamProjection { param: 1, proj: ProjectionSpec { k_i: 2, k_o: k, kind: ProjectionKind::Random { seed: 3, layer: 1, dist: Distribution::Rademacher } } },
    ];
    let proj_flops = 2.0 * ntf * (df * kf + kf * kf) + 2.0 * ntf * (df * kf + vf * kf + kf * kf) + 4.0 * ntf * df + 2.0 * s.n as f64 * (2.0 * df * kf + 4.0 * kf);
    let proj_bytes = 4.0 * ntf + 2.0 * ntf * (df + df + vf + 2.0 * df) + 4.0 * s.n as f64 * (kf * kf + 2.0 * kf);
    let mut g = m.rt.alloc_f32(s.n * (k * k + 2 * k), 0.0).unwrap();
    ops.push(m.run("kron_project_model (same model, wte 64×64 once for both uses, LayerNorm 64×2)".into(), proj_flops, proj_bytes, |ctx| {
        ctx.kron_project_model(s.n, &uses, &params, &mut g.view_mut().into(), Accumulate::overwrite()).unwrap();
    }));
    ops
}

struct DvembShape {
    k: u64,
    steps: u64,
    batch: u64,
}

/// The DVEmb reverse sweep of one layer, per step and blocked (MATH.md §5).
fn dvemb_ops(m: &Model, s: &DvembShape) -> Vec<OpRun> {
    let r = s.steps * s.batch;
    let grads = m.f32(r * s.k, 22);
    let rows = vec![s.batch; s.steps as usize];
    let etas = vec![1e-3; s.steps as usize];
    let (rf, kf) = (r as f64, s.k as f64);
    // Floor: G read and E written once, M read and written once.
    let min_bytes = 4.0 * (2.0 * rf * kf + 2.0 * kf * kf);
    let mut ops = Vec::new();
    for (name, blocking) in [("per step", Blocking::PerStep), ("blocked, auto", Blocking::Auto)] {
        let mut mm = m.rt.alloc_f32(s.k * s.k, 0.0).unwrap();
        let mut e = m.rt.alloc_f32(r * s.k, 0.0).unwrap();
        ops.push(m.run(format!("dvemb ({name}; k={}, {} steps x {})", s.k, s.steps, s.batch), 4.0 * rf * kf * kf, min_bytes, |ctx| {
            let mut mt: TensorMut<'_> = mm.view_mut().into();
            let mut layers = [DvembLayer { offset: 0, k: s.k, m: &mut mt }];
            let steps = DvembSteps { rows: &rows, etas: &etas, loss: LossReduction::Mean };
            ctx.dvemb_layers(&grads.view().into(), s.k, &mut layers, &steps, &mut e.view_mut().into(), blocking).unwrap();
        }));
    }
    ops
}

/// Registers per thread of every kernel from build.rs's `ptxas -v` report: sm_90 where the
/// build has it (the H100 model), sm_80 (the A100 model, and the H100 fallback).
struct Registers {
    by_arch: std::collections::HashMap<(String, String), u32>,
}

impl Registers {
    fn parse() -> Self {
        let mut by_arch = std::collections::HashMap::new();
        let mut current: Option<(String, String)> = None;
        for line in ghostgrad::kernels::PTXAS_REPORT.lines() {
            if let Some(rest) = line.split_once("Compiling entry function '") {
                let mut it = rest.1.split("' for '");
                current = Some((it.next().unwrap_or("").to_string(), it.next().unwrap_or("").trim_end_matches('\'').to_string()));
            } else if let (Some(key), Some((_, tail))) = (&current, line.split_once("Used ")) {
                if let Some(n) = tail.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    by_arch.insert(key.clone(), n);
                }
            }
        }
        Registers { by_arch }
    }
    fn get(&self, kernel: &str, arch: &str) -> Option<u32> {
        self.by_arch.get(&(kernel.to_string(), arch.to_string())).copied()
    }
    /// (registers, which arch they came from) for the model of `gpu`.
    fn for_gpu(&self, kernel: &str, gpu: &GpuSpec) -> (u32, &'static str) {
        let pref: &[&'static str] = if gpu.name.starts_with("H100") { &["sm_90", "sm_80"] } else { &["sm_80", "sm_90"] };
        for a in pref {
            if let Some(r) = self.get(kernel, a) {
                return (r, a);
            }
        }
        (255, "none (255 assumed)")
    }
}

fn perf_of(r: &LaunchRecord, gpu: &GpuSpec, regs: &Registers) -> PerfModel {
    let (n, _) = regs.for_gpu(&r.plan.kernel, gpu);
    perf::model(&r.report, gpu, n).unwrap_or_else(|| panic!("{}: one CTA does not fit on an SM of {}", r.plan.kernel, gpu.name))
}

/// One operation's modeled totals: H100 time, A100 time, DRAM bytes, the slowest launch's limiter.
struct OpTotal {
    h100_s: f64,
    a100_s: f64,
    dram: f64,
    limiter: String,
}

fn op_total(op: &OpRun, regs: &Registers) -> OpTotal {
    let mut t = OpTotal { h100_s: 0.0, a100_s: 0.0, dram: 0.0, limiter: String::new() };
    let mut slowest = 0.0;
    for r in &op.records {
        let h = perf_of(r, &H100_SXM, regs);
        t.h100_s += h.modeled_time_s;
        t.a100_s += perf_of(r, &A100_SXM, regs).modeled_time_s;
        t.dram += h.l2.dram_bytes;
        if h.modeled_time_s > slowest {
            slowest = h.modeled_time_s;
            t.limiter = format!("{} (`{}`)", h.limiter, r.plan.kernel);
        }
    }
    t
}

fn table(title: &str, sample: u32, ops: &[OpRun], regs: &Registers, out: &mut String) {
    let _ = writeln!(out, "\n### {title} ({sample} CTA(s) of each launch executed, counters scaled)\n");
    // Measured GPU times exist only when the device check ran this bench on a GPU
    // (GHOSTGRAD_GPU_TIMING=1, scripts/gpu-check.sh).
    let measured = ops.iter().flat_map(|o| &o.records).any(|r| r.gpu_time_s.is_some());
    out.push_str(
        "| op | kernel | CTAs | CTAs/SM (by) | warp instr | sectors req | L2 hits | modeled DRAM bytes | bank conflicts / wavefronts | modeled H100 time | limited by (next) |",
    );
    out.push_str(if measured { " measured GPU (CUDA events) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n" } else { "\n|---|---|---|---|---|---|---|---|---|---|---|\n" });
    for op in ops {
        for r in &op.records {
            let c = &r.report.counters;
            let p = perf_of(r, &H100_SXM, regs);
            let mut by: Vec<_> = p.pipes.clone();
            by.sort_by(|a, b| b.1.total_cmp(&a.1));
            let next = by.get(1).map_or(String::from("-"), |x| format!("{} {:.2} µs", x.0, x.1 * 1e6));
            let gpu = match (measured, r.gpu_time_s) {
                (false, _) => String::new(),
                (true, Some(t)) => format!(" {:.2} µs |", t * 1e6),
                (true, None) => " - |".into(),
            };
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} ({}) | {:.3e} | {:.3e} | {:.3e} | {:.2e} | {:.1} % | {:.2} µs | {} ({}) |{gpu}",
                op.op,
                r.plan.kernel,
                r.report.total_ctas,
                p.occupancy.ctas_per_sm,
                p.occupancy.limiter,
                c.warp_instructions as f64,
                p.l2.requested_sectors,
                p.l2.l2_hit_sectors,
                p.l2.dram_bytes,
                if c.shared_wavefronts == 0 { 0.0 } else { 100.0 * c.shared_bank_conflicts as f64 / c.shared_wavefronts as f64 },
                p.modeled_time_s * 1e6,
                p.limiter,
                next,
            );
        }
        let t = op_total(op, regs);
        let floor = op.floor_s(&H100_SXM);
        let _ = writeln!(
            out,
            "| **{}: total** | {} launch(es) | | | | | | {:.2e} = {:.2} × min bytes {:.2e} | | **{:.2} µs vs {:.2} µs {} floor ({:.0} % of floor)**; A100 {:.2} µs ({:.0} %) | {} |",
            op.op,
            op.records.len(),
            t.dram,
            t.dram / op.min_bytes.max(1.0),
            op.min_bytes,
            t.h100_s * 1e6,
            floor * 1e6,
            if op.tensor_floor { "tensor" } else { "fp32" },
            100.0 * floor / t.h100_s.max(1e-30),
            t.a100_s * 1e6,
            100.0 * op.floor_s(&A100_SXM) / t.a100_s.max(1e-30),
            t.limiter,
        );
    }
}

/// The key rows (GPT-2 MLP and LoGra) in one table: operation, kernels, modeled H100 time,
/// floor, % of floor, limiter.
fn summary(rows: &[(String, &OpRun)], regs: &Registers, out: &mut String) {
    out.push_str("\n### Key rows: modeled H100 time vs the floor\n\n| shape | op | kernels | modeled H100 | floor | % of floor | limited by |\n|---|---|---|---|---|---|---|\n");
    for (shape, op) in rows {
        let t = op_total(op, regs);
        let floor = op.floor_s(&H100_SXM);
        let kernels: BTreeSet<&str> = op.records.iter().map(|r| r.plan.kernel.as_str()).collect();
        let kernels: Vec<String> = kernels.into_iter().map(|k| format!("`{k}`")).collect();
        let _ = writeln!(
            out,
            "| {shape} | {} | {} | {:.2} µs | {:.2} µs ({}) | **{:.0} %** | {} |",
            op.op,
            kernels.join(", "),
            t.h100_s * 1e6,
            floor * 1e6,
            if op.tensor_floor { "tensor" } else { "fp32" },
            100.0 * floor / t.h100_s.max(1e-30),
            t.limiter
        );
    }
}

/// The two kernel sets shown side by side for bf16/f16 rows: (table label, op prefix, sm).
const VARIANTS: [(&str, &str, u32); 2] = [
    ("FMA kernels (sm_75 plans)", "FMA", 75),
    ("sm_90 plans: tensor-core kernels where they exist", "TC", 90),
];

fn prefixed(prefix: &str, mut ops: Vec<OpRun>) -> Vec<OpRun> {
    ops.iter_mut().for_each(|o| o.op = format!("[{prefix}] {}", o.op));
    ops
}

/// Kernel family: the entry name without its dtype suffix.
fn family(kernel: &str) -> String {
    for suffix in ["_bf16", "_f16", "_f32", "_f64"] {
        if let Some(base) = kernel.strip_suffix(suffix) {
            return base.to_string();
        }
    }
    kernel.to_string()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let regs = Registers::parse();
    let mut out = String::new();
    out.push_str(
        "All numbers below are a MODEL from the PTX interpreter's counters, not a GPU measurement \
         (ptx-interp/src/perf.rs states every formula and figure with its source). Per launch: each \
         pipe's work (issue slots, FP32, ALU, LSU/MIO instructions, shared-memory wavefronts incl. bank \
         conflicts, L1 sectors, tensor FLOPs at the mma.sync rate — H100 494 TFLOP/s, half the 989 \
         dense wgmma peak; A100 312) on the busiest SM given occupancy (registers from ptxas -v, shared \
         memory from the PTX) and waves, with latency hiding; L2 = requested sectors through 10.1 TB/s; \
         DRAM = modeled DRAM bytes (first touch of each sector + re-reads that miss a 50 MB L2) at \
         3.35 TB/s scaled by Little's law. A launch's modeled time is the max over pipes and memory \
         levels; an op's is the sum over its launches. Floor: max(MATH.md min bytes / 3.35 TB/s, \
         FLOPs / 989 TFLOP/s) for bf16/f16 ops (tensor), FLOPs / 67 TFLOP/s for f32 ops. \
         % of floor = floor / modeled time.\n",
    );
    let (sample, linear, proj) = if bench {
        (
            2,
            vec![
                LinearShape { name: "GPT-2 MLP c_fc", n: 16, t: 512, q: 512, d_in: 768, d_out: 3072 },
                LinearShape { name: "GPT-2 MLP c_proj", n: 16, t: 512, q: 512, d_in: 3072, d_out: 768 },
            ],
            vec![ProjShape { name: "LoGra, GPT-2 c_fc", n: 8, t: 512, d_in: 768, d_out: 3072, k: 64, n_test: 64 }],
        )
    } else {
        (
            1,
            vec![LinearShape { name: "smoke", n: 2, t: 40, q: 24, d_in: 40, d_out: 70 }],
            vec![ProjShape { name: "smoke", n: 2, t: 24, d_in: 40, d_out: 36, k: 5, n_test: 3 }],
        )
    };
    let (model, dv) = if bench {
        (
            vec![ModelShape { name: "GPT-2 small edges", n: 4, t: 128, q: 128, vocab: 50257, d: 768 }],
            vec![DvembShape { k: 1024, steps: 16, batch: 16 }],
        )
    } else {
        (vec![ModelShape { name: "smoke", n: 2, t: 9, q: 7, vocab: 50, d: 24 }], vec![DvembShape { k: 40, steps: 3, batch: 5 }])
    };
    let mut modeled = BTreeSet::new();
    let mut tables = String::new();
    let mut key: Vec<(String, OpRun)> = Vec::new();
    let mut section = |title: String, ops: Vec<OpRun>, is_key: bool, shape: &str, tables: &mut String| {
        ops.iter().flat_map(|o| &o.records).for_each(|r| {
            modeled.insert(family(&r.plan.kernel));
        });
        table(&title, sample, &ops, &regs, tables);
        if is_key {
            key.extend(ops.into_iter().map(|o| (shape.to_string(), o)));
        }
    };
    for s in &linear {
        for (label, prefix, sm) in VARIANTS {
            eprintln!("gpu_model: {} ({prefix}) ...", s.name);
            let m = Model::new(sample, sm);
            let title = format!("Linear layer, {} — N={} T={} Q=T_v={} d_in={} d_out={}, bf16 inputs — {label}", s.name, s.n, s.t, s.q, s.d_in, s.d_out);
            section(title, prefixed(prefix, tensor_rows(linear_ops(&m, s))), true, s.name, &mut tables);
        }
    }
    // The projection families get a second (FMA) table only once a tensor-core kernel exists
    // for them; until then the sm_90 plans launch the FMA kernels and one table shows them.
    let proj_tc = ghostgrad::kernels::all_kernel_names()
        .iter()
        .any(|k| k.contains("mma") && ["kron_project", "project_rows", "kfac_cov"].iter().any(|f| k.starts_with(f)));
    let proj_variants: Vec<(&str, &str, u32)> = if proj_tc {
        VARIANTS.to_vec()
    } else {
        vec![("sm_90 plans (no tensor-core projection kernels yet: these are the FMA kernels)", "FMA", 90)]
    };
    for s in &proj {
        for &(label, prefix, sm) in &proj_variants {
        eprintln!("gpu_model: {} ({prefix}) ...", s.name);
        let m = Model::new(sample, sm);
        let title = format!(
            "Projection and scoring, {} — N={} T={} d_in={} d_out={} k_i=k_o={}, bf16 factors, f32 scores — {label}",
            s.name, s.n, s.t, s.d_in, s.d_out, s.k
        );
        let mut ops = prefixed(prefix, projection_ops(&m, s));
        // bf16 factors in: the projections and the K-FAC factors; the rest reads f32.
        for o in ops.iter_mut() {
            let name = o.op.split_once("] ").map_or(o.op.as_str(), |x| x.1);
            o.tensor_floor = name.starts_with("kron_project") || name.starts_with("kfac_covariances");
        }
        section(title, ops, true, s.name, &mut tables);
        }
    }
    for s in &model {
        eprintln!("gpu_model: model {} ...", s.name);
        let m = Model::new(sample, 90);
        let title = format!("Transformer edge layers, {} — N={} T={} Q={} vocab={} d={}, bf16 factors, i32 ids", s.name, s.n, s.t, s.q, s.vocab, s.d);
        section(title, tensor_rows(model_ops(&m, s)), false, s.name, &mut tables);
    }
    for s in &dv {
        eprintln!("gpu_model: dvemb k={} ...", s.k);
        let m = Model::new(sample, 90);
        let title = format!("Data value embedding, k={} — {} steps of {} rows, f32", s.k, s.steps, s.batch);
        section(title, dvemb_ops(&m, s), false, "dvemb", &mut tables);
    }
    let all: BTreeSet<String> = ghostgrad::kernels::all_kernel_names().iter().map(|k| family(k)).collect();
    let missing: Vec<&String> = all.difference(&modeled).collect();
    assert!(missing.is_empty(), "kernel families with no modeled launch in benches/gpu_model.rs: {missing:?}");
    let key_rows: Vec<(String, &OpRun)> = key
        .iter()
        .filter(|(_, o)| {
            let name = o.op.split_once("] ").map_or(o.op.as_str(), |x| x.1);
            name.starts_with("ghost_dot") || name.starts_with("ghg") || name.starts_with("kron_project") || name.starts_with("kfac")
        })
        .map(|(s, o)| (s.clone(), o))
        .collect();
    // FMA and tensor-core rows of the same operation next to each other, shapes in run order.
    let base = |o: &OpRun| o.op.split_once("] ").map_or(o.op.clone(), |x| x.1.to_string());
    let mut order: Vec<(String, String)> = Vec::new();
    for (s, o) in &key_rows {
        if !order.contains(&(s.clone(), base(o))) {
            order.push((s.clone(), base(o)));
        }
    }
    let mut key_rows = key_rows;
    key_rows.sort_by_key(|(s, o)| order.iter().position(|x| x.0 == *s && x.1 == base(o)));
    summary(&key_rows, &regs, &mut out);
    out.push_str(&tables);
    // Every modeled launch must have a finite, positive time and a limiter (the smoke test's check
    // that the model covers every kernel the benches launch).
    for (_, o) in &key {
        let t = op_total(o, &regs);
        assert!(t.h100_s.is_finite() && t.h100_s > 0.0 && !t.limiter.is_empty(), "{}: no modeled time", o.op);
    }
    if let Ok(path) = std::env::var("GHOSTGRAD_GPU_MODEL_OUT") {
        // scripts/gpu-check.sh collects the tables (smoke shapes under --interp) into its report
        std::fs::write(&path, &out).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    if bench {
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
        eprintln!("gpu_model smoke: modeled kernel families {modeled:?}");
    }
}

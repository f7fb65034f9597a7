//! Every CUDA kernel of the crate, executed by the PTX interpreter through the production launch
//! plans (`Context::with_runtime(InterpRuntime)` — the same code path as `Context::cuda`), against
//! the f64 reference, on random ragged shapes, in every dtype, with masks, bias, segments,
//! `beta ≠ 0`, NaN-poisoned outputs, several schedule seeds, and memcheck + initcheck +
//! shared/global racecheck on. Tolerances are the derived bounds of `common/mod.rs`.
#![cfg(feature = "interp")]

mod common;

use common::case::{case_strategy_within, Case, GhostDotData};
use common::model_dev::{runtime, up_buf};
use common::*;
use ghostgrad::cpu::reference;
use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime};
use ghostgrad::runtime::KernelRuntime;
use ghostgrad::{
    Accumulate, Context, DType, Form, FormRequest, GhostDotLayer, GhostError, LayerShape, QueryFactors, Segments,
    Tensor, TensorMut, TrainFactors,
};
use proptest::prelude::*;

const FORMS: [FormRequest; 4] = [
    FormRequest::Auto,
    FormRequest::Force(Form::Gram),
    FormRequest::Force(Form::DenseQuery),
    FormRequest::Force(Form::Materialize),
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 16, ..ProptestConfig::default() }
}

/// Device copies of a training side.
struct DevTrain {
    a: InterpBuffer,
    b: InterpBuffer,
    mask: Option<InterpBuffer>,
    n: u64,
    t: u64,
}

impl DevTrain {
    fn new(rt: &InterpRuntime, d: &TrainData) -> Self {
        DevTrain {
            a: up_buf(rt, &d.a),
            b: up_buf(rt, &d.b),
            mask: d.mask.as_ref().map(|m| rt.upload(m, DType::U8).unwrap()),
            n: d.n as u64,
            t: d.t as u64,
        }
    }
    fn factors(&self) -> TrainFactors<'_> {
        TrainFactors {
            a: self.a.view().into(),
            b: self.b.view().into(),
            n: self.n,
            t: self.t,
            mask: self.mask.as_ref().map(|m| m.view().into()),
        }
    }
}

/// Device copies of a query side (segment offsets uploaded too).
struct DevQuery {
    aq: InterpBuffer,
    bq: InterpBuffer,
    mask: Option<InterpBuffer>,
    offsets: Option<InterpBuffer>,
    seg: SegSpec,
    q: u64,
}

impl DevQuery {
    fn new(rt: &InterpRuntime, d: &QueryData) -> Self {
        DevQuery {
            aq: up_buf(rt, &d.aq),
            bq: up_buf(rt, &d.bq),
            mask: d.mask.as_ref().map(|m| rt.upload(m, DType::U8).unwrap()),
            offsets: match &d.seg {
                SegSpec::Offsets(o) => Some(rt.upload(o, DType::I32).unwrap()),
                _ => None,
            },
            seg: d.seg.clone(),
            q: d.q as u64,
        }
    }
    fn factors(&self) -> QueryFactors<'_> {
        let segments = match (&self.seg, &self.offsets) {
            (SegSpec::Single, _) => Segments::Single,
            (SegSpec::Uniform(l), _) => Segments::Uniform(*l),
            (SegSpec::Offsets(_), Some(o)) => Segments::Offsets(o.view().into()),
            (SegSpec::Offsets(_), None) => unreachable!(),
        };
        QueryFactors {
            aq: self.aq.view().into(),
            bq: self.bq.view().into(),
            q: self.q,
            segments,
            mask: self.mask.as_ref().map(|m| m.view().into()),
        }
    }
}

/// Ragged shapes that cross the kernels' 64-row tiles and 32-wide feature chunks, and token
/// counts long enough to be split across CTAs (more than 32 tokens with few samples); one of
/// four interpreter schedule seeds.
fn case_strategy() -> impl Strategy<Value = Case> {
    case_strategy_within(1..4, prop_oneof![1usize..20, 60usize..75], 1..70, 1..70, 1..45, 0u64..4)
}

/// The reference result `x` written into `old` with `acc` (the library's own CPU accumulation).
fn accumulated(x: &[f64], old: &[f32], acc: Accumulate) -> Vec<f32> {
    let mut out = old.to_vec();
    ghostgrad::cpu::apply_accumulate(&mut out, x, acc);
    out
}

fn read_out(rt: &InterpRuntime, b: &InterpBuffer) -> Vec<f32> {
    rt.read_f32(b).unwrap()
}

fn check_ghost_dot(c: &Case, form: FormRequest) {
    let rt = runtime(c.sched);
    let ctx = Context::with_runtime(rt.clone());
    let shape = c.shape();
    let GhostDotData { train, query, acc, old } = c.ghost_dot_data();
    let (dt, dq) = (DevTrain::new(&rt, &train), DevQuery::new(&rt, &query));
    let mut out = rt.upload(&old, DType::F32).unwrap();
    let choice = ctx
        .ghost_dot(&shape, &dt.factors(), &dq.factors(), &mut out.view_mut().into(), acc, form)
        .unwrap_or_else(|e| panic!("interp ghost_dot {form:?} {c:?}: {e}"));
    if let FormRequest::Force(f) = form {
        assert_eq!(choice.form, f);
    }
    let got = read_out(&rt, &out);
    let mut want = old.clone();
    Context::cpu_reference()
        .ghost_dot(&shape, &train.factors(), &query.factors(), &mut TensorMut::from(&mut want[..]), acc, form)
        .unwrap();
    let mag = reference::ghost_dot(&train.reference(), &query.reference(), true);
    let tol = Tol::for_depth(rounding_depth(&shape, c.t, c.q));
    assert_close(&format!("interp ghost_dot {:?} {c:?} seg {:?}", choice.form, query.seg), &got, &want, &mag, &old, acc, tol);
}

proptest! {
    #![proptest_config(config(24))]
    #[test]
    fn ghost_dot_kernels_match_reference_in_every_form(c in case_strategy(), f in 0usize..4) {
        check_ghost_dot(&c, FORMS[f]);
    }
}

#[test]
fn ghost_dot_kernels_on_degenerate_shapes() {
    let shapes = [(1, 1, 1, 1, 1), (1, 1, 1, 7, 1), (1, 5, 1, 1, 9), (3, 1, 4, 2, 3), (1, 65, 65, 65, 33)];
    for (i, &(n, t, q, d_in, d_out)) in shapes.iter().enumerate() {
        for (j, &dtype) in FLOAT_DTYPES.iter().enumerate() {
            let flags = (i + j) as u32;
            let c = Case::from_flags((n, t, q, d_in, d_out), dtype, flags, (i * 10 + j) as u64, j as u64);
            check_ghost_dot(&c, FORMS[(i + j) % 4]);
        }
    }
}

#[test]
fn ghost_dot_layers_sums_mixed_layers_in_one_finalize() {
    let rt = runtime(7);
    let ctx = Context::with_runtime(rt.clone());
    let mut r = rng(11);
    let (n, v) = (3usize, 2usize);
    let specs = [(LayerShape::new(20, 9).with_bias(true), 7usize, 10usize, DType::F32, Form::Gram),
        (LayerShape::new(5, 33), 4, 6, DType::BF16, Form::DenseQuery),
        (LayerShape::new(17, 3).with_bias(true), 9, 5, DType::F16, Form::Materialize)];
    let mut trains = Vec::new();
    let mut queries = Vec::new();
    for &(shape, t, q, dtype, _) in &specs {
        trains.push(TrainData::random(&mut r, shape, n, t, dtype, true));
        queries.push(QueryData::random(&mut r, shape, q, dtype, false, SegSpec::Uniform(q.div_ceil(v) as u64)));
    }
    let dev_t: Vec<DevTrain> = trains.iter().map(|d| DevTrain::new(&rt, d)).collect();
    let dev_q: Vec<DevQuery> = queries.iter().map(|d| DevQuery::new(&rt, d)).collect();
    let layers: Vec<GhostDotLayer> = specs
        .iter()
        .zip(dev_t.iter().zip(&dev_q))
        .map(|(&(shape, .., form), (t, q))| GhostDotLayer { shape, train: t.factors(), query: q.factors(), form: FormRequest::Force(form) })
        .collect();
    let acc = Accumulate { scale: -0.75, beta: 0.5 };
    let old = random_out(&mut r, n * v);
    let mut out = rt.upload(&old, DType::F32).unwrap();
    rt.take_records().unwrap();
    ctx.ghost_dot_layers(&layers, &mut out.view_mut().into(), acc).unwrap();
    let launches = rt.take_records().unwrap();
    let finals = launches.iter().filter(|l| l.plan.kernel == "finalize_partials_f32").count();
    assert_eq!(finals, 1, "one finalize for all layers: {:?}", launches.iter().map(|l| &l.plan.kernel).collect::<Vec<_>>());
    let got = read_out(&rt, &out);
    // Reference: Σ_layers in f64, then the accumulation once.
    let mut sum = vec![0f64; n * v];
    let mut mag = vec![0f64; n * v];
    let mut depth = 0;
    for (tr, q) in trains.iter().zip(&queries) {
        for (s, x) in sum.iter_mut().zip(reference::ghost_dot(&tr.reference(), &q.reference(), false)) {
            *s += x;
        }
        for (s, x) in mag.iter_mut().zip(reference::ghost_dot(&tr.reference(), &q.reference(), true)) {
            *s += x;
        }
        depth = depth.max(rounding_depth(&tr.shape, tr.t, q.q)) + 2;
    }
    let want: Vec<f32> = sum.iter().zip(&old).map(|(s, o)| (0.5 * *o as f64 - 0.75 * s) as f32).collect();
    assert_close("interp ghost_dot_layers", &got, &want, &mag, &old, acc, Tol::for_depth(depth));
}

fn check_dense(c: &Case) {
    let rt = runtime(c.sched);
    let ctx = Context::with_runtime(rt.clone());
    let mut r = rng(c.seed);
    let shape = c.shape();
    let train = TrainData::random(&mut r, shape, c.n, c.t, c.dtype, c.masked);
    let m: Vec<f32> = (0..shape.d_in * shape.d_out).map(|_| nonzero_gaussian(&mut r)).collect();
    let mb: Vec<f32> = (0..shape.d_out).map(|_| nonzero_gaussian(&mut r)).collect();
    let acc = random_acc(&mut r, c.beta);
    let old = initial_out(&mut r, c.n, acc);
    let dt = DevTrain::new(&rt, &train);
    let (dm, dmb) = (rt.upload(&m, DType::F32).unwrap(), rt.upload(&mb, DType::F32).unwrap());
    let mut out = rt.upload(&old, DType::F32).unwrap();
    let mbt: Option<Tensor> = c.bias.then(|| dmb.view().into());
    ctx.ghost_dot_dense(&shape, &dt.factors(), &dm.view().into(), mbt.as_ref(), &mut out.view_mut().into(), acc)
        .unwrap_or_else(|e| panic!("interp ghost_dot_dense {c:?}: {e}"));
    let got = read_out(&rt, &out);
    let mbh = c.bias.then_some(&mb[..]);
    let exact = reference::ghost_dot_dense(&train.reference(), &m, mbh, false);
    let mag = reference::ghost_dot_dense(&train.reference(), &m, mbh, true);
    let want = accumulated(&exact, &old, acc);
    let tol = Tol::for_depth(rounding_depth(&shape, c.t, 0));
    assert_close(&format!("interp ghost_dot_dense {c:?}"), &got, &want, &mag, &old, acc, tol);
}

proptest! {
    #![proptest_config(config(12))]
    #[test]
    fn ghost_dot_dense_kernel_matches_reference(c in case_strategy()) {
        check_dense(&c);
    }
}

fn check_factored(c: &Case, weighted: bool) {
    let rt = runtime(c.sched);
    let ctx = Context::with_runtime(rt.clone());
    let mut r = rng(c.seed);
    let shape = c.shape();
    let seg = SegSpec::random(&mut r, c.q);
    let query = QueryData::random(&mut r, shape, c.q, c.dtype, c.masked, seg);
    let v = query.v();
    let w: Vec<f32> = (0..c.q).map(|_| nonzero_gaussian(&mut r)).collect();
    let acc = random_acc(&mut r, c.beta);
    let (di, dout) = (shape.d_in as usize, shape.d_out as usize);
    let old = initial_out(&mut r, v * di * dout, acc);
    let old_b = initial_out(&mut r, v * dout, acc);
    let dq = DevQuery::new(&rt, &query);
    let dw = rt.upload(&w, DType::F32).unwrap();
    let mut out = rt.upload(&old, DType::F32).unwrap();
    let mut out_b = rt.upload(&old_b, DType::F32).unwrap();
    let wt: Option<Tensor> = weighted.then(|| dw.view().into());
    {
        let mut ob: TensorMut = out_b.view_mut().into();
        ctx.factored_grad(&shape, &dq.factors(), wt.as_ref(), &mut out.view_mut().into(), c.bias.then_some(&mut ob), acc)
            .unwrap_or_else(|e| panic!("interp factored_grad {c:?}: {e}"));
    }
    let (got, got_b) = (read_out(&rt, &out), read_out(&rt, &out_b));
    let wh = weighted.then_some(&w[..]);
    let (m, mbias) = reference::factored_grad(&query.reference(), wh, di, dout, shape.has_bias, false);
    let (mag, mag_b) = reference::factored_grad(&query.reference(), wh, di, dout, shape.has_bias, true);
    let apply = |x: &[f64], old: &[f32]| accumulated(x, old, acc);
    let tol = Tol::for_depth(c.q + 8);
    assert_close(&format!("interp factored_grad {c:?} w={weighted}"), &got, &apply(&m, &old), &mag, &old, acc, tol);
    if c.bias {
        assert_close(&format!("interp factored_grad bias {c:?}"), &got_b, &apply(&mbias, &old_b), &mag_b, &old_b, acc, tol);
    } else {
        assert_bitwise_eq("out_bias untouched without bias", &got_b, &old_b);
    }
}

proptest! {
    #![proptest_config(config(12))]
    #[test]
    fn factored_grad_kernel_matches_reference(c in case_strategy(), weighted in any::<bool>()) {
        check_factored(&c, weighted);
    }
}

fn check_gram_and_norms(c: &Case, form: FormRequest) {
    let rt = runtime(c.sched);
    let ctx = Context::with_runtime(rt.clone());
    let mut r = rng(c.seed);
    let shape = c.shape();
    let train = TrainData::random(&mut r, shape, c.n, c.t, c.dtype, c.masked);
    let acc = random_acc(&mut r, c.beta);
    let old = initial_out(&mut r, c.n * c.n, acc);
    let old_d = initial_out(&mut r, c.n, acc);
    let dt = DevTrain::new(&rt, &train);
    let mut out = rt.upload(&old, DType::F32).unwrap();
    let mut out_d = rt.upload(&old_d, DType::F32).unwrap();
    ctx.ghost_gram(&shape, &dt.factors(), &mut out.view_mut().into(), acc, form)
        .unwrap_or_else(|e| panic!("interp ghost_gram {form:?} {c:?}: {e}"));
    ctx.ghost_sqnorm(&shape, &dt.factors(), &mut out_d.view_mut().into(), acc, form)
        .unwrap_or_else(|e| panic!("interp ghost_sqnorm {c:?}: {e}"));
    let (got, got_d) = (read_out(&rt, &out), read_out(&rt, &out_d));
    let apply = |x: &[f64], old: &[f32]| accumulated(x, old, acc);
    let tr = train.reference();
    let tol = Tol::for_depth(rounding_depth(&shape, c.t, c.t * c.n));
    assert_close(&format!("interp ghost_gram {form:?} {c:?}"), &got, &apply(&reference::ghost_gram(&tr, false), &old), &reference::ghost_gram(&tr, true), &old, acc, tol);
    assert_close(&format!("interp ghost_sqnorm {c:?}"), &got_d, &apply(&reference::ghost_sqnorm(&tr, false), &old_d), &reference::ghost_sqnorm(&tr, true), &old_d, acc, tol);
}

proptest! {
    #![proptest_config(config(12))]
    #[test]
    fn gram_and_norm_kernels_match_reference(c in case_strategy(), f in 0usize..3) {
        let forms = [FormRequest::Auto, FormRequest::Force(Form::Gram), FormRequest::Force(Form::Materialize)];
        check_gram_and_norms(&c, forms[f]);
    }
}

/// The Gram form of `c` on a runtime reporting compute capability `sm`, with NaN written into
/// every masked train and query row (masked rows must be zero-filled, never read: NaN·0 = NaN
/// in an MMA), against the reference; returns the Gram kernel that ran and the output.
fn check_gram_on_sm(c: &Case, sm: u32) -> (String, Vec<f32>) {
    let rt = runtime(c.sched);
    rt.set_sm_version(sm);
    let ctx = Context::with_runtime(rt.clone());
    let shape = c.shape();
    let GhostDotData { mut train, mut query, acc, old } = c.ghost_dot_data();
    let (din, dout) = (c.d_in as usize, c.d_out as usize);
    for (row, &m) in train.mask.clone().unwrap_or_default().iter().enumerate() {
        if m == 0 {
            (0..din).for_each(|k| train.a.set(row * din + k, f32::NAN));
            (0..dout).for_each(|k| train.b.set(row * dout + k, f32::NAN));
        }
    }
    for (row, &m) in query.mask.clone().unwrap_or_default().iter().enumerate() {
        if m == 0 {
            (0..din).for_each(|k| query.aq.set(row * din + k, f32::NAN));
            (0..dout).for_each(|k| query.bq.set(row * dout + k, f32::NAN));
        }
    }
    let (dt, dq) = (DevTrain::new(&rt, &train), DevQuery::new(&rt, &query));
    let mut out = rt.upload(&old, DType::F32).unwrap();
    rt.take_records().unwrap();
    ctx.ghost_dot(&shape, &dt.factors(), &dq.factors(), &mut out.view_mut().into(), acc, FormRequest::Force(Form::Gram))
        .unwrap_or_else(|e| panic!("interp ghost_dot sm_{sm} {c:?}: {e}"));
    let kernel = rt.take_records().unwrap()[0].plan.kernel.clone();
    let got = read_out(&rt, &out);
    let mut want = old.clone();
    Context::cpu_reference()
        .ghost_dot(&shape, &train.factors(), &query.factors(), &mut TensorMut::from(&mut want[..]), acc, FormRequest::Force(Form::Gram))
        .unwrap();
    let mag = reference::ghost_dot(&train.reference(), &query.reference(), true);
    let tol = Tol::for_depth(rounding_depth(&shape, c.t, c.q));
    assert_close(&format!("{kernel} {c:?} seg {:?}", query.seg), &got, &want, &mag, &old, acc, tol);
    (kernel, got)
}

/// bf16 / f16 Gram form on the tensor-core kernel (sm_80) and on the FMA kernel (the same plans
/// on an sm_75 runtime), against the reference: feature counts that are multiples of 8 (the
/// cp.async path, tails zero-filled by src-size 0) and ragged ones (plain loads), T and Q
/// crossing the 64-row tiles, N = 1, Q = 1, masks with NaN-poisoned masked rows, bias,
/// segments, beta ≠ 0, and bitwise-identical results across schedule seeds.
#[test]
fn tensor_core_gram_kernels_match_reference_on_both_load_paths() {
    let shapes = [(2, 70, 67, 72, 40), (1, 1, 1, 8, 16), (3, 65, 9, 33, 24), (1, 130, 70, 64, 13), (2, 20, 1, 5, 7)];
    for (i, &(n, t, q, d_in, d_out)) in shapes.iter().enumerate() {
        for (j, dtype) in [DType::BF16, DType::F16].into_iter().enumerate() {
            let flags = (i + 2 * j) as u32 | 1; // always masked; bias / beta vary
            let mut c = Case::from_flags((n, t, q, d_in, d_out), dtype, flags, (50 + i * 2 + j) as u64, 0);
            let (k_tc, out_tc) = check_gram_on_sm(&c, 80);
            assert_eq!(k_tc, format!("ghost_dot_gram_mma_{}", dtype.kernel_suffix()));
            let (k_fma, _) = check_gram_on_sm(&c, 75);
            assert_eq!(k_fma, format!("ghost_dot_gram_{}", dtype.kernel_suffix()));
            c.sched = 1 + i as u64;
            let (_, out_seed) = check_gram_on_sm(&c, 80);
            assert_bitwise_eq(&format!("{k_tc} {c:?} schedule seeds"), &out_tc, &out_seed);
        }
    }
}

#[test]
fn results_are_bitwise_identical_across_schedule_seeds() {
    let c = Case { n: 2, t: 70, q: 9, d_in: 33, d_out: 12, dtype: DType::BF16, masked: true, bias: true, beta: false, seed: 5, sched: 0 };
    for form in [Form::Gram, Form::DenseQuery, Form::Materialize] {
        let mut outs = Vec::new();
        for sched in [0u64, 1, 2] {
            let rt = runtime(sched);
            let ctx = Context::with_runtime(rt.clone());
            let mut r = rng(c.seed);
            let shape = c.shape();
            let train = TrainData::random(&mut r, shape, c.n, c.t, c.dtype, c.masked);
            let query = QueryData::random(&mut r, shape, c.q, c.dtype, c.masked, SegSpec::Uniform(4));
            let (dt, dq) = (DevTrain::new(&rt, &train), DevQuery::new(&rt, &query));
            let mut out = rt.alloc_f32((c.n * query.v()) as u64, f32::NAN).unwrap();
            ctx.ghost_dot(&shape, &dt.factors(), &dq.factors(), &mut out.view_mut().into(), Accumulate::overwrite(), FormRequest::Force(form))
                .unwrap();
            outs.push(read_out(&rt, &out));
        }
        assert_bitwise_eq(&format!("{form} seeds 0 vs 1"), &outs[0], &outs[1]);
        assert_bitwise_eq(&format!("{form} seeds 0 vs 2"), &outs[0], &outs[2]);
    }
}

#[test]
fn nan_in_masked_rows_never_leaks_and_nan_in_kept_rows_propagates() {
    let rt = runtime(3);
    let ctx = Context::with_runtime(rt.clone());
    let mut r = rng(21);
    let shape = LayerShape::new(9, 6).with_bias(true);
    let (n, t, q) = (3usize, 5usize, 4usize);
    for form in [Form::Gram, Form::DenseQuery, Form::Materialize] {
        let mut train = TrainData::random(&mut r, shape, n, t, DType::F32, false);
        let mut mask = vec![1u8; n * t];
        mask[t + 2] = 0; // sample 1, token 2 masked: poison it
        train.a.set((t + 2) * 9 + 4, f32::NAN);
        train.b.set((t + 2) * 6 + 1, f32::INFINITY);
        train.mask = Some(mask);
        train.a.set((2 * t + 3) * 9, f32::NAN); // sample 2, kept token: must reach out[2]
        let query = QueryData::random(&mut r, shape, q, DType::F32, false, SegSpec::Single);
        let (dt, dq) = (DevTrain::new(&rt, &train), DevQuery::new(&rt, &query));
        let mut out = rt.alloc_f32(n as u64, f32::NAN).unwrap();
        ctx.ghost_dot(&shape, &dt.factors(), &dq.factors(), &mut out.view_mut().into(), Accumulate::overwrite(), FormRequest::Force(form))
            .unwrap();
        let got = read_out(&rt, &out);
        assert!(got[0].is_finite() && got[1].is_finite(), "{form}: masked NaN leaked: {got:?}");
        assert!(got[2].is_nan(), "{form}: NaN in a kept row did not propagate: {got:?}");
    }
}

#[test]
fn production_plans_pass_memcheck_racecheck_and_report_counters() {
    let rt = runtime(1);
    let ctx = Context::with_runtime(rt.clone());
    let mut r = rng(2);
    let shape = LayerShape::new(70, 40).with_bias(true);
    let train = TrainData::random(&mut r, shape, 2, 66, DType::F16, true);
    let query = QueryData::random(&mut r, shape, 67, DType::F16, true, SegSpec::Uniform(30));
    let (dt, dq) = (DevTrain::new(&rt, &train), DevQuery::new(&rt, &query));
    let mut out = rt.alloc_f32(2 * 3, f32::NAN).unwrap();
    rt.take_records().unwrap();
    ctx.ghost_dot(&shape, &dt.factors(), &dq.factors(), &mut out.view_mut().into(), Accumulate::overwrite(), FormRequest::Force(Form::Gram))
        .unwrap();
    let recs = rt.take_records().unwrap();
    assert_eq!(recs.len(), 2, "gram kernel + finalize");
    let gram = &recs[0];
    assert_eq!(gram.plan.kernel, "ghost_dot_gram_mma_f16", "f16 Gram on the interpreter's sm_80: tensor cores");
    assert!(gram.plan.grid[1] > 1, "T = 66 with 6 (n, v) pairs must be split across CTAs: {:?}", gram.plan.grid);
    assert_eq!(gram.report.executed_ctas, gram.plan.ctas());
    assert!(gram.report.counters.warp_instructions > 0);
}

#[test]
fn memcheck_catches_a_plan_whose_output_is_too_small() {
    // The validation layer never builds such a plan; this drives the runtime directly to prove
    // that an out-of-bounds store in a production kernel is reported, not silently absorbed.
    let rt = runtime(0);
    let partial = rt.upload(&[1.0f32, 2.0, 3.0, 4.0], DType::F32).unwrap();
    let out = rt.alloc_f32(3, f32::NAN).unwrap(); // finalize below writes 4 elements
    let plan = ghostgrad::runtime::LaunchPlan {
        kernel: "finalize_partials_f32".into(),
        grid: [1, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
        args: vec![
            ghostgrad::runtime::KernelArg::Ptr(partial.ptr),
            ghostgrad::runtime::KernelArg::Ptr(out.ptr),
            ghostgrad::runtime::KernelArg::U32(4),
            ghostgrad::runtime::KernelArg::U32(1),
            ghostgrad::runtime::KernelArg::F32(1.0),
            ghostgrad::runtime::KernelArg::F32(0.0),
        ],
    };
    let err = rt.launch(&plan).expect_err("out-of-bounds store must fail");
    let msg = err.to_string();
    assert!(matches!(err, GhostError::Interpreter(_)), "{err:?}");
    assert!(msg.contains("finalize_partials_f32"), "{msg}");
}

#[test]
fn device_pointers_are_checked_against_the_runtime() {
    let rt = runtime(0);
    let ctx = Context::with_runtime(rt.clone());
    let shape = LayerShape::new(3, 2);
    let a = rt.upload(&[1.0f32; 6], DType::F32).unwrap();
    let b = rt.upload(&[1.0f32; 4], DType::F32).unwrap();
    // SAFETY (test): never dereferenced; the runtime must reject it before any launch.
    let bogus = unsafe { ghostgrad::DeviceSlice::from_raw_parts(0xdead_0000, 6, DType::F32) };
    let train = TrainFactors { a: Tensor::Device(bogus), b: b.view().into(), n: 1, t: 2, mask: None };
    let mut out = rt.alloc_f32(1, 0.0).unwrap();
    let err = ctx.ghost_sqnorm(&shape, &train, &mut out.view_mut().into(), Accumulate::overwrite(), FormRequest::Auto).unwrap_err();
    assert!(matches!(err, GhostError::InvalidArgument { what: "a", .. }), "{err:?}");
    let host = vec![0f32; 6];
    let train = TrainFactors { a: host[..].into(), b: b.view().into(), n: 1, t: 2, mask: None };
    let err = ctx.ghost_sqnorm(&shape, &train, &mut out.view_mut().into(), Accumulate::overwrite(), FormRequest::Auto).unwrap_err();
    assert!(matches!(err, GhostError::WrongMemorySpace { what: "a", expected: "device", got: "host" }), "{err:?}");
    let _ = a;
}

#[test]
fn every_kernel_uses_only_allowlisted_opcodes() {
    let allowed = ptx_interp::supported_opcode_forms();
    for f in ghostgrad::kernels::KERNEL_FILES {
        let m = ptx_interp::Module::parse(f.ptx).unwrap_or_else(|e| panic!("{}.ptx: {e}", f.name));
        let outside: Vec<String> = m.opcode_forms().difference(&allowed).cloned().collect();
        assert!(outside.is_empty(), "{}: opcode forms outside the allowlist: {outside:?}", f.name);
    }
}

//! The model-level calls on a tiny GPT-2-like model (tests/common/gpt2.rs, written by hand in
//! f64; its backward is checked here by finite differences): token embedding tied to the LM
//! head, positional embedding, three LayerNorms, single-head attention (HF `Conv1D` c_attn and
//! an `nn.Linear` projection), an MLP (`nn.Linear` fc, `Conv1D` projection), ragged sequence
//! lengths with NaN-poisoned, masked padding. `model_dot`, `model_gram` and `model_sqnorm`
//! must equal the dot products of the explicit flattened per-sample gradients of *all*
//! parameters, on the fast CPU path, the f64 reference and the CUDA kernels (PTX interpreter).

mod common;
#[path = "common/gpt2.rs"]
mod gpt2;

use common::*;
use ghostgrad::layers::reference::{model_reference, ModelOp};
use ghostgrad::{
    Accumulate, Context, DType, EmbeddingForm, LayerKind, LayerUse, ModelForms, Segments, Tensor, UseQuery, UseTrain,
    WeightLayout,
};
use gpt2::{Factors, Gpt2};
use rand::Rng;

const VOCAB: usize = 11;
const D: usize = 6;
const T: usize = 7;
const F: usize = 12;

fn model(seed: u64) -> Gpt2 {
    let mut r = rng(seed);
    let probe = Gpt2 { vocab: VOCAB, d: D, t: T, f: F, w: Vec::new() };
    let n = probe.offsets().total;
    let mut w: Vec<f64> = (0..n).map(|_| 0.4 * nonzero_gaussian(&mut r) as f64).collect();
    let o = probe.offsets();
    for off in [o.ln1_g, o.ln2_g, o.lnf_g] {
        w[off..off + D].iter_mut().for_each(|g| *g += 1.0);
    }
    Gpt2::new(VOCAB, D, T, F, w)
}

struct Sample {
    ids: Vec<i32>,
    targets: Vec<i32>,
    len: usize,
}

fn samples(r: &mut TestRng, count: usize) -> Vec<Sample> {
    (0..count)
        .map(|_| {
            let ids: Vec<i32> = (0..T).map(|_| r.random_range(0..4) * 2 + r.random_range(0..2)).collect(); // repeats
            let targets = (0..T).map(|_| r.random_range(0..VOCAB as i32)).collect();
            Sample { ids, targets, len: r.random_range(2..=T) }
        })
        .collect()
}

#[test]
fn hand_backward_matches_finite_differences() {
    let m = model(1);
    let mut r = rng(2);
    for s in samples(&mut r, 2) {
        let (_, g, _) = m.run(&m.w, &s.ids, &s.targets, s.len, true);
        let h = 1e-5;
        let mut worst = 0.0f64;
        for p in 0..m.nparams() {
            let mut wp = m.w.clone();
            wp[p] += h;
            let lp = m.run(&wp, &s.ids, &s.targets, s.len, false).0;
            wp[p] -= 2.0 * h;
            let lm = m.run(&wp, &s.ids, &s.targets, s.len, false).0;
            let fd = (lp - lm) / (2.0 * h);
            let err = (fd - g[p]).abs() / (1e-3 + g[p].abs());
            worst = worst.max(err);
            assert!(err < 1e-5, "param {p}: hand {} vs finite difference {fd}", g[p]);
        }
        assert!(worst > 0.0);
    }
}

/// Row-major f32 copy of f64 factor rows; padding rows (>= len) of every sample become NaN.
fn rows_f32(per_sample: &[&[f64]], len: &[usize], width: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for (s, x) in per_sample.iter().enumerate() {
        for i in 0..T {
            for k in 0..width {
                out.push(if i < len[s] { x[i * width + k] as f32 } else { f32::NAN });
            }
        }
    }
    out
}

/// Host factor buffers of every parameter use, train or query side.
struct Side {
    ids: Vec<i32>,
    pos: Vec<i32>,
    mask: Vec<u8>,
    bufs: Vec<Vec<f32>>,
}

/// Per use: (param, kind, index of x in bufs or usize::MAX for ids/pos, index of b).
fn layout() -> Vec<(u32, LayerKind, usize, usize)> {
    let (v, d, f) = (VOCAB as u64, D as u64, F as u64);
    const IDS: usize = usize::MAX;
    const POS: usize = usize::MAX - 1;
    vec![
        (0, LayerKind::Embedding { vocab: v, d }, IDS, 0),
        (1, LayerKind::Embedding { vocab: T as u64, d }, POS, 0),
        (2, LayerKind::Norm { d, has_bias: true }, 1, 2),
        (3, LayerKind::Linear { d_in: d, d_out: 3 * d, has_bias: true, layout: WeightLayout::InOut }, 3, 4),
        (4, LayerKind::Linear { d_in: d, d_out: d, has_bias: true, layout: WeightLayout::OutIn }, 5, 6),
        (5, LayerKind::Norm { d, has_bias: true }, 7, 8),
        (6, LayerKind::Linear { d_in: d, d_out: f, has_bias: true, layout: WeightLayout::OutIn }, 9, 10),
        (7, LayerKind::Linear { d_in: f, d_out: d, has_bias: true, layout: WeightLayout::InOut }, 11, 12),
        (8, LayerKind::Norm { d, has_bias: true }, 13, 14),
        (0, LayerKind::Linear { d_in: d, d_out: v, has_bias: false, layout: WeightLayout::OutIn }, 15, 16),
    ]
}

fn side(fs: &[Factors], len: &[usize]) -> Side {
    let g = |sel: fn(&Factors) -> &Vec<f64>, w: usize| -> Vec<f32> {
        let per: Vec<&[f64]> = fs.iter().map(|f| sel(f).as_slice()).collect();
        rows_f32(&per, len, w)
    };
    let bufs = vec![
        g(|f| &f.dh0, D),
        g(|f| &f.xhat1, D),
        g(|f| &f.dln1, D),
        g(|f| &f.ln1, D),
        g(|f| &f.dqkv, 3 * D),
        g(|f| &f.att, D),
        g(|f| &f.dh1, D),
        g(|f| &f.xhat2, D),
        g(|f| &f.dln2, D),
        g(|f| &f.ln2, D),
        g(|f| &f.df1, F),
        g(|f| &f.a1, F),
        g(|f| &f.dh2, D),
        g(|f| &f.xhatf, D),
        g(|f| &f.dlnf, D),
        g(|f| &f.lnf, D),
        g(|f| &f.dlogits, VOCAB),
    ];
    let mask = len.iter().flat_map(|&l| (0..T).map(move |i| (i < l) as u8)).collect();
    Side { ids: fs.iter().flat_map(|f| f.ids.clone()).collect(), pos: fs.iter().flat_map(|f| f.pos.clone()).collect(), mask, bufs }
}

/// `x` and `b` tensors of every use of one side, given tensors for the id arrays and buffers.
fn uses<'a>(
    train: (&[Tensor<'a>], Tensor<'a>, Tensor<'a>, Tensor<'a>),
    query: (&[Tensor<'a>], Tensor<'a>, Tensor<'a>, Tensor<'a>, Segments<'a>),
    nq_rows: u64,
) -> Vec<LayerUse<'a>> {
    let pick = |bufs: &[Tensor<'a>], ids: Tensor<'a>, pos: Tensor<'a>, i: usize| match i {
        usize::MAX => ids,
        x if x == usize::MAX - 1 => pos,
        x => bufs[x],
    };
    layout()
        .into_iter()
        .map(|(param, kind, xi, bi)| LayerUse {
            param,
            kind,
            train: UseTrain { x: pick(train.0, train.1, train.2, xi), b: train.0[bi], t: T as u64, mask: Some(train.3) },
            query: Some(UseQuery {
                x: pick(query.0, query.1, query.2, xi),
                b: query.0[bi],
                q: nq_rows,
                segments: query.4,
                mask: Some(query.3),
            }),
        })
        .collect()
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

#[test]
fn model_level_calls_equal_explicit_per_sample_gradient_dot_products() {
    let m = model(3);
    let mut r = rng(4);
    let (n, nq) = (3usize, 2usize);
    let tr = samples(&mut r, n);
    let qs = samples(&mut r, nq);
    let run = |s: &Sample| m.run(&m.w, &s.ids, &s.targets, s.len, true);
    let (tg, tf): (Vec<Vec<f64>>, Vec<Factors>) = tr.iter().map(|s| {
        let (_, g, f) = run(s);
        (g, f)
    }).unzip();
    let (qg, qf): (Vec<Vec<f64>>, Vec<Factors>) = qs.iter().map(|s| {
        let (_, g, f) = run(s);
        (g, f)
    }).unzip();
    let tside = side(&tf, &tr.iter().map(|s| s.len).collect::<Vec<_>>());
    let qside = side(&qf, &qs.iter().map(|s| s.len).collect::<Vec<_>>());

    let want_dot: Vec<f64> = tg.iter().flat_map(|a| qg.iter().map(move |b| dot(a, b))).collect();
    let want_gram: Vec<f64> = tg.iter().flat_map(|a| tg.iter().map(move |b| dot(a, b))).collect();
    let want_sq: Vec<f64> = tg.iter().map(|a| dot(a, a)).collect();
    assert!(want_sq.iter().all(|&x| x > 1e-3), "gradients must not vanish: {want_sq:?}");

    let tb: Vec<Tensor<'_>> = tside.bufs.iter().map(|b| Tensor::from(b.as_slice())).collect();
    let qb: Vec<Tensor<'_>> = qside.bufs.iter().map(|b| Tensor::from(b.as_slice())).collect();
    let host_uses = uses(
        (&tb, tside.ids[..].into(), tside.pos[..].into(), tside.mask[..].into()),
        (&qb, qside.ids[..].into(), qside.pos[..].into(), qside.mask[..].into(), Segments::Uniform(T as u64)),
        (nq * T) as u64,
    );
    let mag = |op| model_reference(n as u64, &host_uses, op, true).unwrap();
    let (mag_dot, mag_gram, mag_sq) = (mag(ModelOp::Dot), mag(ModelOp::Gram), mag(ModelOp::SqNorm));
    // f32 factors (one rounding each) through at most ~(3d + vocab + f + 2T + 2Q) roundings.
    let tol = Tol::for_depth(3 * D + VOCAB + F + 4 * n * T + 64);
    let check = |what: &str, got: &[f32], want: &[f64], magn: &[f64]| {
        let w32: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        assert_close(what, got, &w32, magn, &vec![0.0; got.len()], Accumulate::overwrite(), tol);
    };
    let all_forms = [
        ModelForms::default(),
        ModelForms { embedding: Some(EmbeddingForm::MaskedGram), ..Default::default() },
        ModelForms { embedding: Some(EmbeddingForm::ScatterGather), ..Default::default() },
    ];
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        for forms in all_forms {
            let mut out = poisoned(n * nq);
            let report = ctx.model_dot(n as u64, &host_uses, &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap();
            assert!(report.iter().any(|c| c.uses == (0, 9)), "the embedding × LM-head cross term is computed: {report:?}");
            check(&format!("{} model_dot", ctx.describe()), &out, &want_dot, &mag_dot);
            let mut out = poisoned(n * n);
            ctx.model_gram(n as u64, &host_uses, &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap();
            check(&format!("{} model_gram", ctx.describe()), &out, &want_gram, &mag_gram);
            let mut out = poisoned(n);
            ctx.model_sqnorm(n as u64, &host_uses, &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap();
            check(&format!("{} model_sqnorm", ctx.describe()), &out, &want_sq, &mag_sq);
        }
    }

    // Dropping the tie (treating the LM head as a separate parameter) must be detectably wrong:
    // the cross terms matter.
    let mut untied = host_uses.clone();
    untied[9].param = 42;
    let mut out = poisoned(n);
    Context::cpu().model_sqnorm(n as u64, &untied, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
    let off = out.iter().zip(&want_sq).map(|(&g, &w)| (g as f64 - w).abs() / w).fold(0.0, f64::max);
    assert!(off > 1e-3, "untied result should differ from the tied gradient norms (max rel diff {off:e})");

    #[cfg(feature = "interp")]
    {
        use ghostgrad::runtime::interp::InterpRuntime;
        use std::sync::Arc;
        let rt = Arc::new(InterpRuntime::new().unwrap());
        let ctx = Context::with_runtime(rt.clone());
        let up_f = |v: &Vec<f32>| rt.upload(v, DType::F32).unwrap();
        let (tdb, qdb): (Vec<_>, Vec<_>) = (tside.bufs.iter().map(up_f).collect(), qside.bufs.iter().map(up_f).collect());
        let up_i = |v: &Vec<i32>| rt.upload(v, DType::I32).unwrap();
        let (tids, tpos, qids, qpos) = (up_i(&tside.ids), up_i(&tside.pos), up_i(&qside.ids), up_i(&qside.pos));
        let (tmask, qmask) = (rt.upload(&tside.mask, DType::U8).unwrap(), rt.upload(&qside.mask, DType::U8).unwrap());
        let tt: Vec<Tensor<'_>> = tdb.iter().map(|b| b.view().into()).collect();
        let qt: Vec<Tensor<'_>> = qdb.iter().map(|b| b.view().into()).collect();
        let dev_uses = uses(
            (&tt, tids.view().into(), tpos.view().into(), tmask.view().into()),
            (&qt, qids.view().into(), qpos.view().into(), qmask.view().into(), Segments::Uniform(T as u64)),
            (nq * T) as u64,
        );
        for forms in all_forms {
            let mut out = rt.alloc_f32((n * nq) as u64, f32::NAN).unwrap();
            ctx.model_dot(n as u64, &dev_uses, &mut out.view_mut().into(), Accumulate::overwrite(), forms).unwrap();
            check("interp model_dot", &rt.read_f32(&out).unwrap(), &want_dot, &mag_dot);
            let mut out = rt.alloc_f32((n * n) as u64, f32::NAN).unwrap();
            ctx.model_gram(n as u64, &dev_uses, &mut out.view_mut().into(), Accumulate::overwrite(), forms).unwrap();
            check("interp model_gram", &rt.read_f32(&out).unwrap(), &want_gram, &mag_gram);
            let mut out = rt.alloc_f32(n as u64, f32::NAN).unwrap();
            ctx.model_sqnorm(n as u64, &dev_uses, &mut out.view_mut().into(), Accumulate::overwrite(), forms).unwrap();
            check("interp model_sqnorm", &rt.read_f32(&out).unwrap(), &want_sq, &mag_sq);
        }
    }
}

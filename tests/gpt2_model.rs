//! The model-level calls on a tiny GPT-2-like model (tests/common/gpt2.rs, written by hand in
//! f64; its backward is checked here by finite differences): token embedding tied to the LM
//! head, positional embedding, three LayerNorms, single-head attention (HF `Conv1D` c_attn and
//! an `nn.Linear` projection), an MLP (`nn.Linear` fc, `Conv1D` projection), ragged sequence
//! lengths with NaN-poisoned, masked padding. `model_dot`, `model_gram` and `model_sqnorm`
//! must equal the dot products of the explicit flattened per-sample gradients of *all*
//! parameters, on the fast CPU path, the f64 reference and the CUDA kernels (PTX interpreter);
//! `kron_project_model` must equal the projections of those explicit gradients, parameter by
//! parameter (wte once, for the lookup and the LM head together).

mod common;
#[path = "common/gpt2.rs"]
mod gpt2;

use common::*;
use ghostgrad::layers::reference::{model_reference, ModelOp};
use ghostgrad::{
    Accumulate, Context, DType, EmbeddingForm, LayerKind, LayerUse, ModelForms, QuerySide, Segments, Tensor, UseQuery,
    UseTrain, WeightLayout,
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
            query: QuerySide::Factors(UseQuery {
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

/// `[rows, cols]` projected storage (`projected_storage`) of parameter `p` of the tiny GPT-2,
/// filled from the flat gradient `g` (the model's own parameter layout).
fn param_matrix(m: &Gpt2, kind: &LayerKind, p: u32, g: &[f64]) -> Vec<f64> {
    let o = m.offsets();
    let (w, b) = match p {
        0 => (o.wte, None),
        1 => (o.wpe, None),
        2 => (o.ln1_g, Some(o.ln1_b)),
        3 => (o.attn_w, Some(o.attn_b)),
        4 => (o.proj_w, Some(o.proj_b)),
        5 => (o.ln2_g, Some(o.ln2_b)),
        6 => (o.fc_w, Some(o.fc_b)),
        7 => (o.mp_w, Some(o.mp_b)),
        _ => (o.lnf_g, Some(o.lnf_b)),
    };
    let (rows, cols) = ghostgrad::projection::projected_storage(kind);
    let (rows, cols) = (rows as usize, cols as usize);
    let mut x = vec![0.0f64; rows * cols];
    match *kind {
        // Weight [d_out, d_in] then the bias as the last column.
        LayerKind::Linear { d_in, layout: WeightLayout::OutIn, .. } => {
            let di = d_in as usize;
            for r in 0..rows {
                x[r * cols..r * cols + di].copy_from_slice(&g[w + r * di..w + (r + 1) * di]);
                if let Some(b) = b {
                    x[r * cols + di] = g[b + r];
                }
            }
        }
        // Weight [d_in, d_out] then the bias as the last row: the flat layout itself.
        LayerKind::Linear { d_in, d_out, .. } => {
            let nw = (d_in * d_out) as usize;
            x[..nw].copy_from_slice(&g[w..w + nw]);
            if let Some(b) = b {
                x[nw..].copy_from_slice(&g[b..b + d_out as usize]);
            }
        }
        LayerKind::Embedding { .. } => x.copy_from_slice(&g[w..w + rows * cols]),
        LayerKind::Norm { .. } => {
            for r in 0..rows {
                x[r * cols] = g[w + r];
                x[r * cols + 1] = g[b.expect("GPT-2 norms have a bias") + r];
            }
        }
    }
    x
}

/// LoGra over the whole tiny GPT-2: `kron_project_model` with one random projection per
/// parameter (wte projected once for the lookup and the LM head together) equals
/// `P_rows G_n P_colsᵀ` of the explicit per-sample gradient of every parameter (from the hand
/// backward, itself checked by finite differences), on the CPU backends and the interpreter.
#[test]
fn kron_project_model_equals_explicit_projected_gradients_of_every_parameter() {
    use ghostgrad::projection::materialize_projection;
    use ghostgrad::{Distribution, ParamProjection, ProjectionKind, ProjectionSpec, Which};
    let m = model(5);
    let mut r = rng(6);
    let n = 3usize;
    let tr = samples(&mut r, n);
    let (tg, tf): (Vec<Vec<f64>>, Vec<Factors>) = tr
        .iter()
        .map(|s| {
            let (_, g, f) = m.run(&m.w, &s.ids, &s.targets, s.len, true);
            (g, f)
        })
        .unzip();
    let tside = side(&tf, &tr.iter().map(|s| s.len).collect::<Vec<_>>());
    let tb: Vec<Tensor<'_>> = tside.bufs.iter().map(|b| Tensor::from(b.as_slice())).collect();
    let host_uses = uses(
        (&tb, tside.ids[..].into(), tside.pos[..].into(), tside.mask[..].into()),
        (&tb, tside.ids[..].into(), tside.pos[..].into(), tside.mask[..].into(), Segments::Uniform(T as u64)),
        (n * T) as u64,
    );
    let lay = layout();
    let kinds: Vec<LayerKind> = (0..9u32).map(|p| lay.iter().find(|u| u.0 == p).unwrap().1).collect();
    let dist = Distribution::Rademacher;
    let (k_o, k_i) = (5u64, 3u64);
    let params: Vec<ParamProjection<'_>> =
        (0..9u32).map(|p| ParamProjection { param: p, proj: ProjectionSpec { k_i, k_o, kind: ProjectionKind::Random { seed: 9, layer: p, dist } } }).collect();
    let w = (k_o * k_i) as usize;
    // Expected rows [n, 9·w] and magnitudes.
    let (mut want, mut mag) = (Vec::new(), Vec::new());
    for g in &tg {
        for (p, kind) in kinds.iter().enumerate() {
            let (rows, cols) = ghostgrad::projection::projected_storage(kind);
            let pr = materialize_projection(9, p as u32, Which::Out, k_o, rows, dist);
            let pc = materialize_projection(9, p as u32, Which::In, k_i, cols, dist);
            let x = param_matrix(&m, kind, p as u32, g);
            let (rows, cols) = (rows as usize, cols as usize);
            for o in 0..k_o as usize {
                for i in 0..k_i as usize {
                    let terms = (0..rows).flat_map(|a| (0..cols).map(move |c| (a, c))).map(|(a, c)| pr[o * rows + a] as f64 * x[a * cols + c] * pc[i * cols + c] as f64);
                    let (s, sa) = terms.fold((0.0, 0.0), |(s, sa), v| (s + v, sa + v.abs()));
                    want.push(s as f32);
                    mag.push(sa);
                }
            }
        }
    }
    assert!(want.iter().any(|x| x.abs() > 1e-3), "projections must not vanish");
    // f32 factors from an f64 backward (one rounding each), the projections' reductions and the
    // token sums; the magnitude is of the f64 gradient (a lower bound of the factor products).
    let tol = Tol { rel: 1e-4, tiny: 1e-6 };
    let check = |what: &str, got: &[f32]| assert_close(what, got, &want, &mag, &vec![0.0; got.len()], Accumulate::overwrite(), tol);
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        let mut out = poisoned(n * 9 * w);
        ctx.kron_project_model(n as u64, &host_uses, &params, &mut (&mut out[..]).into(), Accumulate::overwrite()).unwrap();
        check(&format!("{} kron_project_model", ctx.describe()), &out);
    }
    #[cfg(feature = "interp")]
    {
        use ghostgrad::runtime::interp::InterpRuntime;
        use std::sync::Arc;
        let rt = Arc::new(InterpRuntime::new().unwrap());
        let ctx = Context::with_runtime(rt.clone());
        let tdb: Vec<_> = tside.bufs.iter().map(|v| rt.upload(v, DType::F32).unwrap()).collect();
        let up_i = |v: &Vec<i32>| rt.upload(v, DType::I32).unwrap();
        let (tids, tpos) = (up_i(&tside.ids), up_i(&tside.pos));
        let tmask = rt.upload(&tside.mask, DType::U8).unwrap();
        let tt: Vec<Tensor<'_>> = tdb.iter().map(|b| b.view().into()).collect();
        let dev_uses = uses(
            (&tt, tids.view().into(), tpos.view().into(), tmask.view().into()),
            (&tt, tids.view().into(), tpos.view().into(), tmask.view().into(), Segments::Uniform(T as u64)),
            (n * T) as u64,
        );
        let mut out = rt.alloc_f32((n * 9 * w) as u64, f32::NAN).unwrap();
        ctx.kron_project_model(n as u64, &dev_uses, &params, &mut out.view_mut().into(), Accumulate::overwrite()).unwrap();
        check("interp kron_project_model", &rt.read_f32(&out).unwrap());
    }
}

//! `kron_project_model`: every parameter of a random model of mixed layer kinds (Linear in both
//! layouts with and without bias, embeddings with repeated ids, LayerNorm/RMSNorm, and the tied
//! groups of tests/common/model.rs: an embedding tied to its LM head, a Linear used twice, a
//! weight used in both orientations, a shared norm, two lookups into one table) is projected
//! into one block per parameter. Expected: `P_rows G_n P_colsᵀ` of the explicit per-sample
//! gradient of the parameter (summed over its uses, built by materializing), in f64, on ragged
//! shapes, masks whose masked rows hold NaN, outputs NaN-poisoned or random with `beta ≠ 0`.

mod common;

use common::model::*;
use common::*;
use ghostgrad::{
    projection::{materialize_projection, projected_storage}, Accumulate, ColumnGroup, Context, DType, Distribution, LayerKind, LayerShape,
    LayerUse, OutColumns, ParamProjection, ProjectLayer, ProjectionKind, ProjectionSpec, TrainFactors, WeightLayout, Which,
};
use proptest::prelude::*;
use rand::Rng;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 16, ..ProptestConfig::default() }
}

/// One parameter's projection as the test holds it: sizes and host matrices (random ones
/// materialized by the crate's generator, which the kernels reproduce bit for bit).
#[derive(Debug, Clone)]
struct ParamProj {
    param: u32,
    k_i: u64,
    k_o: u64,
    rows: u64,
    cols: u64,
    /// `Some((seed, layer, dist))` for a random spec, `None` for dense `p_rows`, `p_cols`.
    random: Option<(u64, u32, Distribution)>,
    p_rows: Vec<f32>,
    p_cols: Vec<f32>,
}

impl ParamProj {
    fn random(rng: &mut TestRng, param: u32, kind: &LayerKind, max_k: u64) -> Self {
        let (rows, cols) = projected_storage(kind);
        let k_i = rng.random_range(1..=max_k);
        let k_o = rng.random_range(1..=max_k);
        if rng.random_bool(0.5) {
            let seed = rng.random::<u64>();
            let layer = rng.random_range(0..1000u32);
            let dist = if rng.random_bool(0.5) { Distribution::Gaussian } else { Distribution::Rademacher };
            let p_rows = materialize_projection(seed, layer, Which::Out, k_o, rows, dist);
            let p_cols = materialize_projection(seed, layer, Which::In, k_i, cols, dist);
            ParamProj { param, k_i, k_o, rows, cols, random: Some((seed, layer, dist)), p_rows, p_cols }
        } else {
            let p_rows = (0..k_o * rows).map(|_| nonzero_gaussian(rng)).collect();
            let p_cols = (0..k_i * cols).map(|_| nonzero_gaussian(rng)).collect();
            ParamProj { param, k_i, k_o, rows, cols, random: None, p_rows, p_cols }
        }
    }

    /// The spec with dense matrices from the given tensors (host or device copies).
    fn spec<'a>(&self, dense: Option<(ghostgrad::Tensor<'a>, ghostgrad::Tensor<'a>)>) -> ParamProjection<'a> {
        let kind = match (self.random, dense) {
            (Some((seed, layer, dist)), _) => ProjectionKind::Random { seed, layer, dist },
            (None, Some((p_rows, p_cols))) => ProjectionKind::Dense { p_in: p_cols, p_out: p_rows },
            (None, None) => panic!("dense projection needs its matrices"),
        };
        ParamProjection { param: self.param, proj: ProjectionSpec { k_i: self.k_i, k_o: self.k_o, kind } }
    }

    fn host_spec(&self) -> ParamProjection<'_> {
        self.spec(Some((self.p_rows.as_slice().into(), self.p_cols.as_slice().into())))
    }
}

/// The parameters of `m` in first-use order with random projections.
fn param_projs(rng: &mut TestRng, m: &ModelData, max_k: u64) -> Vec<ParamProj> {
    let mut ps: Vec<ParamProj> = Vec::new();
    for u in &m.uses {
        if !ps.iter().any(|p| p.param == u.param) {
            ps.push(ParamProj::random(rng, u.param, &u.kind, max_k));
        }
    }
    ps
}

/// The explicit gradient `explicit_grad` (weight then bias in the storage layout) rearranged
/// into the projected `[rows, cols]` matrix of `projected_storage`.
fn as_matrix(kind: &LayerKind, g: &[f64]) -> Vec<f64> {
    let (rows, cols) = projected_storage(kind);
    let (rows, cols) = (rows as usize, cols as usize);
    let mut m = vec![0.0f64; rows * cols];
    match *kind {
        LayerKind::Linear { d_in, d_out, has_bias, layout } => {
            let (di, dout) = (d_in as usize, d_out as usize);
            for o in 0..dout {
                for i in 0..di {
                    match layout {
                        WeightLayout::OutIn => m[o * cols + i] = g[o * di + i],
                        WeightLayout::InOut => m[i * cols + o] = g[i * dout + o],
                    }
                }
                if has_bias {
                    match layout {
                        WeightLayout::OutIn => m[o * cols + di] = g[di * dout + o],
                        WeightLayout::InOut => m[di * cols + o] = g[di * dout + o],
                    }
                }
            }
        }
        LayerKind::Embedding { .. } => m.copy_from_slice(g),
        LayerKind::Norm { d, has_bias } => {
            for k in 0..d as usize {
                m[k * cols] = g[k];
                if has_bias {
                    m[k * cols + 1] = g[d as usize + k];
                }
            }
        }
    }
    m
}

/// `P_rows M P_colsᵀ` (row-major `[k_o, k_i]`); with `abs` on absolute values.
fn sandwich(p: &ParamProj, m: &[f64], abs: bool) -> Vec<f64> {
    let f = |x: f32| if abs { (x as f64).abs() } else { x as f64 };
    let (rows, cols, k_i, k_o) = (p.rows as usize, p.cols as usize, p.k_i as usize, p.k_o as usize);
    let mut tmp = vec![0.0f64; rows * k_i];
    for r in 0..rows {
        for i in 0..k_i {
            tmp[r * k_i + i] = (0..cols).map(|c| m[r * cols + c] * f(p.p_cols[i * cols + c])).sum();
        }
    }
    let mut out = Vec::with_capacity(k_o * k_i);
    for o in 0..k_o {
        for i in 0..k_i {
            out.push((0..rows).map(|r| f(p.p_rows[o * rows + r]) * tmp[r * k_i + i]).sum());
        }
    }
    out
}

/// Expected `[N, Σ k_o·k_i]` and its magnitude.
fn expected_rows(m: &ModelData, ps: &[ParamProj]) -> (Vec<f64>, Vec<f64>) {
    let mut rows: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); m.n];
    for p in ps {
        let group: Vec<&UseData> = m.uses.iter().filter(|u| u.param == p.param).collect();
        let kind = group[0].kind;
        for (s, (val, mag)) in rows.iter_mut().enumerate() {
            let g = explicit_grad(&group, false, &|u| s * u.t..(s + 1) * u.t, false);
            let ga = explicit_grad(&group, false, &|u| s * u.t..(s + 1) * u.t, true);
            val.extend(sandwich(p, &as_matrix(&kind, &g), false));
            mag.extend(sandwich(p, &as_matrix(&kind, &ga), true));
        }
    }
    rows.into_iter().fold((Vec::new(), Vec::new()), |(mut v, mut a), (x, y)| {
        v.extend(x);
        a.extend(y);
        (v, a)
    })
}

/// Rounding depth: per parameter the two projections' reductions, the tokens of all its uses,
/// the sum over uses and the finalize, plus a margin.
fn depth(m: &ModelData, ps: &[ParamProj]) -> usize {
    ps.iter()
        .map(|p| {
            let toks: usize = m.uses.iter().filter(|u| u.param == p.param).map(|u| u.t + 2).sum();
            (p.rows + p.cols) as usize + toks + 16
        })
        .max()
        .unwrap_or(0)
}

/// Runs `call(old, acc)` with a random accumulation and checks against the explicit result.
/// A projection run: `(out, column groups)` from `(old out, acc)`.
type ProjectRun<'a> = dyn Fn(&[f32], Accumulate) -> (Vec<f32>, Vec<ColumnGroup>) + 'a;
/// A K-FAC run: `(c_rows, c_cols)` per parameter from their old values and `acc`.
type KfacRun<'a> = dyn Fn(&[Vec<f32>], &[Vec<f32>], Accumulate) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) + 'a;

fn check(what: &str, m: &ModelData, ps: &[ParamProj], seed: u64, call: &ProjectRun<'_>) {
    let mut r = rng(seed ^ 0x7e57);
    let (want, mag) = expected_rows(m, ps);
    for beta_nonzero in [false, true] {
        let acc = random_acc(&mut r, beta_nonzero);
        let old = initial_out(&mut r, want.len(), acc);
        let (got, groups) = call(&old, acc);
        let mut off = 0;
        let expect_groups: Vec<ColumnGroup> = ps
            .iter()
            .map(|p| {
                let g = ColumnGroup { offset: off, width: p.k_o * p.k_i };
                off += g.width;
                g
            })
            .collect();
        assert_eq!(groups, expect_groups, "{what}: column groups");
        let mut want32 = old.clone();
        ghostgrad::cpu::apply_accumulate(&mut want32, &want, acc);
        assert_close(&format!("{what} beta≠0={beta_nonzero}"), &got, &want32, &mag, &old, acc, Tol::for_depth(depth(m, ps)));
    }
}

fn check_cpu(m: &ModelData, ps: &[ParamProj], seed: u64) {
    let uses = m.layer_uses();
    let specs: Vec<ParamProjection<'_>> = ps.iter().map(|p| p.host_spec()).collect();
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        check(&ctx.describe(), m, ps, seed, &|old, acc| {
            let mut out = old.to_vec();
            let g = ctx.kron_project_model(m.n as u64, &uses, &specs, &mut (&mut out[..]).into(), acc).unwrap_or_else(|e| panic!("{e}"));
            (out, g)
        });
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn cpu_backends_match_the_explicit_projected_gradients(mix in mix_strategy(), dt in 0usize..3, masked in any::<bool>(), seed in any::<u64>()) {
        let mut r = rng(seed);
        let m = ModelData::random(&mut r, mix, FLOAT_DTYPES[dt], masked);
        let ps = param_projs(&mut r, &m, 20);
        check_cpu(&m, &ps, seed);
    }
}

#[test]
fn every_kind_and_the_tied_groups_on_fixed_seeds_with_more_than_one_tile() {
    for (i, mix) in Mix::EACH_KIND_AND_TIED.into_iter().enumerate() {
        for seed in 0..4u64 {
            let mut r = rng(seed * 13 + i as u64);
            let m = ModelData::random(&mut r, mix, FLOAT_DTYPES[(seed as usize + i) % 3], seed % 2 == 0);
            let ps = param_projs(&mut r, &m, 70);
            check_cpu(&m, &ps, seed);
        }
    }
}

/// A parameter used once as `nn.Linear` is exactly `kron_project`'s layer (same bits).
fn untied_linear(seed: u64) -> (ModelData, Vec<ParamProj>) {
    let mut r = rng(seed);
    let mut m = ModelData::random(&mut r, Mix { linear: true, embedding: false, norm: false, tied: false }, DType::F32, seed % 2 == 0);
    if let LayerKind::Linear { layout, .. } = &mut m.uses[0].kind {
        *layout = WeightLayout::OutIn;
    }
    let ps = param_projs(&mut r, &m, 70);
    (m, ps)
}

fn layer_of<'a>(u: &LayerUse<'a>, n: u64, p: &'a ParamProj, dense: Option<(ghostgrad::Tensor<'a>, ghostgrad::Tensor<'a>)>) -> ProjectLayer<'a> {
    let LayerKind::Linear { d_in, d_out, has_bias, .. } = u.kind else { unreachable!() };
    ProjectLayer {
        shape: LayerShape { d_in, d_out, has_bias },
        train: TrainFactors { a: u.train.x, b: u.train.b, n, t: u.train.t, mask: u.train.mask },
        proj: p.spec(dense).proj,
    }
}

#[test]
fn a_single_linear_use_is_kron_project_bit_for_bit() {
    for seed in 0..4 {
        let (m, ps) = untied_linear(seed);
        let uses = m.layer_uses();
        let n = m.n as u64;
        let w = (ps[0].k_o * ps[0].k_i) as usize;
        for ctx in [Context::cpu(), Context::cpu_reference()] {
            let acc = Accumulate { scale: 1.5, beta: 0.0 };
            let mut a = poisoned(m.n * w);
            ctx.kron_project_model(n, &uses, &[ps[0].host_spec()], &mut (&mut a[..]).into(), acc).unwrap();
            let mut b = poisoned(m.n * w);
            let l = layer_of(&uses[0], n, &ps[0], Some((ps[0].p_rows.as_slice().into(), ps[0].p_cols.as_slice().into())));
            ctx.kron_project(&l.shape, &l.train, &l.proj, &mut (&mut b[..]).into(), OutColumns { offset: 0, row_stride: w as u64 }, acc).unwrap();
            assert_bitwise_eq(&ctx.describe(), &a, &b);
        }
    }
}

#[test]
fn errors_are_typed_and_name_the_problem() {
    let mut r = rng(5);
    let m = ModelData::random(&mut r, Mix { linear: false, embedding: false, norm: false, tied: true }, DType::F32, false);
    let ps = param_projs(&mut r, &m, 8);
    let uses = m.layer_uses();
    let specs: Vec<ParamProjection<'_>> = ps.iter().map(|p| p.host_spec()).collect();
    let width: u64 = ps.iter().map(|p| p.k_o * p.k_i).sum();
    let ctx = Context::cpu();
    let n = m.n as u64;
    let acc = Accumulate { scale: 1.0, beta: 0.0 };
    let mut out = poisoned((n * width) as usize);
    let err = |specs: &[ParamProjection<'_>], out: &mut [f32]| ctx.kron_project_model(n, &uses, specs, &mut out.into(), acc).unwrap_err().to_string();
    // A use's parameter without a projection.
    let e = err(&specs[1..], &mut out);
    assert!(e.contains("has no projection"), "{e}");
    // A parameter listed twice.
    let mut twice = specs.clone();
    twice.push(specs[0]);
    assert!(err(&twice, &mut out).contains("listed twice"));
    // A projection for a parameter nobody uses.
    let mut extra = specs.clone();
    extra.push(ParamProjection { param: 12345, proj: specs[0].proj });
    assert!(err(&extra, &mut out).contains("has no use"));
    // Output of the wrong length.
    let e = err(&specs, &mut out[1..]);
    assert!(e.contains("out"), "{e}");
    // A dense P_rows of the wrong size (the tied embedding / LM head: [k_o, vocab]).
    let short = &ps[0].p_rows[1..];
    let mut bad = specs.clone();
    bad[0] = ps[0].spec(Some((short.into(), ps[0].p_cols.as_slice().into())));
    if ps[0].random.is_none() {
        let e = err(&bad, &mut out);
        assert!(e.contains("p_out"), "{e}");
    }
    // k = 0.
    let mut zero = specs.clone();
    zero[0].proj.k_i = 0;
    assert!(err(&zero, &mut out).contains("k_i"));
    // No parameters.
    assert!(!err(&[], &mut out).is_empty());
    // Non-finite scale.
    let e = ctx.kron_project_model(n, &uses, &specs, &mut (&mut out[..]).into(), Accumulate { scale: f32::NAN, beta: 0.0 }).unwrap_err().to_string();
    assert!(e.contains("scale"), "{e}");
}

/// Data value embedding over a model with tied parameters: the blocks of `kron_project_model`
/// (one per parameter, the embedding/LM-head tie summed into one) feed `dvemb_layers` directly;
/// each block's embeddings equal the f64 recursion run on the explicit projected gradients.
#[test]
fn dvemb_runs_on_the_tied_blocks_of_kron_project_model() {
    use ghostgrad::dvemb::cpu::{reference, Layout};
    use ghostgrad::{Blocking, DvembLayer, DvembSteps, LossReduction};
    let mut r = rng(77);
    let m = ModelData::random_n(&mut r, Mix { linear: true, embedding: false, norm: true, tied: true }, DType::F32, true, 7);
    let ps = param_projs(&mut r, &m, 6);
    let uses = m.layer_uses();
    let specs: Vec<ParamProjection<'_>> = ps.iter().map(|p| p.host_spec()).collect();
    let width: u64 = ps.iter().map(|p| p.k_o * p.k_i).sum();
    let ctx = Context::cpu();
    let mut g = poisoned(7 * width as usize);
    let groups = ctx.kron_project_model(7, &uses, &specs, &mut (&mut g[..]).into(), Accumulate { scale: 1.0, beta: 0.0 }).unwrap();
    let explicit: Vec<f32> = expected_rows(&m, &ps).0.iter().map(|&x| x as f32).collect();
    let steps = DvembSteps { rows: &[3, 2, 2], etas: &[0.3, 0.2, 0.1], loss: LossReduction::Mean };
    let mut ms: Vec<Vec<f32>> = groups.iter().map(|c| vec![0.0f32; (c.width * c.width) as usize]).collect();
    let mut mts: Vec<ghostgrad::TensorMut<'_>> = ms.iter_mut().map(|x| (&mut x[..]).into()).collect();
    let mut layers: Vec<DvembLayer<'_, '_>> = groups.iter().zip(mts.iter_mut()).map(|(c, m)| DvembLayer { offset: c.offset, k: c.width, m }).collect();
    let mut e = poisoned(7 * width as usize);
    ctx.dvemb_layers(&(&g[..]).into(), width, &mut layers, &steps, &mut (&mut e[..]).into(), Blocking::Auto).unwrap();
    for (p, c) in groups.iter().enumerate() {
        let layout = Layout { row_stride: width as usize, offset: c.offset as usize, k: c.width as usize };
        let mut m64 = vec![0.0f64; (c.width * c.width) as usize];
        let want = reference(&explicit, layout, &steps, Blocking::PerStep, &mut m64, false);
        let got: Vec<f64> = (0..7).flat_map(|row| e[row * width as usize + c.offset as usize..][..c.width as usize].iter().map(|&x| x as f64)).collect();
        let (num, den) = got.iter().zip(&want).fold((0.0f64, 0.0f64), |(a, b), (x, y)| (a + (x - y) * (x - y), b + y * y));
        assert!(den > 0.0 && got.iter().all(|x| x.is_finite()), "param {}: {got:?}", ps[p].param);
        assert!((num / den).sqrt() < 1e-4, "param {}: normwise relative error {:e}", ps[p].param, (num / den).sqrt());
    }
}

/// Per kept training token of every use of `p`: the vectors `(r_t, c_t)` of its outer product
/// on the projected storage `[rows, cols]` (`nn.Linear`: `(b, [a; 1])`, Conv1D `([a; 1], b)`,
/// embedding `(e_id, b)`), in f64.
fn token_sides(m: &ModelData, p: &ParamProj) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut out = Vec::new();
    for u in m.uses.iter().filter(|u| u.param == p.param) {
        let s = &u.train;
        for r in 0..s.rows {
            if s.mask.as_ref().is_some_and(|mk| mk[r] == 0) {
                continue;
            }
            let row = |b: &Buf, w: usize, one: bool| -> Vec<f64> {
                let mut v: Vec<f64> = (0..w).map(|k| b.get(r * w + k)).collect();
                if one {
                    v.push(1.0);
                }
                v
            };
            let pair = match (u.kind, &s.x) {
                (LayerKind::Linear { d_in, d_out, has_bias, layout }, XBuf::Float(x)) => {
                    let (a, b) = (row(x, d_in as usize, has_bias), row(&s.b, d_out as usize, false));
                    if layout == WeightLayout::OutIn {
                        (b, a)
                    } else {
                        (a, b)
                    }
                }
                (LayerKind::Embedding { vocab, d }, XBuf::Ids(ids)) => {
                    let mut e = vec![0.0; vocab as usize];
                    e[ids[r] as usize] = 1.0;
                    (e, row(&s.b, d as usize, false))
                }
                _ => unreachable!("matrix uses only"),
            };
            out.push(pair);
        }
    }
    out
}

/// `Σ (P y)(P y)ᵀ` over `ys` (`P [k, w]`), with `abs` on absolute values: `[k, k]`.
fn cov(pm: &[f32], k: usize, ys: &[&Vec<f64>], abs: bool) -> Vec<f64> {
    let f = |x: f64| if abs { x.abs() } else { x };
    let mut c = vec![0.0f64; k * k];
    for y in ys {
        let w = y.len();
        let py: Vec<f64> = (0..k).map(|i| (0..w).map(|j| f(pm[i * w + j] as f64) * f(y[j])).sum()).collect();
        for i in 0..k {
            for j in 0..k {
                c[i * k + j] += py[i] * py[j];
            }
        }
    }
    c
}

fn matrix_params(r: &mut TestRng, m: &ModelData, max_k: u64) -> Vec<ParamProj> {
    param_projs(r, m, max_k).into_iter().filter(|p| !m.uses.iter().any(|u| u.param == p.param && matches!(u.kind, LayerKind::Norm { .. }))).collect()
}

fn check_kfac(what: &str, m: &ModelData, ps: &[ParamProj], seed: u64, call: &KfacRun<'_>) {
    let mut r = rng(seed ^ 0xfac);
    for beta_nonzero in [false, true] {
        let acc = random_acc(&mut r, beta_nonzero);
        let olds: Vec<(Vec<f32>, Vec<f32>)> = ps.iter().map(|p| (initial_out(&mut r, (p.k_o * p.k_o) as usize, acc), initial_out(&mut r, (p.k_i * p.k_i) as usize, acc))).collect();
        let (old_r, old_c): (Vec<Vec<f32>>, Vec<Vec<f32>>) = olds.into_iter().unzip();
        let (got_r, got_c) = call(&old_r, &old_c, acc);
        for (i, p) in ps.iter().enumerate() {
            let toks = token_sides(m, p);
            let rs: Vec<&Vec<f64>> = toks.iter().map(|t| &t.0).collect();
            let cs: Vec<&Vec<f64>> = toks.iter().map(|t| &t.1).collect();
            let depth = (p.rows + p.cols) as usize + toks.len() + 16;
            for (name, pm, k, ys, got, old) in [("c_rows", &p.p_rows, p.k_o, &rs, &got_r[i], &old_r[i]), ("c_cols", &p.p_cols, p.k_i, &cs, &got_c[i], &old_c[i])] {
                let (want, mag) = (cov(pm, k as usize, ys, false), cov(pm, k as usize, ys, true));
                let mut want32 = old.clone();
                ghostgrad::cpu::apply_accumulate(&mut want32, &want, acc);
                assert_close(&format!("{what} param {} {name}", p.param), got, &want32, &mag, old, acc, Tol::for_depth(depth));
            }
        }
    }
}

fn run_kfac_host(ctx: &Context, m: &ModelData, ps: &[ParamProj], old_r: &[Vec<f32>], old_c: &[Vec<f32>], acc: Accumulate) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let uses = m.layer_uses();
    let specs: Vec<ParamProjection<'_>> = ps.iter().map(|p| p.host_spec()).collect();
    let (mut cr, mut cc) = (old_r.to_vec(), old_c.to_vec());
    {
        let mut tr: Vec<ghostgrad::TensorMut<'_>> = cr.iter_mut().map(|x| (&mut x[..]).into()).collect();
        let mut tc: Vec<ghostgrad::TensorMut<'_>> = cc.iter_mut().map(|x| (&mut x[..]).into()).collect();
        ctx.kfac_covariances_model(m.n as u64, &uses, &specs, &mut tr, &mut tc, acc).unwrap_or_else(|e| panic!("{e}"));
    }
    (cr, cc)
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn kfac_factors_of_every_matrix_parameter_match_the_token_sums(mix in mix_strategy(), dt in 0usize..3, masked in any::<bool>(), seed in any::<u64>()) {
        let mut r = rng(seed);
        let m = ModelData::random(&mut r, mix, FLOAT_DTYPES[dt], masked);
        let ps = matrix_params(&mut r, &m, 20);
        prop_assume!(!ps.is_empty());
        // Norm uses are dropped from the model (their params have no projection here).
        let mm = ModelData { uses: m.uses.iter().filter(|u| ps.iter().any(|p| p.param == u.param)).cloned().collect(), ..m.clone() };
        for ctx in [Context::cpu(), Context::cpu_reference()] {
            check_kfac(&ctx.describe(), &mm, &ps, seed, &|or, oc, acc| run_kfac_host(&ctx, &mm, &ps, or, oc, acc));
        }
    }
}

#[test]
fn kfac_model_of_a_single_linear_is_kfac_covariances_and_norms_are_rejected() {
    let (m, ps) = untied_linear(3);
    let uses = m.layer_uses();
    let n = m.n as u64;
    let (ko, ki) = ((ps[0].k_o * ps[0].k_o) as usize, (ps[0].k_i * ps[0].k_i) as usize);
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        let acc = Accumulate { scale: 0.5, beta: 0.0 };
        let (cr, cc) = run_kfac_host(&ctx, &m, &ps, &[poisoned(ko)], &[poisoned(ki)], acc);
        let (mut ca, mut cb) = (poisoned(ki), poisoned(ko));
        let dense = Some((ps[0].p_rows.as_slice().into(), ps[0].p_cols.as_slice().into()));
        ctx.kfac_covariances(layer_of(&uses[0], n, &ps[0], dense), &mut (&mut ca[..]).into(), &mut (&mut cb[..]).into(), acc).unwrap();
        assert_bitwise_eq("c_rows = c_b", &cr[0], &cb);
        assert_bitwise_eq("c_cols = c_a", &cc[0], &ca);
    }
    let mut r = rng(8);
    let m = ModelData::random(&mut r, Mix { linear: false, embedding: false, norm: true, tied: false }, DType::F32, false);
    let ps = param_projs(&mut r, &m, 4);
    let uses = m.layer_uses();
    let specs: Vec<ParamProjection<'_>> = ps.iter().map(|p| p.host_spec()).collect();
    let (mut a, mut b) = (vec![0f32; 16], vec![0f32; 16]);
    let e = Context::cpu()
        .kfac_covariances_model(m.n as u64, &uses, &specs, &mut [(&mut a[..]).into()], &mut [(&mut b[..]).into()], Accumulate { scale: 1.0, beta: 0.0 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("norm"), "{e}");
}

#[cfg(feature = "interp")]
mod gpu {
    use super::*;
    use common::model_dev::*;
    use ghostgrad::runtime::interp::InterpBuffer;

    fn run_interp(m: &ModelData, ps: &[ParamProj], sched: u64, old: &[f32], acc: Accumulate) -> (Vec<f32>, Vec<ColumnGroup>) {
        let rt = runtime(sched);
        let ctx = Context::with_runtime(rt.clone());
        let dev = upload_model(&rt, m);
        let uses = dev_uses(m, &dev);
        let mats: Vec<(InterpBuffer, InterpBuffer)> =
            ps.iter().map(|p| (rt.upload(&p.p_rows, DType::F32).unwrap(), rt.upload(&p.p_cols, DType::F32).unwrap())).collect();
        let specs: Vec<ParamProjection<'_>> =
            ps.iter().zip(&mats).map(|(p, (pr, pc))| p.spec(Some((pr.view().into(), pc.view().into())))).collect();
        let mut out = rt.upload(old, DType::F32).unwrap();
        let g = ctx.kron_project_model(m.n as u64, &uses, &specs, &mut out.view_mut().into(), acc).unwrap_or_else(|e| panic!("interp: {e}"));
        (rt.read_f32(&out).unwrap(), g)
    }

    proptest! {
        #![proptest_config(config(10))]

        #[test]
        fn kernels_match_the_explicit_projected_gradients(mix in mix_strategy(), dt in 0usize..3, masked in any::<bool>(), seed in any::<u64>(), sched in 0u64..4) {
            let mut r = rng(seed);
            let m = ModelData::random(&mut r, mix, FLOAT_DTYPES[dt], masked);
            let ps = param_projs(&mut r, &m, 20);
            check("interp", &m, &ps, seed, &|old, acc| run_interp(&m, &ps, sched, old, acc));
        }
    }

    #[test]
    fn tied_groups_on_the_interpreter_with_more_than_one_tile_and_deterministic() {
        for seed in 0..3u64 {
            let mut r = rng(seed * 7 + 1);
            let m = ModelData::random(&mut r, Mix { linear: true, embedding: true, norm: true, tied: true }, FLOAT_DTYPES[seed as usize], seed == 1);
            let ps = param_projs(&mut r, &m, 70);
            check("interp tied", &m, &ps, seed, &|old, acc| run_interp(&m, &ps, seed, old, acc));
            // Another schedule of the interpreter's warps gives the same bits.
            let acc = Accumulate { scale: 0.75, beta: 0.0 };
            let len = m.n * ps.iter().map(|p| (p.k_o * p.k_i) as usize).sum::<usize>();
            let a = run_interp(&m, &ps, 0, &poisoned(len), acc).0;
            let b = run_interp(&m, &ps, 3, &poisoned(len), acc).0;
            assert_bitwise_eq("interp schedules", &a, &b);
        }
    }

    #[test]
    fn a_single_linear_use_is_kron_project_bit_for_bit_on_the_interpreter() {
        for seed in 0..2 {
            let (m, ps) = untied_linear(seed);
            let n = m.n as u64;
            let w = (ps[0].k_o * ps[0].k_i) as usize;
            let acc = Accumulate { scale: -0.5, beta: 0.0 };
            let a = run_interp(&m, &ps, 0, &poisoned(m.n * w), acc).0;
            let rt = runtime(0);
            let ctx = Context::with_runtime(rt.clone());
            let dev = upload_model(&rt, &m);
            let uses = dev_uses(&m, &dev);
            let (pr, pc) = (rt.upload(&ps[0].p_rows, DType::F32).unwrap(), rt.upload(&ps[0].p_cols, DType::F32).unwrap());
            let l = layer_of(&uses[0], n, &ps[0], Some((pr.view().into(), pc.view().into())));
            let mut out = rt.upload(&poisoned(m.n * w), DType::F32).unwrap();
            ctx.kron_project(&l.shape, &l.train, &l.proj, &mut out.view_mut().into(), OutColumns { offset: 0, row_stride: w as u64 }, acc).unwrap();
            assert_bitwise_eq("interp", &a, &rt.read_f32(&out).unwrap());
        }
    }

    #[test]
    fn kfac_factors_on_the_interpreter_match_the_token_sums() {
        for seed in 0..3u64 {
            let mut r = rng(seed * 5 + 2);
            let m = ModelData::random(&mut r, Mix { linear: true, embedding: true, norm: false, tied: true }, FLOAT_DTYPES[seed as usize], seed != 1);
            let ps = matrix_params(&mut r, &m, 70);
            let m = ModelData { uses: m.uses.iter().filter(|u| ps.iter().any(|p| p.param == u.param)).cloned().collect(), ..m.clone() };
            check_kfac("interp", &m, &ps, seed, &|old_r, old_c, acc| {
                let rt = runtime(seed);
                let ctx = Context::with_runtime(rt.clone());
                let dev = upload_model(&rt, &m);
                let uses = dev_uses(&m, &dev);
                let mats: Vec<(InterpBuffer, InterpBuffer)> =
                    ps.iter().map(|p| (rt.upload(&p.p_rows, DType::F32).unwrap(), rt.upload(&p.p_cols, DType::F32).unwrap())).collect();
                let specs: Vec<ParamProjection<'_>> =
                    ps.iter().zip(&mats).map(|(p, (pr, pc))| p.spec(Some((pr.view().into(), pc.view().into())))).collect();
                let mut br: Vec<InterpBuffer> = old_r.iter().map(|x| rt.upload(x, DType::F32).unwrap()).collect();
                let mut bc: Vec<InterpBuffer> = old_c.iter().map(|x| rt.upload(x, DType::F32).unwrap()).collect();
                {
                    let mut tr: Vec<ghostgrad::TensorMut<'_>> = br.iter_mut().map(|b| b.view_mut().into()).collect();
                    let mut tc: Vec<ghostgrad::TensorMut<'_>> = bc.iter_mut().map(|b| b.view_mut().into()).collect();
                    ctx.kfac_covariances_model(m.n as u64, &uses, &specs, &mut tr, &mut tc, acc).unwrap_or_else(|e| panic!("interp: {e}"));
                }
                (br.iter().map(|b| rt.read_f32(b).unwrap()).collect(), bc.iter().map(|b| rt.read_f32(b).unwrap()).collect())
            });
        }
    }
}

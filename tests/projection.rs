//! The projection family (MATH.md §3–§4): Kronecker projections of factored per-sample
//! gradients, the counter-based generator, influence scores and the raw-Fisher preconditioner.
//!
//! Every backend (fast CPU, and the CUDA kernels on the PTX interpreter through the production
//! plans) is compared with the f64 reference on random ragged shapes in every dtype, with masks,
//! bias, `beta ≠ 0` and NaN-poisoned outputs, under the derived rounding bound of
//! `common/mod.rs`: an entry of `Ĝ_n` is a sum over tokens of products of two projections (dots
//! of length `d_in + 1` and `d_out`), so depth `L = (d_in + 1) + d_out + T + 8` — the same
//! [`rounding_depth`] with `Q = 0`.

mod common;

use common::*;
use ghostgrad::projection::cpu::{kron_project_reference, scores_reference};
use ghostgrad::projection::precondition::RawFisher;
use ghostgrad::projection::materialize_projection;
use ghostgrad::{
    Accumulate, ColumnGroup, Context, DType, Distribution, LayerShape, OutColumns, ProjectLayer, ProjectionKind, ProjectionSpec,
    ScoreDims, ScoreMode, Tensor, TensorMut, TrainFactors, Which,
};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 16, ..ProptestConfig::default() }
}

const DISTS: [Distribution; 2] = [Distribution::Gaussian, Distribution::Rademacher];

/// One random projection problem.
#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    t: usize,
    d_in: u64,
    d_out: u64,
    k_i: u64,
    k_o: u64,
    dtype: DType,
    masked: bool,
    bias: bool,
    beta: bool,
    random: bool,
    dist: Distribution,
    seed: u64,
}

impl Case {
    fn shape(&self) -> LayerShape {
        LayerShape::new(self.d_in, self.d_out).with_bias(self.bias)
    }
    fn di(&self) -> u64 {
        self.d_in + self.bias as u64
    }
}

/// Ragged shapes crossing the kernel's 32-token tiles, 32-wide feature chunks and 64-row
/// projection tiles (k up to 70), token counts long enough to be split across CTAs.
fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        prop_oneof![1usize..20, 60usize..75],
        (1u64..40, 1u64..37),
        // k_i and k_o both cross the 64-row projection tile (issue 11, gap 7).
        (prop_oneof![1u64..20, 60u64..70], prop_oneof![1u64..18, 60u64..70]),
        0usize..3,
        any::<[bool; 5]>(),
        any::<u64>(),
    )
        .prop_map(|(n, t, (d_in, d_out), (k_i, k_o), dt, [masked, bias, beta, random, rad], seed)| Case {
            n,
            t,
            d_in,
            d_out,
            k_i,
            k_o,
            dtype: FLOAT_DTYPES[dt],
            masked,
            bias,
            beta,
            random,
            dist: DISTS[rad as usize],
            seed,
        })
}

/// The matrices of a case (materialized when random, for the reference).
fn matrices(c: &Case, r: &mut TestRng) -> (Vec<f32>, Vec<f32>) {
    if c.random {
        (
            materialize_projection(c.seed, 3, Which::In, c.k_i, c.di(), c.dist),
            materialize_projection(c.seed, 3, Which::Out, c.k_o, c.d_out, c.dist),
        )
    } else {
        let pi = (0..c.k_i * c.di()).map(|_| nonzero_gaussian(r)).collect();
        let po = (0..c.k_o * c.d_out).map(|_| nonzero_gaussian(r)).collect();
        (pi, po)
    }
}

fn spec<'a>(c: &Case, pi: Tensor<'a>, po: Tensor<'a>) -> ProjectionSpec<'a> {
    let kind = if c.random {
        ProjectionKind::Random { seed: c.seed, layer: 3, dist: c.dist }
    } else {
        ProjectionKind::Dense { p_in: pi, p_out: po }
    };
    ProjectionSpec { k_i: c.k_i, k_o: c.k_o, kind }
}

/// Writes `old` into the `[N, ld]` buffer's columns with the reference result applied.
fn expected(exact: &[f64], old: &[f32], width: usize, ld: usize, offset: usize, acc: Accumulate) -> Vec<f32> {
    let mut want = old.to_vec();
    for (n, row) in exact.chunks_exact(width).enumerate() {
        ghostgrad::cpu::apply_accumulate(&mut want[n * ld + offset..n * ld + offset + width], row, acc);
    }
    want
}

/// Expands `[N, width]` magnitudes to the `[N, ld]` layout (0 outside the layer's columns).
fn spread(mag: &[f64], n: usize, width: usize, ld: usize, offset: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * ld];
    for i in 0..n {
        m[i * ld + offset..i * ld + offset + width].copy_from_slice(&mag[i * width..(i + 1) * width]);
    }
    m
}

/// Runs a case on `ctx` (host or interpreter memory via `run`) and checks it against the
/// reference, including that columns outside the layer are untouched.
/// Runs one case on some backend: `(case, data, p_in, p_out, old out, columns, acc) -> out`.
type ProjectRun<'a> = dyn Fn(&Case, &TrainData, &[f32], &[f32], &[f32], OutColumns, Accumulate) -> Vec<f32> + 'a;

fn check_case(c: &Case, label: &str, run: &ProjectRun<'_>) {
    let mut r = rng(c.seed);
    let shape = c.shape();
    let train = TrainData::random(&mut r, shape, c.n, c.t, c.dtype, c.masked);
    let (pi, po) = matrices(c, &mut r);
    let acc = random_acc(&mut r, c.beta);
    let width = (c.k_i * c.k_o) as usize;
    let offset = (c.seed % 3) as usize;
    let ld = offset + width + (c.seed % 2) as usize;
    let old = initial_out(&mut r, c.n * ld, acc);
    let cols = OutColumns { offset: offset as u64, row_stride: ld as u64 };
    let got = run(c, &train, &pi, &po, &old, cols, acc);
    let (k_i, k_o) = (c.k_i as usize, c.k_o as usize);
    let exact = kron_project_reference(&train.reference(), &pi, &po, k_i, k_o, false);
    let mag = kron_project_reference(&train.reference(), &pi, &po, k_i, k_o, true);
    let want = expected(&exact, &old, width, ld, offset, acc);
    let tol = Tol::for_depth(rounding_depth(&shape, c.t, 0));
    // Outside the layer's columns: old values, bit for bit (NaN poison included).
    assert_outside_columns_untouched(&format!("{label} {c:?}"), &got, &old, c.n, ld, offset, width);
    let inside = |v: &[f32]| column_block(v, c.n, ld, offset, width);
    let mag_in: Vec<f64> = (0..c.n).flat_map(|n| spread(&mag, c.n, width, ld, offset)[n * ld + offset..n * ld + offset + width].to_vec()).collect();
    assert_close(&format!("{label} {c:?}"), &inside(&got), &inside(&want), &mag_in, &inside(&old), acc, tol);
}

fn run_cpu(c: &Case, train: &TrainData, pi: &[f32], po: &[f32], old: &[f32], cols: OutColumns, acc: Accumulate) -> Vec<f32> {
    let mut out = old.to_vec();
    Context::cpu()
        .kron_project(&c.shape(), &train.factors(), &spec(c, pi.into(), po.into()), &mut TensorMut::from(&mut out[..]), cols, acc)
        .unwrap_or_else(|e| panic!("cpu kron_project {c:?}: {e}"));
    out
}

proptest! {
    #![proptest_config(config(48))]
    #[test]
    fn kron_project_fast_cpu_matches_reference(c in case_strategy()) {
        check_case(&c, "cpu kron_project", &run_cpu);
    }
}

#[test]
fn reference_backend_is_the_reference() {
    let c = Case { n: 2, t: 5, d_in: 4, d_out: 3, k_i: 3, k_o: 2, dtype: DType::F32, masked: true, bias: true, beta: false, random: true, dist: Distribution::Gaussian, seed: 1 };
    let mut r = rng(1);
    let train = TrainData::random(&mut r, c.shape(), c.n, c.t, c.dtype, c.masked);
    let mut out = poisoned(12);
    let proj = spec(&c, Tensor::from(&[0f32][..]), Tensor::from(&[0f32][..]));
    Context::cpu_reference()
        .kron_project(&c.shape(), &train.factors(), &proj, &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: 6 }, Accumulate::overwrite())
        .unwrap();
    let (pi, po) = matrices(&c, &mut r);
    let exact = kron_project_reference(&train.reference(), &pi, &po, 3, 2, false);
    let want: Vec<f32> = exact.iter().map(|&x| x as f32).collect();
    assert_bitwise_eq("reference backend", &out, &want);
}

#[test]
fn masked_nan_never_leaks_and_kept_nan_propagates_on_cpu() {
    let shape = LayerShape::new(5, 4).with_bias(true);
    let mut r = rng(9);
    let mut train = TrainData::random(&mut r, shape, 3, 4, DType::F32, false);
    let mut mask = vec![1u8; 12];
    mask[4 + 1] = 0;
    train.a.set(5 * 5 + 2, f32::NAN);
    train.b.set(5 * 4, f32::INFINITY);
    train.a.set(9 * 5, f32::NAN); // sample 2, kept
    train.mask = Some(mask);
    let proj = ProjectionSpec { k_i: 3, k_o: 2, kind: ProjectionKind::Random { seed: 4, layer: 0, dist: Distribution::Rademacher } };
    let mut out = poisoned(18);
    Context::cpu()
        .kron_project(&shape, &train.factors(), &proj, &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: 6 }, Accumulate::overwrite())
        .unwrap();
    assert!(out[..12].iter().all(|x| x.is_finite()), "masked NaN leaked: {out:?}");
    assert!(out[12..].iter().any(|x| x.is_nan()), "kept NaN vanished: {out:?}");
}

#[test]
fn kron_project_layers_places_layers_in_caller_order_on_cpu() {
    let mut r = rng(5);
    let n = 3;
    let specs = [(LayerShape::new(7, 5).with_bias(true), 4usize, DType::F32, 3u64, 2u64), (LayerShape::new(3, 9), 6, DType::BF16, 2, 4), (LayerShape::new(11, 2), 2, DType::F16, 5, 1)];
    let trains: Vec<TrainData> = specs.iter().map(|&(s, t, dt, ..)| TrainData::random(&mut r, s, n, t, dt, true)).collect();
    let layers: Vec<ProjectLayer> = specs
        .iter()
        .zip(&trains)
        .enumerate()
        .map(|(l, (&(shape, _, _, k_i, k_o), tr))| ProjectLayer {
            shape,
            train: tr.factors(),
            proj: ProjectionSpec { k_i, k_o, kind: ProjectionKind::Random { seed: 77, layer: l as u32, dist: Distribution::Gaussian } },
        })
        .collect();
    let total: usize = specs.iter().map(|s| (s.3 * s.4) as usize).sum();
    let mut out = poisoned(n * total);
    Context::cpu().kron_project_layers(&layers, &mut TensorMut::from(&mut out[..]), Accumulate::overwrite()).unwrap();
    let mut off = 0;
    for (l, (&(shape, t, _, k_i, k_o), tr)) in specs.iter().zip(&trains).enumerate() {
        let di = shape.d_in + shape.has_bias as u64;
        let pi = materialize_projection(77, l as u32, Which::In, k_i, di, Distribution::Gaussian);
        let po = materialize_projection(77, l as u32, Which::Out, k_o, shape.d_out, Distribution::Gaussian);
        let exact = kron_project_reference(&tr.reference(), &pi, &po, k_i as usize, k_o as usize, false);
        let mag = kron_project_reference(&tr.reference(), &pi, &po, k_i as usize, k_o as usize, true);
        let w = (k_i * k_o) as usize;
        let got: Vec<f32> = (0..n).flat_map(|i| out[i * total + off..i * total + off + w].to_vec()).collect();
        let want: Vec<f32> = exact.iter().map(|&x| x as f32).collect();
        assert_close(&format!("layer {l}"), &got, &want, &mag, &vec![0.0; n * w], Accumulate::overwrite(), Tol::for_depth(rounding_depth(&shape, t, 0)));
        off += w;
    }
}

#[test]
fn generator_is_deterministic_and_streams_differ() {
    let a = materialize_projection(42, 1, Which::In, 16, 33, Distribution::Gaussian);
    assert_bitwise_eq("same seed", &a, &materialize_projection(42, 1, Which::In, 16, 33, Distribution::Gaussian));
    for other in [
        materialize_projection(43, 1, Which::In, 16, 33, Distribution::Gaussian),
        materialize_projection(42, 2, Which::In, 16, 33, Distribution::Gaussian),
        materialize_projection(42, 1, Which::Out, 16, 33, Distribution::Gaussian),
    ] {
        let same = a.iter().zip(&other).filter(|(x, y)| x == y).count();
        assert!(same < 40, "streams should be unrelated: {same} equal entries of {}", a.len());
    }
    // A sub-matrix is a prefix of the larger one's rows (entries depend on (row, col) only).
    let big = materialize_projection(42, 1, Which::In, 20, 33, Distribution::Gaussian);
    let scale_ratio = ghostgrad::projection::generator::entry_scale(16, Distribution::Gaussian) as f64
        / ghostgrad::projection::generator::entry_scale(20, Distribution::Gaussian) as f64;
    for i in 0..a.len() {
        let r = a[i] as f64 / big[i] as f64;
        assert!(big[i] == 0.0 || (r - scale_ratio).abs() < 1e-6, "entry {i}: {} vs {}", a[i], big[i]);
    }
}

#[test]
fn generator_moments_match_the_documented_distribution() {
    // 64·4096 entries: mean 0 and variance 1/k within 6 standard errors of the sample moments.
    for dist in DISTS {
        let k = 64u64;
        let p = materialize_projection(7, 0, Which::Out, k, 4096, dist);
        let m = p.len() as f64;
        let mean = p.iter().map(|&x| x as f64).sum::<f64>() / m;
        let var = p.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / m;
        let sigma2 = 1.0 / k as f64;
        // Var(x²) = μ4 − σ⁴ ≤ 2σ⁴ for both (kurtosis ≤ 3).
        assert!(mean.abs() <= 6.0 * (sigma2 / m).sqrt(), "{dist:?}: mean {mean}");
        assert!((var - sigma2).abs() <= 6.0 * (2.0 * sigma2 * sigma2 / m).sqrt(), "{dist:?}: var {var} vs {sigma2}");
    }
}

/// `E[X_ab X_a'b']` for `X = PᵀP`, `P` with `k` iid rows of entries of variance `1/k` and
/// fourth moment `μ4 = κ/k²` (κ the kurtosis): `δ_ab δ_a'b' + (δ_aa' δ_bb' + δ_ab' δ_ba')/k +
/// (κ − 3)/k · [a = b = a' = b']`.
fn second_moment(a: usize, b: usize, a2: usize, b2: usize, k: f64, kurt: f64) -> f64 {
    let d = |x: usize, y: usize| (x == y) as u8 as f64;
    d(a, b) * d(a2, b2) + (d(a, a2) * d(b, b2) + d(a, b2) * d(b, a2)) / k + if a == b && a == a2 && a == b2 { (kurt - 3.0) / k } else { 0.0 }
}

/// Kurtosis of the generator's entries: Rademacher 1; Irwin–Hall(4) of uniforms on {0..M−1}:
/// each uniform has excess kurtosis −6(M²+1)/(5(M²−1)), the sum of 4 a quarter of it.
fn kurtosis(dist: Distribution) -> f64 {
    match dist {
        Distribution::Rademacher => 1.0,
        Distribution::Gaussian => {
            let m2 = 65536.0f64 * 65536.0;
            3.0 - 6.0 * (m2 + 1.0) / (5.0 * (m2 - 1.0)) / 4.0
        }
    }
}

#[test]
fn johnson_lindenstrauss_inner_products_are_unbiased_within_the_derived_bound() {
    // E<ĝ_1, ĝ_2> = <G_1, G_2>; the estimator is <X G_1 Y, G_2> with X = P_oᵀP_o, Y = P_iᵀP_i
    // independent, so E[est²] = Σ G2_ad G2_a'd' G1_bc G1_b'c' E[X_ab X_a'b'] E[Y_cd Y_c'd'] and
    // Var = E[est²] − <G_1,G_2>²: computed exactly below. Over R seeds the mean must lie within
    // 5 standard errors (√(Var/R)), and the sample variance within the χ² band [0.8, 1.25]·Var.
    let shape = LayerShape::new(3, 3).with_bias(true);
    let mut r = rng(3);
    let train = TrainData::random(&mut r, shape, 2, 3, DType::F32, false);
    let (k_i, k_o) = (3u64, 2u64);
    let (di, d_out) = (4usize, 3usize);
    let tr = train.reference();
    let g: Vec<Vec<f64>> = (0..2)
        .map(|n| ghostgrad::cpu::reference::materialize(&tr.a, &tr.b, None, n * 3..(n + 1) * 3, 3, 3, true, None, false))
        .collect();
    let truth: f64 = g[0].iter().zip(&g[1]).map(|(x, y)| x * y).sum();
    for dist in DISTS {
        let kurt = kurtosis(dist);
        let mut e2 = 0.0;
        for a in 0..d_out {
            for a2 in 0..d_out {
                for b in 0..d_out {
                    for b2 in 0..d_out {
                        let mx = second_moment(a, b, a2, b2, k_o as f64, kurt);
                        if mx == 0.0 {
                            continue;
                        }
                        for c in 0..di {
                            for c2 in 0..di {
                                for d in 0..di {
                                    for d2 in 0..di {
                                        let my = second_moment(c, d, c2, d2, k_i as f64, kurt);
                                        e2 += g[1][a * di + d] * g[1][a2 * di + d2] * g[0][b * di + c] * g[0][b2 * di + c2] * mx * my;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let var = e2 - truth * truth;
        let rounds = 4000usize;
        let mut ests = Vec::with_capacity(rounds);
        for seed in 0..rounds as u64 {
            let proj = ProjectionSpec { k_i, k_o, kind: ProjectionKind::Random { seed, layer: 0, dist } };
            let mut out = [0f32; 12];
            Context::cpu()
                .kron_project(&shape, &train.factors(), &proj, &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: 6 }, Accumulate::overwrite())
                .unwrap();
            ests.push(out[..6].iter().zip(&out[6..]).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>());
        }
        let mean = ests.iter().sum::<f64>() / rounds as f64;
        let svar = ests.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (rounds - 1) as f64;
        let se = (var / rounds as f64).sqrt();
        assert!((mean - truth).abs() <= 5.0 * se, "{dist:?}: mean {mean} vs <G1,G2> {truth}, 5·SE = {}", 5.0 * se);
        assert!(svar > 0.8 * var && svar < 1.25 * var, "{dist:?}: sample variance {svar} vs derived {var}");
    }
}

fn identity(n: usize) -> Vec<f32> {
    (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect()
}

/// Solves `H x = y` in f64 by Gaussian elimination with partial pivoting (independent of faer).
fn solve(h: &[f64], y: &[f64], k: usize) -> Vec<f64> {
    let mut a: Vec<Vec<f64>> = (0..k).map(|i| (0..k).map(|j| h[i * k + j]).chain([y[i]]).collect()).collect();
    for c in 0..k {
        let p = (c..k).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, p);
        for rr in c + 1..k {
            let f = a[rr][c] / a[c][c];
            let pivot = a[c].clone();
            for (x, p) in a[rr][c..=k].iter_mut().zip(&pivot[c..=k]) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0; k];
    for i in (0..k).rev() {
        x[i] = (a[i][k] - (i + 1..k).map(|j| a[i][j] * x[j]).sum::<f64>()) / a[i][i];
    }
    x
}

#[test]
fn full_rank_identity_projection_with_raw_fisher_equals_exact_damped_influence() {
    // k_i = d_in + 1, k_o = d_out, identity projections: ĝ = vec(G) and the projected pipeline
    // (kron_project → RawFisher → influence_scores) must equal ĝ_testᵀ (F + λI)⁻¹ ĝ_train
    // computed from the f64 materialized gradients.
    let shape = LayerShape::new(3, 2).with_bias(true);
    let (di, d_out) = (4usize, 2usize);
    let k = di * d_out;
    let (n_train, n_test, t) = (12usize, 3usize, 4usize);
    let mut r = rng(17);
    let train = TrainData::random(&mut r, shape, n_train, t, DType::F32, true);
    let test = TrainData::random(&mut r, shape, n_test, t, DType::F32, false);
    let (pi, po) = (identity(di), identity(d_out));
    let proj = ProjectionSpec { k_i: di as u64, k_o: d_out as u64, kind: ProjectionKind::Dense { p_in: pi[..].into(), p_out: po[..].into() } };
    let ctx = Context::cpu();
    let project = |d: &TrainData, n: usize| {
        let mut out = poisoned(n * k);
        ctx.kron_project(&shape, &d.factors(), &proj, &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: k as u64 }, Accumulate::overwrite())
            .unwrap();
        out
    };
    let (g_train, g_test) = (project(&train, n_train), project(&test, n_test));
    let fisher = RawFisher::fit(&g_train, n_train, k).unwrap();
    let pre = fisher.apply(&g_test, n_test).unwrap();
    let mut scores = poisoned(n_test * n_train);
    ctx.influence_scores(
        &pre[..].into(),
        &g_train[..].into(),
        ScoreDims { n_test: n_test as u64, n_block: n_train as u64, k: k as u64 },
        &mut TensorMut::from(&mut scores[..]),
        ScoreMode::Dot,
        None,
        Accumulate::overwrite(),
    )
    .unwrap();
    // Exact, in f64 from the materialized gradients.
    let mat = |d: &TrainData, n: usize| -> Vec<Vec<f64>> {
        let rf = d.reference();
        (0..n).map(|i| ghostgrad::cpu::reference::materialize(&rf.a, &rf.b, rf.mask, i * t..(i + 1) * t, 3, 2, true, None, false)).collect()
    };
    let (gt, gq) = (mat(&train, n_train), mat(&test, n_test));
    let mut f = vec![0.0f64; k * k];
    for g in &gt {
        for i in 0..k {
            for j in 0..k {
                f[i * k + j] += g[i] * g[j] / n_train as f64;
            }
        }
    }
    let lambda = 0.1 * (0..k).map(|i| f[i * k + i]).sum::<f64>() / k as f64;
    assert!((fisher.damping() - lambda).abs() <= 1e-5 * lambda, "λ {} vs {lambda}", fisher.damping());
    let mut h = f.clone();
    (0..k).for_each(|i| h[i * k + i] += lambda);
    // Error bound: every input ĝ entry carries relative error ≤ γ_L (L = rounding depth of the
    // projection, here exact up to that since P = I); H⁻¹ has norm ≤ 1/λ. A first-order
    // perturbation bound of s = qᵀH⁻¹g gives |Δs| ≤ ‖H⁻¹‖(‖Δq‖‖g‖ + ‖q‖‖Δg‖) + ‖H⁻¹‖²‖ΔH‖‖q‖‖g‖
    // + γ_k·Σ|q'_c g_c| with ‖ΔH‖ ≤ 2γ·mean‖g‖² + |Δλ|; we take twice that for second-order terms
    // and the f32 rounding of q' = H⁻¹q.
    let gamma = gamma(rounding_depth(&shape, t, 0) + 2);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mean_sq = gt.iter().map(|g| norm(g).powi(2)).sum::<f64>() / n_train as f64;
    let dh = 2.0 * gamma * mean_sq * (1.0 + 0.1);
    for (q, gqv) in gq.iter().enumerate() {
        let x = solve(&h, gqv, k);
        for (j, g) in gt.iter().enumerate() {
            let exact: f64 = x.iter().zip(g).map(|(a, b)| a * b).sum();
            let (nq, ng) = (norm(gqv), norm(g));
            let bound = 2.0
                * ((2.0 * gamma * nq * ng) / lambda + dh * nq * ng / (lambda * lambda) + (gamma + 1e-7) * norm(&x) * ng * (k as f64).sqrt());
            let got = scores[q * n_train + j] as f64;
            assert!((got - exact).abs() <= bound, "score[{q},{j}]: got {got}, exact {exact}, bound {bound}");
        }
    }
}

/// Runs scores on some backend: `(test, train, train_self, old out, acc) -> out`.
type ScoreRun<'a> = dyn Fn(&[f32], &[f32], Option<&[f32]>, &[f32], Accumulate) -> Vec<f32> + 'a;

fn check_scores(ctx: &Context, mode: ScoreMode, dims: (usize, usize, usize), seed: u64, beta: bool, run: &ScoreRun<'_>) {
    let (nt, nb, k) = dims;
    let _ = ctx;
    let mut r = rng(seed);
    let test: Vec<f32> = (0..nt * k).map(|_| nonzero_gaussian(&mut r)).collect();
    let train: Vec<f32> = (0..nb * k).map(|_| nonzero_gaussian(&mut r)).collect();
    let selfn: Vec<f32> = (0..nb).map(|j| train[j * k..(j + 1) * k].iter().map(|x| x * x).sum()).collect();
    let ts = (mode != ScoreMode::Dot).then_some(&selfn[..]);
    let acc = random_acc(&mut r, beta);
    let old = initial_out(&mut r, nt * nb, acc);
    let got = run(&test, &train, ts, &old, acc);
    let exact = scores_reference(&test, &train, k, mode, ts, false);
    let mag = scores_reference(&test, &train, k, mode, ts, true);
    let mut want = old.clone();
    ghostgrad::cpu::apply_accumulate(&mut want, &exact, acc);
    assert_close(&format!("scores {mode:?} {dims:?}"), &got, &want, &mag, &old, acc, Tol::for_depth(k + 10));
}

proptest! {
    #![proptest_config(config(32))]
    #[test]
    fn influence_scores_fast_cpu_matches_reference(nt in 1usize..80, nb in 1usize..80, k in 1usize..70, m in 0usize..3, seed in any::<u64>(), beta in any::<bool>()) {
        let mode = [ScoreMode::Dot, ScoreMode::Cosine, ScoreMode::L2][m];
        let ctx = Context::cpu();
        check_scores(&ctx, mode, (nt, nb, k), seed, beta, &|te, tr, ts, old, acc| {
            let mut out = old.to_vec();
            let tst: Option<Tensor> = ts.map(Tensor::from);
            ctx.influence_scores(&te.into(), &tr.into(), ScoreDims { n_test: nt as u64, n_block: nb as u64, k: k as u64 }, &mut TensorMut::from(&mut out[..]), mode, tst.as_ref(), acc).unwrap();
            out
        });
    }
}

/// Runs grouped scores on some backend: `(test, train, row_stride, groups, train_self, old, acc) -> out`.
type GroupRun<'a> = dyn Fn(&[f32], &[f32], usize, &[ColumnGroup], Option<&[f32]>, &[f32], Accumulate) -> Vec<f32> + 'a;

/// Per-layer-group scores against the f64 reference applied to each group's columns, gathered
/// here: ragged groups with gaps between them, NaN-poisoned outputs when beta = 0.
fn check_groups(mode: ScoreMode, dims: (usize, usize), widths: &[usize], seed: u64, beta: bool, run: &GroupRun<'_>) {
    let (nt, nb) = dims;
    let mut r = rng(seed);
    let mut groups = Vec::new();
    let mut at = 0usize;
    for (i, &w) in widths.iter().enumerate() {
        at += i % 2; // a gap column before every other group
        groups.push(ColumnGroup { offset: at as u64, width: w as u64 });
        at += w;
    }
    let rs = at + 1;
    let test: Vec<f32> = (0..nt * rs).map(|_| nonzero_gaussian(&mut r)).collect();
    let train: Vec<f32> = (0..nb * rs).map(|_| nonzero_gaussian(&mut r)).collect();
    let cols = |x: &[f32], rows: usize, g: &ColumnGroup| -> Vec<f32> {
        (0..rows).flat_map(|j| (0..g.width as usize).map(move |c| (j, c))).map(|(j, c)| x[j * rs + g.offset as usize + c]).collect()
    };
    let selfn: Vec<f32> = groups
        .iter()
        .flat_map(|g| { let tg = cols(&train, nb, g); (0..nb).map(move |j| tg[j * g.width as usize..(j + 1) * g.width as usize].iter().map(|x| x * x).sum::<f32>()).collect::<Vec<_>>() })
        .collect();
    let ts = (mode != ScoreMode::Dot).then_some(&selfn[..]);
    let acc = random_acc(&mut r, beta);
    let old = initial_out(&mut r, groups.len() * nt * nb, acc);
    let got = run(&test, &train, rs, &groups, ts, &old, acc);
    for (gi, g) in groups.iter().enumerate() {
        let (tg, rg) = (cols(&test, nt, g), cols(&train, nb, g));
        let tsg = ts.map(|s| &s[gi * nb..(gi + 1) * nb]);
        let w = g.width as usize;
        let exact = scores_reference(&tg, &rg, w, mode, tsg, false);
        let mag = scores_reference(&tg, &rg, w, mode, tsg, true);
        let range = gi * nt * nb..(gi + 1) * nt * nb;
        let mut want = old[range.clone()].to_vec();
        ghostgrad::cpu::apply_accumulate(&mut want, &exact, acc);
        assert_close(&format!("group {gi} of {groups:?} {mode:?} {dims:?}"), &got[range.clone()], &want, &mag, &old[range], acc, Tol::for_depth(w + 10));
    }
}

fn run_groups_on(ctx: &Context, mode: ScoreMode) -> impl Fn(&[f32], &[f32], usize, &[ColumnGroup], Option<&[f32]>, &[f32], Accumulate) -> Vec<f32> + '_ {
    move |te, tr, rs, groups, ts, old, acc| {
        let mut out = old.to_vec();
        let tst: Option<Tensor> = ts.map(Tensor::from);
        let (nt, nb) = ((te.len() / rs) as u64, (tr.len() / rs) as u64);
        ctx.influence_scores_groups(&te.into(), &tr.into(), nt, nb, rs as u64, groups, &mut TensorMut::from(&mut out[..]), mode, tst.as_ref(), acc)
            .unwrap();
        out
    }
}

proptest! {
    #![proptest_config(config(24))]
    #[test]
    fn influence_scores_groups_match_reference_on_cpu(nt in 1usize..40, nb in 1usize..40, widths in proptest::collection::vec(1usize..40, 1..4), m in 0usize..3, seed in any::<u64>(), beta in any::<bool>()) {
        let mode = [ScoreMode::Dot, ScoreMode::Cosine, ScoreMode::L2][m];
        for ctx in [Context::cpu(), Context::cpu_reference()] {
            check_groups(mode, (nt, nb), &widths, seed, beta, &run_groups_on(&ctx, mode));
        }
    }
}

#[test]
fn influence_scores_groups_of_a_partition_sum_to_the_whole_rows_and_reject_bad_groups() {
    let (nt, nb, rs) = (5usize, 7usize, 23usize);
    let mut r = rng(3);
    let test: Vec<f32> = (0..nt * rs).map(|_| nonzero_gaussian(&mut r)).collect();
    let train: Vec<f32> = (0..nb * rs).map(|_| nonzero_gaussian(&mut r)).collect();
    let ctx = Context::cpu();
    let groups = [ColumnGroup { offset: 0, width: 9 }, ColumnGroup { offset: 9, width: 1 }, ColumnGroup { offset: 10, width: 13 }];
    let mut parts = vec![f32::NAN; 3 * nt * nb];
    ctx.influence_scores_groups(&test[..].into(), &train[..].into(), nt as u64, nb as u64, rs as u64, &groups, &mut TensorMut::from(&mut parts[..]), ScoreMode::Dot, None, Accumulate::overwrite()).unwrap();
    let mut whole = vec![f32::NAN; nt * nb];
    ctx.influence_scores(&test[..].into(), &train[..].into(), ScoreDims { n_test: nt as u64, n_block: nb as u64, k: rs as u64 }, &mut TensorMut::from(&mut whole[..]), ScoreMode::Dot, None, Accumulate::overwrite()).unwrap();
    let mag = scores_reference(&test, &train, rs, ScoreMode::Dot, None, true);
    for i in 0..nt * nb {
        let sum: f32 = (0..3).map(|g| parts[g * nt * nb + i]).sum();
        assert!((sum - whole[i]).abs() as f64 <= 1e-5 * mag[i].max(1e-30), "score {i}: Σ groups {sum} vs whole {}", whole[i]);
    }
    let bad = |groups: &[ColumnGroup], out_len: usize| {
        let mut out = vec![0f32; out_len];
        ctx.influence_scores_groups(&test[..].into(), &train[..].into(), nt as u64, nb as u64, rs as u64, groups, &mut TensorMut::from(&mut out[..]), ScoreMode::Dot, None, Accumulate::overwrite()).unwrap_err()
    };
    assert!(matches!(bad(&[ColumnGroup { offset: 20, width: 4 }], nt * nb), ghostgrad::GhostError::InvalidArgument { what: "groups", .. }));
    assert!(matches!(bad(&[ColumnGroup { offset: u64::MAX, width: 2 }], nt * nb), ghostgrad::GhostError::InvalidArgument { what: "groups", .. }));
    assert!(matches!(bad(&[ColumnGroup { offset: 0, width: 0 }], nt * nb), ghostgrad::GhostError::ZeroSize { .. }));
    assert!(matches!(bad(&[], 0), ghostgrad::GhostError::ZeroSize { what: "groups" }));
    assert!(matches!(bad(&groups, nt * nb), ghostgrad::GhostError::LengthMismatch { what: "out", .. }));
}

#[test]
fn influence_scores_rejects_inconsistent_train_self() {
    let x = [1f32; 4];
    let mut out = [0f32; 4];
    let dims = ScoreDims { n_test: 2, n_block: 2, k: 2 };
    let ctx = Context::cpu();
    let e = ctx.influence_scores(&x[..].into(), &x[..].into(), dims, &mut TensorMut::from(&mut out[..]), ScoreMode::Cosine, None, Accumulate::overwrite()).unwrap_err();
    assert!(matches!(e, ghostgrad::GhostError::InvalidArgument { what: "train_self", .. }), "{e:?}");
    let s = [1f32; 2];
    let st: Tensor = s[..].into();
    let e = ctx.influence_scores(&x[..].into(), &x[..].into(), dims, &mut TensorMut::from(&mut out[..]), ScoreMode::Dot, Some(&st), Accumulate::overwrite()).unwrap_err();
    assert!(matches!(e, ghostgrad::GhostError::InvalidArgument { what: "train_self", .. }), "{e:?}");
}

#[test]
fn kron_project_validates_dense_shapes_and_columns() {
    let shape = LayerShape::new(3, 2).with_bias(true);
    let a = [0f32; 6];
    let b = [0f32; 4];
    let train = TrainFactors { a: a[..].into(), b: b[..].into(), n: 1, t: 2, mask: None };
    let pi = [0f32; 2 * 3]; // needs 2·(3+1)
    let po = [0f32; 2 * 2];
    let proj = ProjectionSpec { k_i: 2, k_o: 2, kind: ProjectionKind::Dense { p_in: pi[..].into(), p_out: po[..].into() } };
    let mut out = [0f32; 4];
    let e = Context::cpu().kron_project(&shape, &train, &proj, &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: 4 }, Accumulate::overwrite()).unwrap_err();
    assert!(matches!(e, ghostgrad::GhostError::LengthMismatch { what: "p_in", expected: 8, got: 6 }), "{e:?}");
    let proj = ProjectionSpec { k_i: 2, k_o: 2, kind: ProjectionKind::Random { seed: 0, layer: 0, dist: Distribution::Gaussian } };
    let e = Context::cpu().kron_project(&shape, &train, &proj, &mut TensorMut::from(&mut out[..]), OutColumns { offset: 1, row_stride: 4 }, Accumulate::overwrite()).unwrap_err();
    assert!(matches!(e, ghostgrad::GhostError::InvalidArgument { what: "out columns", .. }), "{e:?}");
}

// ---------------------------------------------------------------- the kernels, on the interpreter

#[cfg(feature = "interp")]
mod interp {
    use super::*;
    use common::model_dev::{runtime, up_buf};
    use ghostgrad::runtime::interp::InterpBuffer;

    fn run_interp(c: &Case, train: &TrainData, pi: &[f32], po: &[f32], old: &[f32], cols: OutColumns, acc: Accumulate) -> Vec<f32> {
        let rt = runtime(c.seed % 4);
        let ctx = Context::with_runtime(rt.clone());
        let (a, b) = (up_buf(&rt, &train.a), up_buf(&rt, &train.b));
        let mask = train.mask.as_ref().map(|m| rt.upload(m, DType::U8).unwrap());
        let (dpi, dpo) = (rt.upload(pi, DType::F32).unwrap(), rt.upload(po, DType::F32).unwrap());
        let mut out = rt.upload(old, DType::F32).unwrap();
        let tf = TrainFactors { a: a.view().into(), b: b.view().into(), n: c.n as u64, t: c.t as u64, mask: mask.as_ref().map(|m| m.view().into()) };
        ctx.kron_project(&c.shape(), &tf, &spec(c, dpi.view().into(), dpo.view().into()), &mut out.view_mut().into(), cols, acc)
            .unwrap_or_else(|e| panic!("interp kron_project {c:?}: {e}"));
        rt.read_f32(&out).unwrap()
    }

    proptest! {
        #![proptest_config(config(16))]
        #[test]
        fn kron_project_kernels_match_reference(c in case_strategy()) {
            check_case(&c, "interp kron_project", &run_interp);
        }
    }

    #[test]
    fn kron_project_kernels_on_degenerate_and_tile_crossing_shapes() {
        // (…, k_i = 70, k_o = 65): the second output tile in both directions against the reference.
        let shapes = [(1, 1, 1, 1, 1, 1), (2, 33, 1, 65, 1, 1), (1, 70, 64, 1, 65, 64), (3, 5, 31, 33, 64, 2), (1, 2, 1, 1, 130, 3), (2, 37, 23, 29, 70, 65)];
        for (i, &(n, t, d_in, d_out, k_i, k_o)) in shapes.iter().enumerate() {
            for (j, &dtype) in FLOAT_DTYPES.iter().enumerate() {
                let f = i + j;
                let c = Case { n, t, d_in, d_out, k_i, k_o, dtype, masked: f & 1 != 0, bias: f & 2 != 0, beta: f & 4 != 0, random: (i + j) % 2 == 0, dist: DISTS[j % 2], seed: (10 * i + j) as u64 };
                check_case(&c, "interp kron_project (fixed shapes)", &run_interp);
            }
        }
    }

    proptest! {
        #![proptest_config(config(8))]
        #[test]
        fn influence_scores_groups_kernels_match_reference(nt in 1usize..70, nb in 1usize..70, widths in proptest::collection::vec(1usize..40, 1..4), m in 0usize..3, seed in any::<u64>(), beta in any::<bool>()) {
            let mode = [ScoreMode::Dot, ScoreMode::Cosine, ScoreMode::L2][m];
            let rt = runtime(seed % 4);
            let ctx = Context::with_runtime(rt.clone());
            check_groups(mode, (nt, nb), &widths, seed, beta, &|te, tr, rs, groups, ts, old, acc| {
                let (dte, dtr) = (rt.upload(te, DType::F32).unwrap(), rt.upload(tr, DType::F32).unwrap());
                let dts = ts.map(|s| rt.upload(s, DType::F32).unwrap());
                let mut out = rt.upload(old, DType::F32).unwrap();
                let tst: Option<Tensor> = dts.as_ref().map(|b| b.view().into());
                let (n_test, n_block) = ((te.len() / rs) as u64, (tr.len() / rs) as u64);
                ctx.influence_scores_groups(&dte.view().into(), &dtr.view().into(), n_test, n_block, rs as u64, groups, &mut out.view_mut().into(), mode, tst.as_ref(), acc)
                    .unwrap_or_else(|e| panic!("interp influence_scores_groups: {e}"));
                rt.read_f32(&out).unwrap()
            });
        }
    }

    #[test]
    fn generator_in_the_kernels_is_bitwise_identical_to_rust() {
        let rt = runtime(0);
        let ctx = Context::with_runtime(rt.clone());
        for &(seed, layer, which, k, d, dist) in &[
            (0u64, 0u32, Which::In, 1u64, 1u64, Distribution::Gaussian),
            (u64::MAX, 7, Which::Out, 65, 37, Distribution::Rademacher),
            (123_456_789, 1 << 20, Which::In, 16, 129, Distribution::Gaussian),
        ] {
            let mut out = rt.alloc_f32(k * d, f32::NAN).unwrap();
            ctx.projection_matrix(seed, layer, which, k, d, dist, &mut out.view_mut().into()).unwrap();
            let got = rt.read_f32(&out).unwrap();
            assert_bitwise_eq(&format!("projection_matrix {seed} {layer} {which:?} {k}x{d} {dist:?}"), &got, &materialize_projection(seed, layer, which, k, d, dist));
        }
    }

    #[test]
    fn in_kernel_random_projection_equals_dense_projection_with_the_rust_matrix_bitwise() {
        // The fused kernel generates P tile by tile (64-row tiles × 32-column chunks); fed the
        // same matrix materialized by Rust as a Dense projection it must give the same bits, for
        // every tile shape: so the in-kernel entries are the Rust entries.
        for &(k_i, k_o, d_in, d_out, bias, dist) in &[
            (5u64, 3u64, 7u64, 4u64, false, Distribution::Gaussian),
            (70, 65, 33, 40, true, Distribution::Rademacher),
            (64, 1, 65, 1, true, Distribution::Gaussian),
        ] {
            let rt = runtime(1);
            let ctx = Context::with_runtime(rt.clone());
            let shape = LayerShape::new(d_in, d_out).with_bias(bias);
            let mut r = rng(k_i);
            let train = TrainData::random(&mut r, shape, 2, 37, DType::BF16, true);
            let (a, b) = (up_buf(&rt, &train.a), up_buf(&rt, &train.b));
            let mask = rt.upload(train.mask.as_ref().unwrap(), DType::U8).unwrap();
            let tf = TrainFactors { a: a.view().into(), b: b.view().into(), n: 2, t: 37, mask: Some(mask.view().into()) };
            let pi = materialize_projection(99, 4, Which::In, k_i, d_in + bias as u64, dist);
            let po = materialize_projection(99, 4, Which::Out, k_o, d_out, dist);
            let (dpi, dpo) = (rt.upload(&pi, DType::F32).unwrap(), rt.upload(&po, DType::F32).unwrap());
            let w = k_i * k_o;
            let cols = OutColumns { offset: 0, row_stride: w };
            let mut outs = Vec::new();
            for kind in [ProjectionKind::Random { seed: 99, layer: 4, dist }, ProjectionKind::Dense { p_in: dpi.view().into(), p_out: dpo.view().into() }] {
                let mut out = rt.alloc_f32(2 * w, f32::NAN).unwrap();
                ctx.kron_project(&shape, &tf, &ProjectionSpec { k_i, k_o, kind }, &mut out.view_mut().into(), cols, Accumulate::overwrite()).unwrap();
                outs.push(rt.read_f32(&out).unwrap());
            }
            assert_bitwise_eq(&format!("random vs dense {k_i}x{k_o}"), &outs[0], &outs[1]);
        }
    }

    #[test]
    fn kron_project_is_bitwise_identical_across_schedule_seeds_and_masked_nan_never_leaks() {
        let shape = LayerShape::new(9, 6).with_bias(true);
        let mut r = rng(21);
        let (n, t) = (3usize, 40usize);
        let mut train = TrainData::random(&mut r, shape, n, t, DType::F32, false);
        let mut mask = vec![1u8; n * t];
        mask[t + 2] = 0;
        train.a.set((t + 2) * 9 + 4, f32::NAN);
        train.b.set((t + 2) * 6 + 1, f32::INFINITY);
        train.mask = Some(mask);
        train.a.set((2 * t + 3) * 9, f32::NAN);
        let mut outs = Vec::new();
        for sched in 0..3 {
            let rt = runtime(sched);
            let ctx = Context::with_runtime(rt.clone());
            let (a, b) = (up_buf(&rt, &train.a), up_buf(&rt, &train.b));
            let m = rt.upload(train.mask.as_ref().unwrap(), DType::U8).unwrap();
            let tf = TrainFactors { a: a.view().into(), b: b.view().into(), n: n as u64, t: t as u64, mask: Some(m.view().into()) };
            let proj = ProjectionSpec { k_i: 4, k_o: 3, kind: ProjectionKind::Random { seed: 5, layer: 2, dist: Distribution::Gaussian } };
            let mut out = rt.alloc_f32((n * 12) as u64, f32::NAN).unwrap();
            ctx.kron_project(&shape, &tf, &proj, &mut out.view_mut().into(), OutColumns { offset: 0, row_stride: 12 }, Accumulate::overwrite()).unwrap();
            outs.push(rt.read_f32(&out).unwrap());
        }
        assert_bitwise_eq("sched 0 vs 1", &outs[0], &outs[1]);
        assert_bitwise_eq("sched 0 vs 2", &outs[0], &outs[2]);
        assert!(outs[0][..24].iter().all(|x| x.is_finite()), "masked NaN leaked: {:?}", outs[0]);
        assert!(outs[0][24..].iter().any(|x| x.is_nan()), "kept NaN vanished: {:?}", outs[0]);
    }

    #[test]
    fn kron_project_layers_on_the_interpreter_matches_cpu_layout() {
        let rt = runtime(2);
        let ctx = Context::with_runtime(rt.clone());
        let mut r = rng(8);
        let n = 2;
        let specs = [(LayerShape::new(7, 5).with_bias(true), 4usize, DType::F16, 3u64, 2u64), (LayerShape::new(3, 9), 6, DType::F32, 2, 4)];
        let trains: Vec<TrainData> = specs.iter().map(|&(s, t, dt, ..)| TrainData::random(&mut r, s, n, t, dt, true)).collect();
        let dev: Vec<(InterpBuffer, InterpBuffer, InterpBuffer)> = trains
            .iter()
            .map(|tr| (up_buf(&rt, &tr.a), up_buf(&rt, &tr.b), rt.upload(tr.mask.as_ref().unwrap(), DType::U8).unwrap()))
            .collect();
        let mk = |l: usize, tf: TrainFactors<'static>| ProjectLayer {
            shape: specs[l].0,
            train: tf,
            proj: ProjectionSpec { k_i: specs[l].3, k_o: specs[l].4, kind: ProjectionKind::Random { seed: 1, layer: l as u32, dist: Distribution::Rademacher } },
        };
        let _ = mk;
        let layers: Vec<ProjectLayer> = (0..2)
            .map(|l| ProjectLayer {
                shape: specs[l].0,
                train: TrainFactors { a: dev[l].0.view().into(), b: dev[l].1.view().into(), n: n as u64, t: specs[l].1 as u64, mask: Some(dev[l].2.view().into()) },
                proj: ProjectionSpec { k_i: specs[l].3, k_o: specs[l].4, kind: ProjectionKind::Random { seed: 1, layer: l as u32, dist: Distribution::Rademacher } },
            })
            .collect();
        let acc = Accumulate { scale: 0.5, beta: -1.5 };
        let old = random_out(&mut r, n * 14);
        let mut out = rt.upload(&old, DType::F32).unwrap();
        ctx.kron_project_layers(&layers, &mut out.view_mut().into(), acc).unwrap();
        let got = rt.read_f32(&out).unwrap();
        let host_layers: Vec<ProjectLayer> = (0..2)
            .map(|l| ProjectLayer { shape: specs[l].0, train: trains[l].factors(), proj: ProjectionSpec { k_i: specs[l].3, k_o: specs[l].4, kind: ProjectionKind::Random { seed: 1, layer: l as u32, dist: Distribution::Rademacher } } })
            .collect();
        let mut want = old.clone();
        Context::cpu_reference().kron_project_layers(&host_layers, &mut TensorMut::from(&mut want[..]), acc).unwrap();
        let mut mag = vec![0.0f64; n * 14];
        let mut off = 0;
        for (l, tr) in trains.iter().enumerate() {
            let (shape, _, _, k_i, k_o) = specs[l];
            let pi = materialize_projection(1, l as u32, Which::In, k_i, shape.d_in + shape.has_bias as u64, Distribution::Rademacher);
            let po = materialize_projection(1, l as u32, Which::Out, k_o, shape.d_out, Distribution::Rademacher);
            let m = kron_project_reference(&tr.reference(), &pi, &po, k_i as usize, k_o as usize, true);
            let w = (k_i * k_o) as usize;
            for i in 0..n {
                mag[i * 14 + off..i * 14 + off + w].copy_from_slice(&m[i * w..(i + 1) * w]);
            }
            off += w;
        }
        assert_close("interp kron_project_layers", &got, &want, &mag, &old, acc, Tol::for_depth(rounding_depth(&LayerShape::new(7, 9), 6, 0)));
    }

    proptest! {
        #![proptest_config(config(12))]
        #[test]
        fn gemm_nt_kernel_matches_reference(nt in 1usize..70, nb in 1usize..70, k in 1usize..40, m in 0usize..3, seed in any::<u64>(), beta in any::<bool>()) {
            let mode = [ScoreMode::Dot, ScoreMode::Cosine, ScoreMode::L2][m];
            let rt = runtime(seed % 3);
            let ctx = Context::with_runtime(rt.clone());
            check_scores(&ctx, mode, (nt, nb, k), seed, beta, &|te, tr, ts, old, acc| {
                let (dte, dtr) = (rt.upload(te, DType::F32).unwrap(), rt.upload(tr, DType::F32).unwrap());
                let dts = ts.map(|s| rt.upload(s, DType::F32).unwrap());
                let mut out = rt.upload(old, DType::F32).unwrap();
                let tst: Option<Tensor> = dts.as_ref().map(|b| b.view().into());
                ctx.influence_scores(&dte.view().into(), &dtr.view().into(), ScoreDims { n_test: nt as u64, n_block: nb as u64, k: k as u64 }, &mut out.view_mut().into(), mode, tst.as_ref(), acc).unwrap();
                rt.read_f32(&out).unwrap()
            });
        }
    }
}

// ---------------------------------------------------------------- K-FAC / EK-FAC

mod kfac {
    use super::*;
    use ghostgrad::projection::precondition::Kfac;

    /// `Σ_kept x xᵀ` of rows of width `w` (+ a trailing 1 when `ones`), f64.
    fn raw_cov(buf: &Buf, mask: Option<&[u8]>, rows: usize, w: usize, ones: bool) -> Vec<f64> {
        let d = w + ones as usize;
        let mut c = vec![0.0; d * d];
        for r in 0..rows {
            if mask.is_some_and(|m| m[r] == 0) {
                continue;
            }
            let x: Vec<f64> = (0..w).map(|j| buf.get(r * w + j)).chain(ones.then_some(1.0)).collect();
            for i in 0..d {
                for j in 0..d {
                    c[i * d + j] += x[i] * x[j];
                }
            }
        }
        c
    }

    /// `P S Pᵀ` for `P [k, d]` f32, `S [d, d]` f64.
    fn sandwich(p: &[f32], s: &[f64], k: usize, d: usize) -> Vec<f64> {
        let mut out = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                out[i * k + j] = (0..d).flat_map(|a| (0..d).map(move |b| (a, b))).map(|(a, b)| p[i * d + a] as f64 * s[a * d + b] * p[j * d + b] as f64).sum();
            }
        }
        out
    }

    fn close(what: &str, got: &[f64], want: &[f64], rel: f64) {
        let scale = want.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-300);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= rel * scale, "{what}[{i}]: got {g:e}, want {w:e} (scale {scale:e})");
        }
    }

    struct Setup {
        kfac: Kfac,
        c_a: Vec<f64>,
        c_b: Vec<f64>,
        grads: Vec<f32>,
        k_i: usize,
        k_o: usize,
        n: usize,
    }

    fn setup() -> Setup {
        let shape = LayerShape::new(6, 5).with_bias(true);
        let (n, t, k_i, k_o) = (9usize, 7usize, 3usize, 4usize);
        let mut r = rng(31);
        let train = TrainData::random(&mut r, shape, n, t, DType::BF16, true);
        let proj = ProjectionSpec { k_i: k_i as u64, k_o: k_o as u64, kind: ProjectionKind::Random { seed: 8, layer: 1, dist: Distribution::Gaussian } };
        let (c_a, c_b) = Kfac::covariances(&shape, &train.factors(), &proj).unwrap();
        let pi = materialize_projection(8, 1, Which::In, k_i as u64, 7, Distribution::Gaussian);
        let po = materialize_projection(8, 1, Which::Out, k_o as u64, 5, Distribution::Gaussian);
        let m = train.mask.as_deref();
        close("C_A", &c_a, &sandwich(&pi, &raw_cov(&train.a, m, n * t, 6, true), k_i, 7), 1e-12);
        close("C_B", &c_b, &sandwich(&po, &raw_cov(&train.b, m, n * t, 5, false), k_o, 5), 1e-12);
        let kfac = Kfac::from_covariances(&c_a, k_i, &c_b, k_o).unwrap();
        let mut grads = poisoned(n * k_i * k_o);
        Context::cpu()
            .kron_project(&shape, &train.factors(), &proj, &mut TensorMut::from(&mut grads[..]), OutColumns { offset: 0, row_stride: (k_i * k_o) as u64 }, Accumulate::overwrite())
            .unwrap();
        Setup { kfac, c_a, c_b, grads, k_i, k_o, n }
    }

    #[test]
    fn kfac_equals_the_damped_kronecker_inverse() {
        // Q_B[(Q_BᵀĜQ_A) ⊘ (Λ_BΛ_Aᵀ + λ)]Q_Aᵀ = (C_B ⊗ C_A + λI)⁻¹ vec(Ĝ) (row-major vec),
        // λ = 0.1·mean(Λ_BΛ_Aᵀ) = 0.1·tr(C_B)·tr(C_A)/(k_o·k_i); both sides in f64.
        let s = setup();
        let (k_i, k_o) = (s.k_i, s.k_o);
        let k = k_i * k_o;
        let tr = |c: &[f64], d: usize| (0..d).map(|i| c[i * d + i]).sum::<f64>();
        let lambda = 0.1 * tr(&s.c_a, k_i) * tr(&s.c_b, k_o) / k as f64;
        assert!((s.kfac.damping() - lambda).abs() <= 1e-10 * lambda, "λ {} vs {lambda}", s.kfac.damping());
        let mut h = vec![0.0; k * k];
        for x in 0..k {
            for y in 0..k {
                let (o, i, o2, i2) = (x / k_i, x % k_i, y / k_i, y % k_i);
                h[x * k + y] = s.c_b[o * k_o + o2] * s.c_a[i * k_i + i2] + if x == y { lambda } else { 0.0 };
            }
        }
        let pre = s.kfac.apply_f64(&s.grads, s.n).unwrap();
        for n in 0..s.n {
            let g: Vec<f64> = s.grads[n * k..(n + 1) * k].iter().map(|&x| x as f64).collect();
            close(&format!("kfac sample {n}"), &pre[n * k..(n + 1) * k], &solve(&h, &g, k), 1e-9);
        }
    }

    #[test]
    fn ekfac_scale_is_the_raw_fisher_diagonal_in_the_kronecker_eigenbasis() {
        // EK-FAC's (1/N) Σ_n (Q_BᵀĜ_nQ_A)^{⊙2} = diag(Uᵀ F U), U = Q_B ⊗ Q_A, F the raw Fisher;
        // and before the correction Uᵀ (C_B ⊗ C_A) U = diag(Λ_B Λ_Aᵀ).
        let mut s = setup();
        let k = s.k_i * s.k_o;
        // U's columns from the basis change of unit vectors: to_eigenbasis(e_y)[x] = U[y, x].
        let u: Vec<Vec<f64>> = (0..k)
            .map(|y| {
                let mut e = vec![0f32; k];
                e[y] = 1.0;
                s.kfac.to_eigenbasis(&e)
            })
            .collect();
        let quad = |m: &dyn Fn(usize, usize) -> f64, x: usize| -> f64 { (0..k).flat_map(|a| (0..k).map(move |b| (a, b))).map(|(a, b)| u[a][x] * m(a, b) * u[b][x]).sum() };
        let kron = |a: usize, b: usize| s.c_b[(a / s.k_i) * s.k_o + b / s.k_i] * s.c_a[(a % s.k_i) * s.k_i + b % s.k_i];
        let want: Vec<f64> = (0..k).map(|x| quad(&kron, x)).collect();
        close("K-FAC eigenvalue products", s.kfac.eigenbasis_scale(), &want, 1e-9);
        let fisher = RawFisher::fit(&s.grads, s.n, k).unwrap().fisher();
        let f = |a: usize, b: usize| fisher[a * k + b];
        let want: Vec<f64> = (0..k).map(|x| quad(&f, x)).collect();
        s.kfac.ekfac_correct(&s.grads, s.n).unwrap();
        close("EK-FAC scale", s.kfac.eigenbasis_scale(), &want, 1e-9);
        let mean = want.iter().sum::<f64>() / k as f64;
        assert!((s.kfac.damping() - 0.1 * mean).abs() <= 1e-9 * mean);
    }
}

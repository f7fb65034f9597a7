//! Data value embedding (MATH.md §5): the reverse sweep on every backend, the blocked form
//! against the per-step recursion, `I − M` against the explicit propagator, a leave-one-out
//! check on a model where the Gauss–Newton Hessian is exact, and validation.
//!
//! # Tolerance
//! Every entry of `E` and `M` is a polynomial in the inputs (gradients, η, c, the initial `M`).
//! Along the recursion a monomial passes, per step it crosses, through at most two length-`k`
//! reductions (`G Mᵀ`, and `K` in the blocked form), two reductions over at most `R` rows (the
//! triangular sweep and the `M` update) and a handful of single roundings (subtraction, η, c,
//! adding to `M`), so `L ≤ S·(2k + 2R + 16)` roundings in total, whichever blocking runs; the
//! per-step and blocked forms expand to the same monomials, whose absolute sum is what the
//! reference returns with `abs = true`. The check is `|x − exact| ≤ γ_L · magnitude`
//! (`common::Tol`). η is drawn as an f32 so that every backend uses the same η; `c = 1/b`
//! (mean loss) is rounded to f32 by the fast backends: one of the single roundings.

mod common;

use common::*;
use ghostgrad::dvemb::cpu::{reference, Layout};
use ghostgrad::dvemb::{auto_block_rows, Blocking, DvembLayer, DvembSteps, LossReduction};
use ghostgrad::{Accumulate, Context, GhostError, OutColumns, ScoreDims, Tensor, TensorMut};
use proptest::prelude::*;
use rand::Rng;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 16, ..ProptestConfig::default() }
}

/// One random sweep problem of one layer.
#[derive(Debug, Clone)]
struct Case {
    rows: Vec<u64>,
    k: usize,
    offset: usize,
    extra: usize,
    mean: bool,
    blocking: Blocking,
    m_zero: bool,
    seed: u64,
}

impl Case {
    fn ld(&self) -> usize {
        self.offset + self.k + self.extra
    }
    fn r(&self) -> usize {
        self.rows.iter().sum::<u64>() as usize
    }
    fn loss(&self) -> LossReduction {
        if self.mean {
            LossReduction::Mean
        } else {
            LossReduction::Sum
        }
    }
    fn layout(&self) -> Layout {
        Layout { row_stride: self.ld(), offset: self.offset, k: self.k }
    }
    fn depth(&self) -> usize {
        self.rows.len() * (2 * self.k + 2 * self.r() + 16)
    }
}

/// Inputs of a case: gradients `[R, ld]` (NaN outside the layer's columns: never read), η per
/// step (f32 values), initial `M`.
struct Inputs {
    grads: Vec<f32>,
    etas: Vec<f64>,
    m0: Vec<f32>,
}

fn inputs(c: &Case) -> Inputs {
    let mut r = rng(c.seed);
    let scale = 1.0 / (c.k as f32).sqrt();
    let mut grads = vec![f32::NAN; c.r() * c.ld()];
    for row in 0..c.r() {
        for j in 0..c.k {
            grads[row * c.ld() + c.offset + j] = nonzero_gaussian(&mut r) * scale;
        }
    }
    let etas = c.rows.iter().map(|_| r.random_range(0.02f32..0.4) as f64).collect();
    let m0 = (0..c.k * c.k).map(|_| if c.m_zero { 0.0 } else { 0.2 * scale * nonzero_gaussian(&mut r) }).collect();
    Inputs { grads, etas, m0 }
}

/// Ragged shapes: uneven rows per step, k crossing the kernels' 64-wide tiles and 32-column
/// sweep slabs, columns inside a wider row, every blocking.
fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(1u64..8, 1..6),
        prop_oneof![1usize..20, 60usize..70],
        (0usize..3, 0usize..2),
        (any::<bool>(), 0usize..4, 1u64..20, any::<bool>()),
        any::<u64>(),
    )
        .prop_map(|(rows, k, (offset, extra), (mean, b, max_rows, m_zero), seed)| Case {
            rows,
            k,
            offset,
            extra,
            mean,
            blocking: [Blocking::PerStep, Blocking::MaxRows(max_rows), Blocking::Auto, Blocking::MaxRows(1000)][b],
            m_zero,
            seed,
        })
}

/// Runs a case on some backend: `(case, inputs, blocking) -> (e_out [R, ld], M)`.
type SweepRun<'a> = dyn Fn(&Case, &Inputs, Blocking) -> (Vec<f32>, Vec<f32>) + 'a;

fn run_host(ctx: &Context, c: &Case, inp: &Inputs, blocking: Blocking) -> (Vec<f32>, Vec<f32>) {
    let mut e = poisoned(c.r() * c.ld());
    let mut m = inp.m0.clone();
    let steps = DvembSteps { rows: &c.rows, etas: &inp.etas, loss: c.loss() };
    let cols = OutColumns { offset: c.offset as u64, row_stride: c.ld() as u64 };
    ctx.dvemb_block(&Tensor::from(&inp.grads[..]), cols, c.k as u64, &steps, &mut TensorMut::from(&mut m[..]), &mut TensorMut::from(&mut e[..]), blocking)
        .unwrap_or_else(|err| panic!("{} dvemb_block {c:?}: {err}", ctx.describe()));
    (e, m)
}

/// `(E [R, k], M)` in f64.
type EM = (Vec<f64>, Vec<f64>);

/// The f64 reference of a case: `(E, M)` and their magnitudes.
fn expected(c: &Case, inp: &Inputs) -> (EM, EM) {
    let steps = DvembSteps { rows: &c.rows, etas: &inp.etas, loss: c.loss() };
    let mut m: Vec<f64> = inp.m0.iter().map(|&x| x as f64).collect();
    let e = reference(&inp.grads, c.layout(), &steps, Blocking::PerStep, &mut m, false);
    let mut m_abs: Vec<f64> = inp.m0.iter().map(|&x| (x as f64).abs()).collect();
    let e_abs = reference(&inp.grads, c.layout(), &steps, Blocking::PerStep, &mut m_abs, true);
    ((e, m), (e_abs, m_abs))
}

/// The layer's columns of a `[R, ld]` buffer, and a check that every other column kept its NaN.
fn layer_columns(label: &str, c: &Case, e: &[f32]) -> Vec<f32> {
    let mut inside = Vec::with_capacity(c.r() * c.k);
    for row in 0..c.r() {
        for j in 0..c.ld() {
            let x = e[row * c.ld() + j];
            if j >= c.offset && j < c.offset + c.k {
                inside.push(x);
            } else {
                assert!(x.is_nan(), "{label} {c:?}: column {j} of row {row} outside the layer was written ({x})");
            }
        }
    }
    inside
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn check_case(c: &Case, label: &str, run: &SweepRun<'_>) {
    let inp = inputs(c);
    let (e, m) = run(c, &inp, c.blocking);
    let ((e_ref, m_ref), (e_abs, m_abs)) = expected(c, &inp);
    let tol = Tol::for_depth(c.depth());
    let acc = Accumulate::overwrite();
    let e_in = layer_columns(label, c, &e);
    assert_close(&format!("{label} E {c:?}"), &e_in, &to_f32(&e_ref), &e_abs, &e_in, acc, tol);
    assert_close(&format!("{label} M {c:?}"), &m, &to_f32(&m_ref), &m_abs, &m, acc, tol);
}

proptest! {
    #![proptest_config(config(48))]
    #[test]
    fn fast_cpu_sweep_matches_reference(c in case_strategy()) {
        check_case(&c, "cpu", &|c, inp, b| run_host(&Context::cpu(), c, inp, b));
    }

    #[test]
    fn reference_backend_matches_reference_function(c in case_strategy()) {
        // The backend honours the blocking; both forms agree with the per-step function.
        check_case(&c, "cpu-reference", &|c, inp, b| run_host(&Context::cpu_reference(), c, inp, b));
    }
}

// ------------------------------------------------------------------ acceptance check (4)

/// `max_i |x_i − y_i| / max(magnitude_i, tiny)`.
fn max_rel(x: &[f64], y: &[f64], mag: &[f64]) -> (f64, usize) {
    x.iter()
        .zip(y)
        .zip(mag)
        .map(|((a, b), m)| (a - b).abs() / m.max(1e-300))
        .enumerate()
        .fold((0.0, 0), |(best, bi), (i, e)| if e > best { (e, i) } else { (best, bi) })
}

#[test]
fn blocked_form_equals_per_step_recursion_in_f64() {
    for seed in 0..12u64 {
        let mut r = rng(seed);
        let rows: Vec<u64> = (0..r.random_range(2..9)).map(|_| r.random_range(1..7)).collect();
        let c = Case { rows, k: r.random_range(1..24), offset: 1, extra: 2, mean: seed % 2 == 0, blocking: Blocking::PerStep, m_zero: seed % 3 == 0, seed };
        let inp = inputs(&c);
        let steps = DvembSteps { rows: &c.rows, etas: &inp.etas, loss: c.loss() };
        let m_init: Vec<f64> = inp.m0.iter().map(|&x| x as f64).collect();
        let (mut m_step, mut m_abs) = (m_init.clone(), m_init.iter().map(|x| x.abs()).collect::<Vec<_>>());
        let e_step = reference(&inp.grads, c.layout(), &steps, Blocking::PerStep, &mut m_step, false);
        let e_abs = reference(&inp.grads, c.layout(), &steps, Blocking::PerStep, &mut m_abs, true);
        for max_rows in [2u64, 5, 11, 1000] {
            let mut m_blk = m_init.clone();
            let e_blk = reference(&inp.grads, c.layout(), &steps, Blocking::MaxRows(max_rows), &mut m_blk, false);
            let (err_e, ie) = max_rel(&e_blk, &e_step, &e_abs);
            let (err_m, im) = max_rel(&m_blk, &m_step, &m_abs);
            assert!(err_e < 1e-12, "seed {seed} max_rows {max_rows}: E[{ie}] blocked {} vs per-step {} (rel {err_e:e})", e_blk[ie], e_step[ie]);
            assert!(err_m < 1e-12, "seed {seed} max_rows {max_rows}: M[{im}] blocked {} vs per-step {} (rel {err_m:e})", m_blk[im], m_step[im]);
        }
    }
}

/// Dense f64 `a · b` of `n×n` matrices.
fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for p in 0..n {
            for j in 0..n {
                c[i * n + j] += a[i * n + p] * b[p * n + j];
            }
        }
    }
    c
}

#[test]
fn one_minus_m_is_the_explicit_propagator_and_e_is_eta_p_g() {
    // P_t = (I − η_{S−1}c G_{S−1}ᵀG_{S−1}) ⋯ (I − η_t c G_tᵀG_t), latest step leftmost, formed
    // explicitly in f64; the sweep from M = 0 must give M_t = I − P_t after each step and
    // E_t[z] = η_t P_{t+1} g_z. Checked through the per-step and the blocked reference.
    for (seed, mean) in [(3u64, false), (4, true), (5, true)] {
        let mut r = rng(seed);
        let rows: Vec<u64> = (0..6).map(|_| r.random_range(1..5)).collect();
        let c = Case { rows, k: 7, offset: 0, extra: 0, mean, blocking: Blocking::PerStep, m_zero: true, seed };
        let inp = inputs(&c);
        let (k, s_count) = (c.k, c.rows.len());
        let starts: Vec<usize> = std::iter::once(0).chain(c.rows.iter().scan(0usize, |a, &b| { *a += b as usize; Some(*a) })).collect();
        let g = |row: usize, i: usize| inp.grads[row * k + i] as f64;
        let eye: Vec<f64> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
        // props[t] = P_t, props[S] = I.
        let mut props = vec![eye.clone(); s_count + 1];
        for t in (0..s_count).rev() {
            let cc = c.loss().c(c.rows[t]);
            let mut step = eye.clone();
            for i in 0..k {
                for j in 0..k {
                    let h: f64 = (starts[t]..starts[t + 1]).map(|row| g(row, i) * g(row, j)).sum();
                    step[i * k + j] -= inp.etas[t] * cc * h;
                }
            }
            props[t] = matmul(&props[t + 1], &step, k);
        }
        for blocking in [Blocking::PerStep, Blocking::MaxRows(6), Blocking::MaxRows(1000)] {
            // Sweep chunk by chunk (latest step first) to see M after every step.
            let mut m = vec![0.0f64; k * k];
            for t in (0..s_count).rev() {
                let sub = &inp.grads[starts[t] * k..starts[t + 1] * k];
                let steps = DvembSteps { rows: &c.rows[t..t + 1], etas: &inp.etas[t..t + 1], loss: c.loss() };
                let e = reference(sub, c.layout(), &steps, blocking, &mut m, false);
                let one_minus_m: Vec<f64> = eye.iter().zip(&m).map(|(i, x)| i - x).collect();
                let scale = props[t].iter().fold(0.0f64, |a, x| a.max(x.abs()));
                let (err, i) = max_rel(&one_minus_m, &props[t], &vec![scale; k * k]);
                assert!(err < 1e-13, "seed {seed} {blocking:?} step {t}: (I − M)[{i}] = {} vs P = {} (rel {err:e})", one_minus_m[i], props[t][i]);
                for z in 0..c.rows[t] as usize {
                    let gz: Vec<f64> = (0..k).map(|i| g(starts[t] + z, i)).collect();
                    let want: Vec<f64> = (0..k).map(|i| inp.etas[t] * (0..k).map(|j| props[t + 1][i * k + j] * gz[j]).sum::<f64>()).collect();
                    let mag = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                    let (err, i) = max_rel(&e[z * k..(z + 1) * k], &want, &vec![mag; k]);
                    assert!(err < 1e-13, "seed {seed} step {t} sample {z}: E[{i}] = {} vs η P g = {} (rel {err:e})", e[z * k + i], want[i]);
                }
            }
            // And the whole range in one call, any blocking, ends at I − P_0.
            let mut m_all = vec![0.0f64; k * k];
            let steps = DvembSteps { rows: &c.rows, etas: &inp.etas, loss: c.loss() };
            reference(&inp.grads, c.layout(), &steps, blocking, &mut m_all, false);
            let one_minus_m: Vec<f64> = eye.iter().zip(&m_all).map(|(i, x)| i - x).collect();
            let scale = props[0].iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let (err, i) = max_rel(&one_minus_m, &props[0], &vec![scale; k * k]);
            assert!(err < 1e-13, "seed {seed} {blocking:?} whole sweep: (I − M)[{i}] vs P_0 (rel {err:e})");
        }
    }
}

/// Per-step and blocked runs of the same case on one backend agree within twice the f32 bound
/// (each is within the bound of the exact value).
fn check_blocked_equals_per_step(c: &Case, label: &str, run: &SweepRun<'_>) {
    let inp = inputs(c);
    let ((_, _), (e_abs, m_abs)) = expected(c, &inp);
    let (e1, m1) = run(c, &inp, Blocking::PerStep);
    let (e2, m2) = run(c, &inp, Blocking::MaxRows(c.r() as u64));
    let tol = Tol { rel: 2.0 * Tol::for_depth(c.depth()).rel, tiny: 1e-30 };
    let acc = Accumulate::overwrite();
    let (e1, e2) = (layer_columns(label, c, &e1), layer_columns(label, c, &e2));
    assert_close(&format!("{label} E blocked vs per-step"), &e2, &e1, &e_abs, &e1, acc, tol);
    assert_close(&format!("{label} M blocked vs per-step"), &m2, &m1, &m_abs, &m1, acc, tol);
    // The blocked form really is a different computation (not the per-step path renamed).
    assert!(e1.iter().zip(&e2).any(|(a, b)| a.to_bits() != b.to_bits()) || c.rows.len() == 1, "{label}: blocked and per-step bitwise equal: suspicious");
}

#[test]
fn blocked_equals_per_step_on_fast_cpu() {
    let c = Case { rows: vec![3, 5, 1, 4, 6, 2], k: 67, offset: 2, extra: 1, mean: true, blocking: Blocking::PerStep, m_zero: false, seed: 17 };
    check_blocked_equals_per_step(&c, "cpu", &|c, inp, b| run_host(&Context::cpu(), c, inp, b));
}

#[test]
fn fast_cpu_is_deterministic_across_thread_counts() {
    let c = Case { rows: vec![7, 9, 3], k: 150, offset: 0, extra: 3, mean: false, blocking: Blocking::Auto, m_zero: false, seed: 5 };
    let inp = inputs(&c);
    let mut outs = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        outs.push(pool.install(|| run_host(&Context::cpu(), &c, &inp, Blocking::MaxRows(12))));
    }
    for o in &outs[1..] {
        assert_bitwise_eq("E across thread counts", &outs[0].0, &o.0);
        assert_bitwise_eq("M across thread counts", &outs[0].1, &o.1);
    }
}

#[test]
fn layers_variant_places_each_layer_in_its_columns_with_its_own_m() {
    // Two layers side by side in one [R, 3 + 5 + 1] buffer (a gap column), then the same
    // layers one at a time: identical bits (layers are independent), untouched gap.
    let rows = [2u64, 4, 3];
    let r_total = 9usize;
    let ld = 9usize;
    let mut rg = rng(11);
    let grads: Vec<f32> = (0..r_total * ld).map(|_| 0.5 * nonzero_gaussian(&mut rg)).collect();
    let etas = [0.25, 0.125, 0.5];
    let steps = DvembSteps { rows: &rows, etas: &etas, loss: LossReduction::Mean };
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        let (mut m_a, mut m_b) = (vec![0.0f32; 9], vec![0.0f32; 25]);
        let mut e = poisoned(r_total * ld);
        {
            let (mut ta, mut tb) = (TensorMut::from(&mut m_a[..]), TensorMut::from(&mut m_b[..]));
            let mut layers = [DvembLayer { offset: 0, k: 3, m: &mut ta }, DvembLayer { offset: 4, k: 5, m: &mut tb }];
            let rep = ctx.dvemb_layers(&Tensor::from(&grads[..]), ld as u64, &mut layers, &steps, &mut TensorMut::from(&mut e[..]), Blocking::MaxRows(6)).unwrap();
            assert_eq!(rep.blocks, vec![vec![2..3, 0..2], vec![2..3, 0..2]]);
            assert_eq!(rep.recursion_flops, 4.0 * 9.0 * (9.0 + 25.0));
        }
        for (off, k, m) in [(0usize, 3usize, &m_a), (4, 5, &m_b)] {
            let mut m1 = vec![0.0f32; k * k];
            let mut e1 = poisoned(r_total * ld);
            ctx.dvemb_block(&Tensor::from(&grads[..]), OutColumns { offset: off as u64, row_stride: ld as u64 }, k as u64, &steps, &mut TensorMut::from(&mut m1[..]), &mut TensorMut::from(&mut e1[..]), Blocking::MaxRows(6)).unwrap();
            assert_bitwise_eq(&format!("{} M of layer at {off}", ctx.describe()), m, &m1);
            for row in 0..r_total {
                assert_bitwise_eq(&format!("{} E of layer at {off}", ctx.describe()), &e[row * ld + off..][..k], &e1[row * ld + off..][..k]);
            }
        }
        assert!((0..r_total).all(|row| e[row * ld + 3].is_nan()), "gap column written");
    }
}

#[test]
fn nan_in_a_gradient_propagates_and_does_not_vanish() {
    // A NaN in step 1's gradients poisons E of that row and M, hence every earlier step's E.
    let c = Case { rows: vec![2, 3, 2], k: 5, offset: 0, extra: 0, mean: false, blocking: Blocking::PerStep, m_zero: true, seed: 2 };
    let mut inp = inputs(&c);
    inp.grads[3 * 5 + 2] = f32::NAN; // row 3 (step 1), column 2
    for blocking in [Blocking::PerStep, Blocking::MaxRows(100)] {
        let (e, m) = run_host(&Context::cpu(), &c, &inp, blocking);
        assert!(e[5 * 5..].iter().all(|x| x.is_finite()), "{blocking:?}: the later step must be unaffected");
        assert!(e[3 * 5..4 * 5].iter().any(|x| x.is_nan()), "{blocking:?}: NaN row lost its NaN");
        assert!(e[..2 * 5].iter().any(|x| x.is_nan()), "{blocking:?}: NaN did not reach step 0");
        assert!(m.iter().any(|x| x.is_nan()), "{blocking:?}: NaN did not reach M");
    }
}

// ------------------------------------------------------------------ leave-one-out

/// `ℓ(w; x) = −log(xᵀw)`: `∇ℓ = −x/(xᵀw)` and `∇²ℓ = x xᵀ/(xᵀw)² = ∇ℓ ∇ℓᵀ`, so the Gauss–Newton
/// approximation `H ≈ Σ g gᵀ` of DVEmb is exact and the only error left is the first-order
/// linearization in the removed sample's perturbation, `O(η)` relative.
fn loss_grad(w: &[f64], x: &[f64]) -> (f64, Vec<f64>) {
    let u: f64 = w.iter().zip(x).map(|(a, b)| a * b).sum();
    (-u.ln(), x.iter().map(|&xi| -xi / u).collect())
}

struct Run {
    w_final: Vec<f64>,
    grads: Vec<Vec<Vec<f64>>>, // [step][sample] at w_t
}

/// SGD with the mean loss over each step's batch; `skip = Some((t, z))` drops sample z of step t
/// keeping the weight 1/b_t of the others (the counterfactual DVEmb linearizes).
fn train(w0: &[f64], batches: &[Vec<Vec<f64>>], etas: &[f64], skip: Option<(usize, usize)>) -> Run {
    let mut w = w0.to_vec();
    let mut grads = Vec::new();
    for (t, batch) in batches.iter().enumerate() {
        let c = 1.0 / batch.len() as f64;
        let gs: Vec<Vec<f64>> = batch.iter().map(|x| loss_grad(&w, x).1).collect();
        for (z, g) in gs.iter().enumerate() {
            if skip == Some((t, z)) {
                continue;
            }
            for (wi, gi) in w.iter_mut().zip(g) {
                *wi -= etas[t] * c * gi;
            }
        }
        grads.push(gs);
    }
    Run { w_final: w, grads }
}

#[test]
fn scores_predict_leave_one_out_change_of_the_test_loss_to_first_order_in_eta() {
    let d = 5usize;
    let mut r = rng(42);
    let sizes = [3usize, 5, 2, 4, 3, 4];
    let batches: Vec<Vec<Vec<f64>>> = sizes.iter().map(|&b| (0..b).map(|_| (0..d).map(|_| r.random_range(0.2..1.5)).collect()).collect()).collect();
    let x_test: Vec<f64> = (0..d).map(|_| r.random_range(0.2..1.5)).collect();
    let w0: Vec<f64> = (0..d).map(|_| r.random_range(0.5..1.0)).collect();
    let rows: Vec<u64> = sizes.iter().map(|&b| b as u64).collect();
    let r_total: usize = sizes.iter().sum();
    let mut worst = Vec::new();
    for base_eta in [0.02, 0.005, 0.00125] {
        let etas: Vec<f64> = (0..sizes.len()).map(|t| base_eta * (1.0 + 0.25 * t as f64)).collect();
        let run = train(&w0, &batches, &etas, None);
        let grads: Vec<f32> = run.grads.iter().flatten().flatten().map(|&x| x as f32).collect();
        let (test_loss, g_test) = loss_grad(&run.w_final, &x_test);
        let steps = DvembSteps { rows: &rows, etas: &etas, loss: LossReduction::Mean };
        let ctx = Context::cpu();
        let mut m = vec![0.0f32; d * d];
        let mut e = poisoned(r_total * d);
        ctx.dvemb_block(&Tensor::from(&grads[..]), OutColumns { offset: 0, row_stride: d as u64 }, d as u64, &steps, &mut TensorMut::from(&mut m[..]), &mut TensorMut::from(&mut e[..]), Blocking::Auto).unwrap();
        let test32: Vec<f32> = g_test.iter().map(|&x| x as f32).collect();
        let mut scores = poisoned(r_total);
        ctx.dvemb_scores(&Tensor::from(&test32[..]), &Tensor::from(&e[..]), ScoreDims { n_test: 1, n_block: r_total as u64, k: d as u64 }, &mut TensorMut::from(&mut scores[..]), Accumulate::overwrite()).unwrap();
        let (mut num, mut den, mut row) = (0.0f64, 0.0f64, 0usize);
        for (t, &b) in sizes.iter().enumerate() {
            for z in 0..b {
                let loo = train(&w0, &batches, &etas, Some((t, z)));
                let actual = loss_grad(&loo.w_final, &x_test).0 - test_loss;
                let predicted = scores[row] as f64 / b as f64; // c_t · score
                assert!(actual.signum() == predicted.signum(), "eta {base_eta} step {t} sample {z}: sign {actual:e} vs {predicted:e}");
                num = num.max((actual - predicted).abs());
                den = den.max(actual.abs());
                row += 1;
            }
        }
        worst.push(num / den);
    }
    // First order in η: each 4× smaller η shrinks the relative error about 4× (≥ 3× asked; the
    // measured ratios are 3.5 and 3.85, approaching 4), and it is already small at the largest η.
    assert!(worst[0] < 0.01, "relative LOO error {:e} at η = 0.02", worst[0]);
    for w in worst.windows(2) {
        assert!(w[1] < w[0] / 3.0, "error does not shrink like η: {worst:?}");
    }
}

// ------------------------------------------------------------------ validation

#[test]
fn validation_errors_are_typed() {
    let ctx = Context::cpu();
    let grads = vec![1.0f32; 6 * 4];
    let cols = OutColumns { offset: 0, row_stride: 4 };
    let rows = [2u64, 4];
    let etas = [0.1, 0.2];
    let call = |grads: &[f32], cols: OutColumns, k: u64, rows: &[u64], etas: &[f64], m_len: usize, e_len: usize, b: Blocking| {
        let mut m = vec![0.0f32; m_len];
        let mut e = vec![0.0f32; e_len];
        let steps = DvembSteps { rows, etas, loss: LossReduction::Sum };
        ctx.dvemb_block(&Tensor::from(grads), cols, k, &steps, &mut TensorMut::from(&mut m[..]), &mut TensorMut::from(&mut e[..]), b).map(|_| ())
    };
    let ok = call(&grads, cols, 3, &rows, &etas, 9, 24, Blocking::Auto);
    assert_eq!(ok, Ok(()));
    assert_eq!(call(&grads, cols, 0, &rows, &etas, 0, 24, Blocking::Auto), Err(GhostError::ZeroSize { what: "k" }));
    assert_eq!(call(&grads, cols, 3, &[], &[], 9, 24, Blocking::Auto), Err(GhostError::ZeroSize { what: "steps" }));
    assert_eq!(call(&grads, cols, 3, &rows, &etas[..1], 9, 24, Blocking::Auto), Err(GhostError::LengthMismatch { what: "etas", expected: 2, got: 1 }));
    assert_eq!(call(&grads[..20], cols, 3, &rows, &etas, 9, 24, Blocking::Auto), Err(GhostError::LengthMismatch { what: "grads", expected: 24, got: 20 }));
    assert_eq!(call(&grads, cols, 3, &rows, &etas, 9, 23, Blocking::Auto), Err(GhostError::LengthMismatch { what: "e_out", expected: 24, got: 23 }));
    assert_eq!(call(&grads, cols, 3, &rows, &etas, 8, 24, Blocking::Auto), Err(GhostError::LengthMismatch { what: "m", expected: 9, got: 8 }));
    assert_eq!(call(&grads, cols, 3, &rows, &etas, 9, 24, Blocking::MaxRows(0)), Err(GhostError::ZeroSize { what: "Blocking::MaxRows" }));
    assert_eq!(call(&grads, OutColumns { offset: 0, row_stride: 0 }, 3, &rows, &etas, 9, 24, Blocking::Auto), Err(GhostError::ZeroSize { what: "row_stride" }));
    for bad in [f64::NAN, f64::INFINITY, 1e300] {
        match call(&grads, cols, 3, &rows, &[0.1, bad], 9, 24, Blocking::Auto) {
            Err(GhostError::InvalidArgument { what: "etas", .. }) => {}
            other => panic!("eta {bad}: {other:?}"),
        }
    }
    match call(&grads, cols, 3, &[2, 0, 4], &[0.1, 0.1, 0.1], 9, 24, Blocking::Auto) {
        Err(GhostError::InvalidArgument { what: "rows", .. }) => {}
        other => panic!("zero rows: {other:?}"),
    }
    match call(&grads, OutColumns { offset: 2, row_stride: 4 }, 3, &rows, &etas, 9, 24, Blocking::Auto) {
        Err(GhostError::InvalidArgument { what: "layer columns", .. }) => {}
        other => panic!("columns past the row: {other:?}"),
    }
    match call(&grads, cols, 3, &[1 << 31, 1], &etas, 9, 24, Blocking::Auto) {
        Err(GhostError::ShapeOverflow { .. }) => {}
        other => panic!("R ≥ 2^31: {other:?}"),
    }
    // Overlapping layers, an f64 M on the fast path, device memory on a CPU context.
    let (mut ma, mut mb) = (vec![0.0f32; 9], vec![0.0f32; 4]);
    let mut e = [0.0f32; 24];
    let steps = DvembSteps { rows: &rows, etas: &etas, loss: LossReduction::Mean };
    let (mut ta, mut tb) = (TensorMut::from(&mut ma[..]), TensorMut::from(&mut mb[..]));
    let mut layers = [DvembLayer { offset: 0, k: 3, m: &mut ta }, DvembLayer { offset: 2, k: 2, m: &mut tb }];
    match ctx.dvemb_layers(&Tensor::from(&grads[..]), 4, &mut layers, &steps, &mut TensorMut::from(&mut e[..]), Blocking::Auto) {
        Err(GhostError::InvalidArgument { what: "layer columns", .. }) => {}
        other => panic!("overlapping layers: {other:?}"),
    }
    let mut m64 = [0.0f64; 9];
    let r = ctx.dvemb_block(&Tensor::from(&grads[..]), cols, 3, &steps, &mut TensorMut::from(&mut m64[..]), &mut TensorMut::from(&mut e[..]), Blocking::Auto);
    assert!(matches!(r, Err(GhostError::UnsupportedDtype { what: "m", .. })), "{r:?}");
    // The reference backend takes the f64 M.
    Context::cpu_reference().dvemb_block(&Tensor::from(&grads[..]), cols, 3, &steps, &mut TensorMut::from(&mut m64[..]), &mut TensorMut::from(&mut e[..]), Blocking::Auto).unwrap();
    assert!(m64.iter().all(|x| x.is_finite()) && m64.iter().any(|&x| x != 0.0));
}

#[test]
fn auto_blocking_groups_steps_up_to_the_row_target() {
    assert_eq!(auto_block_rows(16), 64);
    assert_eq!(auto_block_rows(256), 64);
    assert_eq!(auto_block_rows(1024), 128);
    assert_eq!(auto_block_rows(8192), 512);
    let rows = vec![16u64; 10];
    let etas = vec![0.1; 10];
    let steps = DvembSteps { rows: &rows, etas: &etas, loss: LossReduction::Sum };
    let k = 8u64;
    let grads = vec![0.5f32; 160 * 8];
    let (mut m, mut e) = (vec![0.0f32; 64], vec![0.0f32; 160 * 8]);
    let rep = Context::cpu()
        .dvemb_block(&Tensor::from(&grads[..]), OutColumns { offset: 0, row_stride: 8 }, k, &steps, &mut TensorMut::from(&mut m[..]), &mut TensorMut::from(&mut e[..]), Blocking::Auto)
        .unwrap();
    // 64 rows per block = 4 steps, from the latest backwards.
    assert_eq!(rep.blocks, vec![vec![6..10, 2..6, 0..2]]);
    assert!(rep.executed_flops > rep.recursion_flops);
}

// ------------------------------------------------------------------ the kernels, on the interpreter

#[cfg(feature = "interp")]
mod interp {
    use super::*;
    use common::model_dev::runtime;
    use ghostgrad::DType;

    fn run_interp_seeded(sched: u64, c: &Case, inp: &Inputs, blocking: Blocking) -> (Vec<f32>, Vec<f32>) {
        let rt = runtime(sched);
        let ctx = Context::with_runtime(rt.clone());
        let g = rt.upload(&inp.grads, DType::F32).unwrap();
        let mut e = rt.alloc_f32((c.r() * c.ld()) as u64, f32::NAN).unwrap();
        let mut m = rt.upload(&inp.m0, DType::F32).unwrap();
        let steps = DvembSteps { rows: &c.rows, etas: &inp.etas, loss: c.loss() };
        let cols = OutColumns { offset: c.offset as u64, row_stride: c.ld() as u64 };
        ctx.dvemb_block(&g.view().into(), cols, c.k as u64, &steps, &mut m.view_mut().into(), &mut e.view_mut().into(), blocking)
            .unwrap_or_else(|err| panic!("interp dvemb_block {c:?}: {err}"));
        (rt.read_f32(&e).unwrap(), rt.read_f32(&m).unwrap())
    }

    fn run_interp(c: &Case, inp: &Inputs, blocking: Blocking) -> (Vec<f32>, Vec<f32>) {
        run_interp_seeded(c.seed % 4, c, inp, blocking)
    }

    proptest! {
        #![proptest_config(config(12))]
        #[test]
        fn kernels_match_reference(c in case_strategy()) {
            check_case(&c, "interp", &run_interp);
        }
    }

    #[test]
    fn kernels_on_tile_crossing_shapes() {
        // Blocks of more than 64 rows (two gram/residual row tiles, skipped lower tiles), k past
        // 64 (two column tiles, three sweep slabs), a single-row step, many steps per block
        // (two table launches), and per-step runs of the same shapes.
        for (i, (rows, k, blocking)) in [
            (vec![30u64, 1, 40, 9], 70usize, Blocking::MaxRows(1000)),
            (vec![1u64; 11], 65, Blocking::MaxRows(9)),
            (vec![5u64, 64, 2], 33, Blocking::PerStep),
            (vec![66u64, 3], 1, Blocking::Auto),
        ]
        .into_iter()
        .enumerate()
        {
            let c = Case { rows, k, offset: i % 2, extra: 1, mean: i % 2 == 1, blocking, m_zero: i == 3, seed: 100 + i as u64 };
            check_case(&c, "interp (fixed shapes)", &run_interp);
        }
    }

    #[test]
    fn blocked_equals_per_step_on_the_kernels() {
        let c = Case { rows: vec![3, 5, 1, 4, 6, 2], k: 67, offset: 2, extra: 1, mean: true, blocking: Blocking::PerStep, m_zero: false, seed: 17 };
        check_blocked_equals_per_step(&c, "interp", &run_interp);
    }

    #[test]
    fn kernels_are_bitwise_identical_across_schedule_seeds() {
        let c = Case { rows: vec![9, 2, 7], k: 40, offset: 1, extra: 2, mean: false, blocking: Blocking::MaxRows(100), m_zero: false, seed: 8 };
        let inp = inputs(&c);
        for blocking in [Blocking::PerStep, Blocking::MaxRows(100)] {
            let base = run_interp_seeded(0, &c, &inp, blocking);
            for sched in 1..3 {
                let other = run_interp_seeded(sched, &c, &inp, blocking);
                assert_bitwise_eq(&format!("{blocking:?} E sched 0 vs {sched}"), &base.0, &other.0);
                assert_bitwise_eq(&format!("{blocking:?} M sched 0 vs {sched}"), &base.1, &other.1);
            }
        }
    }

    #[test]
    fn device_buffers_may_not_alias_and_must_be_device_memory() {
        let rt = runtime(0);
        let ctx = Context::with_runtime(rt.clone());
        let g = rt.alloc_f32(12, 1.0).unwrap();
        let mut m = rt.alloc_f32(4, 0.0).unwrap();
        let steps = DvembSteps { rows: &[2, 1], etas: &[0.1, 0.1], loss: LossReduction::Sum };
        let cols = OutColumns { offset: 0, row_stride: 4 };
        // e_out over the gradients.
        let alias = unsafe { ghostgrad::DeviceSliceMut::from_raw_parts(g.ptr, 12, DType::F32) };
        let r = ctx.dvemb_block(&g.view().into(), cols, 2, &steps, &mut m.view_mut().into(), &mut TensorMut::from(alias), Blocking::Auto);
        assert!(matches!(r, Err(GhostError::InvalidArgument { what: "e_out", .. })), "{r:?}");
        // Host memory on a GPU context.
        let mut e_host = [0.0f32; 12];
        let r = ctx.dvemb_block(&g.view().into(), cols, 2, &steps, &mut m.view_mut().into(), &mut TensorMut::from(&mut e_host[..]), Blocking::Auto);
        assert!(matches!(r, Err(GhostError::WrongMemorySpace { what: "e_out", .. })), "{r:?}");
    }
}

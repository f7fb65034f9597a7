//! Second moments of projected gradients accumulated on every backend (MATH.md §4):
//! `projected_fisher` (`Σ ĝ ĝᵀ`), `kfac_covariances` (`Σ (P_i a)(P_i a)ᵀ`, `Σ (P_o b)(P_o b)ᵀ`
//! over tokens, fused with the projection, linear and embedding layers) and
//! `ekfac_eigen_correction` (`Σ (Q_Bᵀ Ĝ Q_A)^{⊙2}`), each against its f64 reference on ragged
//! shapes crossing the kernels' 64-wide tiles, 16-row chunks, 32-token tiles and reduction
//! splits, with masks, `beta ≠ 0`, NaN-poisoned outputs and several schedule seeds; then the
//! preconditioners fitted from GPU-accumulated moments against the CPU pipeline.
//!
//! Tolerances are `γ_L · magnitude` (common/mod.rs) with the magnitude the reference evaluated
//! on absolute values and the depth `L` of each formula:
//! * Fisher: one product, then the sum over `n` rows (per split, then the splits): `n + 8`.
//! * K-FAC covariance: two projections (dots of length `width + 1`) multiplied, then the sum
//!   over the `N·T` tokens: `2·(width + 1) + N·T + 8`.
//! * EK-FAC: `R = Q_Bᵀ Ĝ Q_A` goes through `k_i + k_o` roundings; squaring doubles its relative
//!   error (`|R̂² − R²| ≤ (2γ + γ²)·M²` with `M` the magnitude of `R`, and `2γ_L + γ_L² ≤ γ_2L`),
//!   then the sum over `n`: `2·(k_i + k_o) + n + 8` with magnitude `Σ_n M_n²`.

mod common;

use common::*;
use ghostgrad::projection::cpu::{ekfac_reference, fisher_reference, kfac_cov_reference, CovRows, GradRows};
use ghostgrad::projection::materialize_projection;
use ghostgrad::projection::precondition::{Kfac, RawFisher};
use ghostgrad::{
    Accumulate, Context, DType, Distribution, EmbeddingLayer, GhostError, LayerShape, OutColumns, ProjectLayer, ProjectionKind,
    ProjectionSpec, Tensor, TensorMut, TokenFactors, TrainFactors, Which,
};
use proptest::prelude::*;
use rand::Rng;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 16, ..ProptestConfig::default() }
}

const DISTS: [Distribution; 2] = [Distribution::Gaussian, Distribution::Rademacher];

fn leak<T>(x: T) -> &'static T {
    Box::leak(Box::new(x))
}

/// Output buffer plus a reader of its contents after the operation.
type Out = (TensorMut<'static>, Box<dyn Fn() -> Vec<f32>>);

/// A backend and how to put host data into its memory (leaked: tests are short-lived).
enum Be {
    Cpu(Context),
    #[cfg(feature = "interp")]
    Interp(std::sync::Arc<ghostgrad::runtime::interp::InterpRuntime>, Context),
}

impl Be {
    fn ctx(&self) -> &Context {
        match self {
            Be::Cpu(c) => c,
            #[cfg(feature = "interp")]
            Be::Interp(_, c) => c,
        }
    }
    fn raw<T: bytemuck::Pod>(&self, x: &[T], dt: DType) -> Tensor<'static>
    where
        for<'a> ghostgrad::HostSlice<'a>: From<&'a [T]>,
    {
        match self {
            Be::Cpu(_) => Tensor::from(&leak(x.to_vec())[..]),
            #[cfg(feature = "interp")]
            Be::Interp(rt, _) => {
                let b = rt.upload(x, dt).unwrap();
                // SAFETY: interpreter allocations live as long as the runtime, held by `self`
                // for the whole test.
                Tensor::Device(unsafe { ghostgrad::DeviceSlice::from_raw_parts(b.ptr, b.len, b.dtype) })
            }
        }
    }
    fn f32(&self, x: &[f32]) -> Tensor<'static> {
        self.raw(x, DType::F32)
    }
    fn buf(&self, b: &Buf) -> Tensor<'static> {
        match b {
            Buf::F32(v) => self.raw(v, DType::F32),
            Buf::BF16(v) => self.raw(v, DType::BF16),
            Buf::F16(v) => self.raw(v, DType::F16),
        }
    }
    fn out(&self, init: &[f32]) -> Out {
        match self {
            Be::Cpu(_) => {
                let buf: &'static mut [f32] = Box::leak(init.to_vec().into_boxed_slice());
                let (ptr, len) = (buf.as_ptr(), buf.len());
                // SAFETY: the buffer is leaked; the reader runs after the operation holding
                // the only mutable borrow has returned.
                let read = move || unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
                (TensorMut::from(buf), Box::new(read))
            }
            #[cfg(feature = "interp")]
            Be::Interp(rt, _) => {
                let b = rt.upload(init, DType::F32).unwrap();
                let rt2 = rt.clone();
                // SAFETY: as in `raw`.
                let t = TensorMut::Device(unsafe { ghostgrad::DeviceSliceMut::from_raw_parts(b.ptr, b.len, b.dtype) });
                (t, Box::new(move || rt2.read_f32(&b).unwrap()))
            }
        }
    }
    fn train(&self, d: &TrainData) -> TrainFactors<'static> {
        TrainFactors { a: self.buf(&d.a), b: self.buf(&d.b), n: d.n as u64, t: d.t as u64, mask: d.mask.as_deref().map(|m| self.raw(m, DType::U8)) }
    }
}

#[cfg(feature = "interp")]
fn interp(seed: u64) -> Be {
    use ghostgrad::runtime::interp::InterpRuntime;
    let rt = InterpRuntime::new().expect("interpreter runtime (kernels must be built)");
    rt.set_options(ptx_interp::Options { schedule_seed: seed, ..ptx_interp::Options::default() }).unwrap();
    let rt = std::sync::Arc::new(rt);
    Be::Interp(rt.clone(), Context::with_runtime(rt))
}

/// `want = beta·old + scale·exact` through the library's own accumulation formula.
fn accumulate(old: &[f32], exact: &[f64], acc: Accumulate) -> Vec<f32> {
    let mut want = old.to_vec();
    ghostgrad::cpu::apply_accumulate(&mut want, exact, acc);
    want
}

#[track_caller]
fn assert_symmetric(what: &str, m: &[f32], k: usize) {
    for i in 0..k {
        for j in 0..i {
            assert_eq!(m[i * k + j].to_bits(), m[j * k + i].to_bits(), "{what}: [{i},{j}] {} vs [{j},{i}] {}", m[i * k + j], m[j * k + i]);
        }
    }
}

// ---------------------------------------------------------------- projected Fisher

#[derive(Debug, Clone, Copy)]
struct FisherCase {
    n: usize,
    k: usize,
    offset: usize,
    pad: usize,
    beta: bool,
    seed: u64,
}

fn fisher_strategy() -> impl Strategy<Value = FisherCase> {
    (prop_oneof![1usize..20, 30usize..80], prop_oneof![1usize..20, 60usize..70], 0usize..3, 0usize..3, any::<bool>(), any::<u64>())
        .prop_map(|(n, k, offset, pad, beta, seed)| FisherCase { n, k, offset, pad, beta, seed })
}

fn check_fisher(be: &Be, c: &FisherCase) {
    let mut r = rng(c.seed);
    let ld = c.offset + c.k + c.pad;
    let grads: Vec<f32> = (0..c.n * ld).map(|_| nonzero_gaussian(&mut r)).collect();
    let acc = random_acc(&mut r, c.beta);
    let old = initial_out(&mut r, c.k * c.k, acc);
    let (mut out, read) = be.out(&old);
    let cols = OutColumns { offset: c.offset as u64, row_stride: ld as u64 };
    be.ctx().projected_fisher(&be.f32(&grads), c.n as u64, c.k as u64, cols, &mut out, acc).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let got = read();
    let g = GradRows { grads: &grads, n: c.n, ld, offset: c.offset };
    let exact = fisher_reference(&g, c.k, false);
    let mag = fisher_reference(&g, c.k, true);
    assert_close(&format!("{} fisher {c:?}", be.ctx().describe()), &got, &accumulate(&old, &exact, acc), &mag, &old, acc, Tol::for_depth(c.n + 8));
    if !c.beta {
        assert_symmetric("fisher", &got, c.k);
    }
}

proptest! {
    #![proptest_config(config(32))]
    #[test]
    fn fisher_fast_cpu_matches_reference(c in fisher_strategy()) {
        check_fisher(&Be::Cpu(Context::cpu()), &c);
    }
}

#[test]
fn fisher_reference_backend_is_the_reference() {
    let mut r = rng(4);
    let grads: Vec<f32> = (0..7 * 5).map(|_| nonzero_gaussian(&mut r)).collect();
    let mut out = poisoned(9);
    Context::cpu_reference()
        .projected_fisher(&grads[..].into(), 7, 3, OutColumns { offset: 1, row_stride: 5 }, &mut TensorMut::from(&mut out[..]), Accumulate::overwrite())
        .unwrap();
    let exact = fisher_reference(&GradRows { grads: &grads, n: 7, ld: 5, offset: 1 }, 3, false);
    assert_bitwise_eq("reference backend", &out, &exact.iter().map(|&x| x as f32).collect::<Vec<_>>());
    // And the reference is Σ ĝ ĝᵀ, written out by hand for one entry.
    let f01: f64 = (0..7).map(|n| grads[n * 5 + 1] as f64 * grads[n * 5 + 2] as f64).sum();
    assert_eq!(exact[1], f01);
}

// ---------------------------------------------------------------- K-FAC covariances

#[derive(Debug, Clone, Copy)]
struct CovCase {
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
    embedding: bool,
    dist: Distribution,
    seed: u64,
}

fn cov_strategy() -> impl Strategy<Value = CovCase> {
    (
        1usize..4,
        prop_oneof![1usize..20, 60usize..75],
        (1u64..40, 1u64..37),
        (prop_oneof![1u64..20, 60u64..70], prop_oneof![1u64..18, 62u64..67]),
        0usize..3,
        any::<[bool; 6]>(),
        any::<u64>(),
    )
        .prop_map(|(n, t, (d_in, d_out), (k_i, k_o), dt, [masked, bias, beta, random, embedding, rad], seed)| CovCase {
            n,
            t,
            d_in,
            d_out,
            k_i,
            k_o,
            dtype: FLOAT_DTYPES[dt],
            masked,
            bias: bias && !embedding,
            beta,
            random,
            embedding,
            dist: DISTS[rad as usize],
            seed,
        })
}

fn check_cov(be: &Be, c: &CovCase) {
    let mut r = rng(c.seed);
    let shape = LayerShape::new(c.d_in, c.d_out).with_bias(c.bias);
    let data = TrainData::random(&mut r, shape, c.n, c.t, c.dtype, c.masked);
    let nt = c.n * c.t;
    // Embedding: ids of kept tokens in range (d_in is the vocabulary), masked ids garbage.
    let ids: Vec<i32> = (0..nt)
        .map(|i| if data.mask.as_ref().is_some_and(|m| m[i] == 0) { -7 } else { r.random_range(0..c.d_in as i32) })
        .collect();
    let di = c.d_in + c.bias as u64;
    let (pi, po) = if c.random {
        (materialize_projection(c.seed, 2, Which::In, c.k_i, di, c.dist), materialize_projection(c.seed, 2, Which::Out, c.k_o, c.d_out, c.dist))
    } else {
        ((0..c.k_i * di).map(|_| nonzero_gaussian(&mut r)).collect(), (0..c.k_o * c.d_out).map(|_| nonzero_gaussian(&mut r)).collect())
    };
    let kind = if c.random {
        ProjectionKind::Random { seed: c.seed, layer: 2, dist: c.dist }
    } else {
        ProjectionKind::Dense { p_in: be.f32(&pi), p_out: be.f32(&po) }
    };
    let proj = ProjectionSpec { k_i: c.k_i, k_o: c.k_o, kind };
    let acc = random_acc(&mut r, c.beta);
    let (ki, ko) = (c.k_i as usize, c.k_o as usize);
    let (old_a, old_b) = (initial_out(&mut r, ki * ki, acc), initial_out(&mut r, ko * ko, acc));
    let ((mut ca, read_a), (mut cb, read_b)) = (be.out(&old_a), be.out(&old_b));
    let tf = be.train(&data);
    let res = if c.embedding {
        let tok = TokenFactors { ids: be.raw(&ids, DType::I32), b: tf.b, n: tf.n, t: tf.t, mask: tf.mask };
        be.ctx().kfac_covariances(EmbeddingLayer { shape, train: tok, proj }, &mut ca, &mut cb, acc)
    } else {
        be.ctx().kfac_covariances(ProjectLayer { shape, train: tf, proj }, &mut ca, &mut cb, acc)
    };
    res.unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let (got_a, got_b) = (read_a(), read_b());
    let mask = data.mask.as_deref();
    let x = if c.embedding { CovRows::Ids { ids: ids[..].into(), vocab: c.d_in as usize } } else { CovRows::Dense { x: data.a.host(), width: c.d_in as usize, ones: c.bias } };
    let y = CovRows::Dense { x: data.b.host(), width: c.d_out as usize, ones: false };
    let label = format!("{} kfac {c:?}", be.ctx().describe());
    let in_depth = if c.embedding { 0 } else { 2 * (c.d_in as usize + 1) };
    assert_close(&format!("{label} C_A"), &got_a, &accumulate(&old_a, &kfac_cov_reference(&x, mask, nt, &pi, ki, false), acc), &kfac_cov_reference(&x, mask, nt, &pi, ki, true), &old_a, acc, Tol::for_depth(in_depth + nt + 8));
    assert_close(&format!("{label} C_B"), &got_b, &accumulate(&old_b, &kfac_cov_reference(&y, mask, nt, &po, ko, false), acc), &kfac_cov_reference(&y, mask, nt, &po, ko, true), &old_b, acc, Tol::for_depth(2 * (c.d_out as usize + 1) + nt + 8));
    if !c.beta {
        assert_symmetric("C_A", &got_a, ki);
        assert_symmetric("C_B", &got_b, ko);
    }
}

proptest! {
    #![proptest_config(config(32))]
    #[test]
    fn kfac_covariances_fast_cpu_match_reference(c in cov_strategy()) {
        check_cov(&Be::Cpu(Context::cpu()), &c);
    }
}

#[test]
fn embedding_covariance_reference_equals_the_dense_reference_on_one_hot_rows() {
    // Two independent code paths of the f64 reference (gather vs dot with a one-hot row).
    let mut r = rng(6);
    let (rows, vocab, k) = (40usize, 9usize, 5usize);
    let mask = random_mask(&mut r, rows, 0.3);
    let ids: Vec<i32> = (0..rows).map(|i| if mask[i] == 0 { 99 } else { r.random_range(0..vocab as i32) }).collect();
    let p: Vec<f32> = (0..k * vocab).map(|_| nonzero_gaussian(&mut r)).collect();
    let mut onehot = vec![0f32; rows * vocab];
    for (i, &id) in ids.iter().enumerate() {
        if mask[i] != 0 {
            onehot[i * vocab + id as usize] = 1.0;
        }
    }
    let a = kfac_cov_reference(&CovRows::Ids { ids: ids[..].into(), vocab }, Some(&mask), rows, &p, k, false);
    let b = kfac_cov_reference(&CovRows::Dense { x: ghostgrad::HostSlice::F32(&onehot), width: vocab, ones: false }, Some(&mask), rows, &p, k, false);
    assert_eq!(a, b);
}

#[test]
fn kfac_covariances_match_kfac_covariances_of_precondition_and_the_reference_backend() {
    let c = CovCase { n: 3, t: 11, d_in: 6, d_out: 5, k_i: 4, k_o: 3, dtype: DType::BF16, masked: true, bias: true, beta: false, random: true, embedding: false, dist: DISTS[0], seed: 3 };
    let mut r = rng(3);
    let shape = LayerShape::new(6, 5).with_bias(true);
    let data = TrainData::random(&mut r, shape, c.n, c.t, c.dtype, true);
    let proj = ProjectionSpec { k_i: 4, k_o: 3, kind: ProjectionKind::Random { seed: 3, layer: 2, dist: DISTS[0] } };
    let (want_a, want_b) = Kfac::covariances(&shape, &data.factors(), &proj).unwrap();
    let (mut ca, mut cb) = (poisoned(16), poisoned(9));
    Context::cpu_reference().kfac_covariances(ProjectLayer { shape, train: data.factors(), proj }, &mut TensorMut::from(&mut ca[..]), &mut TensorMut::from(&mut cb[..]), Accumulate::overwrite()).unwrap();
    assert_bitwise_eq("C_A", &ca, &want_a.iter().map(|&x| x as f32).collect::<Vec<_>>());
    assert_bitwise_eq("C_B", &cb, &want_b.iter().map(|&x| x as f32).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- EK-FAC correction

#[derive(Debug, Clone, Copy)]
struct EkCase {
    n: usize,
    k_o: usize,
    k_i: usize,
    offset: usize,
    pad: usize,
    beta: bool,
    seed: u64,
}

fn ek_strategy() -> impl Strategy<Value = EkCase> {
    (1usize..30, prop_oneof![1usize..20, 62usize..68], prop_oneof![1usize..20, 62usize..68], 0usize..3, 0usize..3, any::<bool>(), any::<u64>())
        .prop_map(|(n, k_o, k_i, offset, pad, beta, seed)| EkCase { n, k_o, k_i, offset, pad, beta, seed })
}

fn check_ek(be: &Be, c: &EkCase) {
    let mut r = rng(c.seed);
    let k = c.k_o * c.k_i;
    let ld = c.offset + k + c.pad;
    let grads: Vec<f32> = (0..c.n * ld).map(|_| nonzero_gaussian(&mut r)).collect();
    let q_b: Vec<f32> = (0..c.k_o * c.k_o).map(|_| nonzero_gaussian(&mut r)).collect();
    let q_a: Vec<f32> = (0..c.k_i * c.k_i).map(|_| nonzero_gaussian(&mut r)).collect();
    let acc = random_acc(&mut r, c.beta);
    let old = initial_out(&mut r, k, acc);
    let (mut out, read) = be.out(&old);
    be.ctx()
        .ekfac_eigen_correction(&be.f32(&grads), c.n as u64, c.k_o as u64, c.k_i as u64, OutColumns { offset: c.offset as u64, row_stride: ld as u64 }, &be.f32(&q_b), &be.f32(&q_a), &mut out, acc)
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let g = GradRows { grads: &grads, n: c.n, ld, offset: c.offset };
    let exact = ekfac_reference(&g, c.k_o, c.k_i, &q_b, &q_a, false);
    let mag = ekfac_reference(&g, c.k_o, c.k_i, &q_b, &q_a, true);
    assert_close(&format!("{} ekfac {c:?}", be.ctx().describe()), &read(), &accumulate(&old, &exact, acc), &mag, &old, acc, Tol::for_depth(2 * (c.k_i + c.k_o) + c.n + 8));
}

proptest! {
    #![proptest_config(config(32))]
    #[test]
    fn ekfac_fast_cpu_matches_reference(c in ek_strategy()) {
        check_ek(&Be::Cpu(Context::cpu()), &c);
    }
}

#[test]
fn ekfac_reference_is_the_rotation_squared() {
    // One sample, identity rotations: Λ = Ĝ ⊙ Ĝ; a permutation Q_A permutes the columns.
    let g: Vec<f32> = vec![1.0, -2.0, 3.0, 0.5, 4.0, -1.5];
    let eye2 = [1.0f32, 0.0, 0.0, 1.0];
    let perm3 = [0.0f32, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]; // (ĜQ)[:, i] = Ĝ[:, σ(i)]
    let rows = GradRows { grads: &g, n: 1, ld: 6, offset: 0 };
    assert_eq!(ekfac_reference(&rows, 2, 3, &eye2, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], false), vec![1.0, 4.0, 9.0, 0.25, 16.0, 2.25]);
    assert_eq!(ekfac_reference(&rows, 2, 3, &eye2, &perm3, false), vec![4.0, 9.0, 1.0, 16.0, 2.25, 0.25]);
}

// ---------------------------------------------------------------- validation

#[test]
fn second_moment_operations_validate_their_arguments() {
    let ctx = Context::cpu();
    let g = [1f32; 12];
    let mut out = [0f32; 16];
    let acc = Accumulate::overwrite();
    let e = ctx.projected_fisher(&g[..].into(), 3, 3, OutColumns { offset: 2, row_stride: 4 }, &mut TensorMut::from(&mut out[..9]), acc).unwrap_err();
    assert!(matches!(e, GhostError::InvalidArgument { what: "grad columns", .. }), "{e:?}");
    let e = ctx.projected_fisher(&g[..].into(), 4, 3, OutColumns { offset: 0, row_stride: 4 }, &mut TensorMut::from(&mut out[..9]), acc).unwrap_err();
    assert!(matches!(e, GhostError::LengthMismatch { what: "grads", expected: 16, got: 12 }), "{e:?}");
    let e = ctx.projected_fisher(&g[..].into(), 3, 4, OutColumns { offset: 0, row_stride: 4 }, &mut TensorMut::from(&mut out[..9]), acc).unwrap_err();
    assert!(matches!(e, GhostError::LengthMismatch { what: "out", expected: 16, got: 9 }), "{e:?}");
    let e = ctx.projected_fisher(&g[..].into(), 0, 4, OutColumns { offset: 0, row_stride: 4 }, &mut TensorMut::from(&mut out[..]), acc).unwrap_err();
    assert!(matches!(e, GhostError::ZeroSize { what: "n" }), "{e:?}");
    let e = ctx.projected_fisher(&g[..].into(), 3, 4, OutColumns { offset: 0, row_stride: 4 }, &mut TensorMut::from(&mut out[..]), Accumulate { scale: f32::NAN, beta: 0.0 }).unwrap_err();
    assert!(matches!(e, GhostError::InvalidArgument { what: "scale", .. }), "{e:?}");
    let gi = [1i32; 12];
    let e = ctx.projected_fisher(&gi[..].into(), 3, 4, OutColumns { offset: 0, row_stride: 4 }, &mut TensorMut::from(&mut out[..]), acc).unwrap_err();
    assert!(matches!(e, GhostError::UnsupportedDtype { what: "grads", .. }), "{e:?}");
    // EK-FAC: k_o·k_i = 4 per row, Q lengths.
    let (qb, qa) = ([1f32; 4], [1f32; 4]);
    let mut lam = [0f32; 4];
    let cols = OutColumns { offset: 0, row_stride: 4 };
    let e = ctx.ekfac_eigen_correction(&g[..].into(), 3, 2, 2, cols, &qb[..3].into(), &qa[..].into(), &mut TensorMut::from(&mut lam[..]), acc).unwrap_err();
    assert!(matches!(e, GhostError::LengthMismatch { what: "q_b", expected: 4, got: 3 }), "{e:?}");
    let e = ctx.ekfac_eigen_correction(&g[..].into(), 3, 2, 2, cols, &qb[..].into(), &qa[..].into(), &mut TensorMut::from(&mut lam[..3]), acc).unwrap_err();
    assert!(matches!(e, GhostError::LengthMismatch { what: "out", expected: 4, got: 3 }), "{e:?}");
    let e = ctx.ekfac_eigen_correction(&g[..].into(), 3, 0, 2, cols, &qb[..].into(), &qa[..].into(), &mut TensorMut::from(&mut lam[..]), acc).unwrap_err();
    assert!(matches!(e, GhostError::ZeroSize { what: "k_o" }), "{e:?}");
    // K-FAC covariances: output lengths and the embedding's bias / ids.
    let shape = LayerShape::new(2, 2);
    let (a, b) = ([1f32; 8], [1f32; 8]);
    let tf = TrainFactors { a: a[..].into(), b: b[..].into(), n: 2, t: 2, mask: None };
    let proj = ProjectionSpec { k_i: 2, k_o: 3, kind: ProjectionKind::Random { seed: 0, layer: 0, dist: Distribution::Gaussian } };
    let (mut ca, mut cb) = ([0f32; 4], [0f32; 9]);
    let e = ctx.kfac_covariances(ProjectLayer { shape, train: tf, proj }, &mut TensorMut::from(&mut ca[..]), &mut TensorMut::from(&mut cb[..4]), acc).unwrap_err();
    assert!(matches!(e, GhostError::LengthMismatch { what: "c_b", expected: 9, got: 4 }), "{e:?}");
    let ids = [0i32, 1, 2, 1];
    let tok = TokenFactors { ids: ids[..].into(), b: b[..].into(), n: 2, t: 2, mask: None };
    let e = ctx.kfac_covariances(EmbeddingLayer { shape, train: tok, proj }, &mut TensorMut::from(&mut ca[..]), &mut TensorMut::from(&mut cb[..]), acc).unwrap_err();
    assert!(matches!(e, GhostError::InvalidArgument { what: "ids", .. }), "{e:?}");
}

// ---------------------------------------------------------------- preconditioners from accumulated moments

/// `‖x‖₂`.
fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// `‖(C_B⊗C_A + λI) − (C_B'⊗C_A' + λ'I)‖_F` in f64 (row-major vec: index `o·k_i + i`).
fn kron_diff(ca: &[f64], cb: &[f64], ca2: &[f64], cb2: &[f64], k_i: usize, k_o: usize, dl: f64) -> f64 {
    let k = k_i * k_o;
    let mut s = 0.0;
    for x in 0..k {
        for y in 0..k {
            let (o, i, o2, i2) = (x / k_i, x % k_i, y / k_i, y % k_i);
            let d = cb[o * k_o + o2] * ca[i * k_i + i2] - cb2[o * k_o + o2] * ca2[i * k_i + i2] + if x == y { dl } else { 0.0 };
            s += d * d;
        }
    }
    s.sqrt()
}

/// The influence pipeline with second moments accumulated by `be` in two streamed batches
/// (`beta = 0`, then `beta = 1`) against the CPU f64 pipeline of `precondition.rs`.
fn accumulated_preconditioners_match_the_cpu_pipeline(be: &Be) {
    let shape = LayerShape::new(7, 6).with_bias(true);
    let (n, t, k_i, k_o) = (10usize, 9usize, 3usize, 4usize);
    let k = k_i * k_o;
    let mut r = rng(91);
    let train = TrainData::random(&mut r, shape, n, t, DType::F32, true);
    let test = TrainData::random(&mut r, shape, 3, t, DType::F32, false);
    let proj = ProjectionSpec { k_i: k_i as u64, k_o: k_o as u64, kind: ProjectionKind::Random { seed: 13, layer: 4, dist: Distribution::Gaussian } };
    let cpu = Context::cpu();
    let project = |d: &TrainData| {
        let mut out = poisoned(d.n * k);
        cpu.kron_project(&shape, &d.factors(), &proj, &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: k as u64 }, Accumulate::overwrite()).unwrap();
        out
    };
    let (g_train, g_test) = (project(&train), project(&test));
    // Two batches of samples: [0, 4) and [4, 10).
    let halves = [(0usize, 4usize), (4, 10)];
    let batch = |d: &TrainData, (s, e): (usize, usize)| -> TrainData {
        let sl = |b: &Buf, w: usize| match b {
            Buf::F32(v) => Buf::F32(v[s * t * w..e * t * w].to_vec()),
            _ => unreachable!(),
        };
        TrainData { shape, n: e - s, t, a: sl(&d.a, 7), b: sl(&d.b, 6), mask: d.mask.as_ref().map(|m| m[s * t..e * t].to_vec()) }
    };
    let label = be.ctx().describe();

    // Raw Fisher: Σ ĝĝᵀ streamed, then F = sum / n on the CPU.
    let (mut fs, read_f) = be.out(&poisoned(k * k));
    for (bi, &(s, e)) in halves.iter().enumerate() {
        let rows = be.f32(&g_train[s * k..e * k]);
        be.ctx().projected_fisher(&rows, (e - s) as u64, k as u64, OutColumns { offset: 0, row_stride: k as u64 }, &mut fs, Accumulate { scale: 1.0, beta: bi as f32 }).unwrap();
    }
    let fisher_sum = read_f();
    let f_gpu = RawFisher::from_sum(&fisher_sum, k, n).unwrap();
    let f_cpu = RawFisher::fit(&g_train, n, k).unwrap();
    let (ff, fg) = (f_cpu.fisher(), f_gpu.fisher());
    let fmag: Vec<f64> = fisher_reference(&GradRows { grads: &g_train, n, ld: k, offset: 0 }, k, true).iter().map(|x| x / n as f64).collect();
    let gam = gamma(n + 12);
    for i in 0..k * k {
        assert!((ff[i] - fg[i]).abs() <= gam * fmag[i], "{label}: F[{i}] {} vs {}", fg[i], ff[i]);
    }
    let dh = {
        let dl = f_cpu.damping() - f_gpu.damping();
        (0..k * k).map(|x| ff[x] - fg[x] + if x / k == x % k { dl } else { 0.0 }).map(|d| d * d).sum::<f64>().sqrt()
    };
    let (x_cpu, x_gpu) = (f_cpu.apply_f64(&g_test, 3).unwrap(), f_gpu.apply_f64(&g_test, 3).unwrap());
    check_preconditioned(&format!("{label} raw Fisher"), &x_cpu, &x_gpu, k, dh / f_gpu.damping(), &g_train, n);

    // K-FAC: covariances streamed over the two batches, eigendecompositions on the CPU.
    let (mut ca, read_a) = be.out(&poisoned(k_i * k_i));
    let (mut cb, read_b) = be.out(&poisoned(k_o * k_o));
    for (bi, &h) in halves.iter().enumerate() {
        let b = batch(&train, h);
        be.ctx().kfac_covariances(ProjectLayer { shape, train: be.train(&b), proj }, &mut ca, &mut cb, Accumulate { scale: 1.0, beta: bi as f32 }).unwrap();
    }
    let (ca_gpu, cb_gpu) = (read_a(), read_b());
    let (ca_cpu, cb_cpu) = Kfac::covariances(&shape, &train.factors(), &proj).unwrap();
    let kf_cpu = Kfac::from_covariances(&ca_cpu, k_i, &cb_cpu, k_o).unwrap();
    let kf_gpu = Kfac::from_covariances_f32(&ca_gpu, k_i, &cb_gpu, k_o).unwrap();
    let w = |c: &[f32]| -> Vec<f64> { c.iter().map(|&x| x as f64).collect() };
    let dh = kron_diff(&ca_cpu, &cb_cpu, &w(&ca_gpu), &w(&cb_gpu), k_i, k_o, kf_cpu.damping() - kf_gpu.damping());
    // The accumulated covariances themselves are within their rounding bound.
    let x = CovRows::Dense { x: train.a.host(), width: 7, ones: true };
    let mag_a = kfac_cov_reference(&x, train.mask.as_deref(), n * t, &materialize_projection(13, 4, Which::In, k_i as u64, 8, Distribution::Gaussian), k_i, true);
    let y = CovRows::Dense { x: train.b.host(), width: 6, ones: false };
    let mag_b = kfac_cov_reference(&y, train.mask.as_deref(), n * t, &materialize_projection(13, 4, Which::Out, k_o as u64, 6, Distribution::Gaussian), k_o, true);
    for i in 0..k_i * k_i {
        assert!((ca_gpu[i] as f64 - ca_cpu[i]).abs() <= gamma(2 * 8 + n * t + 10) * mag_a[i], "{label}: C_A[{i}]");
    }
    for i in 0..k_o * k_o {
        assert!((cb_gpu[i] as f64 - cb_cpu[i]).abs() <= gamma(2 * 7 + n * t + 10) * mag_b[i], "{label}: C_B[{i}]");
    }
    let (x_cpu, x_gpu) = (kf_cpu.apply_f64(&g_test, 3).unwrap(), kf_gpu.apply_f64(&g_test, 3).unwrap());
    check_preconditioned(&format!("{label} K-FAC"), &x_cpu, &x_gpu, k, dh / kf_gpu.damping(), &g_train, n);

    // EK-FAC: the correction accumulated by `be` with the CPU preconditioner's eigenvectors.
    let mut ek_cpu = Kfac::from_covariances(&ca_cpu, k_i, &cb_cpu, k_o).unwrap();
    ek_cpu.ekfac_correct(&g_train, n).unwrap();
    let mut ek_gpu = Kfac::from_covariances(&ca_cpu, k_i, &cb_cpu, k_o).unwrap();
    let (q_a, q_b) = ek_gpu.eigenvectors_f32();
    let (mut lam, read_l) = be.out(&poisoned(k));
    for (bi, &(s, e)) in halves.iter().enumerate() {
        let rows = be.f32(&g_train[s * k..e * k]);
        be.ctx()
            .ekfac_eigen_correction(&rows, (e - s) as u64, k_o as u64, k_i as u64, OutColumns { offset: 0, row_stride: k as u64 }, &be.f32(&q_b), &be.f32(&q_a), &mut lam, Accumulate { scale: 1.0, beta: bi as f32 })
            .unwrap();
    }
    ek_gpu.set_ekfac_sum(&read_l(), n).unwrap();
    // The scales agree within the EK-FAC bound (f32 Q adds two roundings per product).
    let mag: Vec<f64> = ekfac_reference(&GradRows { grads: &g_train, n, ld: k, offset: 0 }, k_o, k_i, &q_b, &q_a, true).iter().map(|x| x / n as f64).collect();
    let (s_cpu, s_gpu) = (ek_cpu.eigenbasis_scale().to_vec(), ek_gpu.eigenbasis_scale().to_vec());
    let gam = gamma(2 * (k_i + k_o + 4) + n + 12);
    for i in 0..k {
        assert!((s_cpu[i] - s_gpu[i]).abs() <= gam * mag[i] * (1.0 + 1e-6), "{label}: EK-FAC scale[{i}] {} vs {}", s_gpu[i], s_cpu[i]);
    }
    // Preconditioned: in the shared eigenbasis, r ⊘ (s + λ) vs r ⊘ (s' + λ'); the rotation back
    // is orthogonal, so ‖Δx‖ ≤ ‖r ⊙ (Δs + Δλ) / ((s + λ)(s' + λ'))‖.
    let (x_cpu, x_gpu) = (ek_cpu.apply_f64(&g_test, 3).unwrap(), ek_gpu.apply_f64(&g_test, 3).unwrap());
    for q in 0..3 {
        let rq = ek_cpu.to_eigenbasis(&g_test[q * k..(q + 1) * k]);
        let (l1, l2) = (ek_cpu.damping(), ek_gpu.damping());
        let bound = norm(&(0..k).map(|i| rq[i] * ((s_cpu[i] + l1) - (s_gpu[i] + l2)) / ((s_cpu[i] + l1) * (s_gpu[i] + l2))).collect::<Vec<_>>());
        let d = norm(&(0..k).map(|i| x_cpu[q * k + i] - x_gpu[q * k + i]).collect::<Vec<_>>());
        assert!(d <= bound * (1.0 + 1e-6) + 1e-12 * norm(&x_cpu[q * k..(q + 1) * k]), "{label} EK-FAC test {q}: ‖Δx‖ {d:e} > {bound:e}");
    }
}

/// `‖x − x'‖ ≤ rel·‖x‖` per test row, `rel = ‖ΔH‖_F/λ'` computed from the two fitted matrices
/// (`x' − x = H'⁻¹(H − H')x` and `‖H'⁻¹‖ ≤ 1/λ'`: a rigorous bound, so a preconditioner fitted
/// from anything but the accumulated moments fails it), and the influence scores `<x, ĝ_j>`
/// agree within `‖Δx‖·‖ĝ_j‖`. That the moments themselves are within their rounding bounds is
/// checked separately, elementwise.
fn check_preconditioned(what: &str, x: &[f64], x2: &[f64], k: usize, rel: f64, g_train: &[f32], n: usize) {
    for q in 0..x.len() / k {
        let (a, b) = (&x[q * k..(q + 1) * k], &x2[q * k..(q + 1) * k]);
        let d = norm(&a.iter().zip(b).map(|(u, v)| u - v).collect::<Vec<_>>());
        assert!(d <= rel * norm(a) * (1.0 + 1e-6) + 1e-12 * norm(a), "{what} test {q}: ‖Δx‖ {d:e} > {:e}", rel * norm(a));
        for j in 0..n {
            let g: Vec<f64> = g_train[j * k..(j + 1) * k].iter().map(|&v| v as f64).collect();
            let s1: f64 = a.iter().zip(&g).map(|(u, v)| u * v).sum();
            let s2: f64 = b.iter().zip(&g).map(|(u, v)| u * v).sum();
            assert!((s1 - s2).abs() <= d * norm(&g) * (1.0 + 1e-9) + 1e-12, "{what}: score[{q},{j}] {s2} vs {s1}");
        }
    }
}

#[test]
fn preconditioners_from_cpu_accumulated_moments_match_the_cpu_pipeline() {
    accumulated_preconditioners_match_the_cpu_pipeline(&Be::Cpu(Context::cpu()));
}

#[cfg(feature = "interp")]
mod on_interp {
    use super::*;

    proptest! {
        #![proptest_config(config(12))]
        #[test]
        fn fisher_kernel_matches_reference(c in fisher_strategy()) {
            check_fisher(&interp(c.seed % 3), &c);
        }

        #[test]
        fn kfac_covariance_kernels_match_reference(c in cov_strategy()) {
            check_cov(&interp(c.seed % 3), &c);
        }

    }

    proptest! {
        // Each sample costs two small GEMMs per 64×64 tile on the interpreter: fewer cases.
        #![proptest_config(config(6))]
        #[test]
        fn ekfac_kernel_matches_reference(c in ek_strategy()) {
            check_ek(&interp(c.seed % 3), &c);
        }
    }

    #[test]
    fn second_moment_kernels_on_tile_crossing_shapes() {
        for (i, &(n, k)) in [(1usize, 1usize), (33, 64), (70, 65), (2, 130)].iter().enumerate() {
            check_fisher(&interp(i as u64), &FisherCase { n, k, offset: i % 2, pad: i % 3, beta: i % 2 == 1, seed: i as u64 });
        }
        for (i, &(n, t, d_in, d_out, k_i, k_o)) in [(1usize, 1usize, 1u64, 1u64, 1u64, 1u64), (2, 70, 33, 40, 65, 64), (1, 33, 64, 1, 130, 2)].iter().enumerate() {
            for (j, &dtype) in FLOAT_DTYPES.iter().enumerate() {
                let f = i + j;
                let c = CovCase { n, t, d_in, d_out, k_i, k_o, dtype, masked: f & 1 != 0, bias: f & 2 != 0, beta: f & 4 != 0, random: f % 2 == 0, embedding: false, dist: DISTS[j % 2], seed: (10 * i + j) as u64 };
                check_cov(&interp(f as u64), &c);
                check_cov(&interp(f as u64), &CovCase { embedding: true, bias: false, ..c });
            }
        }
        for (i, &(n, k_o, k_i)) in [(1usize, 1usize, 1usize), (3, 65, 2), (2, 3, 70), (5, 64, 64)].iter().enumerate() {
            check_ek(&interp(i as u64), &EkCase { n, k_o, k_i, offset: i % 3, pad: i % 2, beta: i % 2 == 0, seed: 100 + i as u64 });
        }
    }

    #[test]
    fn second_moment_kernels_are_bitwise_identical_across_schedule_seeds_and_propagate_nan() {
        let (n, k) = (40usize, 9usize);
        let mut r = rng(5);
        let mut grads: Vec<f32> = (0..n * k).map(|_| nonzero_gaussian(&mut r)).collect();
        grads[17 * k + 4] = f32::NAN;
        let q_b: Vec<f32> = (0..9).map(|_| nonzero_gaussian(&mut r)).collect();
        let q_a: Vec<f32> = (0..9).map(|_| nonzero_gaussian(&mut r)).collect();
        let shape = LayerShape::new(11, 5).with_bias(true);
        let data = TrainData::random(&mut r, shape, 3, 45, DType::F16, true);
        let proj = ProjectionSpec { k_i: 5, k_o: 4, kind: ProjectionKind::Random { seed: 2, layer: 9, dist: Distribution::Rademacher } };
        let mut runs = Vec::new();
        for sched in 0..3 {
            let be = interp(sched);
            let cols = OutColumns { offset: 0, row_stride: k as u64 };
            let (mut f, rf) = be.out(&poisoned(k * k));
            be.ctx().projected_fisher(&be.f32(&grads), n as u64, k as u64, cols, &mut f, Accumulate::overwrite()).unwrap();
            let (mut l, rl) = be.out(&poisoned(k));
            be.ctx().ekfac_eigen_correction(&be.f32(&grads), n as u64, 3, 3, cols, &be.f32(&q_b), &be.f32(&q_a), &mut l, Accumulate::overwrite()).unwrap();
            let (mut ca, ra) = be.out(&poisoned(25));
            let (mut cb, rb) = be.out(&poisoned(16));
            be.ctx().kfac_covariances(ProjectLayer { shape, train: be.train(&data), proj }, &mut ca, &mut cb, Accumulate::overwrite()).unwrap();
            runs.push([rf(), rl(), ra(), rb()]);
        }
        for s in 1..3 {
            for (what, i) in [("fisher", 0), ("ekfac", 1), ("C_A", 2), ("C_B", 3)] {
                assert_bitwise_eq(&format!("{what} sched 0 vs {s}"), &runs[0][i], &runs[s][i]);
            }
        }
        // The NaN in ĝ_17[4] poisons row and column 4 of F, and every entry of Λ (each rotated
        // entry mixes all of Ĝ_17); nothing else.
        let f = &runs[0][0];
        for i in 0..k {
            for j in 0..k {
                assert_eq!(f[i * k + j].is_nan(), i == 4 || j == 4, "F[{i},{j}] = {}", f[i * k + j]);
            }
        }
        assert!(runs[0][1].iter().all(|x| x.is_nan()), "{:?}", runs[0][1]);
        assert!(runs[0][2].iter().chain(&runs[0][3]).all(|x| x.is_finite()));
    }

    #[test]
    fn device_out_of_range_ids_poison_the_activation_covariance_only() {
        let be = interp(1);
        let shape = LayerShape::new(6, 4);
        let mut r = rng(8);
        let data = TrainData::random(&mut r, shape, 2, 35, DType::F32, false);
        let mut ids: Vec<i32> = (0..70).map(|_| r.random_range(0..6)).collect();
        ids[40] = 6;
        let proj = ProjectionSpec { k_i: 3, k_o: 2, kind: ProjectionKind::Dense { p_in: be.f32(&[0.5; 18]), p_out: be.f32(&[1.0; 8]) } };
        let tok = TokenFactors { ids: be.raw(&ids, DType::I32), b: be.buf(&data.b), n: 2, t: 35, mask: None };
        let (mut ca, ra) = be.out(&poisoned(9));
        let (mut cb, rb) = be.out(&poisoned(4));
        be.ctx().kfac_covariances(EmbeddingLayer { shape, train: tok, proj }, &mut ca, &mut cb, Accumulate::overwrite()).unwrap();
        assert!(ra().iter().all(|x| x.is_nan()));
        assert!(rb().iter().all(|x| x.is_finite()));
    }

    #[test]
    fn preconditioners_from_interpreter_accumulated_moments_match_the_cpu_pipeline() {
        accumulated_preconditioners_match_the_cpu_pipeline(&interp(2));
    }
}

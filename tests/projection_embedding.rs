//! Kronecker projections of embedding layers (MATH.md §3, "Embedding layers: `A_n P_iᵀ` is a
//! column gather of `P_i` by token id"): `Ĝ_n = Σ_t (P_o b_{n,t})(P_i[:, x_{n,t}])ᵀ`.
//!
//! Every backend (fast CPU; the `kron_project_ids_*` kernels on the PTX interpreter through the
//! production plans) is compared with the f64 reference (`G_n` materialized from one-hot rows)
//! on random ragged shapes, repeated ids, padding masks whose ids are garbage, `beta ≠ 0` and
//! NaN-poisoned outputs. Tolerance: the gather is exact, so a product reaches an entry of `Ĝ_n`
//! through the `d_out` roundings of `P_o b`, one product and the sum over the `T` tokens (split
//! sums included): depth `L = d_out + T + 8`. And the embedding path must equal the dense path
//! fed the one-hot activations bit for bit, on every backend.

mod common;

use common::*;
use ghostgrad::projection::cpu::{kron_project_ids_reference, TokenTrain};
use ghostgrad::projection::materialize_projection;
use ghostgrad::{
    Accumulate, Context, DType, Distribution, EmbeddingLayer, GhostError, LayerShape, OutColumns, ProjectInput, ProjectLayer,
    ProjectionKind, ProjectionSpec, Tensor, TensorMut, TokenFactors, TrainFactors, Which,
};
use proptest::prelude::*;
use rand::Rng;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 16, ..ProptestConfig::default() }
}

const DISTS: [Distribution; 2] = [Distribution::Gaussian, Distribution::Rademacher];

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    t: usize,
    vocab: u64,
    d_out: u64,
    k_i: u64,
    k_o: u64,
    dtype: DType,
    masked: bool,
    beta: bool,
    random: bool,
    /// Ids drawn from the first 3 entries only (many repeats within a sample).
    repeats: bool,
    dist: Distribution,
    seed: u64,
}

impl Case {
    fn shape(&self) -> LayerShape {
        LayerShape::new(self.vocab, self.d_out)
    }
}

/// Ragged shapes crossing the kernel's 32-token tiles and 64-row projection tiles, token counts
/// long enough to be split across CTAs.
fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        prop_oneof![1usize..20, 60usize..75],
        (1u64..90, 1u64..37),
        (prop_oneof![1u64..20, 60u64..70], 1u64..18),
        0usize..3,
        any::<[bool; 5]>(),
        any::<u64>(),
    )
        .prop_map(|(n, t, (vocab, d_out), (k_i, k_o), dt, [masked, beta, random, repeats, rad], seed)| Case {
            n,
            t,
            vocab,
            d_out,
            k_i,
            k_o,
            dtype: FLOAT_DTYPES[dt],
            masked,
            beta,
            random,
            repeats,
            dist: DISTS[rad as usize],
            seed,
        })
}

/// Token-id training data: ids of kept tokens in range; ids of masked tokens are garbage
/// (negative or past the vocabulary) because they must never be read.
#[derive(Debug, Clone)]
struct TokenData {
    ids: Vec<i32>,
    b: Buf,
    mask: Option<Vec<u8>>,
    n: usize,
    t: usize,
    vocab: u64,
    d_out: u64,
}

impl TokenData {
    fn random(r: &mut TestRng, c: &Case) -> Self {
        let nt = c.n * c.t;
        let mask = c.masked.then(|| random_mask(r, nt, 0.3));
        let hi = if c.repeats { c.vocab.min(3) } else { c.vocab } as i32;
        let ids = (0..nt)
            .map(|i| {
                if mask.as_ref().is_some_and(|m| m[i] == 0) {
                    if r.random_bool(0.5) { -1 - r.random_range(0..1000) } else { c.vocab as i32 + r.random_range(0..1000) }
                } else {
                    r.random_range(0..hi)
                }
            })
            .collect();
        let b = Buf::random(r, c.dtype, nt * c.d_out as usize);
        TokenData { ids, b, mask, n: c.n, t: c.t, vocab: c.vocab, d_out: c.d_out }
    }
    fn factors(&self) -> TokenFactors<'_> {
        TokenFactors { ids: self.ids[..].into(), b: self.b.tensor(), n: self.n as u64, t: self.t as u64, mask: self.mask.as_deref().map(Tensor::from) }
    }
    fn reference(&self) -> TokenTrain<'_> {
        TokenTrain { ids: self.ids[..].into(), b: self.b.host(), mask: self.mask.as_deref(), n: self.n, t: self.t, vocab: self.vocab as usize, d_out: self.d_out as usize }
    }
    /// The one-hot activations `A [N, T, V]` in the dtype of `b` (zero rows for masked tokens).
    fn one_hot(&self) -> Buf {
        let v = self.vocab as usize;
        let mut a = vec![0f32; self.n * self.t * v];
        for (r, &id) in self.ids.iter().enumerate() {
            if self.mask.as_ref().map_or(true, |m| m[r] != 0) {
                a[r * v + id as usize] = 1.0;
            }
        }
        Buf::from_f32(self.b.dtype(), &a)
    }
}

fn matrices(c: &Case, r: &mut TestRng) -> (Vec<f32>, Vec<f32>) {
    if c.random {
        (materialize_projection(c.seed, 5, Which::In, c.k_i, c.vocab, c.dist), materialize_projection(c.seed, 5, Which::Out, c.k_o, c.d_out, c.dist))
    } else {
        ((0..c.k_i * c.vocab).map(|_| nonzero_gaussian(r)).collect(), (0..c.k_o * c.d_out).map(|_| nonzero_gaussian(r)).collect())
    }
}

fn spec<'a>(c: &Case, pi: Tensor<'a>, po: Tensor<'a>) -> ProjectionSpec<'a> {
    let kind = if c.random { ProjectionKind::Random { seed: c.seed, layer: 5, dist: c.dist } } else { ProjectionKind::Dense { p_in: pi, p_out: po } };
    ProjectionSpec { k_i: c.k_i, k_o: c.k_o, kind }
}

/// `(case, data, p_in, p_out, old out, columns, acc) -> out` on some backend.
type Run<'a> = dyn Fn(&Case, &TokenData, &[f32], &[f32], &[f32], OutColumns, Accumulate) -> Vec<f32> + 'a;

fn depth(c: &Case) -> usize {
    c.d_out as usize + c.t + 8
}

fn check_case(c: &Case, label: &str, run: &Run<'_>) {
    let mut r = rng(c.seed);
    let data = TokenData::random(&mut r, c);
    let (pi, po) = matrices(c, &mut r);
    let acc = random_acc(&mut r, c.beta);
    let width = (c.k_i * c.k_o) as usize;
    let offset = (c.seed % 3) as usize;
    let ld = offset + width + (c.seed / 3 % 2) as usize;
    let old = initial_out(&mut r, c.n * ld, acc);
    let cols = OutColumns { offset: offset as u64, row_stride: ld as u64 };
    let got = run(c, &data, &pi, &po, &old, cols, acc);
    let (k_i, k_o) = (c.k_i as usize, c.k_o as usize);
    let exact = kron_project_ids_reference(&data.reference(), &pi, &po, k_i, k_o, false);
    let mag = kron_project_ids_reference(&data.reference(), &pi, &po, k_i, k_o, true);
    assert_outside_columns_untouched(&format!("{label} {c:?}"), &got, &old, c.n, ld, offset, width);
    let inside = |v: &[f32]| column_block(v, c.n, ld, offset, width);
    let old_in = inside(&old);
    let mut want = old_in.clone();
    ghostgrad::cpu::apply_accumulate(&mut want, &exact, acc);
    assert_close(&format!("{label} {c:?}"), &inside(&got), &want, &mag, &old_in, acc, Tol::for_depth(depth(c)));
}

fn run_cpu(c: &Case, d: &TokenData, pi: &[f32], po: &[f32], old: &[f32], cols: OutColumns, acc: Accumulate) -> Vec<f32> {
    let mut out = old.to_vec();
    Context::cpu()
        .kron_project_embedding(&c.shape(), &d.factors(), &spec(c, pi.into(), po.into()), &mut TensorMut::from(&mut out[..]), cols, acc)
        .unwrap_or_else(|e| panic!("cpu kron_project_embedding {c:?}: {e}"));
    out
}

proptest! {
    #![proptest_config(config(48))]
    #[test]
    fn embedding_fast_cpu_matches_reference(c in case_strategy()) {
        check_case(&c, "cpu embedding", &run_cpu);
    }
}

#[test]
fn reference_backend_is_the_reference() {
    let c = Case { n: 2, t: 6, vocab: 7, d_out: 3, k_i: 3, k_o: 2, dtype: DType::BF16, masked: true, beta: false, random: true, repeats: true, dist: DISTS[0], seed: 3 };
    let mut r = rng(3);
    let d = TokenData::random(&mut r, &c);
    let (pi, po) = matrices(&c, &mut r);
    let mut out = poisoned(12);
    let dummy = [0f32];
    Context::cpu_reference()
        .kron_project_embedding(&c.shape(), &d.factors(), &spec(&c, dummy[..].into(), dummy[..].into()), &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: 6 }, Accumulate::overwrite())
        .unwrap();
    let want: Vec<f32> = kron_project_ids_reference(&d.reference(), &pi, &po, 3, 2, false).iter().map(|&x| x as f32).collect();
    assert_bitwise_eq("reference backend", &out, &want);
}

#[test]
fn reference_equals_the_dense_reference_on_one_hot_activations() {
    // The two f64 references are written independently (one-hot G_n vs the dense materialize).
    for seed in 0..6u64 {
        let c = Case { n: 3, t: 9, vocab: 11, d_out: 4, k_i: 5, k_o: 3, dtype: FLOAT_DTYPES[seed as usize % 3], masked: seed % 2 == 0, beta: false, random: seed % 3 == 0, repeats: seed % 4 == 1, dist: DISTS[seed as usize % 2], seed };
        let mut r = rng(seed);
        let d = TokenData::random(&mut r, &c);
        let (pi, po) = matrices(&c, &mut r);
        let a = d.one_hot();
        let dense = ghostgrad::cpu::reference::Train { a: a.host(), b: d.b.host(), mask: d.mask.as_deref(), n: c.n, t: c.t, d_in: c.vocab as usize, d_out: c.d_out as usize, has_bias: false };
        let want = ghostgrad::projection::cpu::kron_project_reference(&dense, &pi, &po, 5, 3, false);
        let got = kron_project_ids_reference(&d.reference(), &pi, &po, 5, 3, false);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "seed {seed} [{i}]: {g} vs {w}");
        }
    }
}

/// The embedding path and the dense path on one-hot activations, on `ctx`, must agree bit for
/// bit (`upload` moves host data to the backend's memory).
fn embedding_equals_dense_one_hot(ctx: &Context, upload: &dyn Fn(&Buf) -> Tensor<'static>, upload_ids: &dyn Fn(&[i32]) -> Tensor<'static>, upload_u8: &dyn Fn(&[u8]) -> Tensor<'static>, alloc: &dyn Fn(usize) -> Out) {
    for (i, &(n, t, vocab, d_out, k_i, k_o)) in [(2usize, 37usize, 9u64, 5u64, 70u64, 3u64), (3, 70, 70, 33, 4, 65), (1, 1, 1, 1, 1, 1), (2, 5, 40, 7, 64, 64)].iter().enumerate() {
        let c = Case { n, t, vocab, d_out, k_i, k_o, dtype: FLOAT_DTYPES[i % 3], masked: i != 2, beta: false, random: i % 2 == 0, repeats: i == 1, dist: DISTS[(i / 2) % 2], seed: 40 + i as u64 };
        let mut r = rng(c.seed);
        let d = TokenData::random(&mut r, &c);
        let (pi, po) = matrices(&c, &mut r);
        let w = (k_i * k_o) as usize;
        let cols = OutColumns { offset: 0, row_stride: w as u64 };
        let ids = upload_ids(&d.ids);
        let b = upload(&d.b);
        let mask = d.mask.as_deref().map(upload_u8);
        let (dpi, dpo) = (upload(&Buf::F32(pi.clone())), upload(&Buf::F32(po.clone())));
        let proj = spec(&c, dpi, dpo);
        let (mut o1, read1) = alloc(n * w);
        ctx.kron_project_embedding(&c.shape(), &TokenFactors { ids, b, n: n as u64, t: t as u64, mask }, &proj, &mut o1, cols, Accumulate::overwrite()).unwrap();
        let a = upload(&d.one_hot());
        let (mut o2, read2) = alloc(n * w);
        ctx.kron_project(&c.shape(), &TrainFactors { a, b, n: n as u64, t: t as u64, mask }, &proj, &mut o2, cols, Accumulate::overwrite()).unwrap();
        assert_bitwise_eq(&format!("{} embedding vs dense one-hot {c:?}", ctx.describe()), &read1(), &read2());
    }
}

/// Output buffer plus a reader of its contents after the operation.
type Out = (TensorMut<'static>, Box<dyn Fn() -> Vec<f32>>);

fn leak<T>(x: T) -> &'static T {
    Box::leak(Box::new(x))
}

#[test]
fn fast_cpu_embedding_equals_dense_path_on_one_hot_activations_bitwise() {
    let ctx = Context::cpu();
    embedding_equals_dense_one_hot(
        &ctx,
        &|b| leak(b.clone()).tensor(),
        &|ids| Tensor::from(&leak(ids.to_vec())[..]),
        &|m| Tensor::from(&leak(m.to_vec())[..]),
        &|len| {
            let buf: &'static mut [f32] = Box::leak(vec![f32::NAN; len].into_boxed_slice());
            let ptr = buf.as_ptr();
            // SAFETY: the buffer is leaked (lives forever); the reader runs after the operation
            // that holds the only mutable borrow has returned.
            let read = move || unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
            (TensorMut::from(buf), Box::new(read))
        },
    );
}

#[test]
fn out_of_range_ids_are_a_typed_error_on_the_cpu_and_nothing_is_written() {
    let c = Case { n: 2, t: 4, vocab: 5, d_out: 3, k_i: 2, k_o: 2, dtype: DType::F32, masked: false, beta: true, random: true, repeats: false, dist: DISTS[1], seed: 1 };
    let mut r = rng(1);
    let d = TokenData::random(&mut r, &c);
    let dummy = [0f32];
    for (pos, bad) in [(5usize, 5i32), (0, -1), (7, i32::MAX), (3, i32::MIN)] {
        let mut ids = d.ids.clone();
        ids[pos] = bad;
        let tf = TokenFactors { ids: ids[..].into(), ..d.factors() };
        for ctx in [Context::cpu(), Context::cpu_reference()] {
            let old = random_out(&mut r, 8);
            let mut out = old.clone();
            let e = ctx
                .kron_project_embedding(&c.shape(), &tf, &spec(&c, dummy[..].into(), dummy[..].into()), &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: 4 }, Accumulate { scale: 1.0, beta: 1.0 })
                .unwrap_err();
            let (n, t) = (pos / 4, pos % 4);
            match &e {
                GhostError::InvalidArgument { what: "ids", reason } => {
                    assert!(reason.contains(&format!("ids[{n}, {t}] = {bad}")), "{reason}")
                }
                other => panic!("expected an ids error, got {other:?}"),
            }
            assert_bitwise_eq("untouched after the error", &out, &old);
        }
        // The same id under a zero mask is never read: no error.
        let mut mask = [1u8; 8];
        mask[pos] = 0;
        let tf = TokenFactors { ids: ids[..].into(), mask: Some(mask[..].into()), ..d.factors() };
        let mut out = poisoned(8);
        Context::cpu()
            .kron_project_embedding(&c.shape(), &tf, &spec(&c, dummy[..].into(), dummy[..].into()), &mut TensorMut::from(&mut out[..]), OutColumns { offset: 0, row_stride: 4 }, Accumulate::overwrite())
            .unwrap();
        assert!(out.iter().all(|x| x.is_finite()), "{out:?}");
    }
}

#[test]
fn embedding_layers_are_validated() {
    let (ids, b) = ([0i32; 4], [1f32; 12]);
    let tf = TokenFactors { ids: ids[..].into(), b: b[..].into(), n: 2, t: 2, mask: None };
    let proj = ProjectionSpec { k_i: 2, k_o: 2, kind: ProjectionKind::Random { seed: 0, layer: 0, dist: Distribution::Gaussian } };
    let mut out = [0f32; 8];
    let cols = OutColumns { offset: 0, row_stride: 4 };
    let ctx = Context::cpu();
    let mut run = |shape: LayerShape, tf: &TokenFactors<'_>, proj: &ProjectionSpec<'_>| {
        ctx.kron_project_embedding(&shape, tf, proj, &mut TensorMut::from(&mut out[..]), cols, Accumulate::overwrite()).unwrap_err()
    };
    let e = run(LayerShape::new(5, 3).with_bias(true), &tf, &proj);
    assert!(matches!(e, GhostError::InvalidArgument { what: "has_bias", .. }), "{e:?}");
    let fids = [0f32; 4];
    let e = run(LayerShape::new(5, 3), &TokenFactors { ids: fids[..].into(), ..tf }, &proj);
    assert!(matches!(e, GhostError::UnsupportedDtype { what: "ids", dtype: DType::F32, .. }), "{e:?}");
    let e = run(LayerShape::new(5, 3), &TokenFactors { ids: ids[..3].into(), ..tf }, &proj);
    assert!(matches!(e, GhostError::LengthMismatch { what: "ids", expected: 4, got: 3 }), "{e:?}");
    let e = run(LayerShape::new(5, 3), &TokenFactors { b: b[..11].into(), ..tf }, &proj);
    assert!(matches!(e, GhostError::LengthMismatch { what: "b", expected: 12, got: 11 }), "{e:?}");
    let pi = [0f32; 2 * 4];
    let po = [0f32; 2 * 3];
    let dense = ProjectionSpec { k_i: 2, k_o: 2, kind: ProjectionKind::Dense { p_in: pi[..].into(), p_out: po[..].into() } };
    let e = run(LayerShape::new(5, 3), &tf, &dense);
    assert!(matches!(e, GhostError::LengthMismatch { what: "p_in", expected: 10, got: 8 }), "{e:?}");
    let e = run(LayerShape::new(0, 3), &tf, &proj);
    assert!(matches!(e, GhostError::ZeroSize { what: "d_in" }), "{e:?}");
}

/// A linear layer and an embedding layer in one `kron_project_layers` call: each layer's
/// columns equal its own single-layer call (same backend) bit for bit.
fn mixed_layers_match_single_calls(ctx: &Context, tensors: &dyn Fn(&TokenData, &TrainData) -> (TokenFactors<'static>, TrainFactors<'static>), alloc: &dyn Fn(usize) -> Out) {
    let mut r = rng(77);
    let c = Case { n: 3, t: 35, vocab: 13, d_out: 6, k_i: 3, k_o: 4, dtype: DType::F16, masked: true, beta: false, random: true, repeats: false, dist: DISTS[0], seed: 77 };
    let tokens = TokenData::random(&mut r, &c);
    let lin_shape = LayerShape::new(7, 5).with_bias(true);
    let lin = TrainData::random(&mut r, lin_shape, 3, 35, DType::F16, true);
    let (tf, lf) = tensors(&tokens, &lin);
    let emb = EmbeddingLayer { shape: c.shape(), train: tf, proj: ProjectionSpec { k_i: 3, k_o: 4, kind: ProjectionKind::Random { seed: 1, layer: 0, dist: Distribution::Gaussian } } };
    let linear = ProjectLayer { shape: lin_shape, train: lf, proj: ProjectionSpec { k_i: 2, k_o: 5, kind: ProjectionKind::Random { seed: 1, layer: 1, dist: Distribution::Rademacher } } };
    let (mut out, read) = alloc(3 * 22);
    ctx.kron_project_layers(&[ProjectInput::Linear(linear), ProjectInput::Embedding(emb)], &mut out, Accumulate::overwrite()).unwrap();
    let got = read();
    let (mut o1, r1) = alloc(3 * 10);
    ctx.kron_project(&lin_shape, &lf, &linear.proj, &mut o1, OutColumns { offset: 0, row_stride: 10 }, Accumulate::overwrite()).unwrap();
    let (mut o2, r2) = alloc(3 * 12);
    ctx.kron_project_embedding(&emb.shape, &emb.train, &emb.proj, &mut o2, OutColumns { offset: 0, row_stride: 12 }, Accumulate::overwrite()).unwrap();
    let (l1, l2) = (r1(), r2());
    let want: Vec<f32> = (0..3).flat_map(|n| l1[n * 10..(n + 1) * 10].iter().chain(&l2[n * 12..(n + 1) * 12]).copied().collect::<Vec<_>>()).collect();
    assert_bitwise_eq(&format!("{} mixed layers", ctx.describe()), &got, &want);
    // Embedding layers alone through the generic entry point.
    let (mut o3, r3) = alloc(3 * 12);
    ctx.kron_project_layers(&[emb], &mut o3, Accumulate::overwrite()).unwrap();
    assert_bitwise_eq("embedding-only layers", &r3(), &l2);
}

fn host_alloc(len: usize) -> (TensorMut<'static>, Box<dyn Fn() -> Vec<f32>>) {
    let buf: &'static mut [f32] = Box::leak(vec![f32::NAN; len].into_boxed_slice());
    let ptr = buf.as_ptr();
    // SAFETY: the buffer is leaked (lives forever); the reader runs after the operation holding
    // the mutable borrow has returned.
    let read = move || unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
    (TensorMut::from(buf), Box::new(read))
}

#[test]
fn mixed_linear_and_embedding_layers_on_cpu() {
    mixed_layers_match_single_calls(
        &Context::cpu(),
        &|tok, lin| {
            let (tok, lin) = (leak(tok.clone()), leak(lin.clone()));
            (tok.factors(), lin.factors())
        },
        &host_alloc,
    );
}

#[cfg(feature = "interp")]
mod interp {
    use super::*;
    use common::model_dev::{runtime, up_buf};
    use ghostgrad::runtime::interp::InterpRuntime;
    use std::sync::Arc;

    fn up(rt: &InterpRuntime, b: &Buf) -> Tensor<'static> {
        let buf = up_buf(rt, b);
        // SAFETY: interpreter allocations live as long as the runtime, which outlives the test's
        // use of the view (the runtime is held by the test until it ends).
        Tensor::Device(unsafe { ghostgrad::DeviceSlice::from_raw_parts(buf.ptr, buf.len, buf.dtype) })
    }

    fn up_raw<T: bytemuck::Pod>(rt: &InterpRuntime, x: &[T], dt: DType) -> Tensor<'static> {
        let buf = rt.upload(x, dt).unwrap();
        // SAFETY: as in `up`.
        Tensor::Device(unsafe { ghostgrad::DeviceSlice::from_raw_parts(buf.ptr, buf.len, buf.dtype) })
    }

    fn dev_alloc(rt: &Arc<InterpRuntime>, len: usize) -> (TensorMut<'static>, Box<dyn Fn() -> Vec<f32>>) {
        let buf = rt.alloc_f32(len as u64, f32::NAN).unwrap();
        let rt2 = rt.clone();
        // SAFETY: as in `up`.
        let t = TensorMut::Device(unsafe { ghostgrad::DeviceSliceMut::from_raw_parts(buf.ptr, buf.len, buf.dtype) });
        (t, Box::new(move || rt2.read_f32(&buf).unwrap()))
    }

    fn run_interp(c: &Case, d: &TokenData, pi: &[f32], po: &[f32], old: &[f32], cols: OutColumns, acc: Accumulate) -> Vec<f32> {
        let rt = runtime(c.seed % 4);
        let ctx = Context::with_runtime(rt.clone());
        let ids = up_raw(&rt, &d.ids, DType::I32);
        let b = up(&rt, &d.b);
        let mask = d.mask.as_ref().map(|m| up_raw(&rt, m, DType::U8));
        let (dpi, dpo) = (up_raw(&rt, pi, DType::F32), up_raw(&rt, po, DType::F32));
        let mut out = rt.upload(old, DType::F32).unwrap();
        let tf = TokenFactors { ids, b, n: c.n as u64, t: c.t as u64, mask };
        ctx.kron_project_embedding(&c.shape(), &tf, &spec(c, dpi, dpo), &mut out.view_mut().into(), cols, acc)
            .unwrap_or_else(|e| panic!("interp kron_project_embedding {c:?}: {e}"));
        rt.read_f32(&out).unwrap()
    }

    proptest! {
        #![proptest_config(config(16))]
        #[test]
        fn embedding_kernels_match_reference(c in case_strategy()) {
            check_case(&c, "interp embedding", &run_interp);
        }
    }

    #[test]
    fn embedding_kernels_on_tile_crossing_shapes() {
        let shapes = [(1, 1, 1, 1, 1, 1), (2, 33, 65, 1, 65, 1), (1, 70, 3, 64, 64, 65), (3, 5, 200, 33, 2, 64)];
        for (i, &(n, t, vocab, d_out, k_i, k_o)) in shapes.iter().enumerate() {
            for (j, &dtype) in FLOAT_DTYPES.iter().enumerate() {
                let f = i + j;
                let c = Case { n, t, vocab, d_out, k_i, k_o, dtype, masked: f & 1 != 0, beta: f & 2 != 0, random: f % 2 == 0, repeats: f & 4 != 0, dist: DISTS[j % 2], seed: (10 * i + j) as u64 };
                check_case(&c, "interp embedding (fixed shapes)", &run_interp);
            }
        }
    }

    #[test]
    fn embedding_kernel_equals_dense_kernel_on_one_hot_activations_bitwise() {
        let rt = runtime(1);
        let ctx = Context::with_runtime(rt.clone());
        embedding_equals_dense_one_hot(&ctx, &|b| up(&rt, b), &|ids| up_raw(&rt, ids, DType::I32), &|m| up_raw(&rt, m, DType::U8), &|len| dev_alloc(&rt, len));
    }

    #[test]
    fn mixed_linear_and_embedding_layers_on_the_interpreter() {
        let rt = runtime(2);
        let ctx = Context::with_runtime(rt.clone());
        mixed_layers_match_single_calls(
            &ctx,
            &|tok, lin| {
                let tf = TokenFactors { ids: up_raw(&rt, &tok.ids, DType::I32), b: up(&rt, &tok.b), n: tok.n as u64, t: tok.t as u64, mask: tok.mask.as_ref().map(|m| up_raw(&rt, m, DType::U8)) };
                let lf = TrainFactors { a: up(&rt, &lin.a), b: up(&rt, &lin.b), n: lin.n as u64, t: lin.t as u64, mask: lin.mask.as_ref().map(|m| up_raw(&rt, m, DType::U8)) };
                (tf, lf)
            },
            &|len| dev_alloc(&rt, len),
        );
    }

    #[test]
    fn device_out_of_range_ids_poison_only_their_sample_and_never_read_out_of_bounds() {
        // Dense P_in (so an unchecked id would be an out-of-bounds read, caught by memcheck)
        // and random P_in; bad ids in sample 1 only, a bad id under a zero mask in sample 2.
        let (n, t, vocab, d_out, k_i, k_o) = (3usize, 40usize, 6u64, 5u64, 3u64, 2u64);
        for (random, bad) in [(false, 6i32), (false, -1), (true, i32::MAX), (true, i32::MIN)] {
            let c = Case { n, t, vocab, d_out, k_i, k_o, dtype: DType::BF16, masked: false, beta: false, random, repeats: false, dist: DISTS[0], seed: 9 };
            let mut r = rng(9);
            let mut d = TokenData::random(&mut r, &c);
            let (pi, po) = matrices(&c, &mut r);
            d.ids[t + 17] = bad;
            d.ids[2 * t + 3] = bad;
            let mut mask = vec![1u8; n * t];
            mask[2 * t + 3] = 0;
            d.mask = Some(mask);
            for sched in 0..2 {
                let rt = runtime(sched);
                let ctx = Context::with_runtime(rt.clone());
                let tf = TokenFactors { ids: up_raw(&rt, &d.ids, DType::I32), b: up(&rt, &d.b), n: n as u64, t: t as u64, mask: Some(up_raw(&rt, d.mask.as_ref().unwrap(), DType::U8)) };
                let w = (k_i * k_o) as usize;
                let ld = w + 2;
                let old = random_out(&mut r, n * ld);
                let mut out = rt.upload(&old, DType::F32).unwrap();
                let acc = Accumulate { scale: 0.5, beta: 2.0 };
                ctx.kron_project_embedding(&c.shape(), &tf, &spec(&c, up_raw(&rt, &pi, DType::F32), up_raw(&rt, &po, DType::F32)), &mut out.view_mut().into(), OutColumns { offset: 1, row_stride: ld as u64 }, acc)
                    .unwrap();
                let got = rt.read_f32(&out).unwrap();
                for s in 0..n {
                    for j in 0..ld {
                        let (g, o) = (got[s * ld + j], old[s * ld + j]);
                        if j == 0 || j == ld - 1 {
                            assert_eq!(g.to_bits(), o.to_bits(), "outside column {j} of sample {s} touched");
                        } else if s == 1 {
                            assert!(g.is_nan(), "sample 1 (bad id {bad}) column {j}: {g}");
                        } else {
                            assert!(g.is_finite(), "sample {s} column {j}: {g} (bad id leaked, random {random})");
                        }
                    }
                }
                // Samples 0 and 2 are exact up to rounding: compare with the reference with the
                // bad ids of sample 1 replaced (sample 1 is not compared).
                let mut clean = d.clone();
                clean.ids[t + 17] = 0;
                let exact = kron_project_ids_reference(&clean.reference(), &pi, &po, k_i as usize, k_o as usize, false);
                let mag = kron_project_ids_reference(&clean.reference(), &pi, &po, k_i as usize, k_o as usize, true);
                for s in [0usize, 2] {
                    let g: Vec<f32> = got[s * ld + 1..s * ld + 1 + w].to_vec();
                    let o: Vec<f32> = old[s * ld + 1..s * ld + 1 + w].to_vec();
                    let mut want = o.clone();
                    ghostgrad::cpu::apply_accumulate(&mut want, &exact[s * w..(s + 1) * w], acc);
                    assert_close(&format!("sample {s}"), &g, &want, &mag[s * w..(s + 1) * w], &o, acc, Tol::for_depth(d_out as usize + t + 8));
                }
            }
        }
    }

    #[test]
    fn embedding_kernel_is_bitwise_identical_across_schedule_seeds() {
        let c = Case { n: 2, t: 70, vocab: 50, d_out: 9, k_i: 65, k_o: 3, dtype: DType::F32, masked: true, beta: true, random: true, repeats: true, dist: DISTS[1], seed: 12 };
        let mut r = rng(12);
        let d = TokenData::random(&mut r, &c);
        let (pi, po) = matrices(&c, &mut r);
        let old = random_out(&mut r, 2 * 195);
        let outs: Vec<Vec<f32>> = (0..3)
            .map(|sched| {
                let rt = runtime(sched);
                let ctx = Context::with_runtime(rt.clone());
                let tf = TokenFactors { ids: up_raw(&rt, &d.ids, DType::I32), b: up(&rt, &d.b), n: 2, t: 70, mask: Some(up_raw(&rt, d.mask.as_ref().unwrap(), DType::U8)) };
                let mut out = rt.upload(&old, DType::F32).unwrap();
                ctx.kron_project_embedding(&c.shape(), &tf, &spec(&c, up_raw(&rt, &pi, DType::F32), up_raw(&rt, &po, DType::F32)), &mut out.view_mut().into(), OutColumns { offset: 0, row_stride: 195 }, Accumulate { scale: 1.5, beta: -0.5 })
                    .unwrap();
                rt.read_f32(&out).unwrap()
            })
            .collect();
        assert_bitwise_eq("sched 0 vs 1", &outs[0], &outs[1]);
        assert_bitwise_eq("sched 0 vs 2", &outs[0], &outs[2]);
    }
}

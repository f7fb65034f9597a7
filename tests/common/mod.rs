//! Shared test helpers: seeded random factors in every input dtype, masks, query segments,
//! poisoned or random outputs, the rounding bound of an f32 evaluation, and a comparison that
//! reports every mismatching element.
//!
//! # Tolerance
//! Every result is a sum of products of input elements. Evaluated in f32 in any order, each
//! product reaches the result through at most `L` roundings (a reduction over `k` terms, in any
//! tree, adds at most `k` roundings to each term), so the classic bound (Higham, *Accuracy and
//! Stability of Numerical Algorithms*, §3.1) is
//! `|computed − exact| ≤ γ_L · Σ|products|`, `γ_L = L·u / (1 − L·u)`, `u = 2^-24`.
//! `Σ|products|` is what the reference returns with `abs = true` (the *magnitude*), so the check
//! holds however much the result cancels. [`rounding_depth`] is a bound on `L` valid for every
//! form of the fast CPU path (and the GPU kernels, which reduce over the same lengths):
//! `(d_in + 1) + d_out + T + Q + 8` (one GEMM reduction per factor side, the sums over tokens
//! and query rows, and a handful of roundings for products, lane merges and the final f32
//! conversion). Two more roundings cover `beta·old + scale·result` and the f32 rounding of the
//! reference itself. For the shapes of the property tests (`d_in < 40`, `d_out < 37`, `T < 19`,
//! `Q < 23`) `L ≤ 126`, i.e. `γ ≤ 7.6e-6 < 1e-5`: the tolerance is the derived `γ`, which is
//! tighter than a flat 1e-5. bf16/f16 inputs are read exactly by the reference (it evaluates the
//! same rounded inputs), so the same bound applies to them unchanged.

#![allow(dead_code)]

pub mod case;
pub mod model;
#[cfg(feature = "interp")]
pub mod model_dev;

use ghostgrad::buffer::HostSlice;
use ghostgrad::cpu::reference;
use ghostgrad::{Accumulate, DType, LayerShape, QueryFactors, Segments, Tensor, TrainFactors};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type TestRng = ChaCha8Rng;

pub fn rng(seed: u64) -> TestRng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub const FLOAT_DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// A standard-normal-ish sample pushed away from 0: `sign·(0.1 + |g|)`, so no product vanishes
/// (NaN/Inf propagation tests rely on every product being nonzero).
pub fn nonzero_gaussian(rng: &mut TestRng) -> f32 {
    // Irwin–Hall with 4 uniforms: mean 0, variance 1, light tails.
    let g: f32 = (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0;
    let g = g * 3.0f32.sqrt();
    let s = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    s * (0.1 + g.abs())
}

/// A float input buffer in one of the factor dtypes.
#[derive(Debug, Clone)]
pub enum Buf {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buf {
    pub fn from_f32(dtype: DType, v: &[f32]) -> Buf {
        match dtype {
            DType::F32 => Buf::F32(v.to_vec()),
            DType::BF16 => Buf::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Buf::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            other => panic!("not a factor dtype: {other}"),
        }
    }
    pub fn random(rng: &mut TestRng, dtype: DType, len: usize) -> Buf {
        let v: Vec<f32> = (0..len).map(|_| nonzero_gaussian(rng)).collect();
        Buf::from_f32(dtype, &v)
    }
    pub fn dtype(&self) -> DType {
        self.host().dtype()
    }
    pub fn len(&self) -> usize {
        self.host().len()
    }
    pub fn host(&self) -> HostSlice<'_> {
        match self {
            Buf::F32(v) => HostSlice::F32(v),
            Buf::BF16(v) => HostSlice::BF16(v),
            Buf::F16(v) => HostSlice::F16(v),
        }
    }
    pub fn tensor(&self) -> Tensor<'_> {
        Tensor::Host(self.host())
    }
    /// Sets element `i` (NaN and ±Inf are representable in every factor dtype).
    pub fn set(&mut self, i: usize, x: f32) {
        match self {
            Buf::F32(v) => v[i] = x,
            Buf::BF16(v) => v[i] = bf16::from_f32(x),
            Buf::F16(v) => v[i] = f16::from_f32(x),
        }
    }
    pub fn get(&self, i: usize) -> f64 {
        self.host().get_f64(i)
    }
}

/// A random 0/1 mask with about `p_zero` zeros (at least one kept entry is not guaranteed).
pub fn random_mask(rng: &mut TestRng, len: usize, p_zero: f64) -> Vec<u8> {
    (0..len).map(|_| if rng.random_bool(p_zero) { 0 } else { 1 + rng.random_range(0..255u8) % 254 }).collect()
}

/// Training factors of one layer.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub shape: LayerShape,
    pub n: usize,
    pub t: usize,
    pub a: Buf,
    pub b: Buf,
    pub mask: Option<Vec<u8>>,
}

impl TrainData {
    pub fn random(rng: &mut TestRng, shape: LayerShape, n: usize, t: usize, dtype: DType, masked: bool) -> Self {
        let a = Buf::random(rng, dtype, n * t * shape.d_in as usize);
        let b = Buf::random(rng, dtype, n * t * shape.d_out as usize);
        let mask = masked.then(|| random_mask(rng, n * t, 0.3));
        TrainData { shape, n, t, a, b, mask }
    }
    pub fn factors(&self) -> TrainFactors<'_> {
        TrainFactors {
            a: self.a.tensor(),
            b: self.b.tensor(),
            n: self.n as u64,
            t: self.t as u64,
            mask: self.mask.as_deref().map(Tensor::from),
        }
    }
    /// The reference's view of the same data.
    pub fn reference(&self) -> reference::Train<'_> {
        reference::Train {
            a: self.a.host(),
            b: self.b.host(),
            mask: self.mask.as_deref(),
            n: self.n,
            t: self.t,
            d_in: self.shape.d_in as usize,
            d_out: self.shape.d_out as usize,
            has_bias: self.shape.has_bias,
        }
    }
    /// Rows `[sample m]` as a query side with one segment (for identity checks).
    pub fn sample_as_query(&self, m: usize) -> QueryData {
        let (di, dout, t) = (self.shape.d_in as usize, self.shape.d_out as usize, self.t);
        let slice = |buf: &Buf, w: usize| match buf {
            Buf::F32(v) => Buf::F32(v[m * t * w..(m + 1) * t * w].to_vec()),
            Buf::BF16(v) => Buf::BF16(v[m * t * w..(m + 1) * t * w].to_vec()),
            Buf::F16(v) => Buf::F16(v[m * t * w..(m + 1) * t * w].to_vec()),
        };
        QueryData {
            shape: self.shape,
            q: t,
            aq: slice(&self.a, di),
            bq: slice(&self.b, dout),
            mask: self.mask.as_ref().map(|mk| mk[m * t..(m + 1) * t].to_vec()),
            seg: SegSpec::Single,
        }
    }
}

/// How query rows are grouped.
#[derive(Debug, Clone, PartialEq)]
pub enum SegSpec {
    Single,
    Uniform(u64),
    Offsets(Vec<i32>),
}

impl SegSpec {
    /// A random segmentation of `q` rows: Single, Uniform(1..=q), or V+1 nondecreasing offsets in
    /// `[0, q]` (possibly empty segments, possibly not covering every row).
    pub fn random(rng: &mut TestRng, q: usize) -> SegSpec {
        match rng.random_range(0..3) {
            0 => SegSpec::Single,
            1 => SegSpec::Uniform(rng.random_range(1..=q as u64)),
            _ => {
                let v = rng.random_range(1..=q.min(6));
                let mut off: Vec<i32> = (0..=v).map(|_| rng.random_range(0..=q as i32)).collect();
                off.sort_unstable();
                if rng.random_bool(0.5) {
                    off[0] = 0;
                    off[v] = q as i32;
                }
                SegSpec::Offsets(off)
            }
        }
    }
    pub fn segments(&self) -> Segments<'_> {
        match self {
            SegSpec::Single => Segments::Single,
            SegSpec::Uniform(l) => Segments::Uniform(*l),
            SegSpec::Offsets(o) => Segments::Offsets(Tensor::from(o.as_slice())),
        }
    }
    /// Row ranges of every segment.
    pub fn ranges(&self, q: usize) -> Vec<(usize, usize)> {
        match self {
            SegSpec::Single => vec![(0, q)],
            SegSpec::Uniform(l) => {
                let l = *l as usize;
                (0..q.div_ceil(l)).map(|i| (i * l, ((i + 1) * l).min(q))).collect()
            }
            SegSpec::Offsets(o) => o.windows(2).map(|w| (w[0] as usize, w[1] as usize)).collect(),
        }
    }
    pub fn count(&self, q: usize) -> usize {
        self.ranges(q).len()
    }
}

/// Query factors of one layer.
#[derive(Debug, Clone)]
pub struct QueryData {
    pub shape: LayerShape,
    pub q: usize,
    pub aq: Buf,
    pub bq: Buf,
    pub mask: Option<Vec<u8>>,
    pub seg: SegSpec,
}

impl QueryData {
    pub fn random(rng: &mut TestRng, shape: LayerShape, q: usize, dtype: DType, masked: bool, seg: SegSpec) -> Self {
        let aq = Buf::random(rng, dtype, q * shape.d_in as usize);
        let bq = Buf::random(rng, dtype, q * shape.d_out as usize);
        let mask = masked.then(|| random_mask(rng, q, 0.3));
        QueryData { shape, q, aq, bq, mask, seg }
    }
    pub fn factors(&self) -> QueryFactors<'_> {
        QueryFactors {
            aq: self.aq.tensor(),
            bq: self.bq.tensor(),
            q: self.q as u64,
            segments: self.seg.segments(),
            mask: self.mask.as_deref().map(Tensor::from),
        }
    }
    pub fn v(&self) -> usize {
        self.seg.count(self.q)
    }
    pub fn reference(&self) -> reference::Query<'_> {
        reference::Query {
            aq: self.aq.host(),
            bq: self.bq.host(),
            mask: self.mask.as_deref(),
            ranges: self.seg.ranges(self.q),
        }
    }
}

/// An output for `beta = 0`: all NaN, so any read of it would show.
pub fn poisoned(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

/// An output for `beta != 0`: random finite values.
pub fn random_out(rng: &mut TestRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| nonzero_gaussian(rng) * 4.0).collect()
}

/// A random accumulation: `beta = 0` (with a poisoned output) or a random nonzero beta.
pub fn random_acc(rng: &mut TestRng, beta_nonzero: bool) -> Accumulate {
    let scale = nonzero_gaussian(rng);
    let beta = if beta_nonzero { nonzero_gaussian(rng) } else { 0.0 };
    Accumulate { scale, beta }
}

/// The output buffer matching `acc`: poisoned when `beta == 0`, random otherwise.
pub fn initial_out(rng: &mut TestRng, len: usize, acc: Accumulate) -> Vec<f32> {
    if acc.beta == 0.0 {
        poisoned(len)
    } else {
        random_out(rng, len)
    }
}

/// `γ_L = L·2^-24 / (1 − L·2^-24)`.
pub fn gamma(depth: usize) -> f64 {
    let lu = depth as f64 * f32::EPSILON as f64 / 2.0;
    assert!(lu < 0.5, "rounding depth {depth} too large for a meaningful bound");
    lu / (1.0 - lu)
}

/// A bound on the number of f32 roundings any product of `<G_n, Gq_v>` goes through (see the
/// module doc): `(d_in + 1) + d_out + T + Q + 8`.
pub fn rounding_depth(shape: &LayerShape, t: usize, q: usize) -> usize {
    shape.d_in as usize + 1 + shape.d_out as usize + t + q + 8
}

/// Tolerance of a comparison: `|x − ref| ≤ rel·(magnitude·|scale| + |beta·old|) + tiny`.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub rel: f64,
    pub tiny: f64,
}

impl Tol {
    /// `γ_{L+2}`: `L` roundings in the evaluation, one in `beta·old + scale·r`, one in the f32
    /// rounding of the reference.
    pub fn for_depth(depth: usize) -> Tol {
        Tol { rel: gamma(depth + 2), tiny: 1e-30 }
    }
}

/// Compares `got` with `want` (the reference, same accumulation) elementwise and returns every
/// mismatch as a line `what[i]: got .. want .. |err| .. > bound ..`. Non-finite values must agree
/// exactly in kind (NaN with NaN, +Inf with +Inf).
#[allow(clippy::too_many_arguments)]
pub fn compare(
    what: &str,
    got: &[f32],
    want: &[f32],
    magnitude: &[f64],
    old: &[f32],
    acc: Accumulate,
    tol: Tol,
) -> Result<(), String> {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(got.len(), magnitude.len(), "{what}: magnitude length");
    let mut bad = Vec::new();
    for i in 0..got.len() {
        let (x, r) = (got[i] as f64, want[i] as f64);
        let prev = if acc.beta == 0.0 { 0.0 } else { (acc.beta as f64 * old[i] as f64).abs() };
        let bound = tol.rel * (magnitude[i] * (acc.scale as f64).abs() + prev) + tol.tiny;
        let ok = if x.is_finite() && r.is_finite() {
            (x - r).abs() <= bound
        } else {
            (x.is_nan() && r.is_nan()) || x == r
        };
        if !ok {
            bad.push(format!(
                "  {what}[{i}]: got {x:e}, reference {r:e}, |err| {:e} > bound {bound:e} (magnitude {:e})",
                (x - r).abs(),
                magnitude[i]
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {} of {} elements differ (acc {acc:?}, tol {tol:?}):\n{}",
            bad.len(),
            got.len(),
            bad.join("\n")
        ))
    }
}

/// [`compare`], panicking with the full report.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], magnitude: &[f64], old: &[f32], acc: Accumulate, tol: Tol) {
    if let Err(msg) = compare(what, got, want, magnitude, old, acc, tol) {
        panic!("{msg}");
    }
}

/// Asserts two runs are bitwise identical, listing every differing index.
#[track_caller]
pub fn assert_bitwise_eq(what: &str, x: &[f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "{what}: length");
    let bad: Vec<String> = (0..x.len())
        .filter(|&i| x[i].to_bits() != y[i].to_bits())
        .map(|i| format!("  {what}[{i}]: {:e} ({:#010x}) vs {:e} ({:#010x})", x[i], x[i].to_bits(), y[i], y[i].to_bits()))
        .collect();
    assert!(bad.is_empty(), "{what}: {} of {} elements differ bitwise:\n{}", bad.len(), x.len(), bad.join("\n"));
}

/// Columns `offset .. offset + width` of each of the `rows` rows of a row-major `[rows, ld]`
/// buffer, concatenated (one layer's block of a multi-layer output).
pub fn column_block(v: &[f32], rows: usize, ld: usize, offset: usize, width: usize) -> Vec<f32> {
    (0..rows).flat_map(|n| v[n * ld + offset..n * ld + offset + width].to_vec()).collect()
}

/// Asserts that a row-major `[rows, ld]` output still holds the old bits (NaN poison included)
/// in every column outside `offset .. offset + width`, naming the first touched row and column.
#[track_caller]
pub fn assert_outside_columns_untouched(what: &str, got: &[f32], old: &[f32], rows: usize, ld: usize, offset: usize, width: usize) {
    for n in 0..rows {
        for j in (0..ld).filter(|&j| j < offset || j >= offset + width) {
            assert_eq!(got[n * ld + j].to_bits(), old[n * ld + j].to_bits(), "{what}: column {j} of row {n} was touched");
        }
    }
}

//! The counter-based generator of random projection entries, bit-identical on every backend
//! (this file and `gg_proj_random` in kernels/projection.cu implement the same integer formula).
//!
//! Entry `(row, col)` of matrix `which` of layer `layer` under `seed`:
//! ```text
//! key  = mix64(seed ^ mix64(((layer << 1 | which) + 1) · φ))          (host, once per matrix)
//! bits = mix64(key + ((row << 32 | col) + 1) · φ)                     (per entry, wrapping u64)
//! mix64(z): z = (z ^ z>>30)·0xBF58476D1CE4E5B9; z = (z ^ z>>27)·0x94D049BB133111EB; z ^ z>>31
//! φ = 0x9E3779B97F4A7C15
//! ```
//! (`mix64` is the SplitMix64 output function: the entry is the SplitMix64 stream with state
//! `key` read at position `row·2^32 + col`, so there is no sequential state to carry.)
//!
//! Values, with `scale` computed once on the host (f64 → f32) and passed to the kernels:
//! * [`Distribution::Rademacher`]: `±scale`, sign = bit 63; `scale = f32(1/√k)`.
//!   Variance `scale²` (= 1/k up to the f32 rounding of `scale`, relative error < 2^-23).
//! * [`Distribution::Gaussian`]: the standardized Irwin–Hall sum of four 16-bit uniforms,
//!   `x = Σ_{j<4} (bits >> 16j & 0xFFFF) − 131070` (an integer in [−131070, 131070], exactly
//!   representable), entry `= f32(x) · scale` (one IEEE round-to-nearest multiply),
//!   `scale = f32(√(3 / (k·(M² − 1))))`, `M = 2^16`. Each uniform on {0..M−1} has variance
//!   `(M²−1)/12`, so `Var x = (M²−1)/3` exactly and `Var(entry) = scale²·(M²−1)/3 = 1/k` up to
//!   the rounding of `scale`; mean exactly 0 (symmetric); kurtosis 2.7 instead of 3. No
//!   transcendental function is evaluated, so there is nothing that could differ between a
//!   libm and the GPU's approximations.
//!
//! `E[PᵀP] = I` for both, which is all the Johnson–Lindenstrauss argument of MATH.md §3 needs.

/// Distribution of the entries of a random projection matrix (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Standardized Irwin–Hall(4) on 16-bit uniforms: mean 0, variance 1/k (bit-exact recipe).
    Gaussian,
    /// `±1/√k` with probability ½ each.
    Rademacher,
}

/// Which of a layer's two projection matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    /// `P_i ∈ R^{k_i × (d_in + bias)}`, applied to activations.
    In = 0,
    /// `P_o ∈ R^{k_o × d_out}`, applied to output gradients.
    Out = 1,
}

pub(crate) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The per-matrix key passed to the kernels.
pub fn stream_key(seed: u64, layer: u32, which: Which) -> u64 {
    let stream = ((layer as u64) << 1) | which as u64;
    mix64(seed ^ mix64(stream.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The f32 scale of a `k`-row matrix (see the module doc for the exact variance).
pub fn entry_scale(k: u64, dist: Distribution) -> f32 {
    let k = k as f64;
    match dist {
        Distribution::Rademacher => (1.0 / k.sqrt()) as f32,
        Distribution::Gaussian => {
            let m2 = 65536.0f64 * 65536.0;
            (3.0 / (k * (m2 - 1.0))).sqrt() as f32
        }
    }
}

/// Entry `(row, col)` of the matrix with `key`, `scale` (bit-identical to the kernels).
#[inline]
pub fn entry(key: u64, row: u32, col: u32, dist: Distribution, scale: f32) -> f32 {
    let ctr = (((row as u64) << 32) | col as u64).wrapping_add(1);
    let bits = mix64(key.wrapping_add(ctr.wrapping_mul(GOLDEN)));
    match dist {
        Distribution::Rademacher => {
            if bits >> 63 != 0 {
                -scale
            } else {
                scale
            }
        }
        Distribution::Gaussian => {
            let s = (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48);
            let x = s as i32 - 131_070;
            x as f32 * scale
        }
    }
}

/// The full `k × d` matrix `which` of `layer` under `seed`, row-major (for inspection and the
/// CPU backends; GPU kernels generate entries on the fly). For `Which::In` of a layer with a
/// bias, pass `d = d_in + 1`: the last column projects the bias. Panics if the host cannot hold
/// the matrix; the library itself uses [`try_materialize_projection`].
pub fn materialize_projection(seed: u64, layer: u32, which: Which, k: u64, d: u64, dist: Distribution) -> Vec<f32> {
    try_materialize_projection(seed, layer, which, k, d, dist).unwrap_or_else(|e| panic!("{e}"))
}

/// [`materialize_projection`], with [`GhostError::OutOfMemory`](crate::GhostError::OutOfMemory)
/// naming the matrix and its size when the host cannot hold it.
pub fn try_materialize_projection(seed: u64, layer: u32, which: Which, k: u64, d: u64, dist: Distribution) -> crate::Result<Vec<f32>> {
    let what = format!("the {which:?} projection matrix of layer {layer} ([{k}, {d}] f32)");
    let len = crate::alloc::host_len(&what, k.saturating_mul(d), 4)?;
    let mut p = crate::alloc::try_vec(&what, len, 0.0f32)?;
    fill_projection(seed, layer, which, k, d, dist, &mut p);
    Ok(p)
}

/// Writes the matrix of [`materialize_projection`] into `out` (`k·d` long).
pub(crate) fn fill_projection(seed: u64, layer: u32, which: Which, k: u64, d: u64, dist: Distribution, out: &mut [f32]) {
    assert_eq!(out.len() as u64, k * d, "out is [k, d]");
    if d == 0 {
        return;
    }
    let key = stream_key(seed, layer, which);
    let scale = entry_scale(k, dist);
    for (r, row) in out.chunks_exact_mut(d as usize).enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            *x = entry(key, r as u32, c as u32, dist, scale);
        }
    }
}

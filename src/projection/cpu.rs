//! CPU backends of the projection family: the f64 reference (materialize `G_n`, then
//! `P_o G_n P_iᵀ`; plain loops, what the tests trust) and the fast f32 path (gemm crate:
//! `A_n P_iᵀ`, `B_n P_oᵀ`, then `(B_n P_oᵀ)ᵀ (A_n P_iᵀ)`; one rayon task per sample, so results
//! are bitwise identical whatever the thread count).
//!
//! Rounding of the fast path: each entry of `Ĝ_n` is a sum over kept tokens of products of two
//! projections, each a dot of length `d_in + bias` or `d_out`: every elementary product reaches
//! the result through at most `(d_in + 1) + d_out + T + O(1)` f32 roundings, hence
//! `|x − exact| ≤ γ_L · magnitude` with the magnitude returned by the reference with `abs`.

use rayon::prelude::*;

use crate::buffer::{HostIds, HostSlice};
use crate::cpu::fast::{gather, matmul};
use crate::cpu::reference::{materialize, Train};
use crate::ghost_dot::Accumulate;

/// `Ĝ_n` for every sample, row-major `[N, k_o·k_i]`, in f64. `p_in [k_i, d_in + bias]`,
/// `p_out [k_o, d_out]`. With `abs`, the same formula on absolute values (the magnitude bound).
pub fn kron_project_reference(train: &Train<'_>, p_in: &[f32], p_out: &[f32], k_i: usize, k_o: usize, abs: bool) -> Vec<f64> {
    let di = train.d_in + train.has_bias as usize;
    let d_out = train.d_out;
    assert_eq!(p_in.len(), k_i * di, "p_in is [k_i, d_in + bias]");
    assert_eq!(p_out.len(), k_o * d_out, "p_out is [k_o, d_out]");
    let mut res = Vec::with_capacity(train.n * k_o * k_i);
    for n in 0..train.n {
        let g = materialize(&train.a, &train.b, train.mask, n * train.t..(n + 1) * train.t, train.d_in, d_out, train.has_bias, None, abs);
        sandwich(&g, di, d_out, p_in, p_out, k_i, k_o, abs, &mut res);
    }
    res
}

/// Appends `P_o G P_iᵀ` (row-major `[k_o, k_i]`, f64) of one materialized `G [d_out, di]`;
/// with `abs`, of `|P_o| G |P_i|ᵀ` (`G` is then already the magnitude).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sandwich(g: &[f64], di: usize, d_out: usize, p_in: &[f32], p_out: &[f32], k_i: usize, k_o: usize, abs: bool, res: &mut Vec<f64>) {
    let f = |x: f32| if abs { (x as f64).abs() } else { x as f64 };
    // tmp = G P_iᵀ  [d_out, k_i]
    let mut tmp = vec![0.0f64; d_out * k_i];
    for o in 0..d_out {
        for i in 0..k_i {
            tmp[o * k_i + i] = (0..di).map(|c| g[o * di + c] * f(p_in[i * di + c])).sum();
        }
    }
    for o in 0..k_o {
        for i in 0..k_i {
            res.push((0..d_out).map(|c| f(p_out[o * d_out + c]) * tmp[c * k_i + i]).sum());
        }
    }
}

/// Host token-id factors of an embedding layer (ids already range-checked for kept tokens).
pub struct TokenTrain<'a> {
    /// `[N, T]` (i32 or i64), in `[0, vocab)` wherever the mask keeps the token (masked
    /// tokens' ids are never read).
    pub ids: HostIds<'a>,
    /// `[N, T, d_out]`.
    pub b: HostSlice<'a>,
    pub mask: Option<&'a [u8]>,
    pub n: usize,
    pub t: usize,
    pub vocab: usize,
    pub d_out: usize,
}

/// `Ĝ_n` of an embedding layer for every sample, f64, `[N, k_o·k_i]`: the definition with
/// one-hot activations, `G_n = Σ_t b_{n,t} e_{x_{n,t}}ᵀ` materialized (`[d_out, V]`), then
/// `P_o G_n P_iᵀ`, `p_in [k_i, V]`. With `abs`, the magnitude (absolute values throughout).
pub fn kron_project_ids_reference(train: &TokenTrain<'_>, p_in: &[f32], p_out: &[f32], k_i: usize, k_o: usize, abs: bool) -> Vec<f64> {
    let (v, d_out) = (train.vocab, train.d_out);
    assert_eq!(p_in.len(), k_i * v, "p_in is [k_i, V]");
    assert_eq!(p_out.len(), k_o * d_out, "p_out is [k_o, d_out]");
    let mut res = Vec::with_capacity(train.n * k_o * k_i);
    for n in 0..train.n {
        let mut g = vec![0.0f64; d_out * v];
        for r in n * train.t..(n + 1) * train.t {
            if train.mask.is_some_and(|m| m[r] == 0) {
                continue;
            }
            let x = usize::try_from(train.ids.get(r)).ok().filter(|&x| x < v).expect("kept ids are validated");
            for o in 0..d_out {
                let b = train.b.get_f64(r * d_out + o);
                g[o * v + x] += if abs { b.abs() } else { b };
            }
        }
        sandwich(&g, v, d_out, p_in, p_out, k_i, k_o, abs, &mut res);
    }
    res
}

/// Fast f32 `Ĝ_n` of an embedding layer: the kept rows of `P_iᵀ` gathered by id (`[T', k_i]`,
/// exactly `A_n P_iᵀ` for one-hot `A_n`), `B_n P_oᵀ` by GEMM, then the same
/// `(B_n P_oᵀ)ᵀ (A_n P_iᵀ)` GEMM as [`kron_project_fast`]: bit for bit its result on one-hot
/// activations (finite `P`). One rayon task per sample.
pub fn kron_project_ids_fast(train: &TokenTrain<'_>, p_in: &[f32], p_out: &[f32], k_i: usize, k_o: usize) -> Vec<f64> {
    let (v, d_out, t) = (train.vocab, train.d_out, train.t);
    let width = k_o * k_i;
    let mut res = vec![0.0f64; train.n * width];
    res.par_chunks_mut(width).enumerate().for_each(|(n, dst)| {
        let rows = n * t..(n + 1) * t;
        let mut sb = Vec::new();
        let (b, tb) = gather(train.b, train.mask, rows.clone(), d_out, false, None, &mut sb);
        let mut ap = Vec::with_capacity(tb * k_i);
        for r in rows.filter(|&r| train.mask.map_or(true, |m| m[r] != 0)) {
            let x = train.ids.get(r) as usize;
            debug_assert!(x < v);
            ap.extend((0..k_i).map(|i| p_in[i * v + x]));
        }
        debug_assert_eq!(ap.len(), tb * k_i);
        let mut bp = vec![0.0f32; tb * k_o];
        matmul(tb, k_o, d_out, &mut bp, k_o, b, d_out, 1, p_out, 1, d_out);
        let mut g = vec![0.0f32; width];
        matmul(k_o, k_i, tb, &mut g, k_i, &bp, 1, k_o, &ap, k_i, 1);
        dst.iter_mut().zip(&g).for_each(|(d, &x)| *d = x as f64);
    });
    res
}

/// Writes `result [N, width]` into columns `offset..offset+width` of rows of stride `ld`.
pub(crate) fn write_columns(out: &mut [f32], result: &[f64], width: usize, ld: usize, offset: usize, acc: Accumulate) {
    for (n, row) in result.chunks_exact(width).enumerate() {
        let dst = &mut out[n * ld + offset..n * ld + offset + width];
        for (o, &r) in dst.iter_mut().zip(row) {
            let prev = if acc.beta == 0.0 { 0.0 } else { acc.beta as f64 * *o as f64 };
            *o = (prev + acc.scale as f64 * r) as f32;
        }
    }
}

/// Fast f32 `Ĝ_n` for every sample (`[N, k_o·k_i]`, f32 results widened to f64 for the caller's
/// accumulation).
pub fn kron_project_fast(train: &Train<'_>, p_in: &[f32], p_out: &[f32], k_i: usize, k_o: usize) -> Vec<f64> {
    let di = train.d_in + train.has_bias as usize;
    let (d_in, d_out, t) = (train.d_in, train.d_out, train.t);
    let width = k_o * k_i;
    let mut res = vec![0.0f64; train.n * width];
    res.par_chunks_mut(width).enumerate().for_each(|(n, dst)| {
        let rows = n * t..(n + 1) * t;
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        let (a, ta) = gather(train.a, train.mask, rows.clone(), d_in, train.has_bias, None, &mut sa);
        let (b, tb) = gather(train.b, train.mask, rows, d_out, false, None, &mut sb);
        debug_assert_eq!(ta, tb);
        let mut ap = vec![0.0f32; ta * k_i];
        let mut bp = vec![0.0f32; ta * k_o];
        // A P_iᵀ: lhs[r, c] = a[r·di + c], rhs[c, j] = p_in[j·di + c].
        matmul(ta, k_i, di, &mut ap, k_i, a, di, 1, p_in, 1, di);
        matmul(tb, k_o, d_out, &mut bp, k_o, b, d_out, 1, p_out, 1, d_out);
        // (B P_oᵀ)ᵀ (A P_iᵀ): lhs[o, r] = bp[r·k_o + o], rhs[r, i] = ap[r·k_i + i].
        let mut g = vec![0.0f32; width];
        matmul(k_o, k_i, ta, &mut g, k_i, &bp, 1, k_o, &ap, k_i, 1);
        dst.iter_mut().zip(&g).for_each(|(d, &x)| *d = x as f64);
    });
    res
}

/// `S[q, j] = Σ_c test[q, c] train[j, c]` then the mode transform, in f64 (reference).
pub fn scores_reference(test: &[f32], train: &[f32], k: usize, mode: super::ScoreMode, train_self: Option<&[f32]>, abs: bool) -> Vec<f64> {
    let (nt, nb) = (test.len() / k.max(1), train.len() / k.max(1));
    let mut res = Vec::with_capacity(nt * nb);
    for q in 0..nt {
        for j in 0..nb {
            let s: f64 = (0..k)
                .map(|c| {
                    let p = test[q * k + c] as f64 * train[j * k + c] as f64;
                    if abs {
                        p.abs()
                    } else {
                        p
                    }
                })
                .sum();
            res.push(apply_mode(s, mode, train_self.map(|v| v[j]), abs));
        }
    }
    res
}

pub(crate) fn apply_mode(s: f64, mode: super::ScoreMode, self_j: Option<f32>, abs: bool) -> f64 {
    match mode {
        super::ScoreMode::Dot => s,
        super::ScoreMode::Cosine => s / (self_j.expect("train_self") as f64).sqrt(),
        super::ScoreMode::L2 => {
            let h = 0.5 * self_j.expect("train_self") as f64;
            if abs {
                s + h.abs()
            } else {
                s - h
            }
        }
    }
}

/// Rows of `test` per rayon task in [`scores_fast`].
const SCORE_ROWS: usize = 64;

/// Fast scores: f32 GEMM `test · trainᵀ` per block of test rows, mode transform in f64.
pub fn scores_fast(test: &[f32], train: &[f32], nt: usize, nb: usize, k: usize, mode: super::ScoreMode, train_self: Option<&[f32]>) -> Vec<f64> {
    let mut res = vec![0.0f64; nt * nb];
    if nb == 0 {
        return res;
    }
    res.par_chunks_mut(SCORE_ROWS * nb).enumerate().for_each(|(blk, dst)| {
        let rows = dst.len() / nb;
        let q0 = blk * SCORE_ROWS;
        let mut s = vec![0.0f32; rows * nb];
        matmul(rows, nb, k, &mut s, nb, &test[q0 * k..(q0 + rows) * k], k, 1, train, 1, k);
        for (idx, (d, &x)) in dst.iter_mut().zip(&s).enumerate() {
            *d = apply_mode(x as f64, mode, train_self.map(|v| v[idx % nb]), false);
        }
    });
    res
}

// ---------------------------------------------------------------- second moments (MATH.md §4)
//
// Rounding of the fast paths (tests use the reference's `abs` magnitude with these depths):
// * Fisher `Σ_n ĝ_n[i] ĝ_n[j]`: one product and a sum over `N` rows: depth `N + O(1)`.
// * K-FAC covariance `Σ_r (P x_r)_i (P x_r)_j`: two dots of length `width (+1)` multiplied, and a
//   sum over the `N·T` kept tokens: depth `2·(width + 1) + N·T + O(1)`.
// * EK-FAC `Σ_n R_n[o, i]²`, `R_n = Q_Bᵀ Ĝ_n Q_A`: `R` goes through `k_i + k_o` roundings, its
//   square doubles the relative error, then a sum over `N`: depth `2·(k_i + k_o) + N + O(1)`.

/// Row `r` of projected gradients stored at `grads[r·ld + offset ..][..k]`.
#[derive(Debug, Clone, Copy)]
pub struct GradRows<'a> {
    pub grads: &'a [f32],
    pub n: usize,
    pub ld: usize,
    pub offset: usize,
}

impl GradRows<'_> {
    fn row(&self, r: usize, k: usize) -> &[f32] {
        &self.grads[r * self.ld + self.offset..r * self.ld + self.offset + k]
    }
}

/// Mirrors the upper triangle onto the lower one: every backend returns an exactly symmetric
/// matrix, whatever the GEMM's evaluation order.
fn symmetrize(m: &mut [f64], k: usize) {
    for i in 0..k {
        for j in 0..i {
            m[i * k + j] = m[j * k + i];
        }
    }
}

/// `F = Σ_n ĝ_n ĝ_nᵀ` (`[k, k]`, f64 reference); with `abs`, `Σ |ĝ_n||ĝ_n|ᵀ`.
pub fn fisher_reference(g: &GradRows<'_>, k: usize, abs: bool) -> Vec<f64> {
    let mut f = vec![0.0f64; k * k];
    for r in 0..g.n {
        let x = g.row(r, k);
        for i in 0..k {
            for j in 0..k {
                let p = x[i] as f64 * x[j] as f64;
                f[i * k + j] += if abs { p.abs() } else { p };
            }
        }
    }
    f
}

/// Fixed row blocks of a reduction over `count` rows: at least `min_rows` per block and at
/// most 16 blocks (bounds the partial results held at once); a function of the shape only, so
/// results never depend on the thread count.
fn row_blocks(count: usize, min_rows: usize) -> Vec<std::ops::Range<usize>> {
    let per = count.div_ceil(16).max(min_rows).max(1);
    (0..count.div_ceil(per)).map(|b| b * per..((b + 1) * per).min(count)).collect()
}

/// Sums per-block f32 results in block order in f64, then symmetrizes.
fn merge_blocks(parts: Vec<Vec<f32>>, k: usize, symmetric: bool, len: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; len];
    for p in parts {
        out.iter_mut().zip(&p).for_each(|(o, &x)| *o += x as f64);
    }
    if symmetric {
        symmetrize(&mut out, k);
    }
    out
}

/// Columns of `F` per task of [`fisher_fast`].
const FISHER_COLS: usize = 64;

/// Fast `F = Σ_n ĝ_n ĝ_nᵀ`: one task per block of 64 columns `j`, computing rows `i < j_end`
/// (the upper triangle and the diagonal block) with one f32 GEMM `Xᵀ X[:, j-block]` over all
/// rows (strided rows read in place, rows summed in the GEMM's fixed order); the upper triangle
/// is then mirrored. The partition depends only on `k`, so the bits never depend on the thread
/// count, and scratch is `k²/2` f32 at most.
pub fn fisher_fast(g: &GradRows<'_>, k: usize) -> Vec<f64> {
    let x = &g.grads[g.offset..(g.n - 1) * g.ld + g.offset + k];
    let blocks: Vec<(usize, usize, Vec<f32>)> = (0..k.div_ceil(FISHER_COLS))
        .into_par_iter()
        .map(|b| {
            let j0 = b * FISHER_COLS;
            let cb = FISHER_COLS.min(k - j0);
            let rows = j0 + cb;
            let mut f = vec![0.0f32; rows * cb];
            // lhs[i, p] = x[p·ld + i], rhs[p, j] = x[p·ld + j0 + j].
            matmul(rows, cb, g.n, &mut f, cb, x, 1, g.ld, &x[j0..], g.ld, 1);
            (j0, cb, f)
        })
        .collect();
    let mut out = vec![0.0f64; k * k];
    for (j0, cb, f) in blocks {
        for (i, row) in f.chunks_exact(cb).enumerate() {
            out[i * k + j0..i * k + j0 + cb].iter_mut().zip(row).for_each(|(o, &v)| *o = v as f64);
        }
    }
    symmetrize(&mut out, k);
    out
}

/// The A- or B-side input of a K-FAC covariance: `rows = N·T` tokens.
#[derive(Debug, Clone, Copy)]
pub enum CovRows<'a> {
    /// Rows `x [rows, width]`, with a trailing 1 when `ones` (the bias column).
    Dense { x: HostSlice<'a>, width: usize, ones: bool },
    /// One-hot rows `e_{ids[r]}` of a vocabulary of `vocab` (kept ids validated, i32 or i64;
    /// masked rows' ids are never read).
    Ids { ids: HostIds<'a>, vocab: usize },
}

impl CovRows<'_> {
    /// Columns of `P`.
    fn cols(&self) -> usize {
        match *self {
            CovRows::Dense { width, ones, .. } => width + ones as usize,
            CovRows::Ids { vocab, .. } => vocab,
        }
    }
}

/// `C = Σ_{kept r} (P x_r)(P x_r)ᵀ` (`[k, k]`, f64 reference), `P [k, cols]`; with `abs`, of
/// `|P||x_r|`.
pub fn kfac_cov_reference(x: &CovRows<'_>, mask: Option<&[u8]>, rows: usize, p: &[f32], k: usize, abs: bool) -> Vec<f64> {
    let cols = x.cols();
    assert_eq!(p.len(), k * cols, "P is [k, cols]");
    let f = |v: f64| if abs { v.abs() } else { v };
    let mut c = vec![0.0f64; k * k];
    let mut px = vec![0.0f64; k];
    for r in 0..rows {
        if mask.is_some_and(|m| m[r] == 0) {
            continue;
        }
        for (j, y) in px.iter_mut().enumerate() {
            let prow = &p[j * cols..(j + 1) * cols];
            *y = match *x {
                CovRows::Dense { x, width, ones } => {
                    (0..width).map(|c| f(prow[c] as f64) * f(x.get_f64(r * width + c))).sum::<f64>()
                        + if ones { f(prow[width] as f64) } else { 0.0 }
                }
                CovRows::Ids { ids, vocab } => {
                    let id = usize::try_from(ids.get(r)).ok().filter(|&i| i < vocab).expect("kept ids are validated");
                    f(prow[id] as f64)
                }
            };
        }
        for i in 0..k {
            for j in 0..k {
                c[i * k + j] += px[i] * px[j];
            }
        }
    }
    c
}

/// Fast K-FAC covariance: per fixed block of tokens, the kept rows projected by one f32 GEMM
/// (`X_b Pᵀ`, or a gather of `P`'s columns for ids), then `(X_b Pᵀ)ᵀ (X_b Pᵀ)` by GEMM; blocks
/// merged in order in f64, upper triangle mirrored. Never holds more than a block of projected
/// rows.
pub fn kfac_cov_fast(x: &CovRows<'_>, mask: Option<&[u8]>, rows: usize, p: &[f32], k: usize) -> Vec<f64> {
    let cols = x.cols();
    let parts: Vec<Vec<f32>> = row_blocks(rows, 512)
        .into_par_iter()
        .map(|blk| {
            let mut px;
            let kept = match *x {
                CovRows::Dense { x, width, ones } => {
                    let mut scratch = Vec::new();
                    let (a, kept) = gather(x, mask, blk, width, ones, None, &mut scratch);
                    px = vec![0.0f32; kept * k];
                    matmul(kept, k, cols, &mut px, k, a, cols, 1, p, 1, cols);
                    kept
                }
                CovRows::Ids { ids, vocab } => {
                    px = Vec::with_capacity(blk.len() * k);
                    for r in blk.filter(|&r| mask.map_or(true, |m| m[r] != 0)) {
                        let id = ids.get(r) as usize;
                        debug_assert!(id < vocab);
                        px.extend((0..k).map(|j| p[j * vocab + id]));
                    }
                    px.len() / k
                }
            };
            let mut c = vec![0.0f32; k * k];
            // lhs[i, r] = px[r·k + i], rhs[r, j] = px[r·k + j].
            matmul(k, k, kept, &mut c, k, &px, 1, k, &px, k, 1);
            c
        })
        .collect();
    merge_blocks(parts, k, true, k * k)
}

/// `Λ = Σ_n (Q_Bᵀ Ĝ_n Q_A)^{⊙2}` (`[k_o, k_i]`, f64 reference), `Ĝ_n` row-major `k_o × k_i`,
/// `q_b [k_o, k_o]`, `q_a [k_i, k_i]` row-major; with `abs`, `Σ_n (|Q_B|ᵀ |Ĝ_n| |Q_A|)^{⊙2}`.
pub fn ekfac_reference(g: &GradRows<'_>, k_o: usize, k_i: usize, q_b: &[f32], q_a: &[f32], abs: bool) -> Vec<f64> {
    let f = |v: f32| if abs { (v as f64).abs() } else { v as f64 };
    let mut out = vec![0.0f64; k_o * k_i];
    let mut w = vec![0.0f64; k_o * k_i];
    for r in 0..g.n {
        let gn = g.row(r, k_o * k_i);
        for c in 0..k_o {
            for i in 0..k_i {
                w[c * k_i + i] = (0..k_i).map(|p| f(gn[c * k_i + p]) * f(q_a[p * k_i + i])).sum();
            }
        }
        for o in 0..k_o {
            for i in 0..k_i {
                let rv: f64 = (0..k_o).map(|c| f(q_b[c * k_o + o]) * w[c * k_i + i]).sum();
                out[o * k_i + i] += rv * rv;
            }
        }
    }
    out
}

/// Fast EK-FAC correction: per sample `W = Ĝ_n Q_A` and `R = Q_Bᵀ W` by f32 GEMMs, `R ⊙ R`
/// summed in f32 within a fixed block of samples, blocks merged in order in f64.
pub fn ekfac_fast(g: &GradRows<'_>, k_o: usize, k_i: usize, q_b: &[f32], q_a: &[f32]) -> Vec<f64> {
    let kk = k_o * k_i;
    let parts: Vec<Vec<f32>> = row_blocks(g.n, 16)
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0.0f32; kk];
            let (mut w, mut r) = (vec![0.0f32; kk], vec![0.0f32; kk]);
            for n in blk {
                let gn = g.row(n, kk);
                matmul(k_o, k_i, k_i, &mut w, k_i, gn, k_i, 1, q_a, k_i, 1);
                // lhs[o, c] = q_b[c·k_o + o].
                matmul(k_o, k_i, k_o, &mut r, k_i, q_b, 1, k_o, &w, k_i, 1);
                acc.iter_mut().zip(&r).for_each(|(a, &x)| *a += x * x);
            }
            acc
        })
        .collect();
    merge_blocks(parts, k_i, false, kk)
}

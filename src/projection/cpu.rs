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
    let f = |x: f32| if abs { (x as f64).abs() } else { x as f64 };
    let mut res = Vec::with_capacity(train.n * k_o * k_i);
    for n in 0..train.n {
        let g = materialize(&train.a, &train.b, train.mask, n * train.t..(n + 1) * train.t, train.d_in, d_out, train.has_bias, None, abs);
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

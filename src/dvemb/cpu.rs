//! CPU backends of DVEmb (module docs of [`crate::dvemb`] state the formulas).
//!
//! * [`reference`]: float64 plain loops — the per-step recursion for one-step blocks and the
//!   blocked formula (`X`, `K`, triangular sweep) for longer blocks, exactly as written in the
//!   module docs. With `abs`, every input and every subtraction is replaced by its absolute
//!   value: the result bounds `Σ|monomials|` of every entry (the two forms expand to the same
//!   monomials), which is what the rounding bound of an f32 evaluation multiplies.
//! * fast f32 (gemm crate): per block, `Gb` = the block's rows copied contiguous, the strips
//!   `K[t, later] = c_{t'}·G_t G_laterᵀ` (one task per step), then one rayon task per chunk of
//!   [`FAST_COLS`] columns `j`, which owns rows `j` of `M` and columns `j` of `E` — columns never
//!   interact: `Y = Gb − Gb M[j,:]ᵀ`, the triangular sweep `E_t = η_t(Y_t − K[t,later]·E_later)`
//!   latest step first, then `M[j,:] += (c ⊙ E[:,j])ᵀ Gb`. The partition depends only on `k`, so
//!   results are bitwise identical whatever the thread count.
//!
//! Rounding of the fast path: every monomial of an entry of `E_t` or `M` passes through at most
//! `Σ_{blocks} (2k + R_b + 6)` f32 roundings (two length-`k` reductions and one over the later
//! rows of the block per step, the η/c/subtraction roundings, and one `M` update per block), so
//! `|x − exact| ≤ γ_L · magnitude` with the magnitude from [`reference`] with `abs`.

use std::ops::Range;

use rayon::prelude::*;

use super::{plan_blocks, Blocking, CheckedSteps, DvembSteps};
use crate::cpu::fast::{matmul, matmul_update};

/// Columns of `E` (rows of `M`) per task of the fast path.
pub const FAST_COLS: usize = 64;

/// Where a layer lives in the `[R, row_stride]` gradient and embedding buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub row_stride: usize,
    pub offset: usize,
    pub k: usize,
}

impl Layout {
    fn row<'a>(&self, buf: &'a [f32], r: usize) -> &'a [f32] {
        &buf[r * self.row_stride + self.offset..][..self.k]
    }
}

fn checked(steps: &DvembSteps<'_>) -> CheckedSteps {
    CheckedSteps {
        rows: steps.rows.to_vec(),
        starts: super::row_starts(steps.rows),
        etas: steps.etas.to_vec(),
        cs: steps.rows.iter().map(|&r| steps.loss.c(r)).collect(),
    }
}

/// The float64 reference sweep of one layer over `steps` (forward order, processed latest
/// first) with the blocks `blocking` gives: returns `E` `[R, k]` (row-major, contiguous) and
/// updates `m` (`[k, k]`, row-major) in place. With `abs`, the magnitude version (see the
/// module docs; `m` must then hold magnitudes too, e.g. `|M|`).
///
/// Panics if lengths do not match (a test helper; the operation validates first).
pub fn reference(grads: &[f32], layout: Layout, steps: &DvembSteps<'_>, blocking: Blocking, m: &mut [f64], abs: bool) -> Vec<f64> {
    let st = checked(steps);
    assert_eq!(steps.etas.len(), steps.rows.len(), "etas per step");
    assert!(grads.len() >= st.total_rows() as usize * layout.row_stride, "grads [R, row_stride]");
    assert!(layout.offset + layout.k <= layout.row_stride, "layer columns");
    assert_eq!(m.len(), layout.k * layout.k, "m [k, k]");
    let blocks = plan_blocks(&st.rows, blocking, layout.k as u64);
    sweep_reference(grads, layout, &st, &blocks, m, abs)
}

pub(crate) fn reference_sweep(grads: &[f32], layout: Layout, st: &CheckedSteps, blocks: &[Range<usize>], m: &mut [f64]) -> Vec<f64> {
    sweep_reference(grads, layout, st, blocks, m, false)
}

fn sweep_reference(grads: &[f32], layout: Layout, st: &CheckedSteps, blocks: &[Range<usize>], m: &mut [f64], abs: bool) -> Vec<f64> {
    let k = layout.k;
    let r_total = st.total_rows() as usize;
    let f = |x: f64| if abs { x.abs() } else { x };
    // a − b, or |a| + |b| for the magnitude.
    let sub = |a: f64, b: f64| if abs { a.abs() + b.abs() } else { a - b };
    let g = |r: usize, i: usize| f(layout.row(grads, r)[i] as f64);
    let mut e = vec![0.0f64; r_total * k];
    for block in blocks {
        let (r0, r1) = (st.starts[block.start] as usize, st.starts[block.end] as usize);
        if block.len() == 1 {
            // The recursion: E = η (G − G Mᵀ), then M += c Eᵀ G.
            let (eta, c) = (f(st.etas[block.start]), f(st.cs[block.start]));
            for r in r0..r1 {
                for j in 0..k {
                    let x: f64 = (0..k).map(|i| g(r, i) * m[j * k + i]).sum();
                    e[r * k + j] = eta * sub(g(r, j), x);
                }
            }
            for i in 0..k {
                for j in 0..k {
                    let upd: f64 = (r0..r1).map(|r| e[r * k + i] * g(r, j)).sum();
                    m[i * k + j] += c * upd;
                }
            }
            continue;
        }
        // Blocked: X = Gc Mᵀ, K = Gc Gcᵀ, E_t = η_t (G_t − X_t − Σ_{t'>t} c_{t'} K[t,t'] E_{t'}).
        let rb = r1 - r0;
        let mut x = vec![0.0f64; rb * k];
        for r in 0..rb {
            for j in 0..k {
                x[r * k + j] = (0..k).map(|i| g(r0 + r, i) * m[j * k + i]).sum();
            }
        }
        let mut kk = vec![0.0f64; rb * rb];
        for r in 0..rb {
            for q in 0..rb {
                kk[r * rb + q] = (0..k).map(|i| g(r0 + r, i) * g(r0 + q, i)).sum();
            }
        }
        for t in block.clone().rev() {
            let eta = f(st.etas[t]);
            for r in st.starts[t] as usize..st.starts[t + 1] as usize {
                for j in 0..k {
                    let mut later = 0.0f64;
                    for t2 in t + 1..block.end {
                        let s: f64 = (st.starts[t2] as usize..st.starts[t2 + 1] as usize)
                            .map(|q| kk[(r - r0) * rb + (q - r0)] * e[q * k + j])
                            .sum();
                        later += f(st.cs[t2]) * s;
                    }
                    e[r * k + j] = eta * sub(sub(g(r, j), x[(r - r0) * k + j]), later);
                }
            }
        }
        for i in 0..k {
            for j in 0..k {
                let upd: f64 = block
                    .clone()
                    .map(|t| {
                        let s: f64 = (st.starts[t] as usize..st.starts[t + 1] as usize).map(|r| e[r * k + i] * g(r, j)).sum();
                        f(st.cs[t]) * s
                    })
                    .sum();
                m[i * k + j] += upd;
            }
        }
    }
    e
}

/// The fast f32 sweep of one layer: writes `E` into `e_out`'s layer columns and updates `m`.
pub(crate) fn fast_sweep(grads: &[f32], layout: Layout, st: &CheckedSteps, blocks: &[Range<usize>], m: &mut [f32], e_out: &mut [f32]) {
    let k = layout.k;
    for block in blocks {
        let (r0, r1) = (st.starts[block.start] as usize, st.starts[block.end] as usize);
        let rb = r1 - r0;
        // Block-relative row starts of its steps, η and c in f32.
        let starts: Vec<usize> = block.clone().map(|t| st.starts[t] as usize - r0).chain([rb]).collect();
        let etas: Vec<f32> = block.clone().map(|t| st.etas[t] as f32).collect();
        let cs: Vec<f32> = block.clone().map(|t| st.cs[t] as f32).collect();
        let nsteps = block.len();
        let mut gb = vec![0.0f32; rb * k];
        for (r, dst) in gb.chunks_exact_mut(k).enumerate() {
            dst.copy_from_slice(layout.row(grads, r0 + r));
        }
        // K strips: strip s = c_{later} · G_s G_laterᵀ  [b_s, rb − starts[s+1]].
        let strips: Vec<Vec<f32>> = (0..nsteps)
            .into_par_iter()
            .map(|s| {
                let (a, b) = (starts[s], starts[s + 1]);
                let n = rb - b;
                let mut strip = vec![0.0f32; (b - a) * n];
                if n > 0 {
                    // lhs[r, p] = gb[(a + r)·k + p], rhs[p, q] = gb[(b + q)·k + p].
                    matmul(b - a, n, k, &mut strip, n, &gb[a * k..], k, 1, &gb[b * k..], 1, k);
                    for t2 in s + 1..nsteps {
                        let c = cs[t2];
                        for row in strip.chunks_exact_mut(n) {
                            row[starts[t2] - b..starts[t2 + 1] - b].iter_mut().for_each(|x| *x *= c);
                        }
                    }
                }
                strip
            })
            .collect();
        let chunks: Vec<Vec<f32>> = m
            .par_chunks_mut(FAST_COLS * k)
            .enumerate()
            .map(|(ci, m_rows)| {
                let j0 = ci * FAST_COLS;
                let jc = m_rows.len() / k;
                // Y[r, j] = G[r, j0 + j] − Σ_i G[r, i] M[j0 + j, i]   ([rb, jc], row-major).
                let mut e = vec![0.0f32; rb * jc];
                for (r, dst) in e.chunks_exact_mut(jc).enumerate() {
                    dst.copy_from_slice(&gb[r * k + j0..r * k + j0 + jc]);
                }
                matmul_update(rb, jc, k, &mut e, jc, &gb, k, 1, m_rows, 1, k, -1.0);
                // Latest step first: E_t = η_t (Y_t − K[t, later] E_later).
                for s in (0..nsteps).rev() {
                    let (a, b) = (starts[s], starts[s + 1]);
                    let (head, tail) = e.split_at_mut(b * jc);
                    let dst = &mut head[a * jc..];
                    if b < rb {
                        matmul_update(b - a, jc, rb - b, dst, jc, &strips[s], rb - b, 1, tail, jc, 1, -1.0);
                    }
                    dst.iter_mut().for_each(|x| *x *= etas[s]);
                }
                // M[j0 + j, :] += Σ_r c_r E[r, j] G[r, :].
                let mut ec = e.clone();
                for s in 0..nsteps {
                    ec[starts[s] * jc..starts[s + 1] * jc].iter_mut().for_each(|x| *x *= cs[s]);
                }
                matmul_update(jc, k, rb, m_rows, k, &ec, 1, jc, &gb, k, 1, 1.0);
                e
            })
            .collect();
        for (ci, e) in chunks.iter().enumerate() {
            let j0 = ci * FAST_COLS;
            let jc = e.len() / rb;
            for (r, src) in e.chunks_exact(jc).enumerate() {
                let at = (r0 + r) * layout.row_stride + layout.offset + j0;
                e_out[at..at + jc].copy_from_slice(src);
            }
        }
    }
}

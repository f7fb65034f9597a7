//! The fast CPU path: multi-threaded f32 built on the `gemm` crate (MATH.md §1, §6).
//!
//! Inputs (f32, bf16 or f16) are converted to f32 one block of rows at a time; masked rows are
//! dropped while converting (so they contribute exactly 0, whatever they hold) and a bias
//! augments the activations with a constant-1 column. Every GEMM runs single-threaded
//! (`Parallelism::None`) inside a rayon task; the tasks are a fixed partition of the work (blocks
//! of raw rows, never "one per thread"), each computed by the same sequential code, and their
//! partial sums are merged in a fixed order in f64. Results are therefore bitwise identical run to
//! run, whatever the number of threads.
//!
//! Forms of `<G_n, Gq_v>` (all exact up to rounding):
//! * Gram: one task per (training tile, query tile) pair — tiles of up to `GRAM_ROWS` training
//!   rows (several whole samples when T is short) and `GRAM_QUERY` query rows — `S_a = A Aqᵀ` and
//!   `S_b = B Bqᵀ` by GEMM into cache-sized scratch, then `Σ S_a ⊙ S_b` per query segment. Tall
//!   tiles matter: gemm packs the query tile once per training tile (measured by perf at
//!   768→3072 T = 128: 32 % of the time with 64-row tiles, 12 % with 256).
//! * DenseQuery: `M_v = Bq_vᵀ Aq_v` once, then per block of training rows `C = B M_v` (in blocks
//!   of columns) dotted row by row with `A`.
//! * Materialize: `G_n = B_nᵀ A_n` for every sample and `Gq_v` for every segment, then Frobenius
//!   dots (the naive baseline of MATH.md §6, written as well as it can be).
//!
//! Rounding: every product of the formula reaches the result through at most
//! `(d_in + 1) + d_out + T + Q + O(1)` f32 roundings in any form (each dot or GEMM reduction over
//! `k` terms adds at most `k` roundings to any term, the sums over tokens and segments add at most
//! `T + Q`, and the partial sums merged in f64 add less), so
//! `|x − exact| ≤ γ_L · Σ|products|`, `γ_L = L·2^-24 / (1 − L·2^-24)`: the bound the tests check
//! against the reference's magnitude.

use std::borrow::Cow;
use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use super::reference::{Query, Train};
use crate::buffer::HostSlice;
use crate::ghost_dot::{Accumulate, Form};

/// Raw training rows per block of the train×train forms (`ghost_gram`, `ghost_sqnorm`).
const TRAIN_BLOCK: usize = 64;
/// Raw training rows per task of the dense form: gemm packs each strip of `M` once per task, so
/// taller tasks pack less (measured: packing ∝ 1 / rows).
const DENSE_ROWS: usize = 256;
/// Columns of `C = B M` computed at once (`DENSE_ROWS × DENSE_COLS` f32 = 256 KiB).
const DENSE_COLS: usize = 256;
/// Rows of `d_out` per task when materializing outer-product sums.
const OUTER_ROWS: usize = 256;

/// Training rows of one Gram tile at most, and query rows of one tile: the two score tiles
/// (`GRAM_ROWS × GRAM_QUERY` f32 each, 512 KiB together) stay in this machine's 1 MiB L2.
const GRAM_ROWS: usize = 256;
const GRAM_QUERY: usize = 256;
/// Tiles shrink (down to 32 rows) until the Gram form has this many tasks, so that both cores
/// work on short inputs. Chosen from the shapes only, never from the thread count.
const GRAM_MIN_TASKS: usize = 4;

/// How training rows are cut into tiles: `per` whole samples per tile (`blocks == 1`), or
/// `blocks` blocks of at most `rows` raw rows of one sample (`per == 1`).
#[derive(Clone, Copy, Debug)]
struct Tiles {
    per: usize,
    blocks: usize,
    rows: usize,
}

impl Tiles {
    fn new(n: usize, t: usize, max_rows: usize) -> Tiles {
        if t <= max_rows {
            Tiles { per: (max_rows / t).clamp(1, n), blocks: 1, rows: t }
        } else {
            let blocks = t.div_ceil(max_rows);
            Tiles { per: 1, blocks, rows: t.div_ceil(blocks) }
        }
    }
    /// The largest tiles (`GRAM_ROWS` rows, halved down to 32) that give `GRAM_MIN_TASKS` tasks
    /// with `qtiles` query tiles each.
    fn for_gram(n: usize, t: usize, qtiles: usize) -> Tiles {
        let mut max_rows = GRAM_ROWS;
        loop {
            let tiles = Tiles::new(n, t, max_rows);
            if max_rows <= 32 || tiles.count(n) * qtiles >= GRAM_MIN_TASKS {
                return tiles;
            }
            max_rows /= 2;
        }
    }
    fn count(&self, n: usize) -> usize {
        if self.blocks == 1 {
            n.div_ceil(self.per)
        } else {
            n * self.blocks
        }
    }
    /// First sample, number of samples, and raw rows of tile `i`.
    fn tile(&self, i: usize, n: usize, t: usize) -> (usize, usize, Range<usize>) {
        if self.blocks == 1 {
            let n0 = i * self.per;
            let count = self.per.min(n - n0);
            (n0, count, n0 * t..(n0 + count) * t)
        } else {
            let (s, b) = (i / self.blocks, i % self.blocks);
            (s, 1, s * t + b * self.rows..s * t + t.min((b + 1) * self.rows))
        }
    }
}

/// Layer widths; `di` includes the bias column.
#[derive(Clone, Copy)]
struct Dims {
    d_in: usize,
    d_out: usize,
    di: usize,
    ones: bool,
}

impl Dims {
    fn new(d_in: usize, d_out: usize, has_bias: bool) -> Self {
        Dims { d_in, d_out, di: d_in + has_bias as usize, ones: has_bias }
    }
    fn of(t: &Train<'_>) -> Self {
        Self::new(t.d_in, t.d_out, t.has_bias)
    }
    /// Elements of one (augmented) per-sample gradient.
    fn grad_len(&self) -> usize {
        self.d_out * self.di
    }
}

/// Per-task scratch, reused across the tasks a rayon worker runs.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    qa: Vec<f32>,
    qb: Vec<f32>,
    sa: Vec<f32>,
    sb: Vec<f32>,
}

#[inline]
fn kept(mask: Option<&[u8]>, r: usize) -> bool {
    mask.map_or(true, |m| m[r] != 0)
}

/// The kept rows of `src[rows]` (row width `width`) as f32, with a trailing 1 column when `ones`
/// and each row scaled by `weights[r]` when given. Borrows `src` when it is already in that form.
/// Returns the rows and their number.
pub(crate) fn gather<'x>(
    src: HostSlice<'x>,
    mask: Option<&[u8]>,
    rows: Range<usize>,
    width: usize,
    ones: bool,
    weights: Option<&[f32]>,
    scratch: &'x mut Vec<f32>,
) -> (&'x [f32], usize) {
    if let HostSlice::F32(s) = src {
        if !ones && weights.is_none() && mask.map_or(true, |m| m[rows.clone()].iter().all(|&k| k != 0)) {
            return (&s[rows.start * width..rows.end * width], rows.len());
        }
    }
    let stride = width + ones as usize;
    scratch.clear();
    scratch.resize(rows.len() * stride, 0.0);
    let mut k = 0;
    for r in rows {
        if !kept(mask, r) {
            continue;
        }
        let row = &mut scratch[k * stride..(k + 1) * stride];
        src.copy_to_f32(r * width, &mut row[..width]);
        if let Some(w) = weights {
            let w = w[r];
            row[..width].iter_mut().for_each(|x| *x *= w);
        }
        if ones {
            row[width] = 1.0;
        }
        k += 1;
    }
    (&scratch[..k * stride], k)
}

/// A query side converted once: kept rows of every segment, concatenated in segment order
/// (`a` rows of width `di`, `b` rows of width `d_out`, `b` scaled by the row weights), and the
/// row range of each segment in that concatenation.
struct Side<'a> {
    a: Cow<'a, [f32]>,
    b: Cow<'a, [f32]>,
    segs: Vec<Range<usize>>,
}

impl<'a> Side<'a> {
    fn new(
        aq: HostSlice<'a>,
        bq: HostSlice<'a>,
        mask: Option<&[u8]>,
        ranges: &[(usize, usize)],
        d: Dims,
        weights: Option<&[f32]>,
    ) -> Self {
        if let (&[(s, e)], HostSlice::F32(a), HostSlice::F32(b)) = (ranges, aq, bq) {
            if !d.ones && weights.is_none() && mask.map_or(true, |m| m[s..e].iter().all(|&k| k != 0)) {
                return Side {
                    a: Cow::Borrowed(&a[s * d.d_in..e * d.d_in]),
                    b: Cow::Borrowed(&b[s * d.d_out..e * d.d_out]),
                    segs: std::iter::once(0..e - s).collect(),
                };
            }
        }
        let total: usize = ranges.iter().map(|&(s, e)| e.saturating_sub(s)).sum();
        let mut a = Vec::with_capacity(total * d.di);
        let mut b = Vec::with_capacity(total * d.d_out);
        let mut segs = Vec::with_capacity(ranges.len());
        let mut k = 0;
        for &(s, e) in ranges {
            let start = k;
            for r in s..e {
                if !kept(mask, r) {
                    continue;
                }
                let off = a.len();
                a.resize(off + d.di, 1.0); // the bias column, when there is one, stays 1
                aq.copy_to_f32(r * d.d_in, &mut a[off..off + d.d_in]);
                let off = b.len();
                b.resize(off + d.d_out, 0.0);
                bq.copy_to_f32(r * d.d_out, &mut b[off..]);
                if let Some(w) = weights {
                    let w = w[r];
                    b[off..].iter_mut().for_each(|x| *x *= w);
                }
                k += 1;
            }
            segs.push(start..k);
        }
        Side { a: Cow::Owned(a), b: Cow::Owned(b), segs }
    }

    /// Kept query rows (all segments).
    fn rows(&self) -> usize {
        self.segs.last().map_or(0, |s| s.end)
    }
}

/// `dst[m×n] (row stride dst_rs) = lhs · rhs` with `lhs[i, p] = lhs[i·lhs_rs + p·lhs_cs]` and
/// `rhs[p, j] = rhs[p·rhs_rs + j·rhs_cs]`, single-threaded. Bounds are checked before the call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        assert!((m - 1) * dst_rs + n <= dst.len(), "matmul: dst too short");
        for i in 0..m {
            dst[i * dst_rs..i * dst_rs + n].fill(0.0);
        }
        return;
    }
    gemm_checked(m, n, k, dst, dst_rs, lhs, (lhs_rs, lhs_cs), rhs, (rhs_rs, rhs_cs), None);
}

/// `dst[m×n] = dst + beta · lhs · rhs` (the update form of [`matmul`]: `dst` is read), same
/// layouts and strides, single-threaded. Bounds are checked before the call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_update(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    gemm_checked(m, n, k, dst, dst_rs, lhs, (lhs_rs, lhs_cs), rhs, (rhs_rs, rhs_cs), Some(beta));
}

/// The one call into `gemm` (`m, n, k ≥ 1`): `dst = lhs·rhs` (`update = None`, `dst` never
/// read) or `dst = dst + beta·lhs·rhs` (`update = Some(beta)`), after checking every bound.
#[allow(clippy::too_many_arguments)]
fn gemm_checked(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    update: Option<f32>,
) {
    assert!((m - 1) * dst_rs + n <= dst.len(), "matmul: dst too short");
    assert!((m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len(), "matmul: lhs too short");
    assert!((k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(), "matmul: rhs too short");
    let (read_dst, alpha, beta) = match update {
        None => (false, 0.0f32, 1.0f32),
        Some(beta) => (true, 1.0f32, beta),
    };
    // SAFETY: the asserts above keep every element gemm reads (lhs, rhs, and dst when
    // read_dst) or writes (dst, column stride 1) inside its slice; dst is borrowed mutably and
    // cannot alias the inputs; with read_dst = false dst's previous contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            read_dst,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `Σ x ⊙ y` in f32 with eight independent lanes (vectorizes; each product goes through at most
/// `len/8 + 4` roundings).
#[inline]
fn dot8(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += xs[l] * ys[l];
        }
    }
    for (l, (a, b)) in xr.iter().zip(yr).enumerate() {
        acc[l] += a * b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Frobenius product of two `[d_out, di]` gradients: f32 within a row, f64 across rows.
fn frob(x: &[f32], y: &[f32], di: usize) -> f64 {
    x.chunks_exact(di).zip(y.chunks_exact(di)).map(|(r, s)| dot8(r, s) as f64).sum()
}

#[inline]
fn accumulate(old: f32, r: f64, acc: Accumulate) -> f32 {
    let prev = if acc.beta == 0.0 { 0.0 } else { acc.beta as f64 * old as f64 };
    (prev + acc.scale as f64 * r) as f32
}

fn write_out(out: &mut [f32], res: &[f64], acc: Accumulate) {
    debug_assert_eq!(out.len(), res.len());
    out.iter_mut().zip(res).for_each(|(o, &r)| *o = accumulate(*o, r, acc));
}

/// Sums task partials `[outer, blocks, inner]` over `blocks`, in block order.
fn merge_blocks(partial: &[f64], outer: usize, blocks: usize, inner: usize) -> Vec<f64> {
    let mut res = vec![0.0f64; outer * inner];
    for o in 0..outer {
        for b in 0..blocks {
            let p = &partial[(o * blocks + b) * inner..(o * blocks + b + 1) * inner];
            res[o * inner..(o + 1) * inner].iter_mut().zip(p).for_each(|(r, x)| *r += x);
        }
    }
    res
}

/// `acc[g·V + v] += Σ_{t∈group g} Σ_{u∈segs[v], u∈qrange} (a_t·qa_u)(b_t·qb_u)` for the training
/// rows `a`, `b` split into groups by `bounds` (group g = rows `bounds[g]..bounds[g+1]`, the last
/// bound is the row count) and the query rows `qa`, `qb` (segments sorted, disjoint), one
/// `rows × GRAM_QUERY` pair of score tiles (`S_a = A Aqᵀ`, `S_b = B Bqᵀ`, by GEMM) at a time.
#[allow(clippy::too_many_arguments)]
fn gram_tile(
    a: &[f32],
    b: &[f32],
    bounds: &[usize],
    qa: &[f32],
    qb: &[f32],
    segs: &[Range<usize>],
    qrange: Range<usize>,
    d: Dims,
    acc: &mut [f64],
    sa: &mut Vec<f32>,
    sb: &mut Vec<f32>,
) {
    let tr = *bounds.last().expect("bounds end with the row count");
    let nv = segs.len();
    if tr == 0 || qrange.is_empty() {
        return;
    }
    let mut first = 0; // first segment that may overlap the current block
    for q0 in qrange.clone().step_by(GRAM_QUERY) {
        let w = GRAM_QUERY.min(qrange.end - q0);
        sa.resize(tr * w, 0.0);
        sb.resize(tr * w, 0.0);
        matmul(tr, w, d.di, sa, w, a, d.di, 1, &qa[q0 * d.di..], 1, d.di);
        matmul(tr, w, d.d_out, sb, w, b, d.d_out, 1, &qb[q0 * d.d_out..], 1, d.d_out);
        while first < segs.len() && segs[first].end <= q0 {
            first += 1;
        }
        let mut g = 0;
        for t in 0..tr {
            while bounds[g + 1] <= t {
                g += 1;
            }
            let (ra, rb) = (&sa[t * w..(t + 1) * w], &sb[t * w..(t + 1) * w]);
            for (v, s) in segs.iter().enumerate().skip(first) {
                if s.start >= q0 + w {
                    break;
                }
                let (lo, hi) = (s.start.max(q0) - q0, s.end.min(q0 + w) - q0);
                if lo < hi {
                    acc[g * nv + v] += dot8(&ra[lo..hi], &rb[lo..hi]) as f64;
                }
            }
        }
    }
}

/// Below this many multiply-adds a call runs on the calling thread: waking the rayon pool costs
/// more than it saves, and its spinning workers then slow the caller's own next (serial) work.
const SERIAL_BELOW: f64 = 4.0e6;

/// `f(scratch, i, chunk_i)` over the `chunk`-sized pieces of `res`: in parallel, or in order on
/// the calling thread when `work` (multiply-adds) is small. The pieces are independent, so both
/// give the same bits.
fn for_chunks(res: &mut [f64], chunk: usize, work: f64, f: impl Fn(&mut Scratch, usize, &mut [f64]) + Sync + Send) {
    if work < SERIAL_BELOW {
        let mut s = Scratch::default();
        res.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(&mut s, i, c));
    } else {
        res.par_chunks_mut(chunk).enumerate().for_each_init(Scratch::default, |s, (i, c)| f(s, i, c));
    }
}

/// The kept rows of samples `n0 .. n0 + count` (see [`gather`]) and each sample's row range in
/// them: `bounds[k]..bounds[k + 1]` for sample `n0 + k`.
fn gather_samples<'x>(
    train: &Train<'x>,
    n0: usize,
    count: usize,
    d: Dims,
    sa: &'x mut Vec<f32>,
    sb: &'x mut Vec<f32>,
) -> (Vec<usize>, &'x [f32], &'x [f32]) {
    let t = train.t;
    let rows = n0 * t..(n0 + count) * t;
    let mut bounds = Vec::with_capacity(count + 1);
    bounds.push(0);
    for k in 0..count {
        let r0 = (n0 + k) * t;
        let kept_rows = (r0..r0 + t).filter(|&r| kept(train.mask, r)).count();
        bounds.push(bounds[k] + kept_rows);
    }
    let (a, _) = gather(train.a, train.mask, rows.clone(), d.d_in, d.ones, None, sa);
    let (b, _) = gather(train.b, train.mask, rows, d.d_out, false, None, sb);
    (bounds, a, b)
}

/// Training rows per tile and number of tasks of the Gram form for `n` samples of `t` rows and
/// `q` query rows (what the CPU cost model charges for gemm's packing and idle threads).
pub(crate) fn gram_tiling(n: usize, t: usize, q: usize) -> (usize, usize) {
    let qtiles = q.div_ceil(GRAM_QUERY).max(1);
    let tiles = Tiles::for_gram(n, t, qtiles);
    (tiles.per * tiles.rows, tiles.count(n) * qtiles)
}

/// Gram form of `<G_n, Gq_v>`: `[N, V]`. Tasks are (training tile, query tile) pairs (see
/// [`Tiles`]); each writes its samples' partial sums, merged per sample in tile order.
fn gram_dot(train: &Train<'_>, q: &Side<'_>, d: Dims) -> Vec<f64> {
    let nv = q.segs.len();
    let qrows = q.rows();
    let qtiles = qrows.div_ceil(GRAM_QUERY).max(1);
    let tiles = Tiles::for_gram(train.n, train.t, qtiles);
    let ntiles = tiles.count(train.n);
    let chunk = tiles.per * nv;
    let mut partial = vec![0.0f64; ntiles * qtiles * chunk];
    let work = (train.n * train.t * qrows) as f64 * (d.di + d.d_out) as f64;
    for_chunks(&mut partial, chunk, work, |s, task, acc| {
        let (ti, qt) = (task / qtiles, task % qtiles);
        let (n0, count, rows) = tiles.tile(ti, train.n, train.t);
        let qr = qt * GRAM_QUERY..qrows.min((qt + 1) * GRAM_QUERY);
        if tiles.blocks == 1 {
            let (bounds, a, b) = gather_samples(train, n0, count, d, &mut s.a, &mut s.b);
            gram_tile(a, b, &bounds, &q.a, &q.b, &q.segs, qr, d, acc, &mut s.sa, &mut s.sb);
        } else {
            let (a, tr) = gather(train.a, train.mask, rows.clone(), d.d_in, d.ones, None, &mut s.a);
            let (b, _) = gather(train.b, train.mask, rows, d.d_out, false, None, &mut s.b);
            gram_tile(a, b, &[0, tr], &q.a, &q.b, &q.segs, qr, d, acc, &mut s.sa, &mut s.sb);
        }
    });
    let mut res = vec![0.0f64; train.n * nv];
    for ti in 0..ntiles {
        let (n0, count, _) = tiles.tile(ti, train.n, train.t);
        for qt in 0..qtiles {
            let p = &partial[(ti * qtiles + qt) * chunk..];
            res[n0 * nv..(n0 + count) * nv].iter_mut().zip(p).for_each(|(r, x)| *r += x);
        }
    }
    res
}

/// `Σ_t b_tᵀ M_v a_t` for every `v` (`m` holds `nv` matrices `[d_out, di]`): `[N, nv]`.
fn dense_dot(train: &Train<'_>, m: &[f32], nv: usize, d: Dims) -> Vec<f64> {
    if train.t < DENSE_ROWS {
        // Short samples: one task covers several whole samples (one GEMM of up to DENSE_ROWS
        // rows per query matrix instead of one per sample); per sample the same f64 order.
        let per = DENSE_ROWS / train.t;
        let mut res = vec![0.0f64; train.n * nv];
        let work = (train.n * train.t * nv * d.grad_len()) as f64;
        for_chunks(&mut res, per * nv, work, |s, g, acc| {
            let (bounds, a, b) = gather_samples(train, g * per, acc.len() / nv, d, &mut s.a, &mut s.b);
            dense_tile(a, b, &bounds, m, nv, d, acc, &mut s.sa);
        });
        return res;
    }
    let blocks = train.t.div_ceil(DENSE_ROWS);
    let mut partial = vec![0.0f64; train.n * blocks * nv];
    partial.par_chunks_mut(nv).enumerate().for_each_init(Scratch::default, |s, (task, acc)| {
        let (n, blk) = (task / blocks, task % blocks);
        let rows = n * train.t + blk * DENSE_ROWS..n * train.t + train.t.min((blk + 1) * DENSE_ROWS);
        let (a, tr) = gather(train.a, train.mask, rows.clone(), d.d_in, d.ones, None, &mut s.a);
        let (b, _) = gather(train.b, train.mask, rows, d.d_out, false, None, &mut s.b);
        dense_tile(a, b, &[0, tr], m, nv, d, acc, &mut s.sa);
    });
    merge_blocks(&partial, train.n, blocks, nv)
}

/// `acc[g·V + v] += Σ_{t∈group g} b_tᵀ M_v a_t` for the training rows `a`, `b` split into groups
/// by `bounds` (as in [`gram_tile`]): `B·M_v` one `rows × DENSE_COLS` strip at a time, then row
/// dots in row order.
#[allow(clippy::too_many_arguments)]
fn dense_tile(a: &[f32], b: &[f32], bounds: &[usize], m: &[f32], nv: usize, d: Dims, acc: &mut [f64], c: &mut Vec<f32>) {
    let tr = *bounds.last().expect("bounds end with the row count");
    if tr == 0 {
        return;
    }
    for v in 0..nv {
        let mv = &m[v * d.grad_len()..(v + 1) * d.grad_len()];
        for c0 in (0..d.di).step_by(DENSE_COLS) {
            let w = DENSE_COLS.min(d.di - c0);
            c.resize(tr * w, 0.0);
            matmul(tr, w, d.d_out, c, w, b, d.d_out, 1, &mv[c0..], d.di, 1);
            for (g, rows) in bounds.windows(2).enumerate() {
                for t in rows[0]..rows[1] {
                    acc[g * nv + v] += dot8(&c[t * w..(t + 1) * w], &a[t * d.di + c0..t * d.di + c0 + w]) as f64;
                }
            }
        }
    }
}

/// `dst[o - o0, :] = Σ_r b[r, o] a[r, :]` for `o ∈ o0..o0 + rows` (`k` rows of `a` `[k, di]`,
/// `b` `[k, d_out]`).
fn outer_sum(a: &[f32], b: &[f32], k: usize, o0: usize, rows: usize, d: Dims, dst: &mut [f32]) {
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    matmul(rows, d.di, k, dst, d.di, &b[o0..], 1, d.d_out, a, d.di, 1);
}

/// `M_v = Bq_vᵀ Aq_v` (bias column included) for every segment: `[V, d_out, di]`.
fn factor_all(q: &Side<'_>, d: Dims) -> Vec<f32> {
    let mut m = vec![0.0f32; q.segs.len() * d.grad_len()];
    if m.is_empty() {
        return m;
    }
    if ((q.rows() * d.grad_len()) as f64) < SERIAL_BELOW {
        for (mv, seg) in m.chunks_mut(d.grad_len()).zip(&q.segs) {
            let (a, b) = (&q.a[seg.start * d.di..seg.end * d.di], &q.b[seg.start * d.d_out..seg.end * d.d_out]);
            outer_sum(a, b, seg.len(), 0, d.d_out, d, mv);
        }
        return m;
    }
    m.par_chunks_mut(d.grad_len()).zip(&q.segs).for_each(|(mv, seg)| {
        let (a, b) = (&q.a[seg.start * d.di..seg.end * d.di], &q.b[seg.start * d.d_out..seg.end * d.d_out]);
        mv.par_chunks_mut(OUTER_ROWS * d.di).enumerate().for_each(|(c, dst)| {
            outer_sum(a, b, seg.len(), c * OUTER_ROWS, dst.len() / d.di, d, dst);
        });
    });
    m
}

/// Every training sample's gradient `G_n = B_nᵀ A_n`: `[N, d_out, di]`.
fn materialize_train(train: &Train<'_>, d: Dims) -> Vec<f32> {
    let mut g = vec![0.0f32; train.n * d.grad_len()];
    g.par_chunks_mut(d.grad_len()).enumerate().for_each(|(n, gn)| {
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        let rows = n * train.t..(n + 1) * train.t;
        let (a, k) = gather(train.a, train.mask, rows.clone(), d.d_in, d.ones, None, &mut sa);
        let (b, _) = gather(train.b, train.mask, rows, d.d_out, false, None, &mut sb);
        gn.par_chunks_mut(OUTER_ROWS * d.di).enumerate().for_each(|(c, dst)| {
            outer_sum(a, b, k, c * OUTER_ROWS, dst.len() / d.di, d, dst);
        });
    });
    g
}

/// `out[n, v] = beta·out + scale·<G_n, Gq_v>` in the requested form (`out` `[N, V]`).
pub fn ghost_dot(train: &Train<'_>, query: &Query<'_>, form: Form, out: &mut [f32], acc: Accumulate) {
    if query.ranges.is_empty() {
        return;
    }
    write_out(out, &ghost_dot_f64(train, query, form), acc);
}

/// `<G_n, Gq_v>` `[N, V]` before the output's rounding, so callers summing several layers or
/// passes round once.
pub fn ghost_dot_f64(train: &Train<'_>, query: &Query<'_>, form: Form) -> Vec<f64> {
    let d = Dims::of(train);
    let q = Side::new(query.aq, query.bq, query.mask, &query.ranges, d, None);
    let nv = q.segs.len();
    if nv == 0 {
        return Vec::new();
    }
    match form {
        Form::Gram => gram_dot(train, &q, d),
        Form::DenseQuery => dense_dot(train, &factor_all(&q, d), nv, d),
        Form::Materialize => {
            let g = materialize_train(train, d);
            let gq = factor_all(&q, d);
            let mut res = vec![0.0f64; train.n * nv];
            res.par_chunks_mut(nv).zip(g.par_chunks(d.grad_len())).for_each(|(row, gn)| {
                for (r, gv) in row.iter_mut().zip(gq.chunks_exact(d.grad_len())) {
                    *r = frob(gn, gv, d.di);
                }
            });
            res
        }
    }
}

/// `Σ_l <G^l_n, Gq^l_v>` `[N, V]` over `layers` (each in its form), before the output's
/// rounding. The layers are scheduled together in one parallel region (each keeps its own
/// fixed partition and merge), and their results are summed in layer order, so the bits do not
/// depend on the scheduling. Materialize layers, whose scratch is `(N + V)·d_in·d_out`, run one
/// after another so that their scratch is never live at once.
pub fn ghost_dot_layers_f64(layers: &[(Train<'_>, Query<'_>, Form)], out_len: usize) -> Vec<f64> {
    let together: Vec<usize> = (0..layers.len()).filter(|&l| layers[l].2 != Form::Materialize).collect();
    let mut results: Vec<Option<Vec<f64>>> = vec![None; layers.len()];
    let run = |l: usize| {
        let (t, q, f) = &layers[l];
        ghost_dot_f64(t, q, *f)
    };
    if together.len() > 1 {
        let got: Vec<Vec<f64>> = together.par_iter().map(|&l| run(l)).collect();
        for (&l, r) in together.iter().zip(got) {
            results[l] = Some(r);
        }
    }
    let mut total = vec![0.0f64; out_len];
    for (l, r) in results.into_iter().enumerate() {
        let r = r.unwrap_or_else(|| run(l));
        total.iter_mut().zip(&r).for_each(|(t, x)| *t += x);
    }
    total
}

/// `out[n] = beta·out + scale·Σ_t (b_{n,t}ᵀ M a_{n,t} + b_{n,t}·m_bias)` (`m` `[d_out, d_in]`).
pub fn ghost_dot_dense(train: &Train<'_>, m: &[f32], m_bias: Option<&[f32]>, out: &mut [f32], acc: Accumulate) {
    let d = Dims::of(train);
    let m_aug: Cow<'_, [f32]> = if d.ones {
        let mb = m_bias.expect("a layer with a bias needs m_bias");
        let mut v = Vec::with_capacity(d.grad_len());
        for o in 0..d.d_out {
            v.extend_from_slice(&m[o * d.d_in..(o + 1) * d.d_in]);
            v.push(mb[o]);
        }
        Cow::Owned(v)
    } else {
        Cow::Borrowed(m)
    };
    write_out(out, &dense_dot(train, &m_aug, 1, d), acc);
}

/// `out[v] = beta·out[v] + scale·Σ_{u∈v} w_u bq_u aq_uᵀ` (`[V, d_out, d_in]`), bias column into
/// `out_bias` (`[V, d_out]`).
#[allow(clippy::too_many_arguments)]
pub fn factored_grad(
    query: &Query<'_>,
    weights: Option<&[f32]>,
    d_in: usize,
    d_out: usize,
    has_bias: bool,
    out: &mut [f32],
    out_bias: Option<&mut [f32]>,
    acc: Accumulate,
) {
    let d = Dims::new(d_in, d_out, has_bias);
    let q = Side::new(query.aq, query.bq, query.mask, &query.ranges, d, weights);
    let m = factor_all(&q, d);
    if !has_bias {
        out.par_chunks_mut(4096).zip(m.par_chunks(4096)).for_each(|(o, r)| {
            o.iter_mut().zip(r).for_each(|(o, &r)| *o = accumulate(*o, r as f64, acc));
        });
        return;
    }
    let mut out_bias = out_bias;
    for (row, (o, mr)) in out.chunks_exact_mut(d_in).zip(m.chunks_exact(d.di)).enumerate() {
        o.iter_mut().zip(&mr[..d_in]).for_each(|(o, &r)| *o = accumulate(*o, r as f64, acc));
        if let Some(ob) = out_bias.as_deref_mut() {
            ob[row] = accumulate(ob[row], mr[d_in] as f64, acc);
        }
    }
}

/// `Σ_t Σ_u (A_n A_nᵀ ⊙ B_n B_nᵀ)[t, u]` restricted to rows `t` in raw block `blk` and `u` in
/// blocks `≥ blk` (off-diagonal blocks counted twice, by symmetry): summed over `blk`, `‖G_n‖²`.
fn self_gram_block(train: &Train<'_>, n: usize, blk: usize, d: Dims, s: &mut Scratch) -> f64 {
    let block_rows = |b: usize| n * train.t + b * TRAIN_BLOCK..n * train.t + train.t.min((b + 1) * TRAIN_BLOCK);
    let (a, tr) = gather(train.a, train.mask, block_rows(blk), d.d_in, d.ones, None, &mut s.a);
    let (b, _) = gather(train.b, train.mask, block_rows(blk), d.d_out, false, None, &mut s.b);
    let mut total = 0.0f64;
    for other in blk..train.t.div_ceil(TRAIN_BLOCK) {
        let (qa, qr) = gather(train.a, train.mask, block_rows(other), d.d_in, d.ones, None, &mut s.qa);
        let (qb, _) = gather(train.b, train.mask, block_rows(other), d.d_out, false, None, &mut s.qb);
        let mut acc = [0.0f64];
        gram_tile(a, b, &[0, tr], qa, qb, std::slice::from_ref(&(0..qr)), 0..qr, d, &mut acc, &mut s.sa, &mut s.sb);
        total += if other == blk { acc[0] } else { 2.0 * acc[0] };
    }
    total
}

/// `K[n, m] = beta·K + scale·<G_n, G_m>` (`out` `[N, N]`, symmetric).
pub fn ghost_gram(train: &Train<'_>, form: Form, out: &mut [f32], acc: Accumulate) {
    let d = Dims::of(train);
    let nn = train.n;
    let mut res = match form {
        Form::Materialize => {
            let g = materialize_train(train, d);
            let mut res = vec![0.0f64; nn * nn];
            res.par_chunks_mut(nn).enumerate().for_each(|(n, row)| {
                let gn = &g[n * d.grad_len()..(n + 1) * d.grad_len()];
                for (m, r) in row.iter_mut().enumerate().skip(n) {
                    *r = frob(gn, &g[m * d.grad_len()..(m + 1) * d.grad_len()], d.di);
                }
            });
            res
        }
        // Dense-query does not apply train×train (the context never asks for it); Gram it is.
        Form::Gram | Form::DenseQuery => {
            let blocks = train.t.div_ceil(TRAIN_BLOCK);
            let mut partial = vec![0.0f64; nn * blocks * nn];
            partial.par_chunks_mut(nn).enumerate().for_each_init(Scratch::default, |s, (task, row)| {
                let (n, blk) = (task / blocks, task % blocks);
                row[n] = self_gram_block(train, n, blk, d, s);
                let rows = n * train.t + blk * TRAIN_BLOCK..n * train.t + train.t.min((blk + 1) * TRAIN_BLOCK);
                let (a, tr) = gather(train.a, train.mask, rows.clone(), d.d_in, d.ones, None, &mut s.a);
                let (b, _) = gather(train.b, train.mask, rows, d.d_out, false, None, &mut s.b);
                for (m, r) in row.iter_mut().enumerate().skip(n + 1) {
                    let rows_m = m * train.t..(m + 1) * train.t;
                    let (qa, qr) = gather(train.a, train.mask, rows_m.clone(), d.d_in, d.ones, None, &mut s.qa);
                    let (qb, _) = gather(train.b, train.mask, rows_m, d.d_out, false, None, &mut s.qb);
                    let mut one = [0.0f64];
                    gram_tile(a, b, &[0, tr], qa, qb, std::slice::from_ref(&(0..qr)), 0..qr, d, &mut one, &mut s.sa, &mut s.sb);
                    *r = one[0];
                }
            });
            merge_blocks(&partial, nn, blocks, nn)
        }
    };
    for n in 0..nn {
        for m in 0..n {
            res[n * nn + m] = res[m * nn + n];
        }
    }
    write_out(out, &res, acc);
}

/// `out[n] = beta·out + scale·‖G_n‖²`.
pub fn ghost_sqnorm(train: &Train<'_>, form: Form, out: &mut [f32], acc: Accumulate) {
    let d = Dims::of(train);
    let res: Vec<f64> = match form {
        Form::Materialize => (0..train.n)
            .into_par_iter()
            .map_init(Scratch::default, |s, n| {
                let rows = n * train.t..(n + 1) * train.t;
                let (a, k) = gather(train.a, train.mask, rows.clone(), d.d_in, d.ones, None, &mut s.a);
                let (b, _) = gather(train.b, train.mask, rows, d.d_out, false, None, &mut s.b);
                s.sa.resize(d.grad_len(), 0.0);
                outer_sum(a, b, k, 0, d.d_out, d, &mut s.sa);
                frob(&s.sa, &s.sa, d.di)
            })
            .collect(),
        Form::Gram | Form::DenseQuery => {
            let blocks = train.t.div_ceil(TRAIN_BLOCK);
            let partial: Vec<f64> = (0..train.n * blocks)
                .into_par_iter()
                .map_init(Scratch::default, |s, task| self_gram_block(train, task / blocks, task % blocks, d, s))
                .collect();
            merge_blocks(&partial, train.n, blocks, 1)
        }
    };
    write_out(out, &res, acc);
}

//! Fast CPU path of the model-level calls (multi-threaded, f32 products, f64 sums across tiles
//! and terms; a fixed partition of the work, so results are bitwise identical run to run
//! whatever the number of threads).
//!
//! * a Linear use's own term: [`crate::cpu::fast`] in the chosen form;
//! * cross terms (and the masked-Gram embedding form): per training sample, tiles of 64 training
//!   rows × 256 query rows; `c·c'` by GEMM, `r·r'` by GEMM, id equality or gather;
//! * scatter/gather: per query segment, the kept rows sorted by (id, row), equal ids summed in
//!   row order into a compact table; each training token finds its row by binary search;
//! * norms: per-sample d-long gradients materialized in f64 and dotted.

use std::ops::Range;

use rayon::prelude::*;

use super::{host_ranges, linear_shape, mat_sides, LayerUse, MatSides, Mode, Term, UseDims};
use crate::buffer::{HostIds, HostSlice, Tensor};
use crate::context::host_u8;
use crate::cpu::fast::matmul;
use crate::cpu::reference::{Query, Train};
use crate::error::{GhostError, Result};
use crate::ghost_dot::Accumulate;

const TRAIN_TILE: usize = 64;
const QUERY_TILE: usize = 256;

/// The kept rows of a matrix use, converted to f32 and concatenated by range.
struct Rows {
    /// `r` rows (width `dr`) when dense.
    r: Vec<f32>,
    /// ids when `r` is one-hot.
    ids: Vec<i32>,
    /// `c` rows, width `dc + bias` (the bias column is 1).
    c: Vec<f32>,
    segs: Vec<Range<usize>>,
}

/// Host token ids (i32 or i64). Kept rows' ids are validated to lie in `[0, vocab)`, so
/// `get(r) as i32` is exact for every row this module reads (masked rows are never read).
fn ids_of<'a>(t: &Tensor<'a>) -> Result<HostIds<'a>> {
    let h = t.host("x")?;
    h.ids().ok_or(GhostError::UnsupportedDtype { what: "x", dtype: h.dtype(), op: "embedding" })
}

impl Rows {
    fn new(s: &MatSides<'_>, mask: Option<&[u8]>, ranges: &[(usize, usize)], bias: bool) -> Result<Rows> {
        let (dr, dc) = (s.dr as usize, s.dc as usize);
        let stride = dc + bias as usize;
        let (rh, ch) = (s.r.host("x")?, s.c.host("b")?);
        let idh = if s.r_ids { Some(ids_of(&s.r)?) } else { None };
        let mut rows = Rows { r: Vec::new(), ids: Vec::new(), c: Vec::new(), segs: Vec::with_capacity(ranges.len()) };
        let mut k = 0;
        for &(a, e) in ranges {
            let start = k;
            for row in a..e {
                if mask.is_some_and(|m| m[row] == 0) {
                    continue;
                }
                let off = rows.c.len();
                rows.c.resize(off + stride, 1.0);
                ch.copy_to_f32(row * dc, &mut rows.c[off..off + dc]);
                match idh {
                    Some(ids) => rows.ids.push(ids.get(row) as i32),
                    None => {
                        let off = rows.r.len();
                        rows.r.resize(off + dr, 0.0);
                        rh.copy_to_f32(row * dr, &mut rows.r[off..]);
                    }
                }
                k += 1;
            }
            rows.segs.push(start..k);
        }
        Ok(rows)
    }
    fn len(&self) -> usize {
        self.segs.last().map_or(0, |s| s.end)
    }
}

/// `Σ_{t} Σ_{u ∈ segs[v]} R[t,u]·C[t,u]` for every segment of `q`, `t` over all rows of `tr`.
fn cross_rows(tr: &Rows, q: &Rows, dr: usize, dc: usize, t_ids: bool, q_ids: bool) -> Vec<f64> {
    let mut acc = vec![0.0f64; q.segs.len()];
    let (nt, nq) = (tr.len(), q.len());
    let mut sc = Vec::new();
    let mut sr = Vec::new();
    for t0 in (0..nt).step_by(TRAIN_TILE) {
        let th = TRAIN_TILE.min(nt - t0);
        for q0 in (0..nq).step_by(QUERY_TILE) {
            let w = QUERY_TILE.min(nq - q0);
            sc.resize(th * w, 0.0);
            sr.resize(th * w, 0.0);
            matmul(th, w, dc, &mut sc, w, &tr.c[t0 * dc..], dc, 1, &q.c[q0 * dc..], 1, dc);
            match (t_ids, q_ids) {
                (false, false) => matmul(th, w, dr, &mut sr, w, &tr.r[t0 * dr..], dr, 1, &q.r[q0 * dr..], 1, dr),
                (true, true) => {
                    for t in 0..th {
                        for u in 0..w {
                            sr[t * w + u] = (tr.ids[t0 + t] == q.ids[q0 + u]) as u8 as f32;
                        }
                    }
                }
                (true, false) => {
                    for t in 0..th {
                        let id = tr.ids[t0 + t] as usize;
                        for u in 0..w {
                            sr[t * w + u] = q.r[(q0 + u) * dr + id];
                        }
                    }
                }
                (false, true) => {
                    for t in 0..th {
                        for u in 0..w {
                            sr[t * w + u] = tr.r[(t0 + t) * dr + q.ids[q0 + u] as usize];
                        }
                    }
                }
            }
            for t in 0..th {
                for (v, s) in q.segs.iter().enumerate() {
                    let (lo, hi) = (s.start.max(q0), s.end.min(q0 + w));
                    if lo >= hi {
                        continue;
                    }
                    let mut sum = 0.0f32;
                    for u in lo - q0..hi - q0 {
                        sum += sr[t * w + u] * sc[t * w + u];
                    }
                    acc[v] += sum as f64;
                }
            }
        }
    }
    acc
}

/// Sorted compact table of one segment: distinct ids and the sum of their `b` rows.
struct Table {
    ids: Vec<i32>,
    rows: Vec<f32>,
}

impl Table {
    fn new(ids: HostIds<'_>, b: HostSlice<'_>, mask: Option<&[u8]>, range: (usize, usize), d: usize) -> Table {
        let mut order: Vec<usize> = (range.0..range.1).filter(|&r| mask.map_or(true, |m| m[r] != 0)).collect();
        order.sort_by_key(|&r| (ids.get(r), r));
        let mut t = Table { ids: Vec::new(), rows: Vec::new() };
        let mut tmp = vec![0.0f32; d];
        for r in order {
            let id = ids.get(r) as i32;
            if t.ids.last() != Some(&id) {
                t.ids.push(id);
                t.rows.resize(t.rows.len() + d, 0.0);
            }
            b.copy_to_f32(r * d, &mut tmp);
            let off = t.rows.len() - d;
            t.rows[off..].iter_mut().zip(&tmp).for_each(|(x, y)| *x += y);
        }
        t
    }
    fn row(&self, id: i32, d: usize) -> Option<&[f32]> {
        self.ids.binary_search(&id).ok().map(|k| &self.rows[k * d..(k + 1) * d])
    }
}

fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
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

/// `Σ_{t ∈ rows, kept} b_t · table[id_t]`.
fn gather_sum(ids: HostIds<'_>, b: HostSlice<'_>, mask: Option<&[u8]>, rows: Range<usize>, table: &Table, d: usize, tmp: &mut Vec<f32>) -> f64 {
    tmp.resize(d, 0.0);
    let mut s = 0.0f64;
    for r in rows {
        if mask.is_some_and(|m| m[r] == 0) {
            continue;
        }
        if let Some(row) = table.row(ids.get(r) as i32, d) {
            b.copy_to_f32(r * d, tmp);
            s += dot_f32(tmp, row) as f64;
        }
    }
    s
}

/// The (x, b, mask, ranges) of the "query" operand of a term: use `j`'s query in `Dot` mode, its
/// training rows otherwise.
/// `(x, b, mask, row ranges)` of a term's query operand.
type Operand<'a> = (Tensor<'a>, Tensor<'a>, Option<&'a [u8]>, Vec<(usize, usize)>);

fn query_operand<'a>(u: &LayerUse<'a>, d: &UseDims, n: usize, mode: Mode) -> Result<Operand<'a>> {
    Ok(match mode {
        Mode::Dot => {
            let q = u.query.factors().expect("validated");
            (q.x, q.b, host_u8("query mask", q.mask.as_ref())?, host_ranges(d, n as u64, mode))
        }
        _ => (u.train.x, u.train.b, host_u8("mask", u.train.mask.as_ref())?, host_ranges(d, n as u64, mode)),
    })
}

fn cross_term(n: usize, uses: &[LayerUse<'_>], dims: &[UseDims], i: usize, j: usize, bias: bool, mode: Mode) -> Result<Vec<f64>> {
    let (ui, uj) = (&uses[i], &uses[j]);
    let ti = mat_sides(&ui.kind, ui.train.x, ui.train.b, bias);
    let tmask = host_u8("mask", ui.train.mask.as_ref())?;
    let (qx, qb, qmask, qranges) = query_operand(uj, &dims[j], n, mode)?;
    let qs = mat_sides(&uj.kind, qx, qb, bias);
    let (dr, dc) = (ti.dr as usize, ti.dc as usize + bias as usize);
    let t = dims[i].t as usize;
    let (t_ids, q_ids) = (ti.r_ids, qs.r_ids);
    Ok(match mode {
        Mode::SelfNorm => {
            let tq = dims[j].t as usize;
            (0..n)
                .into_par_iter()
                .map(|s| -> Result<f64> {
                    let tr = Rows::new(&ti, tmask, &[(s * t, (s + 1) * t)], bias)?;
                    let q = Rows::new(&qs, qmask, &[(s * tq, (s + 1) * tq)], bias)?;
                    Ok(cross_rows(&tr, &q, dr, dc, t_ids, q_ids)[0])
                })
                .collect::<Result<Vec<f64>>>()?
        }
        _ => {
            let q = Rows::new(&qs, qmask, &qranges, bias)?;
            let per: Vec<Vec<f64>> = (0..n)
                .into_par_iter()
                .map(|s| -> Result<Vec<f64>> {
                    let tr = Rows::new(&ti, tmask, &[(s * t, (s + 1) * t)], bias)?;
                    Ok(cross_rows(&tr, &q, dr, dc, t_ids, q_ids))
                })
                .collect::<Result<_>>()?;
            per.concat()
        }
    })
}

fn gather_term(n: usize, uses: &[LayerUse<'_>], dims: &[UseDims], i: usize, j: usize, mode: Mode) -> Result<Vec<f64>> {
    let (ui, uj) = (&uses[i], &uses[j]);
    let d = ui.kind.b_width() as usize;
    let tids = ids_of(&ui.train.x)?;
    let tb = ui.train.b.host("b")?;
    let tmask = host_u8("mask", ui.train.mask.as_ref())?;
    let (qx, qb, qmask, qranges) = query_operand(uj, &dims[j], n, mode)?;
    let (qids, qbh) = (ids_of(&qx)?, qb.host("query b")?);
    let t = dims[i].t as usize;
    Ok(match mode {
        Mode::SelfNorm => (0..n)
            .into_par_iter()
            .map(|s| {
                let table = Table::new(qids, qbh, qmask, qranges[s], d);
                gather_sum(tids, tb, tmask, s * t..(s + 1) * t, &table, d, &mut Vec::new())
            })
            .collect(),
        _ => {
            let tables: Vec<Table> = qranges.par_iter().map(|&r| Table::new(qids, qbh, qmask, r, d)).collect();
            let nv = tables.len();
            (0..n * nv)
                .into_par_iter()
                .map_init(Vec::new, |tmp, k| {
                    let s = k / nv;
                    gather_sum(tids, tb, tmask, s * t..(s + 1) * t, &tables[k % nv], d, tmp)
                })
                .collect()
        }
    })
}

/// The summed norm gradient of the group's uses over `range_of(use)` rows, f64 `[d (+d)]`.
fn norm_grad(uses: &[LayerUse<'_>], group: &[usize], query: bool, range_of: &dyn Fn(usize) -> (usize, usize), d: usize, bias: bool) -> Result<Vec<f64>> {
    let mut g = vec![0.0f64; d * (1 + bias as usize)];
    let mut x = vec![0.0f32; d];
    let mut b = vec![0.0f32; d];
    for &u in group {
        let (xt, bt, mask) = if query {
            let q = uses[u].query.factors().expect("validated");
            (q.x.host("query x")?, q.b.host("query b")?, host_u8("query mask", q.mask.as_ref())?)
        } else {
            (uses[u].train.x.host("x")?, uses[u].train.b.host("b")?, host_u8("mask", uses[u].train.mask.as_ref())?)
        };
        let (s, e) = range_of(u);
        for r in s..e {
            if mask.is_some_and(|m| m[r] == 0) {
                continue;
            }
            xt.copy_to_f32(r * d, &mut x);
            bt.copy_to_f32(r * d, &mut b);
            for k in 0..d {
                g[k] += (b[k] * x[k]) as f64;
                if bias {
                    g[d + k] += b[k] as f64;
                }
            }
        }
    }
    Ok(g)
}

fn norm_term(n: usize, uses: &[LayerUse<'_>], dims: &[UseDims], group: &[usize], d: usize, bias: bool, mode: Mode) -> Result<Vec<f64>> {
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    let train: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|s| norm_grad(uses, group, false, &|u| (s * dims[u].t as usize, (s + 1) * dims[u].t as usize), d, bias))
        .collect::<Result<_>>()?;
    Ok(match mode {
        Mode::SelfNorm => train.iter().map(|g| dot(g, g)).collect(),
        Mode::Pairwise => (0..n * n).map(|k| dot(&train[k / n], &train[k % n])).collect(),
        Mode::Dot => {
            let ranges: Vec<Vec<(usize, usize)>> = group.iter().map(|&u| host_ranges(&dims[u], n as u64, mode)).collect();
            let nv = ranges[0].len();
            let query: Vec<Vec<f64>> = (0..nv)
                .into_par_iter()
                .map(|v| {
                    let pos = |u: usize| group.iter().position(|&g| g == u).expect("in group");
                    norm_grad(uses, group, true, &|u| ranges[pos(u)][v], d, bias)
                })
                .collect::<Result<_>>()?;
            (0..n * nv).map(|k| dot(&train[k / nv], &query[k % nv])).collect()
        }
    })
}

fn linear_term(n: usize, u: &LayerUse<'_>, dims: &UseDims, form: crate::ghost_dot::Form, mode: Mode) -> Result<Vec<f64>> {
    let shape = linear_shape(&u.kind);
    let train = Train {
        a: u.train.x.host("x")?,
        b: u.train.b.host("b")?,
        mask: host_u8("mask", u.train.mask.as_ref())?,
        n,
        t: dims.t as usize,
        d_in: shape.d_in as usize,
        d_out: shape.d_out as usize,
        has_bias: shape.has_bias,
    };
    let acc = Accumulate::overwrite();
    let mut out = match mode {
        Mode::Dot => vec![0.0f32; n * dims.query.as_ref().expect("validated").v as usize],
        Mode::Pairwise => vec![0.0f32; n * n],
        Mode::SelfNorm => vec![0.0f32; n],
    };
    match mode {
        Mode::Dot => {
            let q = u.query.factors().expect("validated");
            let query = Query {
                aq: q.x.host("query x")?,
                bq: q.b.host("query b")?,
                mask: host_u8("query mask", q.mask.as_ref())?,
                ranges: host_ranges(dims, n as u64, mode),
            };
            crate::cpu::fast::ghost_dot(&train, &query, form, &mut out, acc)
        }
        Mode::Pairwise => crate::cpu::fast::ghost_gram(&train, form, &mut out, acc),
        Mode::SelfNorm => crate::cpu::fast::ghost_sqnorm(&train, form, &mut out, acc),
    }
    Ok(out.into_iter().map(f64::from).collect())
}

/// The model-level result (`[N, V]`, `[N, N]` or `[N]`), terms summed in f64 in term order.
pub(crate) fn model(n: usize, uses: &[LayerUse<'_>], dims: &[UseDims], terms: &[Term], mode: Mode) -> Result<Vec<f64>> {
    let mut total: Option<Vec<f64>> = None;
    for term in terms {
        let r = match term {
            Term::Linear { u, form } => linear_term(n, &uses[*u], &dims[*u], *form, mode)?,
            Term::Cross { i, j, bias } => cross_term(n, uses, dims, *i, *j, *bias, mode)?,
            Term::Gather { i, j } => gather_term(n, uses, dims, *i, *j, mode)?,
            Term::Norm { uses: g, d, bias } => norm_term(n, uses, dims, g, *d as usize, *bias, mode)?,
        };
        match &mut total {
            None => total = Some(r),
            Some(t) => t.iter_mut().zip(&r).for_each(|(x, y)| *x += y),
        }
    }
    Ok(total.expect("at least one term"))
}


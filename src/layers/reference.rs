//! The float64 reference of the model-level calls: every parameter's per-sample gradient is
//! materialized in f64, in the parameter's storage layout, as the sum of its uses' gradients,
//! then dotted — the definitions of [`crate::layers`] read literally. Slow and simple on purpose.
//!
//! With `abs`, every factor is replaced by its absolute value: the result is then the sum of the
//! absolute values of all products any algorithm adds up (the tests' rounding bound).

use super::{LayerKind, LayerUse, Mode, WeightLayout};
use crate::buffer::{HostIds, Tensor};
use crate::context::host_u8;
use crate::error::{GhostError, Result};

/// Length of a parameter's flattened gradient (weight then bias).
pub fn param_len(kind: &LayerKind) -> usize {
    match *kind {
        LayerKind::Linear { d_in, d_out, has_bias, .. } => (d_out * (d_in + has_bias as u64)) as usize,
        LayerKind::Embedding { vocab, d } => (vocab * d) as usize,
        LayerKind::Norm { d, has_bias } => (d * (1 + has_bias as u64)) as usize,
    }
}

fn ids<'a>(t: &Tensor<'a>) -> Result<HostIds<'a>> {
    let h = t.host("x")?;
    h.ids().ok_or(GhostError::UnsupportedDtype { what: "x", dtype: h.dtype(), op: "embedding" })
}

/// Adds the gradient of rows `rows` of one use to `g` (the parameter's flattened storage).
#[allow(clippy::too_many_arguments)]
pub fn add_use_grad(
    kind: &LayerKind,
    x: &Tensor<'_>,
    b: &Tensor<'_>,
    mask: Option<&[u8]>,
    rows: std::ops::Range<usize>,
    abs: bool,
    g: &mut [f64],
) -> Result<()> {
    let f = |v: f64| if abs { v.abs() } else { v };
    let bh = b.host("b")?;
    for r in rows {
        if mask.is_some_and(|m| m[r] == 0) {
            continue;
        }
        match *kind {
            LayerKind::Linear { d_in, d_out, has_bias, layout } => {
                let (di, dout) = (d_in as usize, d_out as usize);
                let xh = x.host("x")?;
                let w_len = di * dout;
                for o in 0..dout {
                    let bo = f(bh.get_f64(r * dout + o));
                    for i in 0..di {
                        let ai = f(xh.get_f64(r * di + i));
                        let idx = match layout {
                            WeightLayout::OutIn => o * di + i,
                            WeightLayout::InOut => i * dout + o,
                        };
                        g[idx] += bo * ai;
                    }
                    if has_bias {
                        g[w_len + o] += bo;
                    }
                }
            }
            LayerKind::Embedding { d, .. } => {
                let d = d as usize;
                let id = ids(x)?.get(r) as usize; // kept rows only: validated in [0, vocab)
                for k in 0..d {
                    g[id * d + k] += f(bh.get_f64(r * d + k));
                }
            }
            LayerKind::Norm { d, has_bias } => {
                let d = d as usize;
                let xh = x.host("x")?;
                for k in 0..d {
                    let bk = f(bh.get_f64(r * d + k));
                    g[k] += bk * f(xh.get_f64(r * d + k));
                    if has_bias {
                        g[d + k] += bk;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Per-group flattened gradients: `[group][item][param_len]` for the training samples
/// (`query = false`) or the query segments.
fn grads(n: usize, uses: &[LayerUse<'_>], query: bool, abs: bool) -> Result<Vec<Vec<Vec<f64>>>> {
    let mut seen: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    for u in uses {
        if seen.contains(&u.param) {
            continue;
        }
        seen.push(u.param);
        let len = param_len(&u.kind);
        let mut items: Vec<Vec<f64>> = Vec::new();
        for w in uses.iter().filter(|w| w.param == u.param && (!query || w.query.factors().is_some())) {
            let (x, b, mask, ranges) = if query {
                let q = w.query.factors().expect("validated");
                let qd = super::vo::segments(q.q, &q.segments, crate::validate::Space::Host, "reference")?;
                (q.x, q.b, host_u8("query mask", q.mask.as_ref())?, qd.ranges())
            } else {
                let t = w.train.t as usize;
                (w.train.x, w.train.b, host_u8("mask", w.train.mask.as_ref())?, (0..n).map(|s| (s * t, (s + 1) * t)).collect())
            };
            if items.is_empty() {
                // One parameter gradient per sample / segment: [vocab, d] for an embedding, so
                // this can exceed the inputs by far.
                let what = format!("the reference gradients of param {} ({} × [{len}] f64)", u.param, ranges.len());
                crate::alloc::reserve_working_set(&what, (len as u64).saturating_mul(ranges.len() as u64), 8)?;
                items = (0..ranges.len()).map(|_| crate::alloc::try_vec(&what, len, 0.0)).collect::<Result<_>>()?;
            }
            for (item, &(s, e)) in items.iter_mut().zip(&ranges) {
                add_use_grad(&w.kind, &x, &b, mask, s..e, abs, item)?;
            }
        }
        out.push(items);
    }
    Ok(out)
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// The model-level result in f64: `[N, V]` (dot), `[N, N]` (pairwise) or `[N]` (self).
pub(crate) fn model(n: usize, uses: &[LayerUse<'_>], mode: Mode, abs: bool) -> Result<Vec<f64>> {
    let train = grads(n, uses, false, abs)?;
    Ok(match mode {
        Mode::SelfNorm => (0..n).map(|s| train.iter().map(|g| dot(&g[s], &g[s])).sum()).collect(),
        Mode::Pairwise => {
            (0..n * n).map(|k| train.iter().map(|g| dot(&g[k / n], &g[k % n])).sum()).collect()
        }
        Mode::Dot => {
            let query = grads(n, uses, true, abs)?;
            let nv = query[0].len();
            (0..n * nv).map(|k| train.iter().zip(&query).map(|(g, h)| dot(&g[k / nv], &h[k % nv])).sum()).collect()
        }
    })
}

/// The f64 reference (and, with `abs`, the magnitude) of a model call on host data, without
/// accumulation: `[N, V]` for `model_dot`, `[N, N]` for `model_gram`, `[N]` for `model_sqnorm`.
/// Inputs are validated as by the calls themselves.
pub fn model_reference(n: u64, uses: &[LayerUse<'_>], which: ModelOp, abs: bool) -> Result<Vec<f64>> {
    let mode = match which {
        ModelOp::Dot => Mode::Dot,
        ModelOp::Gram => Mode::Pairwise,
        ModelOp::SqNorm => Mode::SelfNorm,
    };
    let ctx = crate::Context::cpu_reference();
    ctx.validate_uses("model_reference", n, uses, mode)?;
    model(n as usize, uses, mode, abs)
}

/// Which model-level call (for [`model_reference`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOp {
    Dot,
    Gram,
    SqNorm,
}

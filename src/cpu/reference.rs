//! The float64 reference: per-sample gradients are materialized in f64 and dotted, exactly as
//! the definitions in MATH.md §0–§1 read. Slow and simple on purpose; tests only trust this.
//!
//! Every function can also return the *magnitude* of its result, the same formula evaluated on
//! absolute values (`<|G|_n, |G|_v>` with `|G| = Σ_t |b||a|ᵀ`). It bounds the sum of absolute
//! values of every product any algorithm adds up, so `|x − ref| ≤ c·ε·len·magnitude` is the
//! tolerance a correct f32 kernel meets, whatever the cancellation in the result.

use crate::buffer::HostSlice;

/// One materialized per-sample gradient in f64: `[d_out, d_in (+1 bias column)]`.
pub fn materialize(
    a: &HostSlice<'_>,
    b: &HostSlice<'_>,
    mask: Option<&[u8]>,
    rows: std::ops::Range<usize>,
    d_in: usize,
    d_out: usize,
    has_bias: bool,
    weights: Option<&[f32]>,
    abs: bool,
) -> Vec<f64> {
    let di = d_in + has_bias as usize;
    let mut g = vec![0.0f64; d_out * di];
    for r in rows {
        if mask.is_some_and(|m| m[r] == 0) {
            continue;
        }
        let w = weights.map_or(1.0, |w| w[r] as f64);
        let w = if abs { w.abs() } else { w };
        for o in 0..d_out {
            let mut bo = b.get_f64(r * d_out + o) * w;
            if abs {
                bo = bo.abs();
            }
            let row = &mut g[o * di..(o + 1) * di];
            for (i, gi) in row.iter_mut().enumerate().take(d_in) {
                let mut ai = a.get_f64(r * d_in + i);
                if abs {
                    ai = ai.abs();
                }
                *gi += bo * ai;
            }
            if has_bias {
                row[d_in] += bo;
            }
        }
    }
    g
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Shapes and host buffers of a training side.
pub struct Train<'a> {
    pub a: HostSlice<'a>,
    pub b: HostSlice<'a>,
    pub mask: Option<&'a [u8]>,
    pub n: usize,
    pub t: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub has_bias: bool,
}

impl Train<'_> {
    fn grads(&self, abs: bool) -> Vec<Vec<f64>> {
        (0..self.n)
            .map(|n| {
                materialize(
                    &self.a,
                    &self.b,
                    self.mask,
                    n * self.t..(n + 1) * self.t,
                    self.d_in,
                    self.d_out,
                    self.has_bias,
                    None,
                    abs,
                )
            })
            .collect()
    }
}

/// A query side: rows grouped into segments.
pub struct Query<'a> {
    pub aq: HostSlice<'a>,
    pub bq: HostSlice<'a>,
    pub mask: Option<&'a [u8]>,
    pub ranges: Vec<(usize, usize)>,
}

/// `out[n, v] = <G_n, Gq_v>` (row-major `[N, V]`).
pub fn ghost_dot(train: &Train<'_>, query: &Query<'_>, abs: bool) -> Vec<f64> {
    let gs = train.grads(abs);
    let qs: Vec<Vec<f64>> = query
        .ranges
        .iter()
        .map(|&(s, e)| {
            materialize(&query.aq, &query.bq, query.mask, s..e, train.d_in, train.d_out, train.has_bias, None, abs)
        })
        .collect();
    gs.iter().flat_map(|g| qs.iter().map(move |q| dot(g, q))).collect()
}

/// `out[n] = Σ_t b_{n,t}ᵀ M a_{n,t} (+ b_{n,t}·m_bias)` = `<G_n, [M | m_bias]>`.
pub fn ghost_dot_dense(train: &Train<'_>, m: &[f32], m_bias: Option<&[f32]>, abs: bool) -> Vec<f64> {
    let di = train.d_in + train.has_bias as usize;
    let mut dense = vec![0.0f64; train.d_out * di];
    for o in 0..train.d_out {
        for i in 0..train.d_in {
            dense[o * di + i] = m[o * train.d_in + i] as f64;
        }
        if train.has_bias {
            dense[o * di + train.d_in] = m_bias.expect("bias vector")[o] as f64;
        }
    }
    if abs {
        dense.iter_mut().for_each(|x| *x = x.abs());
    }
    train.grads(abs).iter().map(|g| dot(g, &dense)).collect()
}

/// `M_v = Σ_{u∈v} w_u bq_u aq_uᵀ` as `[V, d_out, d_in]` plus the bias column `[V, d_out]`.
pub fn factored_grad(
    query: &Query<'_>,
    weights: Option<&[f32]>,
    d_in: usize,
    d_out: usize,
    has_bias: bool,
    abs: bool,
) -> (Vec<f64>, Vec<f64>) {
    let di = d_in + has_bias as usize;
    let mut m = Vec::new();
    let mut mb = Vec::new();
    for &(s, e) in &query.ranges {
        let g = materialize(&query.aq, &query.bq, query.mask, s..e, d_in, d_out, has_bias, weights, abs);
        for o in 0..d_out {
            m.extend_from_slice(&g[o * di..o * di + d_in]);
            if has_bias {
                mb.push(g[o * di + d_in]);
            }
        }
    }
    (m, mb)
}

/// `K[n, m] = <G_n, G_m>` (row-major `[N, N]`).
pub fn ghost_gram(train: &Train<'_>, abs: bool) -> Vec<f64> {
    let gs = train.grads(abs);
    gs.iter().flat_map(|g| gs.iter().map(move |h| dot(g, h))).collect()
}

/// `‖G_n‖²`.
pub fn ghost_sqnorm(train: &Train<'_>, abs: bool) -> Vec<f64> {
    train.grads(abs).iter().map(|g| dot(g, g)).collect()
}

//! The fast CPU path (multi-threaded f32, gemm crate). PLACEHOLDER being replaced: currently
//! evaluates through the f64 reference.

use super::apply_accumulate;
use super::reference::{self, Query, Train};
use crate::ghost_dot::{Accumulate, Form};

pub fn ghost_dot(train: &Train<'_>, query: &Query<'_>, _form: Form, out: &mut [f32], acc: Accumulate) {
    apply_accumulate(out, &reference::ghost_dot(train, query, false), acc);
}
pub fn ghost_dot_dense(train: &Train<'_>, m: &[f32], m_bias: Option<&[f32]>, out: &mut [f32], acc: Accumulate) {
    apply_accumulate(out, &reference::ghost_dot_dense(train, m, m_bias, false), acc);
}
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
    let (m, mb) = reference::factored_grad(query, weights, d_in, d_out, has_bias, false);
    apply_accumulate(out, &m, acc);
    if let Some(ob) = out_bias {
        apply_accumulate(ob, &mb, acc);
    }
}
pub fn ghost_gram(train: &Train<'_>, _form: Form, out: &mut [f32], acc: Accumulate) {
    apply_accumulate(out, &reference::ghost_gram(train, false), acc);
}
pub fn ghost_sqnorm(train: &Train<'_>, _form: Form, out: &mut [f32], acc: Accumulate) {
    apply_accumulate(out, &reference::ghost_sqnorm(train, false), acc);
}

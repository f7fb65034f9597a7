//! CPU backends: a float64 reference (plain loops, obviously right; what every test compares
//! against) and a fast multi-threaded f32 path built on the `gemm` crate (what CPU users run).

pub mod fast;
pub mod reference;

use crate::ghost_dot::Accumulate;

/// `out = beta·out + scale·result`, reading `out` only when `beta != 0`.
pub fn apply_accumulate<T: Copy + Into<f64>>(out: &mut [f32], result: &[T], acc: Accumulate) {
    debug_assert_eq!(out.len(), result.len());
    for (o, &r) in out.iter_mut().zip(result) {
        let r: f64 = r.into();
        let prev = if acc.beta == 0.0 { 0.0 } else { acc.beta as f64 * *o as f64 };
        *o = (prev + acc.scale as f64 * r) as f32;
    }
}

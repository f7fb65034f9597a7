//! `Context::ghg` against a hand-written f64 model (tests/common/mlp.rs: a one-hidden-layer MLP,
//! T = 1, and a mean-pooled sequence model, T = 3), on the reference, the fast CPU path and the
//! PTX interpreter:
//! 1. the first-order part is `<g_n, g_val>` with explicit per-sample gradients (themselves
//!    checked against central finite differences of the loss);
//! 2. the second-order part is `g_nᵀ H_val v` with `H_val v` from central finite differences of
//!    the explicit validation gradient;
//! 3. ghg is exactly the Shapley value (subset enumeration) of the second-order Taylor expansion
//!    of the one-step utility `U(S) = L_val(w − η Σ_S g) − L_val(w)`, and approaches the exact
//!    Shapley value of the true `U` with error `O(η³)` (fitted slope).
#![cfg(feature = "interp")]

mod common;

use std::sync::Arc;

#[path = "common/mlp.rs"]
mod mlp;

use mlp::{Factors, Mlp};
use common::rng;
use ghostgrad::runtime::interp::InterpRuntime;
use ghostgrad::{Accumulate, Context, DType, FormRequest, GhgLayer, LayerShape, Tensor, TensorMut, TrainFactors};
use rand::Rng;

struct Problem {
    m: Mlp,
    n: usize,
    nv: usize,
    xs: Vec<f64>,
    ys: Vec<usize>,
    xv: Vec<f64>,
    yv: Vec<usize>,
}

fn problem(seed: u64, t: usize, n: usize) -> Problem {
    let mut r = rng(seed);
    let (d, h, c, nv) = (3, 4, 3, 4);
    let mut m = Mlp { d, h, c, t, w: vec![] };
    m.w = (0..m.nparams()).map(|_| r.random::<f64>() * 2.0 - 1.0).collect();
    let mut x = |k| (0..k).map(|_| r.random::<f64>() * 2.0 - 1.0).collect::<Vec<f64>>();
    let (xs, xv) = (x(n * t * d), x(nv * t * d));
    let ys = (0..n).map(|i| i % c).collect();
    let yv = (0..nv).map(|i| (i + 1) % c).collect();
    Problem { m, n, nv, xs, ys, xv, yv }
}

impl Problem {
    fn val_scale(&self) -> f64 {
        1.0 / self.nv as f64
    }
    fn val_loss(&self, w: &[f64]) -> f64 {
        self.m.loss(w, &self.xv, &self.yv, self.val_scale())
    }
    fn val_grad(&self, w: &[f64]) -> Vec<f64> {
        self.m.flat_grad(&self.m.factors(w, &self.xv, &self.yv, self.val_scale()), 0..self.nv)
    }
    fn grads(&self) -> Vec<Vec<f64>> {
        let f = self.m.factors(&self.m.w, &self.xs, &self.ys, 1.0);
        (0..self.n).map(|i| self.m.flat_grad(&f, i..i + 1)).collect()
    }
    /// H_val u from central differences of the explicit validation gradient.
    fn hvp_fd(&self, u: &[f64], eps: f64) -> Vec<f64> {
        let wp: Vec<f64> = self.m.w.iter().zip(u).map(|(w, u)| w + eps * u).collect();
        let wm: Vec<f64> = self.m.w.iter().zip(u).map(|(w, u)| w - eps * u).collect();
        self.val_grad(&wp).iter().zip(self.val_grad(&wm)).map(|(p, q)| (p - q) / (2.0 * eps)).collect()
    }
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

fn f32v(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// ghg of the problem's batch (v = Σ_batch g) on a backend: "reference", "cpu" or "interp".
fn ghg(p: &Problem, eta: f32, backend: &str) -> Vec<f64> {
    let m = &p.m;
    let f = m.factors(&m.w, &p.xs, &p.ys, 1.0);
    let v = m.flat_grad(&f, 0..p.n);
    let (fv, dv) = m.factors_jvp(&m.w, &p.xv, &p.yv, p.val_scale(), Some(&v));
    let (t, n, nv) = (m.t as u64, p.n as u64, p.nv as u64);
    let s1 = LayerShape::new(m.d as u64, m.h as u64).with_bias(true);
    let s2 = LayerShape::new(m.h as u64, m.c as u64).with_bias(true);
    // Per layer: train a, b, a_val, b_val, a_dot, b_dot.
    let bufs: Vec<Vec<f32>> = [&f, &fv, &dv]
        .iter()
        .flat_map(|x: &&Factors| [f32v(&x.a1), f32v(&x.b1), f32v(&x.a2), f32v(&x.b2)])
        .collect();
    let host: Vec<Tensor<'_>> = bufs.iter().map(|b| Tensor::from(&b[..])).collect();
    let rt = Arc::new(InterpRuntime::new().unwrap());
    let dev: Vec<_> = bufs.iter().map(|b| rt.upload(b, DType::F32).unwrap()).collect();
    let tens: Vec<Tensor<'_>> = if backend == "interp" { dev.iter().map(|b| b.view().into()).collect() } else { host };
    let layer = |shape, tl: u64, i: usize| GhgLayer {
        shape,
        train: TrainFactors { a: tens[i], b: tens[i + 1], n, t: tl, mask: None },
        a_val: tens[4 + i],
        b_val: tens[5 + i],
        a_dot: tens[8 + i],
        b_dot: tens[9 + i],
        t_v: nv * tl,
        val_mask: None,
    };
    let layers = [layer(s1, t, 0), layer(s2, 1, 2)];
    let mut out = vec![f32::NAN; p.n];
    match backend {
        "interp" => {
            let ctx = Context::with_runtime(rt.clone());
            let mut o = rt.upload(&out, DType::F32).unwrap();
            ctx.ghg(&layers, eta, &mut TensorMut::from(o.view_mut()), Accumulate::overwrite(), FormRequest::Auto).unwrap();
            out = rt.read_f32(&o).unwrap();
        }
        b => {
            let ctx = if b == "cpu" { Context::cpu() } else { Context::cpu_reference() };
            ctx.ghg(&layers, eta, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto).unwrap();
        }
    }
    out.iter().map(|&x| x as f64).collect()
}

const BACKENDS: [&str; 3] = ["reference", "cpu", "interp"];

#[test]
fn per_sample_gradients_match_finite_differences_of_the_loss() {
    for t in [1, 3] {
        let p = problem(1, t, 3);
        let g = p.grads();
        let st = t * p.m.d;
        for (i, gi) in g.iter().enumerate() {
            let x = &p.xs[i * st..(i + 1) * st];
            for k in 0..p.m.nparams() {
                let eps = 1e-5;
                let (mut wp, mut wm) = (p.m.w.clone(), p.m.w.clone());
                wp[k] += eps;
                wm[k] -= eps;
                let fd = (p.m.loss1(&wp, x, p.ys[i]) - p.m.loss1(&wm, x, p.ys[i])) / (2.0 * eps);
                assert!((fd - gi[k]).abs() < 1e-8, "T {t} sample {i} param {k}: backward {} vs FD {fd}", gi[k]);
            }
        }
    }
}

#[test]
fn first_and_second_order_parts_match_explicit_gradients_and_fd_hvp() {
    for t in [1, 3] {
        let p = problem(2 + t as u64, t, 5);
        let g = p.grads();
        let gval = p.val_grad(&p.m.w);
        let v: Vec<f64> = (0..p.m.nparams()).map(|k| g.iter().map(|gi| gi[k]).sum()).collect();
        let eps = 1e-4;
        let hv = p.hvp_fd(&v, eps);
        for b in BACKENDS {
            // φ(η) = −η F + (η²/2) S  ⇒  F = (φ(−1) − φ(1))/2, S = φ(1) + φ(−1).
            let (pp, pm) = (ghg(&p, 1.0, b), ghg(&p, -1.0, b));
            for i in 0..p.n {
                let (f, s) = ((pm[i] - pp[i]) / 2.0, pp[i] + pm[i]);
                let want_f = dot(&g[i], &gval);
                let want_s = dot(&g[i], &hv);
                let norm = |x: &[f64]| dot(x, x).sqrt();
                // f32 factors and evaluation (~1e-6 relative) and the FD truncation O(eps²).
                let tol_f = 1e-5 * norm(&g[i]) * norm(&gval);
                let tol_s = 1e-5 * norm(&g[i]) * norm(&hv) + 1e-6;
                assert!((f - want_f).abs() <= tol_f, "{b} T {t} n {i}: first order {f} vs explicit {want_f}");
                assert!((s - want_s).abs() <= tol_s, "{b} T {t} n {i}: second order {s} vs g·(H v)_FD {want_s}");
            }
        }
    }
}

/// Exact Shapley values of `u` over `n` players by subset enumeration.
fn shapley(n: usize, u: impl Fn(&[usize]) -> f64) -> Vec<f64> {
    let fact = |k: usize| (1..=k).map(|x| x as f64).product::<f64>();
    let util: Vec<f64> = (0..1usize << n).map(|mask| u(&(0..n).filter(|i| mask >> i & 1 == 1).collect::<Vec<_>>())).collect();
    (0..n)
        .map(|i| {
            (0..1usize << n)
                .filter(|m| m >> i & 1 == 0)
                .map(|m| {
                    let s = m.count_ones() as usize;
                    fact(s) * fact(n - s - 1) / fact(n) * (util[m | 1 << i] - util[m])
                })
                .sum()
        })
        .collect()
}

#[test]
fn ghg_is_the_shapley_value_of_the_taylor_utility_and_converges_like_eta_cubed() {
    for t in [1, 3] {
        let p = problem(7 + t as u64, t, 6);
        let g = p.grads();
        let gval = p.val_grad(&p.m.w);
        let gsum = |s: &[usize]| -> Vec<f64> { (0..p.m.nparams()).map(|k| s.iter().map(|&i| g[i][k]).sum()).collect() };
        let l0 = p.val_loss(&p.m.w);
        let mut errs = Vec::new();
        let etas = [0.1f64, 0.05, 0.025, 0.0125];
        for &eta in &etas {
            // Second-order Taylor utility, H_val g_S by central FD (exact for the quadratic up to O(ε²)).
            let taylor = shapley(p.n, |s| {
                let gs = gsum(s);
                if s.is_empty() {
                    return 0.0;
                }
                -eta * dot(&gs, &gval) + 0.5 * eta * eta * dot(&gs, &p.hvp_fd(&gs, 1e-4))
            });
            let exact = shapley(p.n, |s| {
                let gs = gsum(s);
                let w: Vec<f64> = p.m.w.iter().zip(&gs).map(|(w, g)| w - eta * g).collect();
                p.val_loss(&w) - l0
            });
            for b in BACKENDS {
                let got = ghg(&p, eta as f32, b);
                for i in 0..p.n {
                    let scale = taylor.iter().map(|x| x.abs()).fold(0.0, f64::max);
                    assert!((got[i] - taylor[i]).abs() <= 2e-5 * scale + 1e-9, "{b} T {t} eta {eta} n {i}: ghg {} vs Taylor Shapley {}", got[i], taylor[i]);
                }
            }
            let got = ghg(&p, eta as f32, "reference");
            errs.push((0..p.n).map(|i| (got[i] - exact[i]).abs()).fold(0.0, f64::max));
        }
        // Least-squares slope of log err vs log eta.
        let xs: Vec<f64> = etas.iter().map(|e| e.ln()).collect();
        let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
        let (mx, my) = (xs.iter().sum::<f64>() / 4.0, ys.iter().sum::<f64>() / 4.0);
        let slope = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
        eprintln!("T {t}: |ghg − exact Shapley| = {errs:?} at eta {etas:?}: slope {slope:.3}");
        assert!((2.6..3.4).contains(&slope), "T {t}: error slope {slope} (errors {errs:?}), expected ≈ 3");
    }
}

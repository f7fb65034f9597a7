//! A hand-written f64 model for In-Run Data Shapley checks (shared by tests/inrun_autodiff.rs
//! and examples/inrun_shapley_demo.rs): per-token `h_t = W1 x_t + b1`, `z_t = tanh h_t`,
//! mean-pooled `z̄ = (1/T) Σ_t z_t`, `o = W2 z̄ + b2`, softmax cross-entropy. `T = 1` is the
//! plain one-hidden-layer MLP. Forward, per-sample factors (A, B) of both linear layers, and
//! the forward-over-reverse JVP of the (scaled) gradient factors along a parameter direction.
#![allow(dead_code)]

#[derive(Debug, Clone)]
pub struct Mlp {
    pub d: usize,
    pub h: usize,
    pub c: usize,
    pub t: usize,
    /// Flat parameters: W1 [h, d], b1 [h], W2 [c, h], b2 [c].
    pub w: Vec<f64>,
}

/// Factors of a set of samples, each row-major: a1 [N·T, d], b1 [N·T, h], a2 [N, h], b2 [N, c].
#[derive(Debug, Clone, Default)]
pub struct Factors {
    pub a1: Vec<f64>,
    pub b1: Vec<f64>,
    pub a2: Vec<f64>,
    pub b2: Vec<f64>,
}

impl Mlp {
    pub fn nparams(&self) -> usize {
        self.h * self.d + self.h + self.c * self.h + self.c
    }
    fn off(&self) -> (usize, usize, usize) {
        let o1 = self.h * self.d;
        let o2 = o1 + self.h;
        (o1, o2, o2 + self.c * self.h)
    }
    /// (z [T, h], z̄ [h], p [c]) of one sample `x [T, d]` under parameters `w`.
    fn forward(&self, w: &[f64], x: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (o1, o2, o3) = self.off();
        let mut z = vec![0.0; self.t * self.h];
        let mut zb = vec![0.0; self.h];
        for t in 0..self.t {
            for j in 0..self.h {
                let mut s = w[o1 + j];
                for i in 0..self.d {
                    s += w[j * self.d + i] * x[t * self.d + i];
                }
                z[t * self.h + j] = s.tanh();
                zb[j] += z[t * self.h + j] / self.t as f64;
            }
        }
        let mut o: Vec<f64> = (0..self.c).map(|k| w[o3 + k] + (0..self.h).map(|j| w[o2 + k * self.h + j] * zb[j]).sum::<f64>()).collect();
        let m = o.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = o.iter().map(|v| (v - m).exp()).sum();
        for v in o.iter_mut() {
            *v = (*v - m).exp() / s;
        }
        (z, zb, o)
    }
    /// Cross-entropy of one sample.
    pub fn loss1(&self, w: &[f64], x: &[f64], y: usize) -> f64 {
        -self.forward(w, x).2[y].ln()
    }
    /// `scale · Σ_samples loss`.
    pub fn loss(&self, w: &[f64], xs: &[f64], ys: &[usize], scale: f64) -> f64 {
        let st = self.t * self.d;
        ys.iter().enumerate().map(|(n, &y)| self.loss1(w, &xs[n * st..(n + 1) * st], y)).sum::<f64>() * scale
    }
    /// Per-sample factors of `scale·loss_n` (the B sides carry `scale`).
    pub fn factors(&self, w: &[f64], xs: &[f64], ys: &[usize], scale: f64) -> Factors {
        self.factors_jvp(w, xs, ys, scale, None).0
    }
    /// Factors and, with `v`, their directional derivatives along `v` (ȧ1 = 0 since a1 = x).
    pub fn factors_jvp(&self, w: &[f64], xs: &[f64], ys: &[usize], scale: f64, v: Option<&[f64]>) -> (Factors, Factors) {
        let (o1, o2, o3) = self.off();
        let (d, h, c, tt) = (self.d, self.h, self.c, self.t);
        let (mut f, mut g) = (Factors::default(), Factors::default());
        for (n, &y) in ys.iter().enumerate() {
            let x = &xs[n * tt * d..(n + 1) * tt * d];
            let (z, zb, p) = self.forward(w, x);
            let go: Vec<f64> = (0..c).map(|k| scale * (p[k] - (k == y) as u8 as f64)).collect();
            let gz: Vec<f64> = (0..h).map(|j| (0..c).map(|k| w[o2 + k * h + j] * go[k]).sum()).collect();
            f.a2.extend_from_slice(&zb);
            f.b2.extend_from_slice(&go);
            for t in 0..tt {
                f.a1.extend_from_slice(&x[t * d..(t + 1) * d]);
                for j in 0..h {
                    let zz = z[t * h + j];
                    f.b1.push(gz[j] * (1.0 - zz * zz) / tt as f64);
                }
            }
            let Some(v) = v else { continue };
            // Forward-over-reverse along v.
            let mut zd = vec![0.0; tt * h];
            let mut zbd = vec![0.0; h];
            for t in 0..tt {
                for j in 0..h {
                    let mut hd = v[o1 + j];
                    for i in 0..d {
                        hd += v[j * d + i] * x[t * d + i];
                    }
                    let zz = z[t * h + j];
                    zd[t * h + j] = (1.0 - zz * zz) * hd;
                    zbd[j] += zd[t * h + j] / tt as f64;
                }
            }
            let od: Vec<f64> = (0..c)
                .map(|k| v[o3 + k] + (0..h).map(|j| v[o2 + k * h + j] * zb[j] + w[o2 + k * h + j] * zbd[j]).sum::<f64>())
                .collect();
            let pod: f64 = (0..c).map(|k| p[k] * od[k]).sum();
            let god: Vec<f64> = (0..c).map(|k| scale * p[k] * (od[k] - pod)).collect();
            let gzd: Vec<f64> =
                (0..h).map(|j| (0..c).map(|k| v[o2 + k * h + j] * go[k] + w[o2 + k * h + j] * god[k]).sum()).collect();
            g.a2.extend_from_slice(&zbd);
            g.b2.extend_from_slice(&god);
            for t in 0..tt {
                g.a1.extend(std::iter::repeat(0.0).take(d));
                for j in 0..h {
                    let (zz, zzd) = (z[t * h + j], zd[t * h + j]);
                    g.b1.push((gzd[j] * (1.0 - zz * zz) - gz[j] * 2.0 * zz * zzd) / tt as f64);
                }
            }
        }
        (f, g)
    }
    /// Flat gradient `Σ_rows b aᵀ` (+ bias `Σ b`) of the samples `range` of `f`.
    pub fn flat_grad(&self, f: &Factors, range: std::ops::Range<usize>) -> Vec<f64> {
        let (o1, o2, o3) = self.off();
        let (d, h, c, tt) = (self.d, self.h, self.c, self.t);
        let mut g = vec![0.0; self.nparams()];
        for n in range {
            for r in n * tt..(n + 1) * tt {
                for j in 0..h {
                    let b = f.b1[r * h + j];
                    for i in 0..d {
                        g[j * d + i] += b * f.a1[r * d + i];
                    }
                    g[o1 + j] += b;
                }
            }
            for k in 0..c {
                let b = f.b2[n * c + k];
                for j in 0..h {
                    g[o2 + k * h + j] += b * f.a2[n * h + j];
                }
                g[o3 + k] += b;
            }
        }
        g
    }
}

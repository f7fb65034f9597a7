//! A tiny GPT-2-like model written by hand in f64 (tests/gpt2_model.rs): token embedding tied
//! to the LM head, positional embedding, one pre-LN block (LayerNorm, single-head causal
//! attention through an HF `Conv1D` c_attn, an `nn.Linear` output projection, LayerNorm, MLP
//! with an `nn.Linear` fc, tanh, and a `Conv1D` projection), a final LayerNorm, summed
//! next-token cross-entropy over the non-padding positions.
//!
//! Forward and backward per sample; the backward returns the full per-sample gradient (flat,
//! every parameter in its storage layout) and the factors of every parameter use.
#![allow(dead_code)]

const EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct Gpt2 {
    pub vocab: usize,
    pub d: usize,
    pub t: usize,
    pub f: usize,
    /// Flat parameters, see [`Gpt2::offsets`].
    pub w: Vec<f64>,
}

/// Offsets of every parameter in the flat vector, in this order.
#[derive(Debug, Clone, Copy)]
pub struct Offsets {
    pub wte: usize,    // [vocab, d]
    pub wpe: usize,    // [t, d]
    pub ln1_g: usize,  // [d]
    pub ln1_b: usize,  // [d]
    pub attn_w: usize, // Conv1D [d, 3d]
    pub attn_b: usize, // [3d]
    pub proj_w: usize, // nn.Linear [d, d] (out, in)
    pub proj_b: usize, // [d]
    pub ln2_g: usize,
    pub ln2_b: usize,
    pub fc_w: usize,   // nn.Linear [f, d]
    pub fc_b: usize,   // [f]
    pub mp_w: usize,   // Conv1D [f, d]
    pub mp_b: usize,   // [d]
    pub lnf_g: usize,
    pub lnf_b: usize,
    pub total: usize,
}

/// Factors of one sample: rows are the `t` positions (padding rows are zero).
#[derive(Debug, Clone, Default)]
pub struct Factors {
    pub ids: Vec<i32>,
    pub pos: Vec<i32>,
    pub dh0: Vec<f64>,     // [t, d]  b of both embeddings
    pub xhat1: Vec<f64>,   // [t, d]
    pub dln1: Vec<f64>,    // [t, d]
    pub ln1: Vec<f64>,     // [t, d]  a of c_attn
    pub dqkv: Vec<f64>,    // [t, 3d] b of c_attn
    pub att: Vec<f64>,     // [t, d]  a of proj
    pub dh1: Vec<f64>,     // [t, d]  b of proj
    pub xhat2: Vec<f64>,
    pub dln2: Vec<f64>,
    pub ln2: Vec<f64>,     // a of fc
    pub df1: Vec<f64>,     // [t, f] b of fc
    pub a1: Vec<f64>,      // [t, f] a of mp
    pub dh2: Vec<f64>,     // [t, d] b of mp
    pub xhatf: Vec<f64>,
    pub dlnf: Vec<f64>,
    pub lnf: Vec<f64>,     // [t, d] a of the LM head
    pub dlogits: Vec<f64>, // [t, vocab] b of the LM head
}

struct LnCache {
    xhat: Vec<f64>,
    rstd: Vec<f64>,
}

fn layer_norm(x: &[f64], g: &[f64], b: &[f64], t: usize, d: usize) -> (Vec<f64>, LnCache) {
    let mut y = vec![0.0; t * d];
    let mut xhat = vec![0.0; t * d];
    let mut rstd = vec![0.0; t];
    for i in 0..t {
        let row = &x[i * d..(i + 1) * d];
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
        let r = 1.0 / (var + EPS).sqrt();
        rstd[i] = r;
        for k in 0..d {
            xhat[i * d + k] = (row[k] - mu) * r;
            y[i * d + k] = g[k] * xhat[i * d + k] + b[k];
        }
    }
    (y, LnCache { xhat, rstd })
}

/// Returns dx given dy; accumulates dγ, dβ.
fn layer_norm_back(dy: &[f64], g: &[f64], c: &LnCache, t: usize, d: usize, dg: &mut [f64], db: &mut [f64]) -> Vec<f64> {
    let mut dx = vec![0.0; t * d];
    for i in 0..t {
        let xh = &c.xhat[i * d..(i + 1) * d];
        let dyr = &dy[i * d..(i + 1) * d];
        let dxh: Vec<f64> = (0..d).map(|k| dyr[k] * g[k]).collect();
        let m1 = dxh.iter().sum::<f64>() / d as f64;
        let m2 = dxh.iter().zip(xh).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for k in 0..d {
            dg[k] += dyr[k] * xh[k];
            db[k] += dyr[k];
            dx[i * d + k] = c.rstd[i] * (dxh[k] - m1 - xh[k] * m2);
        }
    }
    dx
}

/// `y[i, o] = Σ_k x[i, k] W[o, k] + b[o]` (nn.Linear, W [dout, din]).
fn linear(x: &[f64], w: &[f64], b: &[f64], t: usize, din: usize, dout: usize) -> Vec<f64> {
    let mut y = vec![0.0; t * dout];
    for i in 0..t {
        for o in 0..dout {
            y[i * dout + o] = b[o] + (0..din).map(|k| x[i * din + k] * w[o * din + k]).sum::<f64>();
        }
    }
    y
}

/// `y[i, o] = Σ_k x[i, k] W[k, o] + b[o]` (Conv1D, W [din, dout]).
fn conv1d(x: &[f64], w: &[f64], b: &[f64], t: usize, din: usize, dout: usize) -> Vec<f64> {
    let mut y = vec![0.0; t * dout];
    for i in 0..t {
        for o in 0..dout {
            y[i * dout + o] = b[o] + (0..din).map(|k| x[i * din + k] * w[k * dout + o]).sum::<f64>();
        }
    }
    y
}

impl Gpt2 {
    pub fn new(vocab: usize, d: usize, t: usize, f: usize, w: Vec<f64>) -> Self {
        let m = Gpt2 { vocab, d, t, f, w };
        assert_eq!(m.w.len(), m.offsets().total);
        m
    }

    pub fn offsets(&self) -> Offsets {
        let (v, d, t, f) = (self.vocab, self.d, self.t, self.f);
        let mut o = 0;
        let mut take = |n: usize| {
            let s = o;
            o += n;
            s
        };
        let wte = take(v * d);
        let wpe = take(t * d);
        let ln1_g = take(d);
        let ln1_b = take(d);
        let attn_w = take(d * 3 * d);
        let attn_b = take(3 * d);
        let proj_w = take(d * d);
        let proj_b = take(d);
        let ln2_g = take(d);
        let ln2_b = take(d);
        let fc_w = take(f * d);
        let fc_b = take(f);
        let mp_w = take(f * d);
        let mp_b = take(d);
        let lnf_g = take(d);
        let lnf_b = take(d);
        Offsets { wte, wpe, ln1_g, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_g, ln2_b, fc_w, fc_b, mp_w, mp_b, lnf_g, lnf_b, total: o }
    }

    pub fn nparams(&self) -> usize {
        self.offsets().total
    }

    /// Loss of one sample (`ids` of length t, next-token `targets`, only the first `len`
    /// positions are real; the rest is padding that no real position attends to or predicts)
    /// under parameters `w`; with `grad`, also the per-sample gradient and the factors.
    pub fn run(&self, w: &[f64], ids: &[i32], targets: &[i32], len: usize, grad: bool) -> (f64, Vec<f64>, Factors) {
        let (v, d, t, f) = (self.vocab, self.d, self.t, self.f);
        let o = self.offsets();
        let p = |off: usize, n: usize| &w[off..off + n];
        // Forward (padding positions are computed like real ones: causal attention means no
        // real position depends on them, and they add nothing to the loss).
        let mut h0 = vec![0.0; t * d];
        for i in 0..t {
            for k in 0..d {
                h0[i * d + k] = w[o.wte + ids[i] as usize * d + k] + w[o.wpe + i * d + k];
            }
        }
        let (ln1, c1) = layer_norm(&h0, p(o.ln1_g, d), p(o.ln1_b, d), t, d);
        let qkv = conv1d(&ln1, p(o.attn_w, d * 3 * d), p(o.attn_b, 3 * d), t, d, 3 * d);
        let q = |i: usize, k: usize| qkv[i * 3 * d + k];
        let kk = |i: usize, k: usize| qkv[i * 3 * d + d + k];
        let vv = |i: usize, k: usize| qkv[i * 3 * d + 2 * d + k];
        let scale = 1.0 / (d as f64).sqrt();
        let mut probs = vec![0.0; t * t];
        let mut att = vec![0.0; t * d];
        for i in 0..t {
            let s: Vec<f64> = (0..=i).map(|u| (0..d).map(|k| q(i, k) * kk(u, k)).sum::<f64>() * scale).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for u in 0..=i {
                probs[i * t + u] = e[u] / z;
                for k in 0..d {
                    att[i * d + k] += probs[i * t + u] * vv(u, k);
                }
            }
        }
        let proj = linear(&att, p(o.proj_w, d * d), p(o.proj_b, d), t, d, d);
        let h1: Vec<f64> = h0.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let (ln2, c2) = layer_norm(&h1, p(o.ln2_g, d), p(o.ln2_b, d), t, d);
        let f1 = linear(&ln2, p(o.fc_w, f * d), p(o.fc_b, f), t, d, f);
        let a1: Vec<f64> = f1.iter().map(|x| x.tanh()).collect();
        let m2 = conv1d(&a1, p(o.mp_w, f * d), p(o.mp_b, d), t, f, d);
        let h2: Vec<f64> = h1.iter().zip(&m2).map(|(a, b)| a + b).collect();
        let (lnf, cf) = layer_norm(&h2, p(o.lnf_g, d), p(o.lnf_b, d), t, d);
        let mut logits = vec![0.0; t * v];
        for i in 0..t {
            for c in 0..v {
                logits[i * v + c] = (0..d).map(|k| lnf[i * d + k] * w[o.wte + c * d + k]).sum();
            }
        }
        let mut loss = 0.0;
        let mut dlogits = vec![0.0; t * v];
        for i in 0..len {
            let row = &logits[i * v..(i + 1) * v];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
            loss += m + z.ln() - row[targets[i] as usize];
            for c in 0..v {
                dlogits[i * v + c] = (row[c] - m).exp() / z - if c == targets[i] as usize { 1.0 } else { 0.0 };
            }
        }
        if !grad {
            return (loss, Vec::new(), Factors::default());
        }
        // Backward.
        let mut g = vec![0.0; o.total];
        // LM head (tied with wte): logits = lnf · wteᵀ.
        let mut dlnf = vec![0.0; t * d];
        for i in 0..t {
            for c in 0..v {
                let dl = dlogits[i * v + c];
                for k in 0..d {
                    g[o.wte + c * d + k] += dl * lnf[i * d + k];
                    dlnf[i * d + k] += dl * w[o.wte + c * d + k];
                }
            }
        }
        let (mut dgf, mut dbf) = (vec![0.0; d], vec![0.0; d]);
        let dh2 = layer_norm_back(&dlnf, p(o.lnf_g, d), &cf, t, d, &mut dgf, &mut dbf);
        // MLP projection (Conv1D [f, d]): m2 = a1 W + b.
        let mut da1 = vec![0.0; t * f];
        for i in 0..t {
            for j in 0..d {
                let dm = dh2[i * d + j];
                g[o.mp_b + j] += dm;
                for k in 0..f {
                    g[o.mp_w + k * d + j] += a1[i * f + k] * dm;
                    da1[i * f + k] += w[o.mp_w + k * d + j] * dm;
                }
            }
        }
        let df1: Vec<f64> = da1.iter().zip(&a1).map(|(g, a)| g * (1.0 - a * a)).collect();
        // fc (nn.Linear [f, d]).
        let mut dln2 = vec![0.0; t * d];
        for i in 0..t {
            for j in 0..f {
                let dz = df1[i * f + j];
                g[o.fc_b + j] += dz;
                for k in 0..d {
                    g[o.fc_w + j * d + k] += dz * ln2[i * d + k];
                    dln2[i * d + k] += w[o.fc_w + j * d + k] * dz;
                }
            }
        }
        let (mut dg2, mut db2) = (vec![0.0; d], vec![0.0; d]);
        let dx2 = layer_norm_back(&dln2, p(o.ln2_g, d), &c2, t, d, &mut dg2, &mut db2);
        let dh1: Vec<f64> = dh2.iter().zip(&dx2).map(|(a, b)| a + b).collect();
        // Attention output projection (nn.Linear [d, d]).
        let mut datt = vec![0.0; t * d];
        for i in 0..t {
            for j in 0..d {
                let dz = dh1[i * d + j];
                g[o.proj_b + j] += dz;
                for k in 0..d {
                    g[o.proj_w + j * d + k] += dz * att[i * d + k];
                    datt[i * d + k] += w[o.proj_w + j * d + k] * dz;
                }
            }
        }
        // Attention.
        let mut dqkv = vec![0.0; t * 3 * d];
        for i in 0..t {
            let dp: Vec<f64> = (0..=i).map(|u| (0..d).map(|k| datt[i * d + k] * vv(u, k)).sum()).collect();
            let pd: f64 = (0..=i).map(|u| probs[i * t + u] * dp[u]).sum();
            for u in 0..=i {
                let pr = probs[i * t + u];
                for k in 0..d {
                    dqkv[u * 3 * d + 2 * d + k] += pr * datt[i * d + k];
                }
                let ds = pr * (dp[u] - pd) * scale;
                for k in 0..d {
                    dqkv[i * 3 * d + k] += ds * kk(u, k);
                    dqkv[u * 3 * d + d + k] += ds * q(i, k);
                }
            }
        }
        // c_attn (Conv1D [d, 3d]).
        let mut dln1 = vec![0.0; t * d];
        for i in 0..t {
            for j in 0..3 * d {
                let dz = dqkv[i * 3 * d + j];
                g[o.attn_b + j] += dz;
                for k in 0..d {
                    g[o.attn_w + k * 3 * d + j] += ln1[i * d + k] * dz;
                    dln1[i * d + k] += w[o.attn_w + k * 3 * d + j] * dz;
                }
            }
        }
        let (mut dg1, mut db1) = (vec![0.0; d], vec![0.0; d]);
        let dx1 = layer_norm_back(&dln1, p(o.ln1_g, d), &c1, t, d, &mut dg1, &mut db1);
        let dh0: Vec<f64> = dh1.iter().zip(&dx1).map(|(a, b)| a + b).collect();
        for i in 0..t {
            for k in 0..d {
                g[o.wte + ids[i] as usize * d + k] += dh0[i * d + k];
                g[o.wpe + i * d + k] += dh0[i * d + k];
            }
        }
        for (off, src) in [(o.ln1_g, &dg1), (o.ln1_b, &db1), (o.ln2_g, &dg2), (o.ln2_b, &db2), (o.lnf_g, &dgf), (o.lnf_b, &dbf)] {
            g[off..off + d].copy_from_slice(src);
        }
        let fac = Factors {
            ids: ids.to_vec(),
            pos: (0..t as i32).collect(),
            dh0,
            xhat1: c1.xhat,
            dln1,
            ln1,
            dqkv,
            att,
            dh1,
            xhat2: c2.xhat,
            dln2,
            ln2,
            df1,
            a1,
            dh2,
            xhatf: cf.xhat,
            dlnf,
            lnf,
            dlogits,
        };
        (loss, g, fac)
    }
}

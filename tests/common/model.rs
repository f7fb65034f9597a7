//! Random models of mixed layer kinds for the model-level calls (tests/layers.rs): Linear in
//! both weight layouts, embeddings with repeated ids, LayerNorm/RMSNorm, tied groups (an
//! embedding with its LM head, a Linear used twice, a weight used in both orientations, shared
//! norms, two embeddings of one table), ragged token counts per use, masks whose masked rows
//! hold NaN, and the explicit per-sample gradients every result is checked against.
#![allow(dead_code)]

use super::{nonzero_gaussian, random_mask, Buf, TestRng};
use ghostgrad::{DType, LayerKind, LayerUse, QuerySide, Segments, Tensor, UseQuery, UseTrain, WeightLayout};
use rand::Rng;

/// `x` of a use: ids or a float buffer.
#[derive(Debug, Clone)]
pub enum XBuf {
    Ids(Vec<i32>),
    /// The same ids in int64 (torch's default), for the tests of both widths.
    Ids64(Vec<i64>),
    Float(Buf),
}

impl XBuf {
    pub fn tensor(&self) -> Tensor<'_> {
        match self {
            XBuf::Ids(v) => Tensor::from(v.as_slice()),
            XBuf::Ids64(v) => Tensor::from(v.as_slice()),
            XBuf::Float(b) => b.tensor(),
        }
    }
}

/// One side (train or query) of one use.
#[derive(Debug, Clone)]
pub struct SideData {
    pub x: XBuf,
    pub b: Buf,
    pub rows: usize,
    pub mask: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct UseData {
    pub param: u32,
    pub kind: LayerKind,
    pub t: usize,
    pub train: SideData,
    pub query: SideData,
    /// `V + 1` segment offsets of the query rows.
    pub offsets: Vec<i32>,
}

#[derive(Debug, Clone)]
pub struct ModelData {
    pub n: usize,
    pub v: usize,
    pub uses: Vec<UseData>,
}

fn x_width(k: &LayerKind) -> usize {
    match *k {
        LayerKind::Linear { d_in, .. } => d_in as usize,
        LayerKind::Embedding { .. } => 1,
        LayerKind::Norm { d, .. } => d as usize,
    }
}

fn b_width(k: &LayerKind) -> usize {
    match *k {
        LayerKind::Linear { d_out, .. } => d_out as usize,
        LayerKind::Embedding { d, .. } | LayerKind::Norm { d, .. } => d as usize,
    }
}

/// Random side data; ids come from a small pool so they repeat within and across samples.
/// Masked rows of float buffers are filled with NaN (they must be skipped, not multiplied by 0).
/// Random factors of `rows` rows of one use (ids from `pool` for an embedding); masked rows hold NaN.
pub fn side(rng: &mut TestRng, kind: &LayerKind, rows: usize, dtype: DType, masked: bool, pool: &[i32]) -> SideData {
    let mask = masked.then(|| random_mask(rng, rows, 0.3));
    let x = match kind {
        LayerKind::Embedding { .. } => XBuf::Ids((0..rows).map(|_| pool[rng.random_range(0..pool.len())]).collect()),
        k => XBuf::Float(Buf::random(rng, dtype, rows * x_width(k))),
    };
    let mut b = Buf::random(rng, dtype, rows * b_width(kind));
    let mut x = x;
    if let Some(m) = &mask {
        for r in (0..rows).filter(|&r| m[r] == 0) {
            for k in 0..b_width(kind) {
                b.set(r * b_width(kind) + k, f32::NAN);
            }
            if let XBuf::Float(xb) = &mut x {
                for k in 0..x_width(kind) {
                    xb.set(r * x_width(kind) + k, f32::NAN);
                }
            }
        }
    }
    SideData { x, b, rows, mask }
}

fn offsets(rng: &mut TestRng, q: usize, v: usize) -> Vec<i32> {
    let mut off: Vec<i32> = (0..=v).map(|_| rng.random_range(0..=q as i32)).collect();
    off.sort_unstable();
    if rng.random_bool(0.6) {
        off[0] = 0;
        off[v] = q as i32;
    }
    off
}

impl UseData {
    #[allow(clippy::too_many_arguments)]
    pub fn random(rng: &mut TestRng, param: u32, kind: LayerKind, n: usize, v: usize, dtype: DType, masked: bool, pool: &[i32]) -> Self {
        let t = rng.random_range(1..9);
        let q = rng.random_range(1..13);
        UseData {
            param,
            kind,
            t,
            train: side(rng, &kind, n * t, dtype, masked, pool),
            query: side(rng, &kind, q, dtype, masked, pool),
            offsets: offsets(rng, q, v),
        }
    }

    pub fn layer_use(&self) -> LayerUse<'_> {
        LayerUse {
            param: self.param,
            kind: self.kind,
            train: UseTrain {
                x: self.train.x.tensor(),
                b: self.train.b.tensor(),
                t: self.t as u64,
                mask: self.train.mask.as_deref().map(Tensor::from),
            },
            query: QuerySide::Factors(UseQuery {
                x: self.query.x.tensor(),
                b: self.query.b.tensor(),
                q: self.query.rows as u64,
                segments: Segments::Offsets(Tensor::from(self.offsets.as_slice())),
                mask: self.query.mask.as_deref().map(Tensor::from),
            }),
        }
    }
}

/// Which tied groups a random model contains.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub linear: bool,
    pub embedding: bool,
    pub norm: bool,
    pub tied: bool,
}

impl Mix {
    /// Each kind alone, then all tied groups: the fixed-seed sweeps of the model-level tests.
    pub const EACH_KIND_AND_TIED: [Mix; 4] = [
        Mix { linear: true, embedding: false, norm: false, tied: false },
        Mix { linear: false, embedding: true, norm: false, tied: false },
        Mix { linear: false, embedding: false, norm: true, tied: false },
        Mix { linear: false, embedding: false, norm: false, tied: true },
    ];
}

/// Random mixes with at least one parameter.
pub fn mix_strategy() -> impl proptest::strategy::Strategy<Value = Mix> {
    use proptest::prelude::*;
    any::<[bool; 4]>().prop_map(|[linear, embedding, norm, tied]| Mix { linear, embedding, norm: norm || !(linear || embedding || tied), tied })
}

impl ModelData {
    /// A random model: a few independent parameters of the kinds in `mix`, and with `mix.tied`
    /// the tied groups listed in the module doc.
    pub fn random(rng: &mut TestRng, mix: Mix, dtype: DType, masked: bool) -> Self {
        let n = rng.random_range(1..4);
        Self::random_n(rng, mix, dtype, masked, n)
    }

    /// [`ModelData::random`] with `n` training samples.
    pub fn random_n(rng: &mut TestRng, mix: Mix, dtype: DType, masked: bool, n: usize) -> Self {
        let v = rng.random_range(1..4);
        let vocab = rng.random_range(3..40u64);
        let pool: Vec<i32> = (0..rng.random_range(1..5)).map(|_| rng.random_range(0..vocab as i32)).collect();
        let mut uses = Vec::new();
        let mut param = 0u32;
        let add = |rng: &mut TestRng, uses: &mut Vec<UseData>, p: u32, kind: LayerKind| {
            uses.push(UseData::random(rng, p, kind, n, v, dtype, masked, &pool));
        };
        let dim = |rng: &mut TestRng| rng.random_range(1..40u64);
        if mix.linear {
            let layout = if rng.random_bool(0.5) { WeightLayout::OutIn } else { WeightLayout::InOut };
            let k = LayerKind::Linear { d_in: dim(rng), d_out: dim(rng), has_bias: rng.random_bool(0.5), layout };
            add(rng, &mut uses, param, k);
            param += 1;
        }
        if mix.embedding {
            let k = LayerKind::Embedding { vocab, d: dim(rng) };
            add(rng, &mut uses, param, k);
            param += 1;
        }
        if mix.norm {
            let k = LayerKind::Norm { d: dim(rng), has_bias: rng.random_bool(0.5) };
            add(rng, &mut uses, param, k);
            param += 1;
        }
        if mix.tied {
            // Embedding tied to an LM head (nn.Linear d -> vocab, no bias), the head last.
            let d = dim(rng);
            add(rng, &mut uses, param, LayerKind::Embedding { vocab, d });
            let dn = dim(rng);
            add(rng, &mut uses, 99, LayerKind::Norm { d: dn, has_bias: false });
            add(rng, &mut uses, param, LayerKind::linear(d, vocab, false));
            param += 1;
            // One Linear (with bias) applied twice.
            let (di, dout) = (dim(rng), dim(rng));
            let layout = if rng.random_bool(0.5) { WeightLayout::OutIn } else { WeightLayout::InOut };
            let k = LayerKind::Linear { d_in: di, d_out: dout, has_bias: true, layout };
            add(rng, &mut uses, param, k);
            add(rng, &mut uses, param, k);
            param += 1;
            // A square-ish weight used as W (OutIn [dout, di]) and as Conv1D (InOut [di', dout'] = [dout, di]).
            let k1 = LayerKind::Linear { d_in: di, d_out: dout, has_bias: false, layout: WeightLayout::OutIn };
            let k2 = LayerKind::Linear { d_in: dout, d_out: di, has_bias: false, layout: WeightLayout::InOut };
            add(rng, &mut uses, param, k1);
            add(rng, &mut uses, param, k2);
            param += 1;
            // Shared norm.
            let k = LayerKind::Norm { d: dim(rng), has_bias: rng.random_bool(0.5) };
            add(rng, &mut uses, param, k);
            add(rng, &mut uses, param, k);
            param += 1;
            // Two lookups into one table (e.g. encoder and decoder inputs).
            let k = LayerKind::Embedding { vocab, d: dim(rng) };
            add(rng, &mut uses, param, k);
            add(rng, &mut uses, param, k);
        }
        ModelData { n, v, uses }
    }

    pub fn layer_uses(&self) -> Vec<LayerUse<'_>> {
        self.uses.iter().map(|u| u.layer_use()).collect()
    }

    /// Rounding depth bound over every term: the widths reduced by GEMMs, the token and query
    /// rows summed, one rounding per term merged and a margin.
    pub fn depth(&self) -> usize {
        let per: usize = self
            .uses
            .iter()
            .map(|u| {
                let (r, c) = match u.kind {
                    LayerKind::Linear { d_in, d_out, .. } => (d_out as usize, d_in as usize + 1),
                    LayerKind::Embedding { d, .. } => (1, d as usize),
                    LayerKind::Norm { d, .. } => (1, d as usize),
                };
                r + c + u.train.rows + u.query.rows
            })
            .max()
            .unwrap_or(0);
        per + 2 * self.uses.len() * self.uses.len() + 16
    }
}

/// Explicit per-sample gradient of one parameter, in its storage layout (weight then bias),
/// summed over `uses` (all of one parameter) on the given rows of each use; `abs` replaces every
/// factor by its absolute value.
pub fn explicit_grad(uses: &[&UseData], query: bool, rows_of: &dyn Fn(&UseData) -> std::ops::Range<usize>, abs: bool) -> Vec<f64> {
    let f = |v: f64| if abs { v.abs() } else { v };
    let kind = uses[0].kind;
    let len = match kind {
        LayerKind::Linear { d_in, d_out, has_bias, .. } => (d_out * d_in + if has_bias { d_out } else { 0 }) as usize,
        LayerKind::Embedding { vocab, d } => (vocab * d) as usize,
        LayerKind::Norm { d, has_bias } => (d * if has_bias { 2 } else { 1 }) as usize,
    };
    let mut g = vec![0.0f64; len];
    for u in uses {
        let s = if query { &u.query } else { &u.train };
        for r in rows_of(u) {
            if s.mask.as_ref().is_some_and(|m| m[r] == 0) {
                continue;
            }
            match (u.kind, &s.x) {
                (LayerKind::Linear { d_in, d_out, has_bias, layout }, XBuf::Float(x)) => {
                    let (di, dout) = (d_in as usize, d_out as usize);
                    for o in 0..dout {
                        let bo = f(s.b.get(r * dout + o));
                        for i in 0..di {
                            let w = match layout {
                                WeightLayout::OutIn => o * di + i,
                                WeightLayout::InOut => i * dout + o,
                            };
                            g[w] += bo * f(x.get(r * di + i));
                        }
                        if has_bias {
                            g[di * dout + o] += bo;
                        }
                    }
                }
                (LayerKind::Embedding { d, .. }, XBuf::Ids(ids)) => {
                    let d = d as usize;
                    for k in 0..d {
                        g[ids[r] as usize * d + k] += f(s.b.get(r * d + k));
                    }
                }
                (LayerKind::Norm { d, has_bias }, XBuf::Float(x)) => {
                    let d = d as usize;
                    for k in 0..d {
                        g[k] += f(s.b.get(r * d + k)) * f(x.get(r * d + k));
                        if has_bias {
                            g[d + k] += f(s.b.get(r * d + k));
                        }
                    }
                }
                _ => unreachable!("x kind matches the layer kind"),
            }
        }
    }
    g
}

/// Explicit flattened gradients of the whole model (all parameters concatenated) for every
/// training sample, and for every query segment.
pub fn explicit_flat(m: &ModelData, abs: bool) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut params: Vec<u32> = Vec::new();
    for u in &m.uses {
        if !params.contains(&u.param) {
            params.push(u.param);
        }
    }
    let mut train = vec![Vec::new(); m.n];
    let mut query = vec![Vec::new(); m.v];
    for p in params {
        let group: Vec<&UseData> = m.uses.iter().filter(|u| u.param == p).collect();
        for (s, g) in train.iter_mut().enumerate() {
            g.extend(explicit_grad(&group, false, &|u| s * u.t..(s + 1) * u.t, abs));
        }
        for (v, g) in query.iter_mut().enumerate() {
            g.extend(explicit_grad(&group, true, &|u| u.offsets[v] as usize..u.offsets[v + 1] as usize, abs));
        }
    }
    (train, query)
}

pub fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Expected `[N, V]`, `[N, N]` and `[N]` results and their magnitudes.
pub struct Expected {
    pub dot: (Vec<f64>, Vec<f64>),
    pub gram: (Vec<f64>, Vec<f64>),
    pub sqnorm: (Vec<f64>, Vec<f64>),
}

pub fn expected(m: &ModelData) -> Expected {
    let (tr, q) = explicit_flat(m, false);
    let (tra, qa) = explicit_flat(m, true);
    let all = |x: &Vec<Vec<f64>>, y: &Vec<Vec<f64>>| -> Vec<f64> {
        x.iter().flat_map(|a| y.iter().map(move |b| dot(a, b))).collect()
    };
    Expected {
        dot: (all(&tr, &q), all(&tra, &qa)),
        gram: (all(&tr, &tr), all(&tra, &tra)),
        sqnorm: (tr.iter().map(|a| dot(a, a)).collect(), tra.iter().map(|a| dot(a, a)).collect()),
    }
}

pub fn random_nonzero(rng: &mut TestRng) -> f32 {
    nonzero_gaussian(rng)
}

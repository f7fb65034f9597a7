//! Validation of the ghost dot-product family's arguments into checked dimensions. Errors
//! name the fields as the caller spells them (`train.a`, `query.segments.offsets`); a list
//! element's prefix (`layers[2]`) is added by its caller ([`GhostError::within`]).

use super::{LayerShape, QueryFactors, Segments, TrainFactors};
use crate::buffer::{HostSlice, Tensor};
use crate::dtype::DType;
use crate::error::{GhostError, Result};
use crate::validate::{self as v, Space};

pub(crate) const FLOAT_INPUTS: &[DType] = &[DType::F32, DType::BF16, DType::F16];

/// Checked dimensions of the training side of one layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrainDims {
    pub n: u64,
    pub t: u64,
    pub d_in: u64,
    pub d_out: u64,
    pub has_bias: bool,
    pub dtype: DType,
}

pub(crate) fn shape(op: &'static str, s: &LayerShape) -> Result<()> {
    let _ = op;
    v::nonzero("shape.d_in", s.d_in)?;
    v::nonzero("shape.d_out", s.d_out)?;
    v::fits_i32("shape.d_in", s.d_in)?;
    v::fits_i32("shape.d_out", s.d_out)?;
    Ok(())
}

pub(crate) fn train(op: &'static str, s: &LayerShape, tr: &TrainFactors<'_>, space: Space) -> Result<TrainDims> {
    shape(op, s)?;
    v::nonzero("train.n", tr.n)?;
    v::nonzero("train.t", tr.t)?;
    let nt = v::mul("n*t", tr.n, tr.t)?;
    let a_len = v::mul("n*t*d_in", nt, s.d_in)?;
    let b_len = v::mul("n*t*d_out", nt, s.d_out)?;
    v::fits_i32("n*t", nt)?;
    if space == Space::Device {
        // Kernels compute element offsets in 64 bits, but grid sizes and per-split counts are u32.
        v::fits_i32("train.n", tr.n)?;
        v::fits_i32("train.t", tr.t)?;
    }
    let dtype = v::input("train.a", &tr.a, space, FLOAT_INPUTS, a_len, op)?;
    let db = v::input("train.b", &tr.b, space, FLOAT_INPUTS, b_len, op)?;
    v::same_dtype("train.b", dtype, db)?;
    if let Some(m) = &tr.mask {
        v::input("train.mask", m, space, &[DType::U8], nt, op)?;
    }
    Ok(TrainDims { n: tr.n, t: tr.t, d_in: s.d_in, d_out: s.d_out, has_bias: s.has_bias, dtype })
}

/// Resolved query segmentation.
#[derive(Debug, Clone)]
pub(crate) enum SegKind {
    Single,
    Uniform(u64),
    /// Validated host offsets.
    Host(Vec<u64>),
    /// Device offsets (pointer to V+1 i32); content unchecked, kernels clamp.
    Device(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct QueryDims {
    pub q: u64,
    pub v: u64,
    pub seg: SegKind,
}

impl QueryDims {
    /// Row ranges of every segment (host-resolvable kinds only).
    pub fn ranges(&self) -> Vec<(usize, usize)> {
        match &self.seg {
            SegKind::Single => vec![(0, self.q as usize)],
            SegKind::Uniform(len) => (0..self.v)
                .map(|i| ((i * len) as usize, ((i + 1) * len).min(self.q) as usize))
                .collect(),
            SegKind::Host(off) => off.windows(2).map(|w| (w[0] as usize, w[1] as usize)).collect(),
            SegKind::Device(_) => unreachable!("device offsets are never resolved on the host"),
        }
    }
}

pub(crate) fn segments(q: u64, seg: &Segments<'_>, space: Space, op: &'static str) -> Result<QueryDims> {
    Ok(match seg {
        Segments::Single => QueryDims { q, v: 1, seg: SegKind::Single },
        Segments::Uniform(len) => {
            v::nonzero("query.segments.uniform_len", *len)?;
            QueryDims { q, v: q.div_ceil(*len), seg: SegKind::Uniform(*len) }
        }
        Segments::Offsets(t) => {
            let count = t.len();
            if count < 2 {
                return Err(GhostError::InvalidArgument {
                    what: "query.segments.offsets",
                    reason: format!("need V+1 >= 2 offsets, got {count}"),
                });
            }
            v::input("query.segments.offsets", t, space, &[DType::I32], count, op)?;
            let nseg = count - 1;
            v::fits_i32("V", nseg)?;
            match t {
                Tensor::Host(HostSlice::I32(off)) => {
                    let mut prev = 0i64;
                    let mut out = Vec::with_capacity(off.len());
                    for (i, &o) in off.iter().enumerate() {
                        let o = o as i64;
                        if o < prev || o > q as i64 {
                            return Err(GhostError::InvalidArgument {
                                what: "query.segments.offsets",
                                reason: format!(
                                    "offsets must be nondecreasing within [0, Q={q}]; offsets[{i}] = {o} after {prev}"
                                ),
                            });
                        }
                        prev = o;
                        out.push(o as u64);
                    }
                    QueryDims { q, v: nseg, seg: SegKind::Host(out) }
                }
                Tensor::Device(d) => QueryDims { q, v: nseg, seg: SegKind::Device(d.ptr()) },
                Tensor::Host(_) => unreachable!("dtype checked above"),
            }
        }
    })
}

pub(crate) fn query(
    op: &'static str,
    s: &LayerShape,
    qf: &QueryFactors<'_>,
    space: Space,
    dtype: DType,
) -> Result<QueryDims> {
    v::nonzero("query.q", qf.q)?;
    v::fits_i32("query.q", qf.q)?;
    let aq_len = v::mul("q*d_in", qf.q, s.d_in)?;
    let bq_len = v::mul("q*d_out", qf.q, s.d_out)?;
    let da = v::input("query.aq", &qf.aq, space, FLOAT_INPUTS, aq_len, op)?;
    v::same_dtype("query.aq", dtype, da)?;
    let db = v::input("query.bq", &qf.bq, space, FLOAT_INPUTS, bq_len, op)?;
    v::same_dtype("query.bq", dtype, db)?;
    if let Some(m) = &qf.mask {
        v::input("query.mask", m, space, &[DType::U8], qf.q, op)?;
    }
    segments(qf.q, &qf.segments, space, op)
}

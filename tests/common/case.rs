//! The randomly shaped one-layer problem of the ghost-dot family of property tests
//! (`cpu_backends`: fast CPU backend vs the reference; `gpu_interp`: the kernels under the PTX
//! interpreter vs the reference). Each test binary chooses its own ranges through
//! [`case_strategy_within`]; the struct, the data drawn from a case and the edge-case
//! constructor are shared.

use std::ops::Range;

use ghostgrad::{Accumulate, DType, LayerShape};
use proptest::prelude::*;

use super::{initial_out, random_acc, rng, QueryData, SegSpec, TrainData, FLOAT_DTYPES};

/// One randomly shaped problem; the data comes from `seed`, the interpreter's schedule seed
/// from `sched` (unused, and 0, where no interpreter runs).
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub n: usize,
    pub t: usize,
    pub q: usize,
    pub d_in: u64,
    pub d_out: u64,
    pub dtype: DType,
    pub masked: bool,
    pub bias: bool,
    pub beta: bool,
    pub seed: u64,
    pub sched: u64,
}

/// The inputs of a `ghost_dot` check, drawn from a case's seed in a fixed order: train factors,
/// query segmentation, query factors, accumulation, initial output.
pub struct GhostDotData {
    pub train: TrainData,
    pub query: QueryData,
    pub acc: Accumulate,
    /// The output before the call, `[N, V]`: NaN-poisoned when `acc.beta == 0`, random otherwise.
    pub old: Vec<f32>,
}

impl Case {
    /// A case of shape `(n, t, q, d_in, d_out)` whose `flags` bits 0, 1 and 2 set `masked`,
    /// `bias` and `beta` (the degenerate-shape tests enumerate them).
    pub fn from_flags(
        (n, t, q, d_in, d_out): (usize, usize, usize, u64, u64),
        dtype: DType,
        flags: u32,
        seed: u64,
        sched: u64,
    ) -> Case {
        Case { n, t, q, d_in, d_out, dtype, masked: flags & 1 != 0, bias: flags & 2 != 0, beta: flags & 4 != 0, seed, sched }
    }

    pub fn shape(&self) -> LayerShape {
        LayerShape::new(self.d_in, self.d_out).with_bias(self.bias)
    }

    /// The `ghost_dot` inputs of this case (see [`GhostDotData`]).
    pub fn ghost_dot_data(&self) -> GhostDotData {
        let mut r = rng(self.seed);
        let shape = self.shape();
        let train = TrainData::random(&mut r, shape, self.n, self.t, self.dtype, self.masked);
        let seg = SegSpec::random(&mut r, self.q);
        let query = QueryData::random(&mut r, shape, self.q, self.dtype, self.masked, seg);
        let acc = random_acc(&mut r, self.beta);
        let old = initial_out(&mut r, self.n * query.v(), acc);
        GhostDotData { train, query, acc, old }
    }
}

/// Cases with `n`, `t`, `q`, `d_in`, `d_out` and `sched` drawn from the given strategies, a
/// uniformly chosen factor dtype, independent `masked`/`bias`/`beta` flags and any seed.
pub fn case_strategy_within(
    n: Range<usize>,
    t: impl Strategy<Value = usize>,
    q: Range<usize>,
    d_in: Range<u64>,
    d_out: Range<u64>,
    sched: impl Strategy<Value = u64>,
) -> impl Strategy<Value = Case> {
    (n, t, q, d_in, d_out, 0usize..3, any::<[bool; 3]>(), any::<u64>(), sched).prop_map(
        |(n, t, q, d_in, d_out, dt, [masked, bias, beta], seed, sched)| Case {
            n,
            t,
            q,
            d_in,
            d_out,
            dtype: FLOAT_DTYPES[dt],
            masked,
            bias,
            beta,
            seed,
            sched,
        },
    )
}

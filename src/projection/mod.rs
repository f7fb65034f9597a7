//! Low-rank Kronecker projections of per-sample gradients (MATH.md §3) and influence in the
//! projected space (§4).
//!
//! ```text
//! Ĝ_n = P_o G_n P_iᵀ = Σ_t (P_o b_{n,t})(P_i a_{n,t})ᵀ ∈ R^{k_o×k_i},   ĝ_n = vec(Ĝ_n) (row-major:
//!       ĝ_n[o·k_i + i] = Ĝ_n[o, i])
//! P_i ∈ R^{k_i × (d_in + bias)}: with a bias, activations are augmented with a trailing 1, so
//!       the LAST column of P_i projects the bias gradient Σ_t b_{n,t};   P_o ∈ R^{k_o × d_out}
//! S[q, j] = <ĝ'_q, ĝ_j>  (Dot),  S/√self_j (Cosine / RelatIF),  S − ½·self_j (L2)
//! ```
//! Shapes follow [`crate::ghost_dot`]: `A [N, T, d_in]`, `B [N, T, d_out]` (f32 | bf16 | f16),
//! optional `mask [N, T]` u8 (a zero SKIPS the token: it contributes exactly 0 even if it holds
//! NaN). Every output is f32 and written `out = beta·out + scale·result` (`beta = 0` never reads
//! `out`).
//!
//! Projection matrices are [`ProjectionKind::Dense`] (caller-given f32) or
//! [`ProjectionKind::Random`]: generated from `(seed, layer, which, row, col)` by the
//! counter-based generator of [`generator`], identically by the CPU backends and inside the GPU
//! kernels (no matrix in memory; the same seed gives the same matrix on every device, tile
//! shape and backend).
//!
//! **Embedding layers** ([`EmbeddingLayer`]): the activations are one-hot rows `e_{x_{n,t}}` of
//! token ids `x [N, T]` (i32) into a vocabulary of `V = shape.d_in` entries, so
//! `P_i a_{n,t} = P_i[:, x_{n,t}]` is a column gather and
//! `Ĝ_n = Σ_t (P_o b_{n,t}) (P_i[:, x_{n,t}])ᵀ`, bit for bit the dense path on one-hot `A`
//! (for finite `P`). Ids of masked tokens are never read. A kept id outside `[0, V)` is a
//! [`GhostError::InvalidArgument`](crate::GhostError::InvalidArgument) on the CPU backends
//! (checked before anything is written); device ids are not visible to the host, so on a GPU
//! that sample's whole `Ĝ_n` (its `k_o·k_i` columns) becomes NaN instead, and `P_i` is never
//! read out of bounds.
//!
//! Operations (on [`Context`](crate::Context)): [`kron_project`](crate::Context::kron_project),
//! [`kron_project_embedding`](crate::Context::kron_project_embedding),
//! [`kron_project_layers`](crate::Context::kron_project_layers) (linear and embedding layers),
//! [`kron_project_model`](crate::Context::kron_project_model) (whole models per parameter: every
//! layer kind, tied parameters in one block; see [`model`]),
//! [`projection_matrix`](crate::Context::projection_matrix),
//! [`influence_scores`](crate::Context::influence_scores); second moments for the
//! preconditioners, accumulated on any backend: [`projected_fisher`](crate::Context::projected_fisher),
//! [`kfac_covariances`](crate::Context::kfac_covariances),
//! [`ekfac_eigen_correction`](crate::Context::ekfac_eigen_correction); the small
//! factorizations themselves run on the CPU in [`precondition`].

mod covariance;
pub mod cpu;
pub mod model;
pub mod generator;
pub(crate) mod gpu;
mod ops;
pub mod precondition;

use crate::buffer::Tensor;
use crate::ghost_dot::{LayerShape, TrainFactors};

pub use generator::{materialize_projection, try_materialize_projection, Distribution, Which};
pub use model::{projected_storage, ParamProjection};

/// Where the projection matrices come from.
#[derive(Debug, Clone, Copy)]
pub enum ProjectionKind<'a> {
    /// Generated entries (see [`generator`]): `P_i` is matrix [`Which::In`] of `layer`, `P_o`
    /// is [`Which::Out`], entries of variance `1/k_i` and `1/k_o`.
    Random { seed: u64, layer: u32, dist: Distribution },
    /// Caller-given f32 matrices: `p_in [k_i, d_in + bias]`, `p_out [k_o, d_out]`, row-major.
    Dense { p_in: Tensor<'a>, p_out: Tensor<'a> },
}

/// A layer's projection: `Ĝ ∈ R^{k_o × k_i}`.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionSpec<'a> {
    pub k_i: u64,
    pub k_o: u64,
    pub kind: ProjectionKind<'a>,
}

impl ProjectionSpec<'_> {
    /// `k_o·k_i`, the length of `ĝ`.
    pub fn width(&self) -> u64 {
        self.k_o.saturating_mul(self.k_i)
    }
}

/// One layer of [`kron_project_layers`](crate::Context::kron_project_layers).
#[derive(Debug, Clone, Copy)]
pub struct ProjectLayer<'a> {
    pub shape: LayerShape,
    pub train: TrainFactors<'a>,
    pub proj: ProjectionSpec<'a>,
}

/// Token-id factors of an embedding layer: `ids [N, T]` i32 into a vocabulary of `V` entries,
/// `b [N, T, d_out]` (f32 | bf16 | f16), optional `mask [N, T]` u8 (a zero skips the token; its
/// id is then never read).
#[derive(Debug, Clone, Copy)]
pub struct TokenFactors<'a> {
    pub ids: Tensor<'a>,
    pub b: Tensor<'a>,
    pub n: u64,
    pub t: u64,
    pub mask: Option<Tensor<'a>>,
}

/// One embedding layer: `shape.d_in` is the vocabulary size `V` (`P_i ∈ R^{k_i × V}`),
/// `shape.has_bias` must be false (an embedding has no bias).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingLayer<'a> {
    pub shape: LayerShape,
    pub train: TokenFactors<'a>,
    pub proj: ProjectionSpec<'a>,
}

/// The A-side input kind of a layer of
/// [`kron_project_layers`](crate::Context::kron_project_layers) and
/// [`kfac_covariances`](crate::Context::kfac_covariances): dense activations or token ids.
#[derive(Debug, Clone, Copy)]
pub enum ProjectInput<'a> {
    Linear(ProjectLayer<'a>),
    Embedding(EmbeddingLayer<'a>),
}

impl<'a> From<ProjectLayer<'a>> for ProjectInput<'a> {
    fn from(l: ProjectLayer<'a>) -> Self {
        ProjectInput::Linear(l)
    }
}

impl<'a> From<EmbeddingLayer<'a>> for ProjectInput<'a> {
    fn from(l: EmbeddingLayer<'a>) -> Self {
        ProjectInput::Embedding(l)
    }
}

impl<'a> ProjectInput<'a> {
    /// The layer's projection.
    pub fn proj(&self) -> &ProjectionSpec<'a> {
        match self {
            ProjectInput::Linear(l) => &l.proj,
            ProjectInput::Embedding(l) => &l.proj,
        }
    }
    /// `N`.
    pub fn n(&self) -> u64 {
        match self {
            ProjectInput::Linear(l) => l.train.n,
            ProjectInput::Embedding(l) => l.train.n,
        }
    }
}

/// Where one layer's `ĝ_n` goes in a row-major `[N, row_stride]` output: columns
/// `offset .. offset + k_o·k_i` of each row (also the layout of the projected gradients that
/// [`projected_fisher`](crate::Context::projected_fisher) and
/// [`ekfac_eigen_correction`](crate::Context::ekfac_eigen_correction) read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutColumns {
    pub offset: u64,
    pub row_stride: u64,
}

/// One group of columns (typically one layer's `ĝ`, or several adjacent layers) of the rows of
/// [`influence_scores_groups`](crate::Context::influence_scores_groups): columns
/// `offset .. offset + width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnGroup {
    pub offset: u64,
    pub width: u64,
}

/// Score transformation of [`influence_scores`](crate::Context::influence_scores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreMode {
    /// `S = test · trainᵀ`.
    Dot,
    /// `S / √self_j` (RelatIF / cosine-style normalization by the train side).
    Cosine,
    /// `S − ½·self_j`.
    L2,
}

/// Sizes of an [`influence_scores`](crate::Context::influence_scores) call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreDims {
    pub n_test: u64,
    pub n_block: u64,
    pub k: u64,
}

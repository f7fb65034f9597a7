//! # ghostgrad
//!
//! Hand-written CUDA kernels (and CPU backends with the same API) for gradient-based data
//! attribution. Every operation works on the *factors* of per-sample gradients of linear layers,
//! `G_n = Σ_t b_{n,t} a_{n,t}ᵀ`, and never materializes `G_n` unless the cost model says that is
//! cheapest. The mathematical contract is `MATH.md` (shared with the project); each operation's
//! doc states its formula and shapes.
//!
//! Layers: [`buffer`] (views of caller memory) → [`ghost_dot`] (math contract, validation, form
//! choice, launch plans) → backends: [`cpu`] (f64 reference, fast f32) and [`runtime`] (the CUDA
//! driver or the PTX interpreter executing the same launch plans). [`Context`] is the entry point;
//! [`ffi`] exposes it through a C ABI (`include/ghostgrad.h`).

pub(crate) mod alloc;
pub mod buffer;
pub mod context;
pub mod cpu;
pub mod dtype;
pub mod dvemb;
pub mod error;
pub mod ffi;
pub mod ghost_dot;
pub mod inrun;
pub mod projection;
pub mod kernels;
pub mod layers;
pub mod runtime;
pub mod validate;

pub use buffer::{DeviceSlice, DeviceSliceMut, HostIds, HostSlice, Tensor, TensorMut};
pub use context::{Backend, Context};
pub use dtype::DType;
pub use dvemb::{Blocking, DvembLayer, DvembReport, DvembSteps, LossReduction};
pub use inrun::GhgLayer;
pub use error::{GhostError, Result};
pub use ghost_dot::{
    Accumulate, Form, FormChoice, FormCost, FormRequest, GhostDotLayer, LayerShape, QueryFactors, Segments,
    TrainFactors,
};
pub use layers::{EmbeddingForm, GhgUse, LayerKind, LayerUse, ModelForms, QuerySide, TermChoice, UseQuery, UseTrain, WeightLayout};
pub use projection::{
    ColumnGroup, Distribution, EmbeddingLayer, OutColumns, ParamProjection, ProjectInput, ProjectLayer, ProjectionKind, ProjectionSpec, ScoreDims,
    ScoreMode, TokenFactors, Which,
};

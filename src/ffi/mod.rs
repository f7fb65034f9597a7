//! C ABI over [`Context`]: every operation of the crate, callable from C, C++, Python (ctypes,
//! cffi) or any language with a C FFI. The header is `include/ghostgrad.h`, generated from this
//! module by cbindgen (`GHOSTGRAD_BLESS=1 cargo test --test header_fresh` regenerates it; the same
//! test fails when the checked-in header is stale).
//!
//! Conventions:
//! * Every function that can fail returns a [`gg_status`]; `GG_STATUS_OK` (0) is success. The
//!   message of the last failure on the calling thread is [`gg_last_error_message`]; every
//!   function returning a `gg_status` resets it (empty after a success).
//! * Buffers are described by [`gg_tensor`] (inputs: pointer, element count, [`gg_dtype`]) and
//!   [`gg_tensor_mut`] (outputs, always f32). A CPU context takes host pointers, a CUDA context
//!   device pointers. An optional tensor is absent when `ptr == NULL && len == 0`.
//! * Every buffer is checked before anything runs: null pointer, alignment to its element size,
//!   byte size overflow, and no output overlapping any other buffer of the call; the operation
//!   then checks dtypes and exact lengths against the shapes (errors name the argument).
//! * No Rust panic crosses the ABI: a panic inside ghostgrad becomes `GG_STATUS_PANIC` with its
//!   message in the last error.
//! * A context may be used by one thread at a time (operations on a GPU context share its
//!   stream and its scratch workspace); distinct contexts are independent.
//!
//! Every result is `out = beta·out + scale·result` (BLAS-style: `beta == 0` never reads `out`).
//! Formulas and shapes: [`crate::ghost_dot`] and MATH.md §1.
//!
//! Layout (one module per operation family, in header order): `status` (status codes, last
//! error, the panic guard), `context`, `descriptors` (codes and plain-data descriptors),
//! `buffers` (checked caller memory) and `parse` (the one descriptor-reading layer, turning every
//! descriptor into checked buffers named as the caller spells them), then the operations:
//! `ghost_dot`, `model`, `projection`, `covariances`, `scores`, `inrun`, `dvemb`,
//! `precondition`. Every submodule starts with `use super::*`: the shared imports below and
//! the items of its siblings (internal items are `pub(super)`; only the C ABI is `pub`).

#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;

mod status;
mod context;
mod descriptors;
mod buffers;
mod parse;
mod ghost_dot;
mod model;
mod projection;
mod covariances;
mod scores;
mod inrun;
mod dvemb;
mod precondition;

pub use status::*;
pub use context::*;
pub use descriptors::*;
use buffers::*;
use parse::*;
pub use ghost_dot::*;
pub use model::*;
pub use projection::*;
pub use covariances::*;
pub use scores::*;
pub use inrun::*;
pub use dvemb::*;
pub use precondition::*;

use status::gg_status::*;

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use half::{bf16, f16};
use crate::buffer::{DeviceSlice, DeviceSliceMut, HostSlice, Tensor, TensorMut};
use crate::context::{Backend, Context};
use crate::dtype::DType;
use crate::error::GhostError;
use crate::ghost_dot::{
    Accumulate, Form, FormChoice, FormRequest, GhostDotLayer, LayerShape, QueryFactors, Segments, TrainFactors,
};
use crate::dvemb::{Blocking, DvembLayer, DvembSteps, LossReduction};
use crate::inrun::GhgLayer;
use crate::validate as v;
use crate::projection::precondition::{Kfac, RawFisher};
use crate::projection::{
    Distribution, EmbeddingLayer, OutColumns, ProjectInput, ProjectLayer, ProjectionKind, ProjectionSpec, ScoreDims,
    ScoreMode, Which,
};

//! The one error type of the crate: every failure names what was wrong and, where it
//! helps, both sides of a mismatch.

use crate::dtype::DType;

/// Errors returned by every ghostgrad operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GhostError {
    #[error("`{what}` is a null pointer")]
    NullPointer { what: &'static str },
    #[error("`{what}` at address {addr:#x} is not aligned to {align} bytes")]
    Misaligned { what: &'static str, addr: u64, align: u64 },
    #[error("`{what}` has {got} elements, expected {expected}")]
    LengthMismatch { what: &'static str, expected: u64, got: u64 },
    #[error("`{what}` must be at least 1 (got 0)")]
    ZeroSize { what: &'static str },
    #[error("shape overflow: {what} does not fit in {limit}")]
    ShapeOverflow { what: String, limit: &'static str },
    #[error("`{what}` has dtype {got}, expected {expected}")]
    DtypeMismatch { what: &'static str, expected: DType, got: DType },
    #[error("dtype {dtype} is not supported for `{what}` in {op}")]
    UnsupportedDtype { what: &'static str, dtype: DType, op: &'static str },
    #[error("`{what}` is in {got} memory but this context needs {expected} memory")]
    WrongMemorySpace { what: &'static str, expected: &'static str, got: &'static str },
    #[error("stream mismatch: {0}")]
    StreamMismatch(String),
    #[error("invalid argument `{what}`: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    #[error(
        "ghostgrad was built without CUDA kernels (nvcc was not found at build time). \
         Run `bash scripts/setup-cuda.sh` (installs nvcc from PyPI into .toolchain/) or set \
         GHOSTGRAD_NVCC / CUDA_HOME, then rebuild"
    )]
    KernelsNotBuilt,
    #[error("CUDA driver unavailable: {0}")]
    CudaDriverUnavailable(String),
    #[error("CUDA driver call {call} failed: {message}")]
    Cuda { call: &'static str, message: String },
    #[error("kernel `{name}` is not in the embedded kernel images")]
    MissingKernel { name: String },
    #[error("launch limit exceeded: {what} = {value} > {limit}")]
    LaunchLimit { what: &'static str, value: u64, limit: u64 },
    #[error("PTX interpreter: {0}")]
    Interpreter(String),
    #[error("internal error (a bug in ghostgrad): {0}")]
    Internal(String),
    /// An invalid argument whose name is built from the call (`uses[3].query`,
    /// `uses[2].train.x`): the same family as [`GhostError::InvalidArgument`].
    #[error("invalid argument `{what}`: {reason}")]
    InvalidField { what: String, reason: String },
    /// A host allocation the machine could not satisfy (the shapes ask for more memory than
    /// there is): nothing was computed or written.
    #[error("out of memory: allocating {what} ({bytes} bytes) failed")]
    OutOfMemory { what: String, bytes: u64 },
}

pub type Result<T, E = GhostError> = std::result::Result<T, E>;

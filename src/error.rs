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
        "ghostgrad was built without CUDA kernels (neither nvcc 13 nor NVRTC 12 + ptxas 12 was \
         found at build time). Run `bash scripts/setup-cuda.sh` (installs both from PyPI into \
         .toolchain/) or set GHOSTGRAD_NVCC / CUDA_HOME / GHOSTGRAD_CUDA12_HOME, then rebuild"
    )]
    KernelsNotBuilt,
    #[error("CUDA driver unavailable: {0}")]
    CudaDriverUnavailable(String),
    #[error("the CUDA driver is too old: found {found}, {needed_for} needs {needed} or newer")]
    DriverTooOld { found: String, needed: String, needed_for: String },
    #[error("unsupported GPU of compute capability {compute_capability}: {reason}")]
    UnsupportedDevice { compute_capability: String, reason: String },
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

impl GhostError {
    /// The same error with the argument it names placed inside `prefix`, the way the caller
    /// spells the enclosing list element or struct: `LengthMismatch { what: "train.x" }` within
    /// `uses[3]` names `uses[3].train.x` (a `[i]` is appended without a dot). Errors that name
    /// no argument are returned unchanged. Used where an operation validates an element of a
    /// list (`layers[i]`, `uses[i]`, `params[i]`) or a field of a struct argument (`proj`).
    pub fn within(self, prefix: &str) -> GhostError {
        self.renamed(|what| {
            if what.starts_with('[') {
                format!("{prefix}{what}")
            } else {
                format!("{prefix}.{what}")
            }
        })
    }

    /// The same error with the name of the argument it names mapped by `f` (errors that name no
    /// argument are returned unchanged). Names of the `&'static str` kinds are interned: each
    /// distinct name is allocated once for the life of the process.
    pub fn renamed(self, f: impl FnOnce(&str) -> String) -> GhostError {
        use GhostError::*;
        match self {
            NullPointer { what } => NullPointer { what: intern(f(what)) },
            Misaligned { what, addr, align } => Misaligned { what: intern(f(what)), addr, align },
            LengthMismatch { what, expected, got } => LengthMismatch { what: intern(f(what)), expected, got },
            ZeroSize { what } => ZeroSize { what: intern(f(what)) },
            ShapeOverflow { what, limit } => ShapeOverflow { what: f(&what), limit },
            DtypeMismatch { what, expected, got } => DtypeMismatch { what: intern(f(what)), expected, got },
            UnsupportedDtype { what, dtype, op } => UnsupportedDtype { what: intern(f(what)), dtype, op },
            WrongMemorySpace { what, expected, got } => WrongMemorySpace { what: intern(f(what)), expected, got },
            InvalidArgument { what, reason } => InvalidArgument { what: intern(f(what)), reason },
            InvalidField { what, reason } => InvalidField { what: f(&what), reason },
            OutOfMemory { what, bytes } => OutOfMemory { what, bytes },
            other @ (StreamMismatch(_)
            | KernelsNotBuilt
            | CudaDriverUnavailable(_)
            | DriverTooOld { .. }
            | UnsupportedDevice { .. }
            | Cuda { .. }
            | MissingKernel { .. }
            | LaunchLimit { .. }
            | Interpreter(_)
            | Internal(_)) => other,
        }
    }
}

/// A `&'static str` with the text of `name`: one allocation per distinct name for the life of
/// the process (names are built only on error paths, from argument paths such as
/// `uses[3].train.x`, so the set stays small), so that errors keep their `&'static str` fields.
pub(crate) fn intern(name: String) -> &'static str {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

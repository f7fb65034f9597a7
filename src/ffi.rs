//! C ABI over [`Context`]: every operation of the crate, callable from C, C++, Python (ctypes,
//! cffi) or any language with a C FFI. The header is `include/ghostgrad.h`, generated from this
//! file by cbindgen (`GHOSTGRAD_BLESS=1 cargo test --test header_fresh` regenerates it; the same
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

#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
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

// ---------------------------------------------------------------------------------------------
// Status codes and errors
// ---------------------------------------------------------------------------------------------

/// Result of every fallible call: `GG_STATUS_OK` or the family of the error (one code per
/// ghostgrad error kind). The message is in [`gg_last_error_message`].
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum gg_status {
    GG_STATUS_OK = 0,
    /// A required pointer (context, descriptor, out-parameter or buffer) is NULL.
    GG_STATUS_NULL_POINTER = 1,
    /// A buffer is not aligned to its element size (or an out-parameter to its type).
    GG_STATUS_MISALIGNED = 2,
    /// A buffer's element count does not match the shapes.
    GG_STATUS_LENGTH_MISMATCH = 3,
    /// A size that must be at least 1 is 0.
    GG_STATUS_ZERO_SIZE = 4,
    /// A size product overflows (u64, the address space, or the kernels' 2^31 index range).
    GG_STATUS_SHAPE_OVERFLOW = 5,
    /// A dtype is not accepted here, two buffers that must share a dtype differ, or a dtype
    /// code is not a `gg_dtype`.
    GG_STATUS_DTYPE = 6,
    /// Host memory given to a GPU context or device memory to a CPU context.
    GG_STATUS_WRONG_MEMORY_SPACE = 7,
    /// A stream belongs to another device or context.
    GG_STATUS_STREAM_MISMATCH = 8,
    /// Any other invalid argument (unknown enum code, non-finite scale, overlapping buffers, ...).
    GG_STATUS_INVALID_ARGUMENT = 9,
    /// ghostgrad was built without nvcc: no CUDA kernels are embedded.
    GG_STATUS_KERNELS_NOT_BUILT = 10,
    /// The CUDA driver library cannot be loaded on this machine.
    GG_STATUS_DRIVER_UNAVAILABLE = 11,
    /// A CUDA driver call failed.
    GG_STATUS_CUDA = 12,
    /// A kernel is missing from the embedded images.
    GG_STATUS_MISSING_KERNEL = 13,
    /// A shape exceeds a hardware launch limit.
    GG_STATUS_LAUNCH_LIMIT = 14,
    /// The PTX interpreter failed.
    GG_STATUS_INTERPRETER = 15,
    /// A bug in ghostgrad (an internal invariant failed).
    GG_STATUS_INTERNAL = 16,
    /// A panic inside ghostgrad was caught at the ABI boundary (a bug in ghostgrad).
    GG_STATUS_PANIC = 17,
    /// A host allocation the shapes need could not be satisfied (nothing was computed).
    GG_STATUS_OUT_OF_MEMORY = 18,
}

use gg_status::*;

const ALL_STATUSES: [gg_status; 19] = [
    GG_STATUS_OK,
    GG_STATUS_NULL_POINTER,
    GG_STATUS_MISALIGNED,
    GG_STATUS_LENGTH_MISMATCH,
    GG_STATUS_ZERO_SIZE,
    GG_STATUS_SHAPE_OVERFLOW,
    GG_STATUS_DTYPE,
    GG_STATUS_WRONG_MEMORY_SPACE,
    GG_STATUS_STREAM_MISMATCH,
    GG_STATUS_INVALID_ARGUMENT,
    GG_STATUS_KERNELS_NOT_BUILT,
    GG_STATUS_DRIVER_UNAVAILABLE,
    GG_STATUS_CUDA,
    GG_STATUS_MISSING_KERNEL,
    GG_STATUS_LAUNCH_LIMIT,
    GG_STATUS_INTERPRETER,
    GG_STATUS_INTERNAL,
    GG_STATUS_PANIC,
    GG_STATUS_OUT_OF_MEMORY,
];

impl gg_status {
    /// The status with this code, if any.
    pub fn from_code(code: i32) -> Option<gg_status> {
        ALL_STATUSES.iter().copied().find(|s| *s as i32 == code)
    }

    /// The constant's name, e.g. `GG_STATUS_NULL_POINTER`.
    pub fn name(self) -> &'static CStr {
        match self {
            GG_STATUS_OK => c"GG_STATUS_OK",
            GG_STATUS_NULL_POINTER => c"GG_STATUS_NULL_POINTER",
            GG_STATUS_MISALIGNED => c"GG_STATUS_MISALIGNED",
            GG_STATUS_LENGTH_MISMATCH => c"GG_STATUS_LENGTH_MISMATCH",
            GG_STATUS_ZERO_SIZE => c"GG_STATUS_ZERO_SIZE",
            GG_STATUS_SHAPE_OVERFLOW => c"GG_STATUS_SHAPE_OVERFLOW",
            GG_STATUS_DTYPE => c"GG_STATUS_DTYPE",
            GG_STATUS_WRONG_MEMORY_SPACE => c"GG_STATUS_WRONG_MEMORY_SPACE",
            GG_STATUS_STREAM_MISMATCH => c"GG_STATUS_STREAM_MISMATCH",
            GG_STATUS_INVALID_ARGUMENT => c"GG_STATUS_INVALID_ARGUMENT",
            GG_STATUS_KERNELS_NOT_BUILT => c"GG_STATUS_KERNELS_NOT_BUILT",
            GG_STATUS_DRIVER_UNAVAILABLE => c"GG_STATUS_DRIVER_UNAVAILABLE",
            GG_STATUS_CUDA => c"GG_STATUS_CUDA",
            GG_STATUS_MISSING_KERNEL => c"GG_STATUS_MISSING_KERNEL",
            GG_STATUS_LAUNCH_LIMIT => c"GG_STATUS_LAUNCH_LIMIT",
            GG_STATUS_INTERPRETER => c"GG_STATUS_INTERPRETER",
            GG_STATUS_INTERNAL => c"GG_STATUS_INTERNAL",
            GG_STATUS_PANIC => c"GG_STATUS_PANIC",
            GG_STATUS_OUT_OF_MEMORY => c"GG_STATUS_OUT_OF_MEMORY",
        }
    }
}

impl From<&GhostError> for gg_status {
    fn from(e: &GhostError) -> Self {
        // Exhaustive on purpose: a new error kind must get a status here.
        match e {
            GhostError::NullPointer { .. } => GG_STATUS_NULL_POINTER,
            GhostError::Misaligned { .. } => GG_STATUS_MISALIGNED,
            GhostError::LengthMismatch { .. } => GG_STATUS_LENGTH_MISMATCH,
            GhostError::ZeroSize { .. } => GG_STATUS_ZERO_SIZE,
            GhostError::ShapeOverflow { .. } => GG_STATUS_SHAPE_OVERFLOW,
            GhostError::DtypeMismatch { .. } | GhostError::UnsupportedDtype { .. } => GG_STATUS_DTYPE,
            GhostError::WrongMemorySpace { .. } => GG_STATUS_WRONG_MEMORY_SPACE,
            GhostError::StreamMismatch(_) => GG_STATUS_STREAM_MISMATCH,
            GhostError::InvalidArgument { .. } | GhostError::InvalidField { .. } => GG_STATUS_INVALID_ARGUMENT,
            GhostError::KernelsNotBuilt => GG_STATUS_KERNELS_NOT_BUILT,
            GhostError::CudaDriverUnavailable(_) => GG_STATUS_DRIVER_UNAVAILABLE,
            GhostError::Cuda { .. } => GG_STATUS_CUDA,
            GhostError::MissingKernel { .. } => GG_STATUS_MISSING_KERNEL,
            GhostError::LaunchLimit { .. } => GG_STATUS_LAUNCH_LIMIT,
            GhostError::Interpreter(_) => GG_STATUS_INTERPRETER,
            GhostError::Internal(_) => GG_STATUS_INTERNAL,
            GhostError::OutOfMemory { .. } => GG_STATUS_OUT_OF_MEMORY,
        }
    }
}

/// A failed call: its status and the message stored for [`gg_last_error_message`].
#[derive(Debug)]
struct Failure {
    status: gg_status,
    message: String,
}

impl Failure {
    fn new(status: gg_status, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
    fn null(what: &str) -> Self {
        Failure::new(GG_STATUS_NULL_POINTER, format!("`{what}` is a null pointer"))
    }
    fn invalid(what: &str, reason: impl std::fmt::Display) -> Self {
        Failure::new(GG_STATUS_INVALID_ARGUMENT, format!("invalid argument `{what}`: {reason}"))
    }
    /// Prefixes the message with where it happened (e.g. `layers[2]`).
    fn context(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl From<GhostError> for Failure {
    fn from(e: GhostError) -> Self {
        Failure { status: gg_status::from(&e), message: e.to_string() }
    }
}

type FfiResult<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_FORM_REASON: RefCell<CString> = RefCell::new(CString::default());
}

/// A C string of `s` (interior NULs, which no ghostgrad message contains, become spaces).
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

fn set_last_error(message: &str) {
    LAST_ERROR.with(|e| *e.borrow_mut() = c_string(message));
}

fn set_form_reason(reason: &str) {
    LAST_FORM_REASON.with(|r| *r.borrow_mut() = c_string(reason));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Runs the body of a fallible extern fn: resets the last error, catches panics, records the
/// failure's message and turns it into a status.
fn guard(body: impl FnOnce() -> FfiResult) -> gg_status {
    set_last_error("");
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return GG_STATUS_OK,
        Ok(Err(f)) => f,
        Err(payload) => Failure::new(
            GG_STATUS_PANIC,
            format!("panic inside ghostgrad (a bug, please report it): {}", panic_message(payload.as_ref())),
        ),
    };
    set_last_error(&failure.message);
    failure.status
}

/// Runs the body of an infallible extern fn returning a pointer, with `fallback` after a panic.
fn guard_ptr(fallback: *const c_char, body: impl FnOnce() -> *const c_char) -> *const c_char {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

// ---------------------------------------------------------------------------------------------
// Codes passed in by the caller (plain integers, so an invalid value is an error, not UB)
// ---------------------------------------------------------------------------------------------

/// Element type of a [`gg_tensor`] (same values as ghostgrad's `DType`). Factors: F32, BF16,
/// F16; masks: U8 (nonzero = keep); segment offsets: I32; token ids: I32 or I64.
pub type gg_dtype = u32;
pub const GG_DTYPE_F32: gg_dtype = 0;
pub const GG_DTYPE_BF16: gg_dtype = 1;
pub const GG_DTYPE_F16: gg_dtype = 2;
pub const GG_DTYPE_U8: gg_dtype = 3;
pub const GG_DTYPE_I32: gg_dtype = 4;
/// Token ids as frameworks hold them (torch.int64). Code 5 is not a C dtype.
pub const GG_DTYPE_I64: gg_dtype = 6;

const _: () = {
    assert!(GG_DTYPE_F32 == DType::F32 as u32);
    assert!(GG_DTYPE_BF16 == DType::BF16 as u32);
    assert!(GG_DTYPE_F16 == DType::F16 as u32);
    assert!(GG_DTYPE_U8 == DType::U8 as u32);
    assert!(GG_DTYPE_I32 == DType::I32 as u32);
    assert!(GG_DTYPE_I64 == DType::I64 as u32);
};

/// An exact algorithm for ghost dot-products (reported in [`gg_form_choice`]; also the index
/// of the per-form cost arrays there).
pub type gg_form = u32;
/// `Σ_t Σ_u (a·aq)(b·bq)`: no d_in×d_out memory.
pub const GG_FORM_GRAM: gg_form = 0;
/// `M_v = Bq_vᵀ Aq_v`, then `Σ_t bᵀ M_v a`.
pub const GG_FORM_DENSE_QUERY: gg_form = 1;
/// Materialize every per-sample gradient, then dot.
pub const GG_FORM_MATERIALIZE: gg_form = 2;

const _: () = {
    assert!(GG_FORM_GRAM == Form::Gram as u32);
    assert!(GG_FORM_DENSE_QUERY == Form::DenseQuery as u32);
    assert!(GG_FORM_MATERIALIZE == Form::Materialize as u32);
};

/// Which form an operation should use: `GG_FORM_REQUEST_AUTO` (the cost model's choice; 0, so
/// a zero-initialized request is automatic) or a forced form, `GG_FORM_REQUEST_x = GG_FORM_x + 1`.
pub type gg_form_request = u32;
pub const GG_FORM_REQUEST_AUTO: gg_form_request = 0;
pub const GG_FORM_REQUEST_GRAM: gg_form_request = 1;
pub const GG_FORM_REQUEST_DENSE_QUERY: gg_form_request = 2;
pub const GG_FORM_REQUEST_MATERIALIZE: gg_form_request = 3;

/// How query rows are grouped into query samples (see [`gg_segments`]).
pub type gg_segments_kind = u32;
/// All `q` rows form one query sample: `V = 1`.
pub const GG_SEGMENTS_SINGLE: gg_segments_kind = 0;
/// Consecutive runs of `uniform_len` rows: `V = ceil(q / uniform_len)`.
pub const GG_SEGMENTS_UNIFORM: gg_segments_kind = 1;
/// `offsets` (i32, `V + 1` entries): sample `v` is rows `offsets[v] .. offsets[v+1]`.
pub const GG_SEGMENTS_OFFSETS: gg_segments_kind = 2;

fn dtype_from_code(what: &str, code: gg_dtype) -> FfiResult<DType> {
    // F64 (the Rust-only value accumulator of In-Run Data Shapley) is not part of the C ABI.
    DType::from_u32(code).filter(|d| *d != DType::F64).ok_or_else(|| {
        Failure::new(
            GG_STATUS_DTYPE,
            format!("`{what}`: dtype code {code} is not a gg_dtype (F32=0, BF16=1, F16=2, U8=3, I32=4, I64=6)"),
        )
    })
}

fn form_request_from_code(code: gg_form_request) -> FfiResult<FormRequest> {
    Ok(match code {
        GG_FORM_REQUEST_AUTO => FormRequest::Auto,
        GG_FORM_REQUEST_GRAM => FormRequest::Force(Form::Gram),
        GG_FORM_REQUEST_DENSE_QUERY => FormRequest::Force(Form::DenseQuery),
        GG_FORM_REQUEST_MATERIALIZE => FormRequest::Force(Form::Materialize),
        other => {
            return Err(Failure::invalid(
                "form",
                format!("{other} is not a gg_form_request (AUTO=0, GRAM=1, DENSE_QUERY=2, MATERIALIZE=3)"),
            ))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

/// A read-only buffer: `len` elements of `dtype` at `ptr` (host memory for CPU contexts, device
/// memory for CUDA contexts), contiguous and row-major. Optional arguments are absent when
/// `ptr == NULL && len == 0`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_tensor {
    pub ptr: *const c_void,
    pub len: u64,
    pub dtype: gg_dtype,
}

/// A written buffer of `len` f32 elements (host or device memory, as for [`gg_tensor`]).
/// Optional outputs are absent when `ptr == NULL && len == 0`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_tensor_mut {
    pub ptr: *mut c_void,
    pub len: u64,
}

/// One linear layer `y = x Wᵀ (+ bias)`, `W` of shape `[d_out, d_in]`; `has_bias` nonzero adds
/// the bias to the parameter (activations augmented with a constant 1).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_layer_shape {
    pub d_in: u64,
    pub d_out: u64,
    pub has_bias: u32,
}

/// Training-side factors: `a [n, t, d_in]`, `b [n, t, d_out]` (same float dtype), optional
/// `mask [n, t]` u8 (a zero entry skips that token).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_train {
    pub a: gg_tensor,
    pub b: gg_tensor,
    pub n: u64,
    pub t: u64,
    pub mask: gg_tensor,
}

/// Query segmentation: `kind` is a `gg_segments_kind`; `uniform_len` is read only for
/// `GG_SEGMENTS_UNIFORM`, `offsets` only for `GG_SEGMENTS_OFFSETS`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_segments {
    pub kind: gg_segments_kind,
    pub uniform_len: u64,
    pub offsets: gg_tensor,
}

/// Query-side factors: `aq [q, d_in]`, `bq [q, d_out]` (the training dtype), their grouping
/// into `V` query samples, optional row `mask [q]` u8.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_query {
    pub aq: gg_tensor,
    pub bq: gg_tensor,
    pub q: u64,
    pub segments: gg_segments,
    pub mask: gg_tensor,
}

/// One layer of [`gg_ghost_dot_layers`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_layer {
    pub shape: gg_layer_shape,
    pub train: gg_train,
    pub query: gg_query,
    pub form: gg_form_request,
}

/// The form an operation used and the cost model's estimates for every form, indexed by
/// `gg_form` (`GG_FORM_GRAM`, `GG_FORM_DENSE_QUERY`, `GG_FORM_MATERIALIZE`). The reason in
/// words: [`gg_last_form_reason`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct gg_form_choice {
    pub form: gg_form,
    /// Nonzero when the form was requested explicitly rather than chosen by the cost model.
    pub forced: u32,
    /// Modeled time `max(flops / flop_rate, bytes / byte_rate)` (a model, not a measurement).
    pub est_seconds: [f64; 3],
    pub flops: [f64; 3],
    /// Minimum bytes moved to and from main memory.
    pub bytes: [f64; 3],
    /// Scratch memory beyond inputs and outputs.
    pub extra_bytes: [f64; 3],
    /// Nonzero when the form's scratch fits the context's workspace limit.
    pub fits: [u32; 3],
}

impl From<&FormChoice> for gg_form_choice {
    fn from(c: &FormChoice) -> Self {
        let mut out = gg_form_choice {
            form: c.form as u32,
            forced: c.forced as u32,
            est_seconds: [0.0; 3],
            flops: [0.0; 3],
            bytes: [0.0; 3],
            extra_bytes: [0.0; 3],
            fits: [0; 3],
        };
        for cost in &c.costs {
            let i = cost.form as usize;
            out.est_seconds[i] = cost.est_seconds;
            out.flops[i] = cost.flops;
            out.bytes[i] = cost.bytes;
            out.extra_bytes[i] = cost.extra_bytes;
            out.fits[i] = cost.fits as u32;
        }
        out
    }
}

/// A ghostgrad context (opaque): where operations run. Create with `gg_context_create_*`,
/// release with [`gg_context_destroy`].
pub struct gg_context {
    inner: Context,
}

// ---------------------------------------------------------------------------------------------
// Pointer checks and conversions
// ---------------------------------------------------------------------------------------------

/// Reads a caller descriptor by value (so nothing later aliases the caller's struct).
///
/// # Safety
/// `p` is NULL or points at a readable `T` (alignment is checked here).
unsafe fn read_desc<T: Copy>(p: *const T, what: &str) -> FfiResult<T> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::new(GG_STATUS_MISALIGNED, format!("`{what}` at {p:p} is misaligned for its type")));
    }
    // SAFETY: non-null and aligned (checked above); readable by the caller's contract.
    Ok(unsafe { p.read() })
}

/// Writes an out-parameter.
///
/// # Safety
/// `p` is NULL or points at writable memory for one `T` (alignment is checked here).
unsafe fn write_out<T>(p: *mut T, what: &str, value: T) -> FfiResult {
    check_out_param(p, what)?;
    // SAFETY: non-null and aligned (checked); writable by the caller's contract.
    unsafe { p.write(value) };
    Ok(())
}

fn check_out_param<T>(p: *mut T, what: &str) -> FfiResult {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::new(GG_STATUS_MISALIGNED, format!("`{what}` at {p:p} is misaligned for its type")));
    }
    Ok(())
}

/// The context behind a caller handle.
///
/// # Safety
/// `p` is NULL or a handle from `gg_context_create_*` not yet destroyed.
unsafe fn context_ref<'a>(p: *const gg_context) -> FfiResult<&'a Context> {
    if p.is_null() {
        return Err(Failure::null("ctx"));
    }
    // SAFETY: a live handle (caller's contract) points at a gg_context allocated by Box.
    Ok(unsafe { &(*p).inner })
}

/// Memory space the context's buffers live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space {
    Host,
    Device,
}

/// A checked caller buffer: non-null, aligned, with a byte size that fits the address space.
/// No reference to the memory exists yet.
#[derive(Debug, Clone, Copy)]
struct RawBuf {
    addr: usize,
    len: u64,
    dtype: DType,
}

/// A checked region of caller memory, kept to reject outputs overlapping other buffers.
struct Region {
    what: String,
    start: usize,
    end: usize,
    writable: bool,
}

/// Collects the buffers of one call: checks each, then checks that no output overlaps any
/// other buffer, before any Rust reference to caller memory is created.
struct Buffers {
    space: Space,
    prefix: String,
    regions: Vec<Region>,
}

impl Buffers {
    fn new(ctx: &Context) -> Self {
        let space = match ctx.backend() {
            Backend::Gpu(_) => Space::Device,
            Backend::CpuReference | Backend::CpuFast => Space::Host,
        };
        Buffers { space, prefix: String::new(), regions: Vec::new() }
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    fn check(&mut self, what: &str, ptr: usize, len: u64, dtype: DType, writable: bool) -> FfiResult<RawBuf> {
        let name = self.name(what);
        if ptr == 0 {
            let detail = if len == 0 { "" } else { " (with a nonzero length)" };
            return Err(Failure::new(GG_STATUS_NULL_POINTER, format!("`{name}` is a null pointer{detail}")));
        }
        let elem = dtype.size();
        if (ptr as u64) % elem != 0 {
            return Err(Failure::new(
                GG_STATUS_MISALIGNED,
                format!("`{name}` at address {ptr:#x} is not aligned to {elem} bytes (its {dtype} element size)"),
            ));
        }
        let bytes = len
            .checked_mul(elem)
            .filter(|&b| b <= isize::MAX as u64 && (ptr as u64).checked_add(b).is_some())
            .ok_or_else(|| {
                Failure::new(
                    GG_STATUS_SHAPE_OVERFLOW,
                    format!("shape overflow: `{name}` of {len} {dtype} elements at {ptr:#x} exceeds the address space"),
                )
            })?;
        self.regions.push(Region { what: name, start: ptr, end: ptr + bytes as usize, writable });
        Ok(RawBuf { addr: ptr, len, dtype })
    }

    fn input(&mut self, what: &str, t: &gg_tensor) -> FfiResult<RawBuf> {
        let name = self.name(what);
        let dtype = dtype_from_code(&name, t.dtype)?;
        self.check(what, t.ptr as usize, t.len, dtype, false)
    }

    fn optional_input(&mut self, what: &str, t: &gg_tensor) -> FfiResult<Option<RawBuf>> {
        if t.ptr.is_null() && t.len == 0 {
            return Ok(None);
        }
        self.input(what, t).map(Some)
    }

    fn output(&mut self, what: &str, t: &gg_tensor_mut) -> FfiResult<RawBuf> {
        self.check(what, t.ptr as usize, t.len, DType::F32, true)
    }

    fn optional_output(&mut self, what: &str, t: &gg_tensor_mut) -> FfiResult<Option<RawBuf>> {
        if t.ptr.is_null() && t.len == 0 {
            return Ok(None);
        }
        self.output(what, t).map(Some)
    }

    fn train(&mut self, t: &gg_train) -> FfiResult<RawTrain> {
        Ok(RawTrain {
            a: self.input("train.a", &t.a)?,
            b: self.input("train.b", &t.b)?,
            n: t.n,
            t: t.t,
            mask: self.optional_input("train.mask", &t.mask)?,
        })
    }

    fn query(&mut self, q: &gg_query) -> FfiResult<RawQuery> {
        let segments = match q.segments.kind {
            GG_SEGMENTS_SINGLE => RawSegments::Single,
            GG_SEGMENTS_UNIFORM => RawSegments::Uniform(q.segments.uniform_len),
            GG_SEGMENTS_OFFSETS => RawSegments::Offsets(self.input("query.segments.offsets", &q.segments.offsets)?),
            other => {
                return Err(Failure::invalid(
                    &self.name("query.segments.kind"),
                    format!("{other} is not a gg_segments_kind (SINGLE=0, UNIFORM=1, OFFSETS=2)"),
                ))
            }
        };
        Ok(RawQuery {
            aq: self.input("query.aq", &q.aq)?,
            bq: self.input("query.bq", &q.bq)?,
            q: q.q,
            segments,
            mask: self.optional_input("query.mask", &q.mask)?,
        })
    }

    /// Rejects an output overlapping any other buffer of the call (inputs may alias each other).
    fn check_overlaps(&self) -> FfiResult {
        for (i, w) in self.regions.iter().enumerate().filter(|(_, r)| r.writable) {
            for (j, o) in self.regions.iter().enumerate() {
                if i != j && w.start < o.end && o.start < w.end {
                    return Err(Failure::invalid(
                        &w.what,
                        format!(
                            "output [{:#x}, {:#x}) overlaps `{}` [{:#x}, {:#x}); outputs must not alias other buffers",
                            w.start, w.end, o.what, o.start, o.end
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RawBuf {
    /// A view of the buffer in the context's memory space.
    ///
    /// # Safety
    /// The caller's contract for inputs: `len` elements of `dtype` readable at `addr` for `'a`
    /// and not written by anyone during `'a` (host), or the contract of
    /// [`DeviceSlice::from_raw_parts`] (device). `addr` is non-null and aligned (checked).
    unsafe fn view<'a>(self, space: Space) -> Tensor<'a> {
        let len = self.len as usize; // fits: bytes <= isize::MAX was checked
        match space {
            Space::Device => {
                // SAFETY: the caller's contract on device memory (see above).
                Tensor::Device(unsafe { DeviceSlice::from_raw_parts(self.addr as u64, self.len, self.dtype) })
            }
            // SAFETY (all arms): addr is non-null, aligned to the element type, len * size bytes
            // fit the address space (checked in Buffers::check), the memory is readable and
            // unmodified for 'a (caller's contract); every bit pattern is a valid f32, bf16, f16,
            // u8, i32 or i64.
            Space::Host => Tensor::Host(match self.dtype {
                DType::F32 => HostSlice::F32(unsafe { std::slice::from_raw_parts(self.addr as *const f32, len) }),
                DType::BF16 => HostSlice::BF16(unsafe { std::slice::from_raw_parts(self.addr as *const bf16, len) }),
                DType::F16 => HostSlice::F16(unsafe { std::slice::from_raw_parts(self.addr as *const f16, len) }),
                DType::U8 => HostSlice::U8(unsafe { std::slice::from_raw_parts(self.addr as *const u8, len) }),
                DType::I32 => HostSlice::I32(unsafe { std::slice::from_raw_parts(self.addr as *const i32, len) }),
                DType::I64 => HostSlice::I64(unsafe { std::slice::from_raw_parts(self.addr as *const i64, len) }),
                DType::F64 => unreachable!("dtype_from_code never yields F64"),
            }),
        }
    }

    /// A writable view of an f32 output.
    ///
    /// # Safety
    /// The caller's contract for outputs: `len` f32 writable at `addr` for `'a`, not read or
    /// written by anyone else during `'a`; [`Buffers::check_overlaps`] passed for this call, so
    /// no other view of the call aliases it. `addr` is non-null and 4-byte aligned (checked).
    unsafe fn view_mut<'a>(self, space: Space) -> TensorMut<'a> {
        debug_assert_eq!(self.dtype, DType::F32);
        match space {
            // SAFETY: the caller's contract on device memory (see above).
            Space::Device => {
                TensorMut::Device(unsafe { DeviceSliceMut::from_raw_parts(self.addr as u64, self.len, DType::F32) })
            }
            // SAFETY: non-null, aligned, size checked; exclusive for 'a by the caller's contract
            // and the overlap check.
            Space::Host => {
                TensorMut::Host(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut f32, self.len as usize) })
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RawTrain {
    a: RawBuf,
    b: RawBuf,
    n: u64,
    t: u64,
    mask: Option<RawBuf>,
}

impl RawTrain {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    unsafe fn view<'a>(self, space: Space) -> TrainFactors<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            TrainFactors {
                a: self.a.view(space),
                b: self.b.view(space),
                n: self.n,
                t: self.t,
                mask: self.mask.map(|m| m.view(space)),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum RawSegments {
    Single,
    Uniform(u64),
    Offsets(RawBuf),
}

#[derive(Debug, Clone, Copy)]
struct RawQuery {
    aq: RawBuf,
    bq: RawBuf,
    q: u64,
    segments: RawSegments,
    mask: Option<RawBuf>,
}

impl RawQuery {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    unsafe fn view<'a>(self, space: Space) -> QueryFactors<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            QueryFactors {
                aq: self.aq.view(space),
                bq: self.bq.view(space),
                q: self.q,
                segments: match self.segments {
                    RawSegments::Single => Segments::Single,
                    RawSegments::Uniform(l) => Segments::Uniform(l),
                    RawSegments::Offsets(o) => Segments::Offsets(o.view(space)),
                },
                mask: self.mask.map(|m| m.view(space)),
            }
        }
    }
}

fn layer_shape(s: &gg_layer_shape) -> LayerShape {
    LayerShape { d_in: s.d_in, d_out: s.d_out, has_bias: s.has_bias != 0 }
}

/// Stores the reasons of one call for [`gg_last_form_reason`] and fills the optional
/// `choices` out-array (`choices.len()` entries).
///
/// # Safety
/// `out` is NULL or points at `choices.len()` writable `gg_form_choice`.
unsafe fn publish_choices(choices: &[FormChoice], out: *mut gg_form_choice) -> FfiResult {
    let reason = if choices.len() == 1 {
        choices[0].reason.clone()
    } else {
        choices.iter().enumerate().map(|(i, c)| format!("layers[{i}]: {}", c.reason)).collect::<Vec<_>>().join("\n")
    };
    set_form_reason(&reason);
    if out.is_null() {
        return Ok(());
    }
    check_out_param(out, "choice_out")?;
    for (i, c) in choices.iter().enumerate() {
        // SAFETY: out is non-null, aligned (checked) and has choices.len() entries (contract).
        unsafe { out.add(i).write(gg_form_choice::from(c)) };
    }
    Ok(())
}

/// Copies `s` into a caller buffer, snprintf-style: at most `cap - 1` bytes plus a NUL;
/// `*len_out` (if not NULL) receives the full length without the NUL.
///
/// # Safety
/// `buf` is NULL or `cap` writable bytes; `len_out` is NULL or a writable `size_t`.
unsafe fn copy_to_caller(s: &[u8], buf: *mut c_char, cap: usize, len_out: *mut usize) -> FfiResult {
    if cap > 0 {
        if buf.is_null() {
            return Err(Failure::new(GG_STATUS_NULL_POINTER, "`buf` is a null pointer with a nonzero capacity"));
        }
        let n = s.len().min(cap - 1);
        // SAFETY: buf has cap >= n + 1 writable bytes (caller's contract); s is our own memory,
        // distinct from the caller's buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
            *buf.add(n) = 0;
        }
    }
    if !len_out.is_null() {
        // SAFETY: non-null, writable by the caller's contract; alignment checked inside.
        unsafe { write_out(len_out, "len_out", s.len())? };
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Library information and errors
// ---------------------------------------------------------------------------------------------

/// The ghostgrad version, e.g. `"0.1.0"` (a static string).
#[no_mangle]
pub extern "C" fn gg_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    guard_ptr(c"".as_ptr(), || VERSION.as_ptr() as *const c_char)
}

/// The name of a status code, e.g. `"GG_STATUS_NULL_POINTER"` (a static string;
/// `"GG_STATUS_UNKNOWN"` for a value that is not a `gg_status`).
#[no_mangle]
pub extern "C" fn gg_status_name(status: i32) -> *const c_char {
    guard_ptr(c"GG_STATUS_UNKNOWN".as_ptr(), || match gg_status::from_code(status) {
        Some(s) => s.name().as_ptr(),
        None => c"GG_STATUS_UNKNOWN".as_ptr(),
    })
}

/// The message of the last failed call on this thread (empty when the last call succeeded).
/// The string is owned by ghostgrad and valid until the next ghostgrad call on this thread.
#[no_mangle]
pub extern "C" fn gg_last_error_message() -> *const c_char {
    guard_ptr(c"".as_ptr(), || LAST_ERROR.with(|e| e.borrow().as_ptr()))
}

/// Why the last form-choosing call on this thread (`gg_ghost_dot`, `gg_ghost_dot_layers`,
/// `gg_ghost_gram`, `gg_ghost_sqnorm`, `gg_choose_form`, `gg_ghg`) used its form(s): one line per
/// layer (per pseudo-layer for `gg_ghg`).
/// Empty before any such call succeeded. Owned by ghostgrad; valid until the next form-choosing
/// call on this thread.
#[no_mangle]
pub extern "C" fn gg_last_form_reason() -> *const c_char {
    guard_ptr(c"".as_ptr(), || LAST_FORM_REASON.with(|r| r.borrow().as_ptr()))
}

/// Copies [`gg_last_form_reason`] into `buf` (snprintf-style: at most `cap - 1` bytes and a
/// NUL); `*len_out`, if not NULL, receives the full length (excluding the NUL).
///
/// # Safety
/// `buf` is NULL (with `cap == 0`) or points at `cap` writable bytes; `len_out` is NULL or
/// points at a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn gg_last_form_reason_copy(buf: *mut c_char, cap: usize, len_out: *mut usize) -> gg_status {
    guard(|| {
        let reason = LAST_FORM_REASON.with(|r| r.borrow().as_bytes().to_vec());
        // SAFETY: forwarded from this function's contract.
        unsafe { copy_to_caller(&reason, buf, cap, len_out) }
    })
}

// ---------------------------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------------------------

/// # Safety
/// `out` is NULL or points at a writable `gg_context*`.
unsafe fn create(out: *mut *mut gg_context, make: impl FnOnce() -> FfiResult<Context>) -> gg_status {
    guard(|| {
        check_out_param(out, "out")?;
        // SAFETY: checked non-null and aligned; writable by the caller's contract. Cleared first
        // so that a failure leaves NULL behind.
        unsafe { out.write(std::ptr::null_mut()) };
        let ctx = Box::new(gg_context { inner: make()? });
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(ctx)) };
        Ok(())
    })
}

/// Creates a context on the fast multi-threaded CPU backend; `*out` receives the handle (NULL on
/// failure).
///
/// # Safety
/// `out` is NULL (an error) or points at a writable `gg_context*`.
#[no_mangle]
pub unsafe extern "C" fn gg_context_create_cpu(out: *mut *mut gg_context) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { create(out, || Ok(Context::cpu())) }
}

/// Creates a context on the float64 reference CPU backend (slow; for checking results).
///
/// # Safety
/// `out` is NULL (an error) or points at a writable `gg_context*`.
#[no_mangle]
pub unsafe extern "C" fn gg_context_create_cpu_reference(out: *mut *mut gg_context) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { create(out, || Ok(Context::cpu_reference())) }
}

/// Creates a context on CUDA device `ordinal`. `cu_stream` NULL: ghostgrad creates and owns a
/// non-blocking stream; otherwise every operation is enqueued on the caller's `CUstream`
/// (e.g. `torch.cuda.current_stream().cuda_stream`), which ghostgrad never synchronizes or
/// destroys. Operations are asynchronous: results are ready once the stream has passed them.
///
/// Errors: `GG_STATUS_KERNELS_NOT_BUILT` (built without nvcc), `GG_STATUS_DRIVER_UNAVAILABLE`
/// (no NVIDIA driver), `GG_STATUS_CUDA`, `GG_STATUS_STREAM_MISMATCH`.
///
/// # Safety
/// `out` is NULL (an error) or points at a writable `gg_context*`. A non-NULL `cu_stream` is a
/// valid `CUstream` of device `ordinal`'s primary context that outlives the context.
#[no_mangle]
pub unsafe extern "C" fn gg_context_create_cuda(
    ordinal: i32,
    cu_stream: *mut c_void,
    out: *mut *mut gg_context,
) -> gg_status {
    let make = || {
        let ordinal = usize::try_from(ordinal).map_err(|_| Failure::invalid("ordinal", format!("{ordinal} is negative")))?;
        if cu_stream.is_null() {
            Ok(Context::cuda(ordinal)?)
        } else {
            // SAFETY: the caller guarantees the stream is valid for the device and outlives the
            // context (this function's contract).
            Ok(unsafe { Context::cuda_on_stream(ordinal, cu_stream) }?)
        }
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { create(out, make) }
}

/// Releases a handle that `Box::into_raw` gave out (NULL is ignored). A panic while dropping it
/// (e.g. releasing GPU resources) is recorded, never propagated.
///
/// # Safety
/// `p` is NULL or a live pointer from `Box::into_raw` of a `T`, not used again.
unsafe fn destroy_handle<T>(p: *mut T) {
    if p.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: forwarded from this function's contract: allocated by Box::into_raw, destroyed once.
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    });
}

/// Releases a context (NULL is ignored). Operations already enqueued on a GPU stream must have
/// completed (synchronize the stream first) when the memory they use is freed.
///
/// # Safety
/// `ctx` is NULL or a handle from `gg_context_create_*` not yet destroyed; it is not used again.
#[no_mangle]
pub unsafe extern "C" fn gg_context_destroy(ctx: *mut gg_context) {
    // SAFETY: forwarded from this function's contract (a handle from `create`).
    unsafe { destroy_handle(ctx) }
}

/// Copies a description of the context's backend (e.g. `"cpu (8 threads)"`, the GPU's name)
/// into `buf`, snprintf-style (at most `cap - 1` bytes and a NUL); `*len_out`, if not NULL,
/// receives the full length (excluding the NUL). `buf` may be NULL with `cap == 0` to query the
/// length.
///
/// # Safety
/// `ctx` is NULL (an error) or a live handle; `buf` is NULL or points at `cap` writable bytes;
/// `len_out` is NULL or points at a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn gg_context_describe(
    ctx: *const gg_context,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        let text = ctx.describe();
        // SAFETY: forwarded from this function's contract.
        unsafe { copy_to_caller(text.as_bytes(), buf, cap, len_out) }
    })
}

/// Caps the scratch memory that a form chosen automatically may use (default 4 GiB).
///
/// # Safety
/// `ctx` is NULL (an error) or a live handle not used concurrently by another thread.
#[no_mangle]
pub unsafe extern "C" fn gg_context_set_max_workspace_bytes(ctx: *mut gg_context, bytes: u64) -> gg_status {
    guard(|| {
        if ctx.is_null() {
            return Err(Failure::null("ctx"));
        }
        // SAFETY: a live handle, used by this thread only (caller's contract).
        unsafe { (*ctx).inner.set_max_workspace_bytes(bytes) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// Ghost dot-products of one layer (MATH.md §1):
/// `out[n, v] = beta·out[n, v] + scale·<G_n, Gq_v>`, `out` f32 `[N, V]`, with
/// `G_n = Σ_t b_{n,t} a_{n,t}ᵀ` and `Gq_v = Σ_{u∈v} bq_u aq_uᵀ`. `form` is a `gg_form_request`.
/// `choice_out` (may be NULL) receives the form used and its costs; the reason in words is
/// [`gg_last_form_reason`].
///
/// # Safety
/// `ctx` is NULL or a live handle. `train` and `query` are NULL (an error) or readable
/// descriptors. Every buffer they describe is NULL or holds `len` elements of its dtype in the
/// context's memory space, readable during the call (until the stream passes the operation on a
/// GPU). `out` holds `out.len` writable f32 that nothing else reads or writes meanwhile.
/// `choice_out` is NULL or points at a writable `gg_form_choice`.
#[no_mangle]
pub unsafe extern "C" fn gg_ghost_dot(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    query: *const gg_query,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train, query) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?, read_desc(query, "query")?) };
        let form = form_request_from_code(form)?;
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_query = bufs.query(&query)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: buffers checked (non-null, aligned, sized, no output aliasing) and valid for
        // the call by this function's contract.
        let (train, query, mut out) = unsafe { (raw_train.view(space), raw_query.view(space), raw_out.view_mut(space)) };
        set_form_reason("");
        let choice = ctx.ghost_dot(&layer_shape(&shape), &train, &query, &mut out, Accumulate { scale, beta }, form)?;
        // SAFETY: forwarded from this function's contract.
        unsafe { publish_choices(std::slice::from_ref(&choice), choice_out) }
    })
}

/// Ghost dot-products summed over `n_layers` layers (same `N` and `V`; any shapes and dtypes):
/// `out[n, v] = beta·out[n, v] + scale·Σ_l <G^l_n, Gq^l_v>`, `out` f32 `[N, V]`.
/// `choices_out` (may be NULL) receives one `gg_form_choice` per layer; the reasons are the
/// lines of [`gg_last_form_reason`]. Errors name the layer (`layers[i]`).
///
/// # Safety
/// As [`gg_ghost_dot`], for every layer; `layers` is NULL (an error) or points at `n_layers`
/// readable `gg_layer`; `choices_out` is NULL or points at `n_layers` writable `gg_form_choice`.
#[no_mangle]
pub unsafe extern "C" fn gg_ghost_dot_layers(
    ctx: *const gg_context,
    layers: *const gg_layer,
    n_layers: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    choices_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        if layers.is_null() {
            return Err(Failure::null("layers"));
        }
        if (layers as usize) % std::mem::align_of::<gg_layer>() != 0 {
            return Err(Failure::new(GG_STATUS_MISALIGNED, "`layers` is misaligned for gg_layer"));
        }
        if n_layers == 0 {
            return Err(GhostError::ZeroSize { what: "n_layers" }.into());
        }
        // SAFETY: non-null, aligned, n_layers readable descriptors (caller's contract); copied
        // out at once.
        let descs: Vec<gg_layer> = unsafe { std::slice::from_raw_parts(layers, n_layers) }.to_vec();
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            bufs.prefix = format!("layers[{i}].");
            let parsed = (|| {
                Ok::<_, Failure>((bufs.train(&l.train)?, bufs.query(&l.query)?, form_request_from_code(l.form)?))
            })()
            .map_err(|f| if f.message.contains("layers[") { f } else { f.context(&format!("layers[{i}]")) })?;
            raw.push(parsed);
        }
        bufs.prefix.clear();
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        let mut gl = Vec::with_capacity(n_layers);
        for (i, (l, (rt, rq, form))) in descs.iter().zip(&raw).enumerate() {
            // SAFETY: checked buffers, valid for the call by this function's contract.
            let (train, query) = unsafe { (rt.view(space), rq.view(space)) };
            let shape = layer_shape(&l.shape);
            // Validates this layer alone so that an error names it.
            ctx.choose_form(&shape, &train, &query, *form).map_err(|e| Failure::from(e).context(&format!("layers[{i}]")))?;
            gl.push(GhostDotLayer { shape, train, query, form: *form });
        }
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        set_form_reason("");
        let choices = ctx.ghost_dot_layers(&gl, &mut out, Accumulate { scale, beta })?;
        // SAFETY: forwarded from this function's contract.
        unsafe { publish_choices(&choices, choices_out) }
    })
}

/// Dense-query ghost dot-product with a caller-given `m` (f32 `[d_out, d_in]`) and, iff the
/// layer has a bias, `m_bias` (f32 `[d_out]`; otherwise absent):
/// `out[n] = beta·out[n] + scale·Σ_t (b_{n,t}ᵀ M a_{n,t} + b_{n,t}·m_bias)`, `out` f32 `[N]`.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train`, `m`, `m_bias` and `out`.
#[no_mangle]
pub unsafe extern "C" fn gg_ghost_dot_dense(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    m: gg_tensor,
    m_bias: gg_tensor,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?) };
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_m = bufs.input("m", &m)?;
        let raw_mb = bufs.optional_input("m_bias", &m_bias)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (train, m, mb, mut out) = unsafe {
            (raw_train.view(space), raw_m.view(space), raw_mb.map(|b| b.view(space)), raw_out.view_mut(space))
        };
        Ok(ctx.ghost_dot_dense(&layer_shape(&shape), &train, &m, mb.as_ref(), &mut out, Accumulate { scale, beta })?)
    })
}

/// Factored weight gradient of every query sample:
/// `out[v] = beta·out[v] + scale·Σ_{u∈v} w_u bq_u aq_uᵀ`, `out` f32 `[V, d_out, d_in]`; iff the
/// layer has a bias, `out_bias` f32 `[V, d_out]` receives `Σ_{u∈v} w_u bq_u` (otherwise absent).
/// `row_weights` f32 `[q]` is optional (1 when absent).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `query`, `row_weights`, `out` and `out_bias`.
#[no_mangle]
pub unsafe extern "C" fn gg_factored_grad(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    query: *const gg_query,
    row_weights: gg_tensor,
    out: gg_tensor_mut,
    out_bias: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, query) = unsafe { (context_ref(ctx)?, read_desc(query, "query")?) };
        let mut bufs = Buffers::new(ctx);
        let raw_query = bufs.query(&query)?;
        let raw_w = bufs.optional_input("row_weights", &row_weights)?;
        let raw_out = bufs.output("out", &out)?;
        let raw_ob = bufs.optional_output("out_bias", &out_bias)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (query, w, mut out, mut ob) = unsafe {
            (
                raw_query.view(space),
                raw_w.map(|b| b.view(space)),
                raw_out.view_mut(space),
                raw_ob.map(|b| b.view_mut(space)),
            )
        };
        Ok(ctx.factored_grad(&layer_shape(&shape), &query, w.as_ref(), &mut out, ob.as_mut(), Accumulate { scale, beta })?)
    })
}

/// Which entry point of the train-only family.
#[derive(Clone, Copy)]
enum TrainOnly {
    Gram,
    SqNorm,
}

/// # Safety
/// As [`gg_ghost_gram`].
#[allow(clippy::too_many_arguments)]
unsafe fn train_only(
    op: TrainOnly,
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?) };
        let form = form_request_from_code(form)?;
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (train, mut out) = unsafe { (raw_train.view(space), raw_out.view_mut(space)) };
        let (shape, acc) = (layer_shape(&shape), Accumulate { scale, beta });
        set_form_reason("");
        let choice = match op {
            TrainOnly::Gram => ctx.ghost_gram(&shape, &train, &mut out, acc, form)?,
            TrainOnly::SqNorm => ctx.ghost_sqnorm(&shape, &train, &mut out, acc, form)?,
        };
        // SAFETY: forwarded from this function's contract.
        unsafe { publish_choices(std::slice::from_ref(&choice), choice_out) }
    })
}

/// Pairwise train×train Gram matrix `K[n, m] = beta·K[n, m] + scale·<G_n, G_m>`, `out` f32
/// `[N, N]`. `form`: AUTO, GRAM or MATERIALIZE (dense-query does not apply).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train`, `out` and `choice_out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ghost_gram(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { train_only(TrainOnly::Gram, ctx, shape, train, out, scale, beta, form, choice_out) }
}

/// Per-sample squared gradient norms `out[n] = beta·out[n] + scale·‖G_n‖²`, `out` f32 `[N]`
/// (the diagonal of [`gg_ghost_gram`]; ghost clipping in DP-SGD).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train`, `out` and `choice_out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ghost_sqnorm(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { train_only(TrainOnly::SqNorm, ctx, shape, train, out, scale, beta, form, choice_out) }
}

/// Which form [`gg_ghost_dot`] would use for these arguments, and why; validates everything but
/// runs nothing. `choice_out` is required; the reason is [`gg_last_form_reason`].
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train` and `query` (the buffers are not read);
/// `choice_out` is NULL (an error) or points at a writable `gg_form_choice`.
#[no_mangle]
pub unsafe extern "C" fn gg_choose_form(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    query: *const gg_query,
    form: gg_form_request,
    choice_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train, query) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?, read_desc(query, "query")?) };
        check_out_param(choice_out, "choice_out")?;
        let form = form_request_from_code(form)?;
        let mut bufs = Buffers::new(ctx);
        let raw_train = bufs.train(&train)?;
        let raw_query = bufs.query(&query)?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call (contract); nothing is written.
        let (train, query) = unsafe { (raw_train.view(space), raw_query.view(space)) };
        set_form_reason("");
        let choice = ctx.choose_form(&layer_shape(&shape), &train, &query, form)?;
        // SAFETY: forwarded from this function's contract.
        unsafe { publish_choices(std::slice::from_ref(&choice), choice_out) }
    })
}

// =============================================================================================
// BEGIN section: projections (LoGra), influence scores, In-Run Data Shapley (ghg, value
// accumulation) and the host preconditioners (raw Fisher, K-FAC / EK-FAC).
// Formulas and shapes: [`crate::projection`], [`crate::inrun`], MATH.md §2–§4. Same conventions
// as above: statuses, last error, every buffer checked (null, alignment, size, no output
// overlapping another buffer) before any Rust view of caller memory exists.
// =============================================================================================

use crate::dvemb::{Blocking, DvembLayer, DvembSteps, LossReduction};
use crate::inrun::GhgLayer;
use crate::validate as v;
use crate::projection::precondition::{Kfac, RawFisher};
use crate::projection::{
    Distribution, EmbeddingLayer, OutColumns, ProjectInput, ProjectLayer, ProjectionKind, ProjectionSpec, ScoreDims,
    ScoreMode, Which,
};

/// Distribution of the entries of a random projection matrix.
pub type gg_distribution = u32;
/// Standardized Irwin–Hall(4) entries of variance `1/k` (bit-exact on every backend).
pub const GG_DISTRIBUTION_GAUSSIAN: gg_distribution = 0;
/// `±1/√k` with probability ½ each.
pub const GG_DISTRIBUTION_RADEMACHER: gg_distribution = 1;

/// Which of a layer's two projection matrices.
pub type gg_which = u32;
/// `P_i ∈ R^{k_i × (d_in + bias)}`, applied to activations.
pub const GG_WHICH_IN: gg_which = 0;
/// `P_o ∈ R^{k_o × d_out}`, applied to output gradients.
pub const GG_WHICH_OUT: gg_which = 1;

const _: () = {
    assert!(GG_WHICH_IN == Which::In as u32);
    assert!(GG_WHICH_OUT == Which::Out as u32);
};

/// Where a layer's projection matrices come from (see [`gg_projection`]).
pub type gg_projection_kind = u32;
/// Generated from `(seed, layer, which, row, col)` inside the kernels: no matrix in memory.
pub const GG_PROJECTION_RANDOM: gg_projection_kind = 0;
/// Caller-given f32 matrices `p_in [k_i, d_in + bias]` and `p_out [k_o, d_out]`.
pub const GG_PROJECTION_DENSE: gg_projection_kind = 1;

/// Score transformation of [`gg_influence_scores`].
pub type gg_score_mode = u32;
/// `S = test · trainᵀ`.
pub const GG_SCORE_DOT: gg_score_mode = 0;
/// `S / √train_self[j]` (cosine / RelatIF-style normalization by the train side).
pub const GG_SCORE_COSINE: gg_score_mode = 1;
/// `S − ½·train_self[j]`.
pub const GG_SCORE_L2: gg_score_mode = 2;

/// A layer's low-rank projection `Ĝ = P_o G P_iᵀ ∈ R^{k_o × k_i}` (MATH.md §3). `kind` is a
/// `gg_projection_kind`. `seed`, `layer` and `dist` (a `gg_distribution`) are read only for
/// `GG_PROJECTION_RANDOM` (entries of variance `1/k_i` and `1/k_o`; the same seed gives the same
/// matrices on every backend); `p_in` (f32 `[k_i, d_in + bias]`, its last column projecting the
/// bias gradient) and `p_out` (f32 `[k_o, d_out]`), row-major, only for `GG_PROJECTION_DENSE`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_projection {
    pub k_i: u64,
    pub k_o: u64,
    pub kind: gg_projection_kind,
    pub dist: gg_distribution,
    pub seed: u64,
    pub layer: u32,
    pub p_in: gg_tensor,
    pub p_out: gg_tensor,
}

/// One layer of [`gg_kron_project_layers`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_project_layer {
    pub shape: gg_layer_shape,
    pub train: gg_train,
    pub proj: gg_projection,
}

/// One model layer of [`gg_ghg`] (MATH.md §2): the training factors, the validation activations
/// `a_val [t_v, d_in]` and output gradients `b_val [t_v, d_out]`, their directional derivatives
/// `a_dot [t_v, d_in]`, `b_dot [t_v, d_out]` along the batch gradient (all of the training
/// dtype), and an optional `val_mask` u8 `[t_v]` (zero = that validation token does not exist).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_ghg_layer {
    pub shape: gg_layer_shape,
    pub train: gg_train,
    pub a_val: gg_tensor,
    pub b_val: gg_tensor,
    pub a_dot: gg_tensor,
    pub b_dot: gg_tensor,
    pub t_v: u64,
    pub val_mask: gg_tensor,
}

/// A written buffer of `len` f64 elements (the value accumulator of [`gg_accumulate_values`]),
/// host or device memory as for [`gg_tensor`], aligned to 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_tensor_f64_mut {
    pub ptr: *mut c_void,
    pub len: u64,
}

/// A fitted raw-Fisher preconditioner (opaque, host memory): `(F + λI)⁻¹` with
/// `F = (1/N) Σ_n ĝ_n ĝ_nᵀ`, `λ = 0.1·trace(F)/k`, Cholesky-factored in f64. Created by
/// [`gg_raw_fisher_fit`], owned by the caller, released with [`gg_raw_fisher_destroy`].
pub struct gg_raw_fisher {
    inner: RawFisher,
    k: u64,
}

/// A fitted K-FAC (or, after [`gg_kfac_ekfac_correct`], EK-FAC) preconditioner of one layer's
/// projected gradients (opaque, host memory). Created by [`gg_kfac_fit`], owned by the caller,
/// released with [`gg_kfac_destroy`].
pub struct gg_kfac {
    inner: Kfac,
    k_i: u64,
    k_o: u64,
}

fn distribution_from_code(code: gg_distribution) -> FfiResult<Distribution> {
    match code {
        GG_DISTRIBUTION_GAUSSIAN => Ok(Distribution::Gaussian),
        GG_DISTRIBUTION_RADEMACHER => Ok(Distribution::Rademacher),
        other => Err(Failure::invalid("dist", format!("{other} is not a gg_distribution (GAUSSIAN=0, RADEMACHER=1)"))),
    }
}

fn which_from_code(code: gg_which) -> FfiResult<Which> {
    match code {
        GG_WHICH_IN => Ok(Which::In),
        GG_WHICH_OUT => Ok(Which::Out),
        other => Err(Failure::invalid("which", format!("{other} is not a gg_which (IN=0, OUT=1)"))),
    }
}

fn score_mode_from_code(code: gg_score_mode) -> FfiResult<ScoreMode> {
    match code {
        GG_SCORE_DOT => Ok(ScoreMode::Dot),
        GG_SCORE_COSINE => Ok(ScoreMode::Cosine),
        GG_SCORE_L2 => Ok(ScoreMode::L2),
        other => Err(Failure::invalid("mode", format!("{other} is not a gg_score_mode (DOT=0, COSINE=1, L2=2)"))),
    }
}

#[derive(Debug, Clone, Copy)]
enum RawProjKind {
    Random { seed: u64, layer: u32, dist: Distribution },
    Dense { p_in: RawBuf, p_out: RawBuf },
}

#[derive(Debug, Clone, Copy)]
struct RawProj {
    k_i: u64,
    k_o: u64,
    kind: RawProjKind,
}

impl RawProj {
    /// # Safety
    /// As [`RawBuf::view`] for the dense matrices.
    unsafe fn view<'a>(self, space: Space) -> ProjectionSpec<'a> {
        let kind = match self.kind {
            RawProjKind::Random { seed, layer, dist } => ProjectionKind::Random { seed, layer, dist },
            // SAFETY: forwarded from this function's contract.
            RawProjKind::Dense { p_in, p_out } => unsafe { ProjectionKind::Dense { p_in: p_in.view(space), p_out: p_out.view(space) } },
        };
        ProjectionSpec { k_i: self.k_i, k_o: self.k_o, kind }
    }
}

#[derive(Debug, Clone, Copy)]
struct RawGhg {
    shape: LayerShape,
    train: RawTrain,
    a_val: RawBuf,
    b_val: RawBuf,
    a_dot: RawBuf,
    b_dot: RawBuf,
    t_v: u64,
    val_mask: Option<RawBuf>,
}

impl RawGhg {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    unsafe fn view<'a>(self, space: Space) -> GhgLayer<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            GhgLayer {
                shape: self.shape,
                train: self.train.view(space),
                a_val: self.a_val.view(space),
                b_val: self.b_val.view(space),
                a_dot: self.a_dot.view(space),
                b_dot: self.b_dot.view(space),
                t_v: self.t_v,
                val_mask: self.val_mask.map(|m| m.view(space)),
            }
        }
    }
}

impl Buffers {
    /// Buffers of a call without a context: host memory (the preconditioners).
    fn host() -> Self {
        Buffers { space: Space::Host, prefix: String::new(), regions: Vec::new() }
    }

    fn projection(&mut self, p: &gg_projection) -> FfiResult<RawProj> {
        let kind = match p.kind {
            GG_PROJECTION_RANDOM => RawProjKind::Random {
                seed: p.seed,
                layer: p.layer,
                dist: distribution_from_code(p.dist).map_err(|f| f.context(&self.name("proj")))?,
            },
            GG_PROJECTION_DENSE => RawProjKind::Dense { p_in: self.input("proj.p_in", &p.p_in)?, p_out: self.input("proj.p_out", &p.p_out)? },
            other => {
                return Err(Failure::invalid(
                    &self.name("proj.kind"),
                    format!("{other} is not a gg_projection_kind (RANDOM=0, DENSE=1)"),
                ))
            }
        };
        Ok(RawProj { k_i: p.k_i, k_o: p.k_o, kind })
    }

    fn ghg_layer(&mut self, l: &gg_ghg_layer) -> FfiResult<RawGhg> {
        Ok(RawGhg {
            shape: layer_shape(&l.shape),
            train: self.train(&l.train)?,
            a_val: self.input("a_val", &l.a_val)?,
            b_val: self.input("b_val", &l.b_val)?,
            a_dot: self.input("a_dot", &l.a_dot)?,
            b_dot: self.input("b_dot", &l.b_dot)?,
            t_v: l.t_v,
            val_mask: self.optional_input("val_mask", &l.val_mask)?,
        })
    }

    fn output_f64(&mut self, what: &str, t: &gg_tensor_f64_mut) -> FfiResult<RawBuf> {
        self.check(what, t.ptr as usize, t.len, DType::F64, true)
    }
}

impl RawBuf {
    /// A writable view of an f64 output.
    ///
    /// # Safety
    /// As [`RawBuf::view_mut`], for `len` f64 (8-byte alignment checked).
    unsafe fn view_mut_f64<'a>(self, space: Space) -> TensorMut<'a> {
        debug_assert_eq!(self.dtype, DType::F64);
        match space {
            // SAFETY: the caller's contract on device memory.
            Space::Device => {
                TensorMut::Device(unsafe { DeviceSliceMut::from_raw_parts(self.addr as u64, self.len, DType::F64) })
            }
            // SAFETY: non-null, 8-byte aligned, size checked; exclusive for 'a by the caller's
            // contract and the overlap check; every bit pattern is a valid f64.
            Space::Host => {
                TensorMut::HostF64(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut f64, self.len as usize) })
            }
        }
    }
}

/// Reads `n` descriptors from a caller array (null, alignment and `n > 0` checked).
///
/// # Safety
/// `p` is NULL or points at `n` readable `T`.
unsafe fn read_array<T: Copy>(p: *const T, n: usize, what: &'static str, count: &'static str) -> FfiResult<Vec<T>> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::new(GG_STATUS_MISALIGNED, format!("`{what}` at {p:p} is misaligned for its type")));
    }
    if n == 0 {
        return Err(GhostError::ZeroSize { what: count }.into());
    }
    // SAFETY: non-null, aligned, n readable elements (caller's contract); copied out at once.
    Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
}

/// Projected per-sample gradients of one layer (MATH.md §3):
/// `out[n·row_stride + col_offset + o·k_i + i] = beta·out + scale·Ĝ_n[o, i]`,
/// `Ĝ_n = Σ_t (P_o b_{n,t})(P_i a_{n,t})ᵀ`; `out` f32 `[N, row_stride]` (exactly
/// `N·row_stride` long), `col_offset + k_o·k_i ≤ row_stride`; the other columns are not touched.
/// For one layer alone pass `col_offset = 0`, `row_stride = k_o·k_i`.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `train` and `out`; `proj` is NULL (an error) or a readable
/// descriptor whose dense matrices (if any) obey the same rules as the other inputs.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kron_project(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    proj: *const gg_projection,
    out: gg_tensor_mut,
    col_offset: u64,
    row_stride: u64,
    scale: f32,
    beta: f32,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { kron_project_one(ctx, shape, train, proj, out, OutColumns { offset: col_offset, row_stride }, Accumulate { scale, beta }) }
}

/// Several layers' projected gradients side by side: `out` f32 `[N, Σ_l k_o^l·k_i^l]`, layer `l`
/// at column offset `Σ_{l'<l} k_o^{l'}·k_i^{l'}` (array order), every layer with the same `N`;
/// `out = beta·out + scale·[Ĝ^0_n | Ĝ^1_n | …]`. Errors name the layer (`layers[i]`).
///
/// # Safety
/// As [`gg_kron_project`] for every layer; `layers` is NULL (an error) or points at `n_layers`
/// readable `gg_project_layer`.
#[no_mangle]
pub unsafe extern "C" fn gg_kron_project_layers(
    ctx: *const gg_context,
    layers: *const gg_project_layer,
    n_layers: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(layers, n_layers, "layers", "n_layers")?) };
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            bufs.prefix = format!("layers[{i}].");
            raw.push((bufs.train(&l.train)?, bufs.projection(&l.proj)?));
        }
        bufs.prefix.clear();
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        let mut pl = Vec::with_capacity(n_layers);
        for (i, (l, (rt, rp))) in descs.iter().zip(&raw).enumerate() {
            // SAFETY: checked buffers, valid for the call by this function's contract.
            let (train, proj) = unsafe { (rt.view(space), rp.view(space)) };
            let layer = ProjectLayer { shape: layer_shape(&l.shape), train, proj };
            // Validates this layer alone (nothing runs) so that an error names it.
            ctx.check_projection(&layer.shape, &layer.train, &layer.proj)
                .map_err(|e| Failure::from(e).context(&format!("layers[{i}]")))?;
            pl.push(layer);
        }
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        Ok(ctx.kron_project_layers(&pl, &mut out, Accumulate { scale, beta })?)
    })
}

/// The random matrix `which` (a `gg_which`) of `layer` under `seed`, `k × d` row-major f32
/// entries of the `gg_distribution` `dist`, exactly what `GG_PROJECTION_RANDOM` uses inside the
/// kernels (bit-identical on every backend). For `P_i` of a layer with a bias pass
/// `d = d_in + 1`. `out` f32 `[k, d]` is overwritten.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx` and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_projection_matrix(
    ctx: *const gg_context,
    seed: u64,
    layer: u32,
    which: gg_which,
    k: u64,
    d: u64,
    dist: gg_distribution,
    out: gg_tensor_mut,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        let (which, dist) = (which_from_code(which)?, distribution_from_code(dist)?);
        let mut bufs = Buffers::new(ctx);
        let raw_out = bufs.output("out", &out)?;
        let space = bufs.space;
        // SAFETY: checked output, the only buffer of the call, exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        Ok(ctx.projection_matrix(seed, layer, which, k, d, dist, &mut out)?)
    })
}

/// Influence scores of a block of training rows (MATH.md §4):
/// `out[q, j] = beta·out + scale·f(Σ_c test[q, c]·train_block[j, c])`, `f` the `gg_score_mode`
/// `mode` (`COSINE`: `S/√train_self[j]`, `L2`: `S − ½·train_self[j]`). `test` f32 `[n_test, k]`
/// (typically preconditioned), `train_block` f32 `[n_block, k]`, `train_self` f32 `[n_block]`
/// (required for COSINE and L2, must be absent for DOT), `out` f32 `[n_test, n_block]`. Stream
/// the training set through a fixed block buffer.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, every input and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_influence_scores(
    ctx: *const gg_context,
    test: gg_tensor,
    train_block: gg_tensor,
    n_test: u64,
    n_block: u64,
    k: u64,
    train_self: gg_tensor,
    mode: gg_score_mode,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        let mode = score_mode_from_code(mode)?;
        let mut bufs = Buffers::new(ctx);
        let raw_test = bufs.input("test", &test)?;
        let raw_train = bufs.input("train_block", &train_block)?;
        let raw_self = bufs.optional_input("train_self", &train_self)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (test, train, ts, mut out) = unsafe {
            (raw_test.view(space), raw_train.view(space), raw_self.map(|b| b.view(space)), raw_out.view_mut(space))
        };
        let dims = ScoreDims { n_test, n_block, k };
        Ok(ctx.influence_scores(&test, &train, dims, &mut out, mode, ts.as_ref(), Accumulate { scale, beta })?)
    })
}

/// Fused first + second order In-Run Data Shapley value of every training sample of one SGD
/// step (MATH.md §2), summed over `n_layers` layers (same `N`):
/// `out[n] = beta·out[n] + scale·(−eta·Σ_l <G^l_n, g_val^l> + (eta²/2)·Σ_l <G^l_n, (H_val v)^l>)`,
/// `out` f32 `[N]`. Three ghost-dot pseudo-layers per layer, each with its own form (`form`, a
/// `gg_form_request`, applies to all). `choices_out` (may be NULL) receives `3·n_layers`
/// `gg_form_choice`, ordered `[(a_val, b_val) of every layer | (a_val, b_dot), (a_dot, b_val)
/// of layer 0, of layer 1, …]`; the reasons are the lines of [`gg_last_form_reason`], in that
/// order. Errors name the layer (`layers[i]`).
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, every buffer of every layer, `out` and `choices_out` (which,
/// if not NULL, points at `3·n_layers` writable `gg_form_choice`); `layers` is NULL (an error) or
/// points at `n_layers` readable `gg_ghg_layer`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ghg(
    ctx: *const gg_context,
    layers: *const gg_ghg_layer,
    n_layers: usize,
    eta: f32,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    form: gg_form_request,
    choices_out: *mut gg_form_choice,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(layers, n_layers, "layers", "n_layers")?) };
        let form = form_request_from_code(form)?;
        if !choices_out.is_null() {
            // Checked before anything runs, so that a bad pointer never follows a computed output.
            check_out_param(choices_out, "choices_out")?;
        }
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            bufs.prefix = format!("layers[{i}].");
            raw.push(bufs.ghg_layer(l)?);
        }
        bufs.prefix.clear();
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        let mut gl = Vec::with_capacity(n_layers);
        for (i, r) in raw.iter().enumerate() {
            // SAFETY: checked buffers, valid for the call by this function's contract.
            let l = unsafe { r.view(space) };
            // Validates the layer's three pseudo-layers (nothing runs) so that an error names it.
            let query = |aq, bq| QueryFactors { aq, bq, q: l.t_v, segments: Segments::Single, mask: l.val_mask };
            for (shape, q) in [
                (l.shape, query(l.a_val, l.b_val)),
                (l.shape, query(l.a_val, l.b_dot)),
                (l.shape.with_bias(false), query(l.a_dot, l.b_val)),
            ] {
                ctx.choose_form(&shape, &l.train, &q, form).map_err(|e| Failure::from(e).context(&format!("layers[{i}]")))?;
            }
            gl.push(l);
        }
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        set_form_reason("");
        let choices = ctx.ghg(&gl, eta, &mut out, Accumulate { scale, beta }, form)?;
        let labels = (0..n_layers)
            .map(|l| format!("layers[{l}] (a_val, b_val)"))
            .chain((0..n_layers).flat_map(|l| [format!("layers[{l}] (a_val, b_dot)"), format!("layers[{l}] (a_dot, b_val)")]));
        let reason = labels.zip(&choices).map(|(label, c)| format!("{label}: {}", c.reason)).collect::<Vec<_>>().join("\n");
        set_form_reason(&reason);
        if !choices_out.is_null() {
            for (i, c) in choices.iter().enumerate() {
                // SAFETY: non-null, aligned (checked), 3·n_layers entries (contract).
                unsafe { choices_out.add(i).write(gg_form_choice::from(c)) };
            }
        }
        Ok(())
    })
}

/// Float64 value accumulation: `phi[ids[k]] += values[k]` for `k = 0..N`, in `k` order (ids may
/// repeat; the result is the sequential float64 sum, bit for bit on every backend). `values` f32
/// `[N]`, `ids` i32 `[N]` (`N = values.len`), `phi` f64 `[num_ids]` (`num_ids = phi.len ≥ 1`).
/// Ids outside `[0, num_ids)`: `GG_STATUS_INVALID_ARGUMENT` on a CPU context (nothing written);
/// a GPU context cannot read them without synchronizing, so its kernel skips them.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `values`, `ids`; `phi` holds `phi.len` writable f64 in the
/// context's memory space that nothing else reads or writes meanwhile.
#[no_mangle]
pub unsafe extern "C" fn gg_accumulate_values(
    ctx: *const gg_context,
    values: gg_tensor,
    ids: gg_tensor,
    phi: gg_tensor_f64_mut,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        let mut bufs = Buffers::new(ctx);
        let raw_values = bufs.input("values", &values)?;
        let raw_ids = bufs.input("ids", &ids)?;
        let raw_phi = bufs.output_f64("phi", &phi)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (values, ids, mut phi) = unsafe { (raw_values.view(space), raw_ids.view(space), raw_phi.view_mut_f64(space)) };
        Ok(ctx.accumulate_values(&values, &ids, &mut phi)?)
    })
}

// ---------------------------------------------------------------------------------------------
// Host preconditioners (no context: host memory only; dense k×k algebra in f64 on the CPU)
// ---------------------------------------------------------------------------------------------

/// An f32 host view of a checked input, or a dtype error naming it.
///
/// # Safety
/// As [`RawBuf::view`] on host memory.
unsafe fn host_f32_view<'a>(raw: RawBuf, what: &'static str, op: &'static str) -> FfiResult<&'a [f32]> {
    // SAFETY: forwarded from this function's contract.
    match unsafe { raw.view(Space::Host) } {
        Tensor::Host(HostSlice::F32(s)) => Ok(s),
        other => Err(GhostError::UnsupportedDtype { what, dtype: other.dtype(), op }.into()),
    }
}

/// Checks `grads` (`[n, k]` f32, host) and returns `n` and `k` as `usize`.
fn grads_dims(raw: &RawBuf, n: u64, k: u64) -> FfiResult<(usize, usize)> {
    v::nonzero("n", n)?;
    let len = v::mul("n*k", n, k)?;
    if raw.len != len {
        return Err(GhostError::LengthMismatch { what: "grads", expected: len, got: raw.len }.into());
    }
    // Fits: len elements were checked to fit the address space.
    Ok((n as usize, k as usize))
}

/// The shared body of the preconditioners' `apply`: checks host `grads` `[n, width]` and `out`
/// (same length, not overlapping) and writes `apply(grads, n)` into `out`.
///
/// # Safety
/// `grads` and `out` describe host memory as for [`gg_ghost_dot`].
unsafe fn apply_host(
    grads: &gg_tensor,
    n: u64,
    width: u64,
    out: &gg_tensor_mut,
    op: &'static str,
    apply: impl FnOnce(&[f32], usize) -> crate::Result<Vec<f32>>,
) -> FfiResult {
    let mut bufs = Buffers::host();
    let raw = bufs.input("grads", grads)?;
    let raw_out = bufs.output("out", out)?;
    bufs.check_overlaps()?;
    let (n, _) = grads_dims(&raw, n, width)?;
    check_out_len(&raw_out, raw.len)?;
    // SAFETY: checked host buffers, no output aliasing, valid for the call (contract).
    let g = unsafe { host_f32_view(raw, "grads", op) }?;
    let res = apply(g, n)?;
    // SAFETY: as above.
    let mut o = unsafe { raw_out.view_mut(Space::Host) };
    o.host("out")?.copy_from_slice(&res);
    Ok(())
}

/// Checks that an output of the preconditioners has exactly `expected` elements.
fn check_out_len(raw: &RawBuf, expected: u64) -> FfiResult {
    if raw.len != expected {
        return Err(GhostError::LengthMismatch { what: "out", expected, got: raw.len }.into());
    }
    Ok(())
}

/// Fits the damped raw Fisher `F + λI` (MATH.md §4) from the projected training gradients
/// `grads` f32 `[n, k]` in host memory (rows `ĝ_n`, e.g. the output of [`gg_kron_project`]);
/// `*out` receives a new handle (NULL on failure) that the caller releases with
/// [`gg_raw_fisher_destroy`]. `k` up to a few thousand: the factorization is O(k³) in f64.
///
/// # Safety
/// `grads` describes `grads.len` readable host elements; `out` is NULL (an error) or points at a
/// writable `gg_raw_fisher*`.
#[no_mangle]
pub unsafe extern "C" fn gg_raw_fisher_fit(grads: gg_tensor, n: u64, k: u64, out: *mut *mut gg_raw_fisher) -> gg_status {
    guard(|| {
        check_out_param(out, "out")?;
        // SAFETY: checked non-null and aligned; writable by the contract. NULL until success.
        unsafe { out.write(std::ptr::null_mut()) };
        v::nonzero("k", k)?;
        let mut bufs = Buffers::host();
        let raw = bufs.input("grads", &grads)?;
        let (n, k_us) = grads_dims(&raw, n, k)?;
        // SAFETY: checked host buffer, readable for the call (contract).
        let g = unsafe { host_f32_view(raw, "grads", "raw_fisher_fit") }?;
        let inner = RawFisher::fit(g, n, k_us)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(gg_raw_fisher { inner, k }))) };
        Ok(())
    })
}

/// `out = (F + λI)⁻¹ ĝ` for every row of `grads` f32 `[n, k]` (host), `out` f32 `[n, k]` (host,
/// overwritten; computed in f64, rounded once).
///
/// # Safety
/// `f` is NULL (an error) or a live handle from [`gg_raw_fisher_fit`]; `grads` and `out` describe
/// host memory as for [`gg_ghost_dot`].
#[no_mangle]
pub unsafe extern "C" fn gg_raw_fisher_apply(f: *const gg_raw_fisher, grads: gg_tensor, n: u64, out: gg_tensor_mut) -> gg_status {
    guard(|| {
        if f.is_null() {
            return Err(Failure::null("fisher"));
        }
        // SAFETY: a live handle (caller's contract).
        let f = unsafe { &*f };
        // SAFETY: forwarded from this function's contract.
        unsafe { apply_host(&grads, n, f.k, &out, "raw_fisher_apply", |g, n| f.inner.apply(g, n)) }
    })
}

/// The damping `λ = 0.1·trace(F)/k` of a fitted raw Fisher.
///
/// # Safety
/// `f` is NULL (an error) or a live handle; `out` is NULL (an error) or a writable `double`.
#[no_mangle]
pub unsafe extern "C" fn gg_raw_fisher_damping(f: *const gg_raw_fisher, out: *mut f64) -> gg_status {
    guard(|| {
        if f.is_null() {
            return Err(Failure::null("fisher"));
        }
        // SAFETY: a live handle; out checked inside (caller's contract).
        unsafe { write_out(out, "out", (*f).inner.damping()) }
    })
}

/// Releases a raw-Fisher handle (NULL is ignored).
///
/// # Safety
/// `f` is NULL or a live handle from [`gg_raw_fisher_fit`]; it is not used again.
#[no_mangle]
pub unsafe extern "C" fn gg_raw_fisher_destroy(f: *mut gg_raw_fisher) {
    // SAFETY: forwarded from this function's contract (a handle from gg_raw_fisher_fit).
    unsafe { destroy_handle(f) }
}

/// Fits K-FAC for one layer (MATH.md §4): projected covariances `C_A = Σ (P_i a)(P_i a)ᵀ`
/// `[k_i×k_i]` and `C_B = Σ (P_o b)(P_o b)ᵀ` `[k_o×k_o]` over every kept token of `train`
/// (host memory; `a` augmented with 1 when the layer has a bias, as in [`gg_kron_project`]),
/// their eigendecompositions in f64 and `λ = 0.1·mean(Λ_B Λ_Aᵀ)`. `proj` must be the projection
/// that produced the gradients it will precondition. `*out` receives a new handle (NULL on
/// failure), released with [`gg_kfac_destroy`]. All tokens are passed at once (the Rust API
/// `Kfac::covariances` / `Kfac::from_covariances` accumulates over batches).
///
/// # Safety
/// `train` and `proj` are NULL (an error) or readable descriptors of host memory as for
/// [`gg_ghost_dot`]; `out` is NULL (an error) or points at a writable `gg_kfac*`.
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_fit(
    shape: gg_layer_shape,
    train: *const gg_train,
    proj: *const gg_projection,
    out: *mut *mut gg_kfac,
) -> gg_status {
    guard(|| {
        check_out_param(out, "out")?;
        // SAFETY: checked non-null and aligned; writable by the contract. NULL until success.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: forwarded from this function's contract.
        let (train, proj) = unsafe { (read_desc(train, "train")?, read_desc(proj, "proj")?) };
        let mut bufs = Buffers::host();
        let raw_train = bufs.train(&train)?;
        let raw_proj = bufs.projection(&proj)?;
        // Same limits on k_i, k_o as the projection itself.
        v::nonzero("k_i", raw_proj.k_i)?;
        v::nonzero("k_o", raw_proj.k_o)?;
        v::fits_i32("k_o*k_i", v::mul("k_o*k_i", raw_proj.k_o, raw_proj.k_i)?)?;
        // SAFETY: checked host buffers, readable for the call (contract); nothing is written.
        let (train, proj) = unsafe { (raw_train.view(Space::Host), raw_proj.view(Space::Host)) };
        let (c_a, c_b) = Kfac::covariances(&layer_shape(&shape), &train, &proj)?;
        let (k_i, k_o) = (proj.k_i as usize, proj.k_o as usize);
        let inner = Kfac::from_covariances(&c_a, k_i, &c_b, k_o)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(gg_kfac { inner, k_i: proj.k_i, k_o: proj.k_o }))) };
        Ok(())
    })
}

/// Turns K-FAC into EK-FAC: replaces `Λ_B Λ_Aᵀ` by `(1/n) Σ_n (Q_Bᵀ Ĝ_n Q_A)^{⊙2}` from the
/// projected training gradients `grads` f32 `[n, k_o·k_i]` (host); `λ` becomes 0.1·mean of those.
/// On failure the handle is unchanged.
///
/// # Safety
/// `f` is NULL (an error) or a live handle not used concurrently; `grads` as for
/// [`gg_raw_fisher_fit`].
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_ekfac_correct(f: *mut gg_kfac, grads: gg_tensor, n: u64) -> gg_status {
    guard(|| {
        if f.is_null() {
            return Err(Failure::null("kfac"));
        }
        // SAFETY: a live handle used by this thread only (caller's contract).
        let f = unsafe { &mut *f };
        let mut bufs = Buffers::host();
        let raw = bufs.input("grads", &grads)?;
        let (n, _) = grads_dims(&raw, n, f.k_o * f.k_i)?;
        // SAFETY: checked host buffer, readable for the call (contract).
        let g = unsafe { host_f32_view(raw, "grads", "ekfac_correct") }?;
        // Corrected on a copy, so that a failure leaves the handle as it was.
        let mut corrected = f.inner.clone();
        corrected.ekfac_correct(g, n)?;
        f.inner = corrected;
        Ok(())
    })
}

/// `Ĝ' = Q_B[(Q_Bᵀ Ĝ Q_A) ⊘ (scale + λ)]Q_Aᵀ` for every row of `grads` f32 `[n, k_o·k_i]`
/// (host, `ĝ[o·k_i + i]`), `out` f32 `[n, k_o·k_i]` (host, overwritten; f64 inside).
///
/// # Safety
/// `f` is NULL (an error) or a live handle; `grads` and `out` describe host memory as for
/// [`gg_ghost_dot`].
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_apply(f: *const gg_kfac, grads: gg_tensor, n: u64, out: gg_tensor_mut) -> gg_status {
    guard(|| {
        if f.is_null() {
            return Err(Failure::null("kfac"));
        }
        // SAFETY: a live handle (caller's contract).
        let f = unsafe { &*f };
        // SAFETY: forwarded from this function's contract.
        unsafe { apply_host(&grads, n, f.k_o * f.k_i, &out, "kfac_apply", |g, n| f.inner.apply(g, n)) }
    })
}

/// The damping `λ` of a K-FAC / EK-FAC handle.
///
/// # Safety
/// `f` is NULL (an error) or a live handle; `out` is NULL (an error) or a writable `double`.
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_damping(f: *const gg_kfac, out: *mut f64) -> gg_status {
    guard(|| {
        if f.is_null() {
            return Err(Failure::null("kfac"));
        }
        // SAFETY: a live handle; out checked inside (caller's contract).
        unsafe { write_out(out, "out", (*f).inner.damping()) }
    })
}

/// Releases a K-FAC handle (NULL is ignored).
///
/// # Safety
/// `f` is NULL or a live handle from [`gg_kfac_fit`]; it is not used again.
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_destroy(f: *mut gg_kfac) {
    // SAFETY: forwarded from this function's contract (a handle from gg_kfac_fit).
    unsafe { destroy_handle(f) }
}

// =============================================================================================
// END section: projections, influence scores, In-Run Data Shapley, preconditioners
// =============================================================================================

// =============================================================================================
// Model-level calls: every layer kind of a transformer (src/layers/). Section added by the
// issue-6 work; self-contained so that merges stay trivial.
// =============================================================================================

/// Kind of a [`gg_layer_use`] (see `ghostgrad::layers` for the factors of each kind).
pub type gg_layer_kind = u32;
/// `nn.Linear` / convolution (unfolded patches) / HF `Conv1D`: `x = a [rows, d_in]`,
/// `b [rows, d_out]`.
pub const GG_LAYER_LINEAR: gg_layer_kind = 0;
/// Embedding lookup in a `[vocab, d]` table: `x` = i32 ids `[rows]`, `b [rows, d]`.
pub const GG_LAYER_EMBEDDING: gg_layer_kind = 1;
/// LayerNorm / RMSNorm affine map: `x = x̂ [rows, d]` (normalized input), `b [rows, d]`.
pub const GG_LAYER_NORM: gg_layer_kind = 2;

/// Storage of a Linear weight: `[d_out, d_in]` (`nn.Linear`) or `[d_in, d_out]` (HF `Conv1D`).
/// Changes results only for a weight used in both orientations within one tied group.
pub type gg_weight_layout = u32;
pub const GG_WEIGHT_OUT_IN: gg_weight_layout = 0;
pub const GG_WEIGHT_IN_OUT: gg_weight_layout = 1;

/// Embedding × embedding algorithm: by cost (0), masked Gram (1) or scatter/gather (2).
pub type gg_embedding_form_request = u32;
pub const GG_EMBEDDING_FORM_AUTO: gg_embedding_form_request = 0;
pub const GG_EMBEDDING_FORM_MASKED_GRAM: gg_embedding_form_request = 1;
pub const GG_EMBEDDING_FORM_SCATTER_GATHER: gg_embedding_form_request = 2;

/// Training factors of one use: `x`, `b` with `n·t` rows (the `n` of the call), optional u8
/// `mask [n, t]`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_use_train {
    pub x: gg_tensor,
    pub b: gg_tensor,
    pub t: u64,
    pub mask: gg_tensor,
}

/// Query factors of one use: `x`, `b` with `q` rows in segments, optional u8 `mask [q]`.
/// Absent (for the train × train calls) when `x` and `b` are both absent.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_use_query {
    pub x: gg_tensor,
    pub b: gg_tensor,
    pub q: u64,
    pub segments: gg_segments,
    pub mask: gg_tensor,
}

/// One use of a parameter; uses with equal `param` are tied (one shared parameter, cross terms
/// included). Dimensions by kind: LINEAR reads `d_in`, `d_out`, `has_bias`, `layout`;
/// EMBEDDING reads `vocab`, `d`; NORM reads `d`, `has_bias`. Other fields are ignored.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_layer_use {
    pub param: u32,
    pub kind: gg_layer_kind,
    pub d_in: u64,
    pub d_out: u64,
    pub vocab: u64,
    pub d: u64,
    pub has_bias: u32,
    pub layout: gg_weight_layout,
    pub train: gg_use_train,
    pub query: gg_use_query,
    /// Nonzero: the use contributes its training gradient only, with no query side of its own
    /// (`query` absent), in `gg_model_dot` for a non-norm use tied to uses that have query
    /// factors. Zero with an absent `query` is an error in `gg_model_dot` naming the use.
    pub train_only: u32,
}

#[derive(Debug, Clone, Copy)]
struct RawUse {
    param: u32,
    kind: crate::layers::LayerKind,
    train: (RawBuf, RawBuf, u64, Option<RawBuf>),
    query: Option<(RawBuf, RawBuf, u64, RawSegments, Option<RawBuf>)>,
    train_only: bool,
}

fn layer_kind_from(u: &gg_layer_use) -> FfiResult<crate::layers::LayerKind> {
    use crate::layers::{LayerKind, WeightLayout};
    let layout = match u.layout {
        GG_WEIGHT_OUT_IN => WeightLayout::OutIn,
        GG_WEIGHT_IN_OUT => WeightLayout::InOut,
        other => return Err(Failure::invalid("layout", format!("{other} is not a gg_weight_layout (OUT_IN=0, IN_OUT=1)"))),
    };
    Ok(match u.kind {
        GG_LAYER_LINEAR => LayerKind::Linear { d_in: u.d_in, d_out: u.d_out, has_bias: u.has_bias != 0, layout },
        GG_LAYER_EMBEDDING => LayerKind::Embedding { vocab: u.vocab, d: u.d },
        GG_LAYER_NORM => LayerKind::Norm { d: u.d, has_bias: u.has_bias != 0 },
        other => {
            return Err(Failure::invalid("kind", format!("{other} is not a gg_layer_kind (LINEAR=0, EMBEDDING=1, NORM=2)")))
        }
    })
}

impl Buffers {
    fn layer_use(&mut self, u: &gg_layer_use) -> FfiResult<RawUse> {
        let kind = layer_kind_from(u)?;
        let train = (
            self.input("train.x", &u.train.x)?,
            self.input("train.b", &u.train.b)?,
            u.train.t,
            self.optional_input("train.mask", &u.train.mask)?,
        );
        let absent = |t: &gg_tensor| t.ptr.is_null() && t.len == 0;
        let query = if absent(&u.query.x) && absent(&u.query.b) {
            None
        } else {
            let segments = match u.query.segments.kind {
                GG_SEGMENTS_SINGLE => RawSegments::Single,
                GG_SEGMENTS_UNIFORM => RawSegments::Uniform(u.query.segments.uniform_len),
                GG_SEGMENTS_OFFSETS => RawSegments::Offsets(self.input("query.segments.offsets", &u.query.segments.offsets)?),
                other => {
                    return Err(Failure::invalid(
                        &self.name("query.segments.kind"),
                        format!("{other} is not a gg_segments_kind (SINGLE=0, UNIFORM=1, OFFSETS=2)"),
                    ))
                }
            };
            Some((
                self.input("query.x", &u.query.x)?,
                self.input("query.b", &u.query.b)?,
                u.query.q,
                segments,
                self.optional_input("query.mask", &u.query.mask)?,
            ))
        };
        if u.train_only != 0 && query.is_some() {
            return Err(Failure::invalid(&self.name("train_only"), "a train-only use has no query side: leave `query` absent".to_string()));
        }
        Ok(RawUse { param: u.param, kind, train, query, train_only: u.train_only != 0 })
    }
}

impl RawUse {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    unsafe fn view<'a>(self, space: Space) -> crate::layers::LayerUse<'a> {
        use crate::layers::{LayerUse, QuerySide, UseQuery, UseTrain};
        // SAFETY: forwarded from this function's contract.
        unsafe {
            LayerUse {
                param: self.param,
                kind: self.kind,
                train: UseTrain {
                    x: self.train.0.view(space),
                    b: self.train.1.view(space),
                    t: self.train.2,
                    mask: self.train.3.map(|m| m.view(space)),
                },
                query: match self.query {
                    Some((x, b, q, seg, mask)) => QuerySide::Factors(UseQuery {
                        x: x.view(space),
                        b: b.view(space),
                        q,
                        segments: match seg {
                            RawSegments::Single => Segments::Single,
                            RawSegments::Uniform(l) => Segments::Uniform(l),
                            RawSegments::Offsets(o) => Segments::Offsets(o.view(space)),
                        },
                        mask: mask.map(|m| m.view(space)),
                    }),
                    None if self.train_only => QuerySide::TrainOnly,
                    None => QuerySide::Absent,
                },
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ModelCall {
    Dot,
    Gram,
    SqNorm,
    /// In-Run first + second order: the uses' queries are the validation factors; `x_dot` and
    /// `b_dot` point at `n_uses` descriptors each (an absent `x_dot[i]`: no input derivative).
    Ghg { eta: f32, x_dot: *const gg_tensor, b_dot: *const gg_tensor },
}

/// # Safety
/// As [`gg_model_dot`].
#[allow(clippy::too_many_arguments)]
unsafe fn model_call(
    which: ModelCall,
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
) -> gg_status {
    guard(|| {
        use crate::layers::{EmbeddingForm, ModelForms};
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx) }?;
        if uses.is_null() {
            return Err(Failure::null("uses"));
        }
        if (uses as usize) % std::mem::align_of::<gg_layer_use>() != 0 {
            return Err(Failure::new(GG_STATUS_MISALIGNED, "`uses` is misaligned for gg_layer_use"));
        }
        if n_uses == 0 {
            return Err(GhostError::ZeroSize { what: "n_uses" }.into());
        }
        let forms = ModelForms {
            linear: form_request_from_code(linear_form)?,
            embedding: match embedding_form {
                GG_EMBEDDING_FORM_AUTO => None,
                GG_EMBEDDING_FORM_MASKED_GRAM => Some(EmbeddingForm::MaskedGram),
                GG_EMBEDDING_FORM_SCATTER_GATHER => Some(EmbeddingForm::ScatterGather),
                other => {
                    return Err(Failure::invalid(
                        "embedding_form",
                        format!("{other} is not a gg_embedding_form_request (AUTO=0, MASKED_GRAM=1, SCATTER_GATHER=2)"),
                    ))
                }
            },
        };
        // SAFETY: non-null, aligned, n_uses readable descriptors (caller's contract); copied
        // out at once.
        let descs: Vec<gg_layer_use> = unsafe { std::slice::from_raw_parts(uses, n_uses) }.to_vec();
        let mut bufs = Buffers::new(ctx);
        let mut raw = Vec::with_capacity(n_uses);
        for (i, u) in descs.iter().enumerate() {
            bufs.prefix = format!("uses[{i}].");
            let parsed = bufs.layer_use(u).map_err(|f| if f.message.contains("uses[") { f } else { f.context(&format!("uses[{i}]")) })?;
            raw.push(parsed);
        }
        bufs.prefix.clear();
        let mut dots = Vec::new();
        if let ModelCall::Ghg { x_dot, b_dot, .. } = which {
            // SAFETY: forwarded from this function's contract (n_uses descriptors each).
            let (xd, bd) = unsafe { (read_array(x_dot, n_uses, "x_dot", "n_uses")?, read_array(b_dot, n_uses, "b_dot", "n_uses")?) };
            for (i, (x, b)) in xd.iter().zip(&bd).enumerate() {
                let x = bufs.optional_input(&format!("x_dot[{i}]"), x)?;
                let b = bufs.input(&format!("b_dot[{i}]"), b)?;
                dots.push((x, b));
            }
        }
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call by this function's contract.
        let views: Vec<crate::layers::LayerUse<'_>> = raw.iter().map(|r| unsafe { r.view(space) }).collect();
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        set_form_reason("");
        let acc = Accumulate { scale, beta };
        let report = match which {
            ModelCall::Dot => ctx.model_dot(n, &views, &mut out, acc, forms)?,
            ModelCall::Gram => ctx.model_gram(n, &views, &mut out, acc, forms)?,
            ModelCall::SqNorm => ctx.model_sqnorm(n, &views, &mut out, acc, forms)?,
            ModelCall::Ghg { eta, .. } => {
                let mut gu = Vec::with_capacity(views.len());
                for (i, (u, (x, b))) in views.iter().zip(&dots).enumerate() {
                    let val = *u.query.factors().ok_or_else(|| Failure::null("query (the validation factors)").context(&format!("uses[{i}]")))?;
                    // SAFETY: checked buffers, valid for the call by this function's contract.
                    let (x_dot, b_dot) = unsafe { (x.map(|x| x.view(space)), b.view(space)) };
                    gu.push(crate::layers::GhgUse { param: u.param, kind: u.kind, train: u.train, val, x_dot, b_dot });
                }
                ctx.model_ghg(n, &gu, eta, &mut out, acc, forms)?
            }
        };
        let lines: Vec<String> = report
            .iter()
            .map(|c| format!("param {} uses[{}]×uses[{}]: {}", c.param, c.uses.0, c.uses.1, c.method))
            .collect();
        set_form_reason(&lines.join("\n"));
        Ok(())
    })
}

/// Train × query inner products of whole-model per-sample gradients (every parameter of
/// `uses`, tied ones with their cross terms): `out[n, v] = beta·out + scale·Σ_params <G_n,
/// Gq_v>`, `out` f32 `[n, V]`. Every use needs a query side (same `V` for all). How each term
/// was computed: the lines of [`gg_last_form_reason`]. Errors name the use (`uses[i]`).
///
/// # Safety
/// `ctx` is NULL or a live context; `uses` is NULL (an error) or points at `n_uses` readable
/// `gg_layer_use` whose buffers follow the [`gg_tensor`] / [`gg_tensor_mut`] contract for the
/// duration of the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_dot(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::Dot, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form) }
}

/// Train × train Gram matrix of whole-model per-sample gradients, `out` f32 `[n, n]`
/// (query sides are ignored). `linear_form`: AUTO, GRAM or MATERIALIZE.
///
/// # Safety
/// As [`gg_model_dot`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_gram(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::Gram, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form) }
}

/// Per-sample squared norms of whole-model gradients, `out` f32 `[n]` (query sides ignored).
///
/// # Safety
/// As [`gg_model_dot`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_sqnorm(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::SqNorm, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form) }
}
/// In-Run Data Shapley, first + second order, over a whole model of mixed layer kinds
/// (`Context::model_ghg`): `out[n] = beta·out + scale·(−eta·Σ_p <G^p_n, g_val^p> +
/// (eta²/2)·Σ_p <G^p_n, (H_val v)^p>)`, `out` f32 `[n]`. Each `uses[i].query` holds the
/// validation factors (one segment); `b_dot[i]` the derivative of its `b` along the batch
/// gradient `v`, `x_dot[i]` that of its `x` (absent — NULL pointer, length 0 — for embeddings
/// and inputs that do not depend on the weights). Tied parameters are exact, an embedding tied
/// to an LM head included.
///
/// # Safety
/// As [`gg_model_dot`]; `x_dot` and `b_dot` point at `n_uses` readable `gg_tensor` each, whose
/// buffers follow the [`gg_tensor`] contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_model_ghg(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    x_dot: *const gg_tensor,
    b_dot: *const gg_tensor,
    n_uses: usize,
    eta: f32,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    linear_form: gg_form_request,
    embedding_form: gg_embedding_form_request,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { model_call(ModelCall::Ghg { eta, x_dot, b_dot }, ctx, n, uses, n_uses, out, scale, beta, linear_form, embedding_form) }
}
/// The projection of one parameter of [`gg_kron_project_model`]: every use with
/// `gg_layer_use.param == param` is projected into one block of `proj.k_o·proj.k_i` columns. A
/// dense `proj` gives `p_out = P_rows [k_o, rows]` and `p_in = P_cols [k_i, cols]` of the
/// parameter's projected storage (Linear `[d_out, d_in + bias]`, Conv1D layout
/// `[d_in + bias, d_out]`, embedding `[vocab, d]`, norm `[d, 1 + bias]`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_param_projection {
    pub param: u32,
    pub proj: gg_projection,
}

/// LoGra projection of a whole model (MATH.md §3; Rust `Context::kron_project_model`): for every
/// parameter of `params` (in array order) the projected per-sample gradient
/// `P_rows (Σ_uses G_n) P_colsᵀ` of all its uses — tied ones (an embedding and its LM head, one
/// weight in both orientations, a shared norm) summed into one block — written
/// `out = beta·out + scale·[ĝ^0_n | ĝ^1_n | …]`, `out` f32 `[n, Σ_p k_o·k_i]`. Query sides of the
/// uses are ignored. When `groups_out` is not NULL it receives the `n_params` column blocks
/// (`gg_column_group`), as [`gg_influence_scores_groups`] and [`gg_dvemb_layers`] take them.
///
/// # Safety
/// As [`gg_model_dot`] for `ctx`, `uses` and `out`; `params` points at `n_params` readable
/// `gg_param_projection` whose dense matrices follow the [`gg_tensor`] contract; `groups_out` is
/// NULL or points at `n_params` writable `gg_column_group`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kron_project_model(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    params: *const gg_param_projection,
    n_params: usize,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
    groups_out: *mut gg_column_group,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs, pdescs) =
            unsafe { (context_ref(ctx)?, read_array(uses, n_uses, "uses", "n_uses")?, read_array(params, n_params, "params", "n_params")?) };
        if !groups_out.is_null() && (groups_out as usize) % std::mem::align_of::<gg_column_group>() != 0 {
            return Err(Failure::new(GG_STATUS_MISALIGNED, "`groups_out` is misaligned for gg_column_group"));
        }
        let mut bufs = Buffers::new(ctx);
        let (raw, rawp) = bufs.model_params(&descs, &pdescs)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call by this function's contract.
        let (views, specs) = unsafe { model_param_views(&raw, &rawp, space) };
        // SAFETY: checked output, no aliasing (check_overlaps), exclusive by the contract.
        let mut out = unsafe { raw_out.view_mut(space) };
        let groups = ctx.kron_project_model(n, &views, &specs, &mut out, Accumulate { scale, beta })?;
        if !groups_out.is_null() {
            // SAFETY: non-null, aligned, n_params writable entries (caller's contract); one per param.
            let dst = unsafe { std::slice::from_raw_parts_mut(groups_out, n_params) };
            for (d, g) in dst.iter_mut().zip(&groups) {
                *d = gg_column_group { offset: g.offset, width: g.width };
            }
        }
        Ok(())
    })
}
/// Checked uses and `(param, projection)` pairs of a model-level projection call.
type RawModelParams = (Vec<RawUse>, Vec<(u32, RawProj)>);

impl Buffers {
    /// Checks the uses and parameter projections of the model-level projection calls; errors
    /// name `uses[i]` / `params[i]`.
    fn model_params(&mut self, uses: &[gg_layer_use], params: &[gg_param_projection]) -> FfiResult<RawModelParams> {
        let mut raw = Vec::with_capacity(uses.len());
        for (i, u) in uses.iter().enumerate() {
            self.prefix = format!("uses[{i}].");
            raw.push(self.layer_use(u).map_err(|f| if f.message.contains("uses[") { f } else { f.context(&format!("uses[{i}]")) })?);
        }
        let mut rawp = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            self.prefix = format!("params[{i}].");
            rawp.push((p.param, self.projection(&p.proj)?));
        }
        self.prefix.clear();
        Ok((raw, rawp))
    }
}

/// # Safety
/// As [`RawBuf::view`] for every buffer of `raw` and `rawp`.
unsafe fn model_param_views<'a>(
    raw: &[RawUse],
    rawp: &[(u32, RawProj)],
    space: Space,
) -> (Vec<crate::layers::LayerUse<'a>>, Vec<crate::projection::ParamProjection<'a>>) {
    // SAFETY: forwarded from this function's contract.
    let views = raw.iter().map(|r| unsafe { r.view(space) }).collect();
    // SAFETY: as above.
    let specs = rawp.iter().map(|(param, p)| crate::projection::ParamProjection { param: *param, proj: unsafe { p.view(space) } }).collect();
    (views, specs)
}

/// K-FAC factors of every matrix parameter of a model (Rust `Context::kfac_covariances_model`),
/// in the storage layout of [`gg_kron_project_model`], token statistics of tied uses summed:
/// `c_rows[p] = beta·c_rows[p] + scale·Σ (P_rows r_t)(P_rows r_t)ᵀ` (f32 `[k_o, k_o]`),
/// `c_cols[p] = beta·c_cols[p] + scale·Σ (P_cols c_t)(P_cols c_t)ᵀ` (f32 `[k_i, k_i]`), `p` in
/// `params` order (`nn.Linear`: `r = b`, `c = [a; 1]`; Conv1D: `r = [a; 1]`, `c = b`; embedding:
/// `r = e_id`, `c = b`). Fit with [`gg_kfac_from_covariances`] (`c_a = c_cols`, `c_b = c_rows`).
/// Norm parameters: `GG_STATUS_INVALID_ARGUMENT` (use [`gg_projected_fisher`] on their columns).
///
/// # Safety
/// As [`gg_kron_project_model`] for `ctx`, `uses` and `params`; `c_rows` and `c_cols` point at
/// `n_params` readable `gg_tensor_mut` each, whose buffers follow the [`gg_tensor_mut`] contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kfac_covariances_model(
    ctx: *const gg_context,
    n: u64,
    uses: *const gg_layer_use,
    n_uses: usize,
    params: *const gg_param_projection,
    n_params: usize,
    c_rows: *const gg_tensor_mut,
    c_cols: *const gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs, pdescs, crd, ccd) = unsafe {
            (
                context_ref(ctx)?,
                read_array(uses, n_uses, "uses", "n_uses")?,
                read_array(params, n_params, "params", "n_params")?,
                read_array(c_rows, n_params, "c_rows", "n_params")?,
                read_array(c_cols, n_params, "c_cols", "n_params")?,
            )
        };
        let mut bufs = Buffers::new(ctx);
        let (raw, rawp) = bufs.model_params(&descs, &pdescs)?;
        let mut outs = Vec::with_capacity(2 * n_params);
        for (i, t) in crd.iter().enumerate() {
            outs.push(bufs.output(&format!("c_rows[{i}]"), t)?);
        }
        for (i, t) in ccd.iter().enumerate() {
            outs.push(bufs.output(&format!("c_cols[{i}]"), t)?);
        }
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, valid for the call by this function's contract.
        let (views, specs) = unsafe { model_param_views(&raw, &rawp, space) };
        // SAFETY: checked outputs, no aliasing (check_overlaps), exclusive by the contract.
        let mut mats: Vec<TensorMut<'_>> = outs.iter().map(|o| unsafe { o.view_mut(space) }).collect();
        let (cr, cc) = mats.split_at_mut(n_params);
        Ok(ctx.kfac_covariances_model(n, &views, &specs, cr, cc, Accumulate { scale, beta })?)
    })
}
// ================================ end of the model-level section =============================

// =============================================================================================
// Data value embedding (MATH.md §5, src/dvemb/)
// =============================================================================================

/// `c_t` of a training step's loss: `GG_LOSS_SUM` (`c = 1`) or `GG_LOSS_MEAN` (`c = 1/rows`).
pub type gg_loss_reduction = u32;
pub const GG_LOSS_SUM: gg_loss_reduction = 0;
pub const GG_LOSS_MEAN: gg_loss_reduction = 1;

/// How [`gg_dvemb_layers`] sweeps: `GG_BLOCKING_AUTO` (blocks of `clamp(k/8, 64, 512)` rows),
/// `GG_BLOCKING_PER_STEP` (one step at a time, memory-bound), `GG_BLOCKING_MAX_ROWS` (blocks of
/// at most `max_rows` rows, `max_rows ≥ 1`).
pub type gg_blocking = u32;
pub const GG_BLOCKING_AUTO: gg_blocking = 0;
pub const GG_BLOCKING_PER_STEP: gg_blocking = 1;
pub const GG_BLOCKING_MAX_ROWS: gg_blocking = 2;

/// One layer of [`gg_dvemb_layers`]: columns `offset .. offset + k` of `grads` / `e_out`, and its
/// `k×k` row-major f32 `M` (read and updated in place; zeros before the latest step).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_dvemb_layer {
    pub offset: u64,
    pub k: u64,
    pub m: gg_tensor_mut,
}

/// Data value embedding reverse sweep (MATH.md §5) of `n_layers` layers over `n_steps` training
/// steps: for every layer and every step t from the LAST down to the first,
/// `E_t = eta_t (G_t − G_t Mᵀ)` into `e_out`'s rows of step t, then `M ← M + c_t E_tᵀ G_t`.
/// `grads` and `e_out` f32 `[R, row_stride]`, `R = Σ step_rows`, rows in FORWARD step order
/// (the `[N, Σk]` layout of [`gg_kron_project_layers`]); columns outside the layers are never
/// written. `step_rows` (u64, each ≥ 1) and `step_etas` (f64, finite) hold `n_steps` entries.
/// A long run is swept by calling on consecutive chunks of steps backwards in time, carrying
/// each layer's `M`. Score a sample z of step t against a test gradient projected with the same
/// seed with [`gg_influence_scores`] (`GG_SCORE_DOT`) on the rows of `e_out`.
///
/// # Safety
/// As [`gg_ghost_dot`] for `ctx`, `grads`, `e_out` and every layer's `m`; `layers` points at
/// `n_layers` readable `gg_dvemb_layer`; `step_rows` and `step_etas` at `n_steps` readable
/// elements each.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_dvemb_layers(
    ctx: *const gg_context,
    grads: gg_tensor,
    row_stride: u64,
    layers: *const gg_dvemb_layer,
    n_layers: usize,
    step_rows: *const u64,
    step_etas: *const f64,
    n_steps: usize,
    loss: gg_loss_reduction,
    e_out: gg_tensor_mut,
    blocking: gg_blocking,
    max_rows: u64,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(layers, n_layers, "layers", "n_layers")?) };
        if n_steps == 0 {
            return Err(GhostError::ZeroSize { what: "n_steps" }.into());
        }
        // SAFETY: forwarded from this function's contract (n_steps ≥ 1 readable elements each).
        let (rows, etas) = unsafe { (read_array(step_rows, n_steps, "step_rows", "n_steps")?, read_array(step_etas, n_steps, "step_etas", "n_steps")?) };
        let loss = match loss {
            GG_LOSS_SUM => LossReduction::Sum,
            GG_LOSS_MEAN => LossReduction::Mean,
            other => return Err(Failure::invalid("loss", format!("unknown gg_loss_reduction {other}"))),
        };
        let blocking = match blocking {
            GG_BLOCKING_AUTO => Blocking::Auto,
            GG_BLOCKING_PER_STEP => Blocking::PerStep,
            GG_BLOCKING_MAX_ROWS => Blocking::MaxRows(max_rows),
            other => return Err(Failure::invalid("blocking", format!("unknown gg_blocking {other}"))),
        };
        let mut bufs = Buffers::new(ctx);
        let raw_grads = bufs.input("grads", &grads)?;
        let mut raw_m = Vec::with_capacity(n_layers);
        for (i, l) in descs.iter().enumerate() {
            raw_m.push(bufs.output(&format!("layers[{i}].m"), &l.m)?);
        }
        let raw_e = bufs.output("e_out", &e_out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing (check_overlaps), valid for the call.
        let (grads, mut e) = unsafe { (raw_grads.view(space), raw_e.view_mut(space)) };
        // SAFETY: as above, each M is a distinct checked output.
        let mut ms: Vec<TensorMut<'_>> = raw_m.into_iter().map(|r| unsafe { r.view_mut(space) }).collect();
        let mut layers: Vec<DvembLayer<'_, '_>> =
            descs.iter().zip(ms.iter_mut()).map(|(d, m)| DvembLayer { offset: d.offset, k: d.k, m }).collect();
        let steps = DvembSteps { rows: &rows, etas: &etas, loss };
        ctx.dvemb_layers(&grads, row_stride, &mut layers, &steps, &mut e, blocking)?;
        Ok(())
    })
}

// ================================ end of the DVEmb section ===================================

// =============================================================================================
// BEGIN projection extensions: embedding projections and second moments for the preconditioners
// (kron_project_embedding, projected_fisher, kfac_covariances, ekfac_eigen_correction). The
// projection descriptor is the section above's `gg_projection` (for an embedding, `p_in` is
// f32 `[k_i, V]`).
// =============================================================================================

/// Token-id factors of an embedding layer: `ids [n, t]` i32 into a vocabulary of `V` entries
/// (`shape.d_in`), `b [n, t, d_out]` (f32 | bf16 | f16), optional `mask [n, t]` u8 (a zero skips
/// the token; its id is then never read).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_token_train {
    pub ids: gg_tensor,
    pub b: gg_tensor,
    pub n: u64,
    pub t: u64,
    pub mask: gg_tensor,
}

#[derive(Debug, Clone, Copy)]
struct RawTokens {
    ids: RawBuf,
    b: RawBuf,
    n: u64,
    t: u64,
    mask: Option<RawBuf>,
}

impl RawTokens {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    unsafe fn view<'a>(self, space: Space) -> crate::projection::TokenFactors<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            crate::projection::TokenFactors {
                ids: self.ids.view(space),
                b: self.b.view(space),
                n: self.n,
                t: self.t,
                mask: self.mask.map(|m| m.view(space)),
            }
        }
    }
}

impl Buffers {
    fn tokens(&mut self, t: &gg_token_train) -> FfiResult<RawTokens> {
        Ok(RawTokens {
            ids: self.input("train.ids", &t.ids)?,
            b: self.input("train.b", &t.b)?,
            n: t.n,
            t: t.t,
            mask: self.optional_input("train.mask", &t.mask)?,
        })
    }
}

/// The training-factor descriptor of a one-layer projection call: a linear layer's
/// [`gg_train`] or an embedding layer's [`gg_token_train`]. The twin C functions
/// (`gg_kron_project` / `gg_kron_project_embedding`, `gg_kfac_covariances` /
/// `gg_kfac_covariances_embedding`) differ only in this type and share one body through it.
trait LayerTrainDesc: Copy {
    /// The descriptor's buffers, checked and registered for the overlap check.
    type Raw: Copy;

    /// Checks and registers the descriptor's buffers (named `train.*`).
    fn register(&self, bufs: &mut Buffers) -> FfiResult<Self::Raw>;

    /// The library's layer: `shape`, the factors of `raw` viewed in `space`, and `proj`.
    ///
    /// # Safety
    /// As [`RawBuf::view`] for every buffer of `raw`.
    unsafe fn layer<'a>(raw: Self::Raw, space: Space, shape: LayerShape, proj: ProjectionSpec<'a>) -> ProjectInput<'a>;
}

impl LayerTrainDesc for gg_train {
    type Raw = RawTrain;

    fn register(&self, bufs: &mut Buffers) -> FfiResult<RawTrain> {
        bufs.train(self)
    }

    unsafe fn layer<'a>(raw: RawTrain, space: Space, shape: LayerShape, proj: ProjectionSpec<'a>) -> ProjectInput<'a> {
        // SAFETY: forwarded from this function's contract.
        ProjectInput::Linear(ProjectLayer { shape, train: unsafe { raw.view(space) }, proj })
    }
}

impl LayerTrainDesc for gg_token_train {
    type Raw = RawTokens;

    fn register(&self, bufs: &mut Buffers) -> FfiResult<RawTokens> {
        bufs.tokens(self)
    }

    unsafe fn layer<'a>(raw: RawTokens, space: Space, shape: LayerShape, proj: ProjectionSpec<'a>) -> ProjectInput<'a> {
        // SAFETY: forwarded from this function's contract.
        ProjectInput::Embedding(EmbeddingLayer { shape, train: unsafe { raw.view(space) }, proj })
    }
}

/// The parsed inputs of a one-layer projection call, outputs not yet registered.
struct LayerCall<'c, R> {
    ctx: &'c Context,
    bufs: Buffers,
    train: R,
    proj: RawProj,
}

impl<'c, R: Copy> LayerCall<'c, R> {
    /// Reads `ctx`, `*train` and `*proj` and registers the train factors and the projection
    /// (in that order, so that the first bad argument is the one reported).
    ///
    /// # Safety
    /// `ctx` is NULL or a live context; `train` and `proj` are NULL or readable descriptors.
    unsafe fn parse<D>(ctx: *const gg_context, train: *const D, proj: *const gg_projection) -> FfiResult<Self>
    where
        D: LayerTrainDesc<Raw = R>,
    {
        // SAFETY: forwarded from this function's contract.
        let (ctx, train, proj) = unsafe { (context_ref(ctx)?, read_desc(train, "train")?, read_desc(proj, "proj")?) };
        let mut bufs = Buffers::new(ctx);
        let train = train.register(&mut bufs)?;
        let proj = bufs.projection(&proj)?;
        Ok(LayerCall { ctx, bufs, train, proj })
    }
}

/// The body of [`gg_kron_project`] and [`gg_kron_project_embedding`]: one layer's projected
/// per-sample gradients into the columns `cols` of `out`.
///
/// # Safety
/// As [`gg_kron_project`] (or [`gg_kron_project_embedding`] for token-id factors).
#[allow(clippy::too_many_arguments)]
unsafe fn kron_project_one<D: LayerTrainDesc>(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const D,
    proj: *const gg_projection,
    out: gg_tensor_mut,
    cols: OutColumns,
    acc: Accumulate,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let LayerCall { ctx, mut bufs, train, proj } = unsafe { LayerCall::parse(ctx, train, proj)? };
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (layer, mut out) = unsafe { (D::layer(train, space, layer_shape(&shape), proj.view(space)), raw_out.view_mut(space)) };
        Ok(match layer {
            ProjectInput::Linear(l) => ctx.kron_project(&l.shape, &l.train, &l.proj, &mut out, cols, acc),
            ProjectInput::Embedding(l) => ctx.kron_project_embedding(&l.shape, &l.train, &l.proj, &mut out, cols, acc),
        }?)
    })
}

/// The body of [`gg_kfac_covariances`] and [`gg_kfac_covariances_embedding`]: one layer's
/// K-FAC factors into `c_a` and `c_b`.
///
/// # Safety
/// As [`gg_kfac_covariances`] (or [`gg_kfac_covariances_embedding`] for token-id factors).
unsafe fn kfac_covariances_one<D: LayerTrainDesc>(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const D,
    proj: *const gg_projection,
    c_a: gg_tensor_mut,
    c_b: gg_tensor_mut,
    acc: Accumulate,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let LayerCall { ctx, mut bufs, train, proj } = unsafe { LayerCall::parse(ctx, train, proj)? };
        let (raw_a, raw_b) = (bufs.output("c_a", &c_a)?, bufs.output("c_b", &c_b)?);
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (layer, mut ca, mut cb) =
            unsafe { (D::layer(train, space, layer_shape(&shape), proj.view(space)), raw_a.view_mut(space), raw_b.view_mut(space)) };
        Ok(ctx.kfac_covariances(layer, &mut ca, &mut cb, acc)?)
    })
}

/// Projected per-sample gradients of an embedding layer (MATH.md §3):
/// `out[n·out_row_stride + out_offset + o·k_i + i] = beta·out + scale·Ĝ_n[o, i]`,
/// `Ĝ_n = Σ_t (P_o b_{n,t})(P_i[:, ids_{n,t}])ᵀ` (`shape.d_in` = vocabulary size `V`, no bias),
/// `out` f32 `[n, out_row_stride]`; other columns are never touched. A kept id outside `[0, V)`
/// is `GG_STATUS_INVALID_ARGUMENT` on a CPU context (nothing written); on a CUDA context that
/// sample's columns become NaN (ids in device memory are never read by the host).
///
/// # Safety
/// `ctx` is NULL or a live context; `train` and `proj` are NULL or point at readable
/// descriptors whose buffers follow the contract of [`gg_tensor`] (host memory for CPU contexts,
/// device memory for CUDA contexts) for the duration of the call; `out` is writable and
/// aliases no other buffer.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kron_project_embedding(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_token_train,
    proj: *const gg_projection,
    out: gg_tensor_mut,
    out_offset: u64,
    out_row_stride: u64,
    scale: f32,
    beta: f32,
) -> gg_status {
    let cols = OutColumns { offset: out_offset, row_stride: out_row_stride };
    // SAFETY: forwarded from this function's contract.
    unsafe { kron_project_one(ctx, shape, train, proj, out, cols, Accumulate { scale, beta }) }
}

/// Raw projected Fisher (SYRK): `out = beta·out + scale·Σ_{r<n} ĝ_r ĝ_rᵀ`, `out` f32 `[k, k]`
/// written in full (exactly symmetric), `ĝ_r = grads[r·row_stride + offset ..][..k]`, `grads`
/// f32 `[n, row_stride]`. Stream batches with `beta = 1`.
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `grads` and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_projected_fisher(
    ctx: *const gg_context,
    grads: gg_tensor,
    n: u64,
    k: u64,
    offset: u64,
    row_stride: u64,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx)? };
        let mut bufs = Buffers::new(ctx);
        let raw_g = bufs.input("grads", &grads)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (g, mut out) = unsafe { (raw_g.view(space), raw_out.view_mut(space)) };
        let cols = crate::projection::OutColumns { offset, row_stride };
        Ok(ctx.projected_fisher(&g, n, k, cols, &mut out, Accumulate { scale, beta })?)
    })
}

/// K-FAC factors of a linear layer over every kept token:
/// `c_a = beta·c_a + scale·Σ (P_i a)(P_i a)ᵀ` (f32 `[k_i, k_i]`, `a` augmented with 1 when
/// the layer has a bias), `c_b = beta·c_b + scale·Σ (P_o b)(P_o b)ᵀ` (f32 `[k_o, k_o]`), both
/// written in full; the projected tokens are never materialized.
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `train`, `proj`, `c_a` and `c_b`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kfac_covariances(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_train,
    proj: *const gg_projection,
    c_a: gg_tensor_mut,
    c_b: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { kfac_covariances_one(ctx, shape, train, proj, c_a, c_b, Accumulate { scale, beta }) }
}

/// [`gg_kfac_covariances`] of an embedding layer (`c_a` from the gathered columns
/// `P_i[:, ids]`); ids as in [`gg_kron_project_embedding`] (out of range: an error on a CPU
/// context, NaN in `c_a` on a CUDA context).
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `train`, `proj`, `c_a` and `c_b`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_kfac_covariances_embedding(
    ctx: *const gg_context,
    shape: gg_layer_shape,
    train: *const gg_token_train,
    proj: *const gg_projection,
    c_a: gg_tensor_mut,
    c_b: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { kfac_covariances_one(ctx, shape, train, proj, c_a, c_b, Accumulate { scale, beta }) }
}

/// EK-FAC eigenvalue correction: `out = beta·out + scale·Σ_{r<n} (Q_Bᵀ Ĝ_r Q_A)^{⊙2}`, `out`
/// f32 `[k_o, k_i]`, `Ĝ_r` the row-major `k_o × k_i` matrix at `grads[r·row_stride + offset]`,
/// `q_b` f32 `[k_o, k_o]`, `q_a` f32 `[k_i, k_i]` row-major with eigenvectors as columns.
///
/// # Safety
/// As [`gg_kron_project_embedding`] for `ctx`, `grads`, `q_b`, `q_a` and `out`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_ekfac_eigen_correction(
    ctx: *const gg_context,
    grads: gg_tensor,
    n: u64,
    k_o: u64,
    k_i: u64,
    offset: u64,
    row_stride: u64,
    q_b: gg_tensor,
    q_a: gg_tensor,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let ctx = unsafe { context_ref(ctx)? };
        let mut bufs = Buffers::new(ctx);
        let raw_g = bufs.input("grads", &grads)?;
        let (raw_qb, raw_qa) = (bufs.input("q_b", &q_b)?, bufs.input("q_a", &q_a)?);
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (g, qb, qa, mut out) = unsafe { (raw_g.view(space), raw_qb.view(space), raw_qa.view(space), raw_out.view_mut(space)) };
        let cols = crate::projection::OutColumns { offset, row_stride };
        Ok(ctx.ekfac_eigen_correction(&g, n, k_o, k_i, cols, &qb, &qa, &mut out, Accumulate { scale, beta })?)
    })
}

// =============================================================================================
// END projection extensions
// =============================================================================================

// =============================================================================================
// Preconditioners from moments accumulated on any context (projected_fisher, kfac_covariances,
// ekfac_eigen_correction): the small dense algebra stays on the host, in f64.
// =============================================================================================

/// Reads a host f32 input of exactly `len` elements.
///
/// # Safety
/// `t` describes `t.len` readable host elements for the call.
unsafe fn host_input<'a>(t: &gg_tensor, what: &'static str, len: u64, op: &'static str) -> FfiResult<&'a [f32]> {
    let mut bufs = Buffers::host();
    let raw = bufs.input(what, t)?;
    if raw.len != len {
        return Err(GhostError::LengthMismatch { what, expected: len, got: raw.len }.into());
    }
    // SAFETY: checked host buffer, readable for the call (contract).
    unsafe { host_f32_view(raw, what, op) }
}

/// Fits the damped raw Fisher from an accumulated `sum = Σ_n ĝ_n ĝ_nᵀ` (f32 `[k, k]`, host; e.g.
/// the output of [`gg_projected_fisher`] with `scale = 1` over every batch, copied to the host)
/// over `n` samples: `F = sum / n` (symmetrized), `λ = 0.1·trace(F)/k`. `*out` receives a new
/// handle (NULL on failure), released with [`gg_raw_fisher_destroy`].
///
/// # Safety
/// `sum` describes `sum.len` readable host elements; `out` is NULL (an error) or points at a
/// writable `gg_raw_fisher*`.
#[no_mangle]
pub unsafe extern "C" fn gg_raw_fisher_from_sum(sum: gg_tensor, k: u64, n: u64, out: *mut *mut gg_raw_fisher) -> gg_status {
    guard(|| {
        check_out_param(out, "out")?;
        // SAFETY: checked non-null and aligned; writable by the contract. NULL until success.
        unsafe { out.write(std::ptr::null_mut()) };
        v::nonzero("k", k)?;
        v::nonzero("n", n)?;
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { host_input(&sum, "sum", v::mul("k*k", k, k)?, "raw_fisher_from_sum") }?;
        let inner = RawFisher::from_sum(s, k as usize, n as usize)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(gg_raw_fisher { inner, k }))) };
        Ok(())
    })
}

/// Fits K-FAC from accumulated covariances `c_a` f32 `[k_i, k_i]` and `c_b` f32 `[k_o, k_o]`
/// (host; e.g. the outputs of [`gg_kfac_covariances`] copied to the host). Eigendecompositions
/// in f64, damping as [`gg_kfac_fit`]. `*out` receives a new handle (NULL on failure).
///
/// # Safety
/// `c_a`, `c_b` describe readable host elements; `out` is NULL (an error) or points at a writable
/// `gg_kfac*`.
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_from_covariances(c_a: gg_tensor, k_i: u64, c_b: gg_tensor, k_o: u64, out: *mut *mut gg_kfac) -> gg_status {
    guard(|| {
        check_out_param(out, "out")?;
        // SAFETY: checked non-null and aligned; writable by the contract. NULL until success.
        unsafe { out.write(std::ptr::null_mut()) };
        v::nonzero("k_i", k_i)?;
        v::nonzero("k_o", k_o)?;
        // SAFETY: forwarded from this function's contract.
        let a = unsafe { host_input(&c_a, "c_a", v::mul("k_i*k_i", k_i, k_i)?, "kfac_from_covariances") }?;
        // SAFETY: as above.
        let b = unsafe { host_input(&c_b, "c_b", v::mul("k_o*k_o", k_o, k_o)?, "kfac_from_covariances") }?;
        let inner = Kfac::from_covariances_f32(a, k_i as usize, b, k_o as usize)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(gg_kfac { inner, k_i, k_o }))) };
        Ok(())
    })
}

/// The eigenvectors of a K-FAC handle as the `q_a` f32 `[k_i, k_i]` and `q_b` f32 `[k_o, k_o]`
/// (host, row-major, eigenvectors as columns) that [`gg_ekfac_eigen_correction`] takes.
///
/// # Safety
/// `f` is NULL (an error) or a live handle; `q_a`, `q_b` describe writable host memory that
/// nothing else uses during the call.
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_eigenvectors(f: *const gg_kfac, q_a: gg_tensor_mut, q_b: gg_tensor_mut) -> gg_status {
    guard(|| {
        if f.is_null() {
            return Err(Failure::null("kfac"));
        }
        // SAFETY: a live handle (caller's contract).
        let f = unsafe { &*f };
        let mut bufs = Buffers::host();
        let raw_a = bufs.output("q_a", &q_a)?;
        let raw_b = bufs.output("q_b", &q_b)?;
        bufs.check_overlaps()?;
        for (raw, what, k) in [(&raw_a, "q_a", f.k_i), (&raw_b, "q_b", f.k_o)] {
            if raw.len != k * k {
                return Err(GhostError::LengthMismatch { what, expected: k * k, got: raw.len }.into());
            }
        }
        let (qa, qb) = f.inner.eigenvectors_f32();
        // SAFETY: checked, distinct host outputs, writable for the call (contract).
        let (mut oa, mut ob) = unsafe { (raw_a.view_mut(Space::Host), raw_b.view_mut(Space::Host)) };
        oa.host("q_a")?.copy_from_slice(&qa);
        ob.host("q_b")?.copy_from_slice(&qb);
        Ok(())
    })
}

/// Turns K-FAC into EK-FAC from an accumulated `sum = Σ_n (Q_Bᵀ Ĝ_n Q_A)^{⊙2}` (f32
/// `[k_o, k_i]`, host; e.g. [`gg_ekfac_eigen_correction`] with this handle's
/// [`gg_kfac_eigenvectors`] and `scale = 1`) over `n` samples, exactly as
/// [`gg_kfac_ekfac_correct`] does from the gradients. On failure the handle is unchanged.
///
/// # Safety
/// `f` is NULL (an error) or a live handle not used concurrently; `sum` describes readable host
/// elements.
#[no_mangle]
pub unsafe extern "C" fn gg_kfac_set_ekfac_sum(f: *mut gg_kfac, sum: gg_tensor, n: u64) -> gg_status {
    guard(|| {
        if f.is_null() {
            return Err(Failure::null("kfac"));
        }
        // SAFETY: a live handle used by this thread only (caller's contract).
        let f = unsafe { &mut *f };
        v::nonzero("n", n)?;
        // SAFETY: forwarded from this function's contract.
        let s = unsafe { host_input(&sum, "sum", v::mul("k_o*k_i", f.k_o, f.k_i)?, "kfac_set_ekfac_sum") }?;
        let mut corrected = f.inner.clone();
        corrected.set_ekfac_sum(s, n as usize)?;
        f.inner = corrected;
        Ok(())
    })
}

/// One group of columns of [`gg_influence_scores_groups`]: columns `offset .. offset + width`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_column_group {
    pub offset: u64,
    pub width: u64,
}

/// Per-layer-group partial influence scores: `test` f32 `[n_test, row_stride]` and `train_block`
/// f32 `[n_block, row_stride]` hold several layers' `ĝ` side by side (as
/// [`gg_kron_project_layers`] writes them); for every group g of `groups` (`n_groups` entries):
/// `out[g, q, j] = beta·out + scale·f(Σ_{c ∈ g} test[q, c]·train_block[j, c])`, `out` f32
/// `[n_groups, n_test, n_block]`, `f` the `gg_score_mode` with the group's own
/// `train_self[g, j]` (f32 `[n_groups, n_block]`; required for COSINE and L2, absent for DOT).
///
/// # Safety
/// As [`gg_influence_scores`]; `groups` points at `n_groups` readable `gg_column_group`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gg_influence_scores_groups(
    ctx: *const gg_context,
    test: gg_tensor,
    train_block: gg_tensor,
    n_test: u64,
    n_block: u64,
    row_stride: u64,
    groups: *const gg_column_group,
    n_groups: usize,
    train_self: gg_tensor,
    mode: gg_score_mode,
    out: gg_tensor_mut,
    scale: f32,
    beta: f32,
) -> gg_status {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (ctx, descs) = unsafe { (context_ref(ctx)?, read_array(groups, n_groups, "groups", "n_groups")?) };
        let mode = score_mode_from_code(mode)?;
        let groups: Vec<crate::projection::ColumnGroup> =
            descs.iter().map(|g| crate::projection::ColumnGroup { offset: g.offset, width: g.width }).collect();
        let mut bufs = Buffers::new(ctx);
        let raw_test = bufs.input("test", &test)?;
        let raw_train = bufs.input("train_block", &train_block)?;
        let raw_self = bufs.optional_input("train_self", &train_self)?;
        let raw_out = bufs.output("out", &out)?;
        bufs.check_overlaps()?;
        let space = bufs.space;
        // SAFETY: checked buffers, no output aliasing, valid for the call (contract).
        let (test, train, ts, mut out) = unsafe {
            (raw_test.view(space), raw_train.view(space), raw_self.map(|b| b.view(space)), raw_out.view_mut(space))
        };
        Ok(ctx.influence_scores_groups(&test, &train, n_test, n_block, row_stride, &groups, &mut out, mode, ts.as_ref(), Accumulate { scale, beta })?)
    })
}

// ============================ end of the preconditioners-from-moments section ================

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_distinct_name_and_round_trips() {
        for s in ALL_STATUSES {
            assert_eq!(gg_status::from_code(s as i32), Some(s));
            assert!(s.name().to_str().unwrap().starts_with("GG_STATUS_"));
        }
        assert_eq!(gg_status::from_code(ALL_STATUSES.len() as i32), None);
    }

    #[test]
    fn a_panic_becomes_a_status_with_its_message() {
        let st = guard(|| panic!("boom in a test"));
        assert_eq!(st, GG_STATUS_PANIC);
        let msg = unsafe { CStr::from_ptr(gg_last_error_message()) }.to_str().unwrap().to_string();
        assert!(msg.contains("boom in a test"), "{msg}");
        assert_eq!(guard(|| Ok(())), GG_STATUS_OK);
        assert_eq!(unsafe { CStr::from_ptr(gg_last_error_message()) }.to_bytes(), b"");
    }
}

//! Status codes, the thread-local last error and form reason, and the panic guard every
//! extern fn runs its body in; library information (`gg_version`, `gg_status_name`, ...).

use super::*;

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

pub(super) const ALL_STATUSES: [gg_status; 19] = [
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
            GhostError::CudaDriverUnavailable(_)
            | GhostError::DriverTooOld { .. }
            | GhostError::UnsupportedDevice { .. } => GG_STATUS_DRIVER_UNAVAILABLE,
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
pub(super) struct Failure {
    pub(super) status: gg_status,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(status: gg_status, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
    pub(super) fn null(what: &str) -> Self {
        Failure::new(GG_STATUS_NULL_POINTER, format!("`{what}` is a null pointer"))
    }
    pub(super) fn invalid(what: &str, reason: impl std::fmt::Display) -> Self {
        Failure::new(GG_STATUS_INVALID_ARGUMENT, format!("invalid argument `{what}`: {reason}"))
    }
    /// Prefixes the message with where it happened (e.g. `layers[2]`).
    pub(super) fn context(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl From<GhostError> for Failure {
    fn from(e: GhostError) -> Self {
        Failure { status: gg_status::from(&e), message: e.to_string() }
    }
}

pub(super) type FfiResult<T = ()> = Result<T, Failure>;

thread_local! {
    pub(super) static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    pub(super) static LAST_FORM_REASON: RefCell<CString> = RefCell::new(CString::default());
}

/// A C string of `s` (interior NULs, which no ghostgrad message contains, become spaces).
pub(super) fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

pub(super) fn set_last_error(message: &str) {
    LAST_ERROR.with(|e| *e.borrow_mut() = c_string(message));
}

pub(super) fn set_form_reason(reason: &str) {
    LAST_FORM_REASON.with(|r| *r.borrow_mut() = c_string(reason));
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
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
pub(super) fn guard(body: impl FnOnce() -> FfiResult) -> gg_status {
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
pub(super) fn guard_ptr(fallback: *const c_char, body: impl FnOnce() -> *const c_char) -> *const c_char {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Copies `s` into a caller buffer, snprintf-style: at most `cap - 1` bytes plus a NUL;
/// `*len_out` (if not NULL) receives the full length without the NUL.
///
/// # Safety
/// `buf` is NULL or `cap` writable bytes; `len_out` is NULL or a writable `size_t`.
pub(super) unsafe fn copy_to_caller(s: &[u8], buf: *mut c_char, cap: usize, len_out: *mut usize) -> FfiResult {
    // Both out-parameters are checked before either is written.
    if !len_out.is_null() {
        check_out_param(len_out, "len_out")?;
    }
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

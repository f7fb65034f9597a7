//! Contexts: creation on each backend, description, workspace limit, destruction; and the
//! handle-to-`Context` conversion every operation starts with.

use super::*;

/// A ghostgrad context (opaque): where operations run. Create with `gg_context_create_*`,
/// release with [`gg_context_destroy`].
pub struct gg_context {
    pub(super) inner: Context,
}

/// The context behind a caller handle.
///
/// # Safety
/// `p` is NULL or a handle from `gg_context_create_*` not yet destroyed.
pub(super) unsafe fn context_ref<'a>(p: *const gg_context) -> FfiResult<&'a Context> {
    if p.is_null() {
        return Err(Failure::null("ctx"));
    }
    // SAFETY: a live handle (caller's contract) points at a gg_context allocated by Box.
    Ok(unsafe { &(*p).inner })
}

/// # Safety
/// `out` is NULL or points at a writable `gg_context*`.
pub(super) unsafe fn create(out: *mut *mut gg_context, make: impl FnOnce() -> FfiResult<Context>) -> gg_status {
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
pub(super) unsafe fn destroy_handle<T>(p: *mut T) {
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

//! Host preconditioners (raw Fisher, K-FAC / EK-FAC): opaque handles owned by the caller,
//! fitted from gradients or from moments accumulated on any context; f64 algebra on the CPU.

use super::*;

/// A fitted raw-Fisher preconditioner (opaque, host memory): `(F + λI)⁻¹` with
/// `F = (1/N) Σ_n ĝ_n ĝ_nᵀ`, `λ = 0.1·trace(F)/k`, Cholesky-factored in f64. Created by
/// [`gg_raw_fisher_fit`], owned by the caller, released with [`gg_raw_fisher_destroy`].
pub struct gg_raw_fisher {
    pub(super) inner: RawFisher,
    pub(super) k: u64,
}

/// A fitted K-FAC (or, after [`gg_kfac_ekfac_correct`], EK-FAC) preconditioner of one layer's
/// projected gradients (opaque, host memory). Created by [`gg_kfac_fit`], owned by the caller,
/// released with [`gg_kfac_destroy`].
pub struct gg_kfac {
    pub(super) inner: Kfac,
    pub(super) k_i: u64,
    pub(super) k_o: u64,
}

// ---------------------------------------------------------------------------------------------
// Host preconditioners (no context: host memory only; dense k×k algebra in f64 on the CPU)
// ---------------------------------------------------------------------------------------------

/// An f32 host view of a checked input, or a dtype error naming it.
///
/// # Safety
/// As [`RawBuf::view`] on host memory.
pub(super) unsafe fn host_f32_view<'a>(raw: RawBuf, what: &'static str, op: &'static str) -> FfiResult<&'a [f32]> {
    // SAFETY: forwarded from this function's contract.
    match unsafe { raw.view(Space::Host) } {
        Tensor::Host(HostSlice::F32(s)) => Ok(s),
        other => Err(GhostError::UnsupportedDtype { what, dtype: other.dtype(), op }.into()),
    }
}

/// Checks `grads` (`[n, k]` f32, host) and returns `n` and `k` as `usize`.
pub(super) fn grads_dims(raw: &RawBuf, n: u64, k: u64) -> FfiResult<(usize, usize)> {
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
pub(super) unsafe fn apply_host(
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
pub(super) fn check_out_len(raw: &RawBuf, expected: u64) -> FfiResult {
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
// Preconditioners from moments accumulated on any context (projected_fisher, kfac_covariances,
// ekfac_eigen_correction): the small dense algebra stays on the host, in f64.
// =============================================================================================

/// Reads a host f32 input of exactly `len` elements.
///
/// # Safety
/// `t` describes `t.len` readable host elements for the call.
pub(super) unsafe fn host_input<'a>(t: &gg_tensor, what: &'static str, len: u64, op: &'static str) -> FfiResult<&'a [f32]> {
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

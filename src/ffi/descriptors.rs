//! The plain-data types a C caller fills in: the enum-like codes shared by every family
//! (`gg_dtype`, `gg_form`, `gg_form_request`, `gg_segments_kind`) and the buffer and factor
//! descriptors (`gg_tensor`, `gg_train`, `gg_query`, `gg_token_train`, ...).

use super::*;

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

pub(super) fn dtype_from_code(what: &str, code: gg_dtype) -> FfiResult<DType> {
    // F64 (the Rust-only value accumulator of In-Run Data Shapley) is not part of the C ABI.
    DType::from_u32(code).filter(|d| *d != DType::F64).ok_or_else(|| {
        Failure::new(
            GG_STATUS_DTYPE,
            format!("`{what}`: dtype code {code} is not a gg_dtype (F32=0, BF16=1, F16=2, U8=3, I32=4, I64=6)"),
        )
    })
}

/// The form request behind a caller's code; `what` names the argument (`form`, `layers[2].form`).
pub(super) fn form_request_from_code(what: &str, code: gg_form_request) -> FfiResult<FormRequest> {
    Ok(match code {
        GG_FORM_REQUEST_AUTO => FormRequest::Auto,
        GG_FORM_REQUEST_GRAM => FormRequest::Force(Form::Gram),
        GG_FORM_REQUEST_DENSE_QUERY => FormRequest::Force(Form::DenseQuery),
        GG_FORM_REQUEST_MATERIALIZE => FormRequest::Force(Form::Materialize),
        other => {
            return Err(Failure::invalid(
                what,
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

/// A written buffer of `len` f64 elements (the value accumulator of [`gg_accumulate_values`]),
/// host or device memory as for [`gg_tensor`], aligned to 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gg_tensor_f64_mut {
    pub ptr: *mut c_void,
    pub len: u64,
}

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

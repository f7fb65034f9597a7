//! The cost model that chooses among the three exact algorithms for `<G_n, Gq_v>`
//! (MATH.md §1 "Choosing a form"): FLOPs, bytes moved and extra memory of each form, turned
//! into a time estimate with the backend's compute and memory rates.

use std::fmt;

/// An exact algorithm for ghost dot-products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Form {
    /// `Σ_t Σ_u (a·aq)(b·bq)`: cost ∝ T·Q·(d_in + d_out), no d_in×d_out memory.
    Gram = 0,
    /// `M_v = Bq_vᵀ Aq_v` then `Σ_t bᵀ M_v a`: cost ∝ (N·T·V + Q)·d_in·d_out, memory V·d_in·d_out.
    DenseQuery = 1,
    /// Materialize every `G_n` and `Gq_v`, then dot: memory (N + V)·d_in·d_out.
    Materialize = 2,
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Gram => "gram",
            Form::DenseQuery => "dense-query",
            Form::Materialize => "materialize",
        })
    }
}

/// Which form to use: the cheapest by the cost model, or a forced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormRequest {
    #[default]
    Auto,
    Force(Form),
}

/// Modeled cost of one form for one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FormCost {
    pub form: Form,
    pub flops: f64,
    /// Minimum bytes read and written from/to main memory.
    pub bytes: f64,
    /// Scratch memory the form needs beyond inputs and output.
    pub extra_bytes: f64,
    /// `max(flops / flop_rate, bytes / byte_rate)` in seconds (a model, not a measurement).
    pub est_seconds: f64,
    /// False when the extra memory exceeds the context's workspace limit.
    pub fits: bool,
}

/// The form used for a layer and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FormChoice {
    pub form: Form,
    pub forced: bool,
    pub costs: Vec<FormCost>,
    pub reason: String,
}

/// Compute and memory rates of a backend, used only to rank forms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineRates {
    pub flops_per_s: f64,
    /// Rate of the Gram form for 16-bit (bf16 / f16) factors: the tensor-core kernel where the
    /// backend has one (`ghost_dot_gram_mma_*`), else `flops_per_s`. The dense-query and
    /// materialize forms run on `flops_per_s` in every dtype.
    pub gram_16bit_flops_per_s: f64,
    pub bytes_per_s: f64,
    /// Auto never picks a form whose scratch memory exceeds this.
    pub max_extra_bytes: f64,
}

// ---- GPU rates (tensorcore branch; the CPU constants below are recalibrated separately) ----

/// H100 SXM datasheet: 67 TFLOP/s fp32 on the CUDA cores (every FMA kernel).
const GPU_FMA_FLOPS: f64 = 67e12;
/// The Gram tensor-core kernel's rate for ranking forms: half of the H100 SXM dense bf16/f16
/// tensor peak (989 TFLOP/s, reached only by wgmma). Our kernel issues mma.sync.m16n8k16,
/// which runs below that peak on Hopper, from a 3-stage cp.async pipeline without warp
/// specialisation; 50 % is an assumption for choosing between forms, not a measurement (the
/// modeled time of the kernel itself is in BENCHMARKS.md, from the interpreter's counters).
const GPU_MMA_GRAM_FLOPS: f64 = 0.5 * 989e12;
/// H100 SXM HBM3: 3.35 TB/s.
const GPU_BYTES_PER_S: f64 = 3.35e12;

impl MachineRates {
    /// A GPU running ghostgrad's CUDA-core kernels only (sm_75, or any f32 work).
    pub const GPU: MachineRates = MachineRates {
        flops_per_s: GPU_FMA_FLOPS,
        gram_16bit_flops_per_s: GPU_FMA_FLOPS,
        bytes_per_s: GPU_BYTES_PER_S,
        max_extra_bytes: 4.0 * (1u64 << 30) as f64,
    };
    /// A GPU with tensor cores (sm_80+): bf16 / f16 Gram-form work runs on `ghost_dot_gram_mma_*`.
    pub const GPU_TENSOR_CORES: MachineRates =
        MachineRates { gram_16bit_flops_per_s: GPU_MMA_GRAM_FLOPS, ..MachineRates::GPU };

    /// The rates of a GPU of compute capability `sm` (10·major + minor), matching the kernels
    /// its launch plans choose (`ghost_dot::gpu::uses_tensor_cores`).
    pub fn gpu(sm: u32) -> MachineRates {
        if sm >= super::gpu::SM_TENSOR_CORES {
            MachineRates::GPU_TENSOR_CORES
        } else {
            MachineRates::GPU
        }
    }

    // ---- end of the GPU rates ----
    /// A multi-core CPU running the fast path (rates only need to be right relative to each other).
    pub const CPU: MachineRates = MachineRates {
        flops_per_s: 1e11,
        gram_16bit_flops_per_s: 1e11,
        bytes_per_s: 2e10,
        max_extra_bytes: 4.0 * (1u64 << 30) as f64,
    };
}

/// Sizes that determine the cost of `out[n, v] = <G_n, Gq_v>`.
#[derive(Debug, Clone, Copy)]
pub struct GhostDotSize {
    pub n: u64,
    pub t: u64,
    pub q: u64,
    pub v: u64,
    pub d_in: u64,
    pub d_out: u64,
    pub has_bias: bool,
    pub elem_bytes: u64,
}

impl GhostDotSize {
    /// Modeled cost of each form.
    pub fn costs(&self, m: &MachineRates) -> Vec<FormCost> {
        let (n, t, q, v) = (self.n as f64, self.t as f64, self.q as f64, self.v as f64);
        let di = (self.d_in + self.has_bias as u64) as f64;
        let d = di + self.d_out as f64;
        let dd = di * self.d_out as f64;
        let se = self.elem_bytes as f64;
        let input_bytes = se * (n * t + q) * d;
        let gram_rate = if self.elem_bytes == 2 { m.gram_16bit_flops_per_s } else { m.flops_per_s };
        let mk = |form, flops: f64, bytes: f64, extra: f64| FormCost {
            form,
            flops,
            bytes,
            extra_bytes: extra,
            est_seconds: (flops / if form == Form::Gram { gram_rate } else { m.flops_per_s }).max(bytes / m.bytes_per_s),
            fits: extra <= m.max_extra_bytes,
        };
        vec![
            mk(Form::Gram, 2.0 * n * t * q * d + 2.0 * n * t * q, input_bytes + 4.0 * n * v, 0.0),
            mk(
                Form::DenseQuery,
                2.0 * q * dd + 2.0 * n * t * dd * v + 2.0 * n * t * di * v,
                input_bytes + 4.0 * v * dd * 2.0 + 4.0 * n * v,
                4.0 * v * dd,
            ),
            mk(
                Form::Materialize,
                2.0 * (n * t + q) * dd + 2.0 * n * v * dd,
                input_bytes + 4.0 * (n + v) * dd * 2.0 + 4.0 * n * v,
                4.0 * (n + v) * dd,
            ),
        ]
    }

    /// Picks the form with the smallest modeled time among those whose scratch fits.
    pub fn choose(&self, req: FormRequest, m: &MachineRates) -> FormChoice {
        let costs = self.costs(m);
        match req {
            FormRequest::Force(form) => FormChoice {
                form,
                forced: true,
                reason: format!("{form} requested explicitly"),
                costs,
            },
            FormRequest::Auto => {
                let best = costs
                    .iter()
                    .filter(|c| c.fits)
                    .min_by(|a, b| a.est_seconds.total_cmp(&b.est_seconds))
                    .copied()
                    .unwrap_or(costs[0]); // Gram needs no scratch: always fits.
                let others: Vec<String> = costs
                    .iter()
                    .filter(|c| c.form != best.form)
                    .map(|c| {
                        format!(
                            "{} {:.3e} s{}",
                            c.form,
                            c.est_seconds,
                            if c.fits { String::new() } else { format!(" (needs {:.0} MB scratch)", c.extra_bytes / 1e6) }
                        )
                    })
                    .collect();
                FormChoice {
                    form: best.form,
                    forced: false,
                    reason: format!(
                        "{} modeled at {:.3e} s ({:.3e} FLOP, {:.3e} B); others: {}",
                        best.form,
                        best.est_seconds,
                        best.flops,
                        best.bytes,
                        others.join(", ")
                    ),
                    costs,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(t: u64, q: u64) -> GhostDotSize {
        GhostDotSize { n: 16, t, q, v: 1, d_in: 768, d_out: 3072, has_bias: false, elem_bytes: 4 }
    }

    #[test]
    fn short_sequences_choose_gram_long_ones_do_not() {
        // Gram costs T·Q·(d_in+d_out) per sample, the dense form T·d_in·d_out: the published
        // rule of thumb puts the switch near 2T² ≈ d_in·d_out.
        assert_eq!(size(32, 32).choose(FormRequest::Auto, &MachineRates::GPU).form, Form::Gram);
        // At T = Q = 4096 the dense-query and materialize forms cost about the same FLOPs (both
        // ∝ T·d_in·d_out); either beats Gram's T·Q·(d_in + d_out) by ~3×.
        assert_ne!(size(4096, 4096).choose(FormRequest::Auto, &MachineRates::GPU).form, Form::Gram);
    }

    #[test]
    fn forced_form_is_reported_as_forced() {
        let c = size(32, 32).choose(FormRequest::Force(Form::Materialize), &MachineRates::CPU);
        assert_eq!(c.form, Form::Materialize);
        assert!(c.forced);
        assert_eq!(c.costs.len(), 3);
    }

    #[test]
    fn tensor_cores_move_the_gram_switch_point_for_16_bit_factors_only() {
        // GPT-2 MLP at T = Q = 1024: the FMA kernels favour a d_in·d_out form, the tensor-core
        // Gram kernel (7× the FMA rate in the model) keeps Gram; f32 factors are unaffected.
        let bf16 = GhostDotSize { elem_bytes: 2, ..size(1024, 1024) };
        assert_ne!(bf16.choose(FormRequest::Auto, &MachineRates::gpu(75)).form, Form::Gram);
        assert_eq!(bf16.choose(FormRequest::Auto, &MachineRates::gpu(90)).form, Form::Gram);
        let f32_size = size(1024, 1024);
        assert_eq!(
            f32_size.choose(FormRequest::Auto, &MachineRates::gpu(90)).form,
            f32_size.choose(FormRequest::Auto, &MachineRates::gpu(75)).form
        );
    }

    #[test]
    fn scratch_limit_excludes_forms() {
        let m = MachineRates { max_extra_bytes: 0.0, ..MachineRates::GPU };
        assert_eq!(size(4096, 4096).choose(FormRequest::Auto, &m).form, Form::Gram);
    }
}

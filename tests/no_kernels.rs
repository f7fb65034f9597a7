//! The path without a CUDA toolchain: the CPU backends work and asking for a GPU context gives
//! a typed error naming the fix. scripts/test.sh runs this binary once more with
//! GHOSTGRAD_NO_CUDA=1 (a build that behaves as if nvcc were absent).

use ghostgrad::{Context, GhostError};

#[test]
fn cuda_context_is_a_typed_error_without_kernels_or_driver() {
    match Context::cuda(0) {
        Ok(_) => panic!("no GPU on this machine, yet a CUDA context was created"),
        Err(GhostError::KernelsNotBuilt) => {
            assert!(!ghostgrad::kernels::KERNELS_BUILT);
            let msg = GhostError::KernelsNotBuilt.to_string();
            assert!(msg.contains("scripts/setup-cuda.sh"), "{msg}");
        }
        Err(GhostError::CudaDriverUnavailable(msg)) => {
            assert!(ghostgrad::kernels::KERNELS_BUILT);
            assert!(msg.contains("libcuda"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

#[test]
fn cpu_backend_works_whatever_the_toolchain() {
    use ghostgrad::{Accumulate, FormRequest, LayerShape, QueryFactors, Segments, TrainFactors};
    let (n, t, d_in, d_out, q) = (2u64, 3u64, 2u64, 2u64, 1u64);
    let a: Vec<f32> = (0..n * t * d_in).map(|i| 0.5 + i as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n * t * d_out).map(|i| 1.0 - i as f32 * 0.125).collect();
    let aq = vec![1.0f32, -2.0];
    let bq = vec![0.5f32, 3.0];
    // <G_n, Gq> = Σ_t (a_t·aq)(b_t·bq), computed by hand from the definition.
    let mut expected = vec![0.0f64; n as usize];
    for s in 0..n as usize {
        for tt in 0..t as usize {
            let r = s * t as usize + tt;
            let ad = a[r * 2] as f64 * 1.0 + a[r * 2 + 1] as f64 * -2.0;
            let bd = b[r * 2] as f64 * 0.5 + b[r * 2 + 1] as f64 * 3.0;
            expected[s] += ad * bd;
        }
    }
    let mut out = vec![f32::NAN; n as usize];
    let ctx = Context::cpu();
    ctx.ghost_dot(
        &LayerShape::new(d_in, d_out),
        &TrainFactors { a: a[..].into(), b: b[..].into(), n, t, mask: None },
        &QueryFactors { aq: aq[..].into(), bq: bq[..].into(), q, segments: Segments::Single, mask: None },
        &mut (&mut out[..]).into(),
        Accumulate::overwrite(),
        FormRequest::Auto,
    )
    .unwrap();
    for (o, e) in out.iter().zip(&expected) {
        assert!(((*o as f64) - e).abs() <= 1e-5 * e.abs().max(1.0), "{o} vs {e}");
    }
}

//! `Context::ghg` and `Context::accumulate_values` on the fast CPU path and on the PTX
//! interpreter (the production launch plans, `ghg_query_*`, `finalize_groups_f32` and
//! `accumulate_values_f64` of kernels/inrun.cu included) against the f64 reference `inrun::reference_ghg`, on seeded
//! ragged shapes, every factor dtype, masks, bias, every form, NaN-poisoned outputs for
//! `beta == 0` and random outputs for `beta != 0`. Tolerance: the derived bound of
//! `common/mod.rs` with the depth grown by the pseudo-layer and group sums.
#![cfg(feature = "interp")]

mod common;

use std::sync::Arc;

use common::*;
use ghostgrad::inrun::reference_ghg;
use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime};
use common::model_dev::up_buf;
use ghostgrad::{
    Accumulate, Context, DType, Form, FormRequest, GhgLayer, GhostError, LayerShape, Tensor, TensorMut, TrainFactors,
};
use rand::Rng;

const FORMS: [FormRequest; 4] = [
    FormRequest::Auto,
    FormRequest::Force(Form::Gram),
    FormRequest::Force(Form::DenseQuery),
    FormRequest::Force(Form::Materialize),
];

/// One model layer's host data: training factors plus the four validation factors.
struct LayerData {
    train: TrainData,
    t_v: usize,
    a_val: Buf,
    b_val: Buf,
    a_dot: Buf,
    b_dot: Buf,
    val_mask: Option<Vec<u8>>,
}

impl LayerData {
    fn random(rng: &mut TestRng, n: usize, dtype: DType, masked: bool) -> Self {
        let shape = LayerShape::new(rng.random_range(1..24), rng.random_range(1..20)).with_bias(rng.random_bool(0.5));
        let t = rng.random_range(1..7);
        let t_v = rng.random_range(1..6);
        let train = TrainData::random(rng, shape, n, t, dtype, masked);
        let (di, dout) = (shape.d_in as usize, shape.d_out as usize);
        LayerData {
            a_val: Buf::random(rng, dtype, t_v * di),
            b_val: Buf::random(rng, dtype, t_v * dout),
            a_dot: Buf::random(rng, dtype, t_v * di),
            b_dot: Buf::random(rng, dtype, t_v * dout),
            val_mask: masked.then(|| random_mask(rng, t_v, 0.3)),
            train,
            t_v,
        }
    }
    fn host(&self) -> GhgLayer<'_> {
        GhgLayer {
            shape: self.train.shape,
            train: self.train.factors(),
            a_val: self.a_val.tensor(),
            b_val: self.b_val.tensor(),
            a_dot: self.a_dot.tensor(),
            b_dot: self.b_dot.tensor(),
            t_v: self.t_v as u64,
            val_mask: self.val_mask.as_deref().map(Tensor::from),
        }
    }
}

/// Device copies of one layer.
struct DevLayer {
    shape: LayerShape,
    n: u64,
    t: u64,
    t_v: u64,
    bufs: [InterpBuffer; 6],
    mask: Option<InterpBuffer>,
    val_mask: Option<InterpBuffer>,
}

impl DevLayer {
    fn new(rt: &InterpRuntime, l: &LayerData) -> Self {
        let u8s = |m: &Option<Vec<u8>>| m.as_ref().map(|m| rt.upload(m, DType::U8).unwrap());
        DevLayer {
            shape: l.train.shape,
            n: l.train.n as u64,
            t: l.train.t as u64,
            t_v: l.t_v as u64,
            bufs: [&l.train.a, &l.train.b, &l.a_val, &l.b_val, &l.a_dot, &l.b_dot].map(|b| up_buf(rt, b)),
            mask: u8s(&l.train.mask),
            val_mask: u8s(&l.val_mask),
        }
    }
    fn layer(&self) -> GhgLayer<'_> {
        let v = |i: usize| Tensor::from(self.bufs[i].view());
        GhgLayer {
            shape: self.shape,
            train: TrainFactors { a: v(0), b: v(1), n: self.n, t: self.t, mask: self.mask.as_ref().map(|m| m.view().into()) },
            a_val: v(2),
            b_val: v(3),
            a_dot: v(4),
            b_dot: v(5),
            t_v: self.t_v,
            val_mask: self.val_mask.as_ref().map(|m| m.view().into()),
        }
    }
}

fn interp() -> Arc<InterpRuntime> {
    Arc::new(InterpRuntime::new().expect("interpreter runtime (kernels must be built)"))
}

/// The reference result, f32-rounded, and its magnitude (for the tolerance).
fn expected(layers: &[GhgLayer<'_>], eta: f32, old: &[f32], acc: Accumulate) -> (Vec<f32>, Vec<f64>) {
    let (f, s) = reference_ghg(layers, false).unwrap();
    let (fa, sa) = reference_ghg(layers, true).unwrap();
    let (w0, w1) = (-(eta as f64), 0.5 * (eta as f64) * (eta as f64));
    let phi: Vec<f64> = (0..f.len()).map(|i| w0 * f[i] + w1 * s[i]).collect();
    let mut want = old.to_vec();
    ghostgrad::cpu::apply_accumulate(&mut want, &phi, acc);
    let mag = (0..f.len()).map(|i| w0.abs() * fa[i] + w1 * sa[i]).collect();
    (want, mag)
}

fn depth(layers: &[LayerData]) -> usize {
    // Each pseudo-layer's own bound, plus the 3L-term group sums and the weighting.
    layers.iter().map(|l| rounding_depth(&l.train.shape, l.train.t, l.t_v)).max().unwrap() + 3 * layers.len() + 4
}

#[test]
fn ghg_matches_reference_on_cpu_and_interpreter() {
    let rt = interp();
    let gpu = Context::with_runtime(rt.clone());
    let cpu = Context::cpu();
    let reference = Context::cpu_reference();
    for case in 0..12u64 {
        let mut rng = rng(0x1d5 + case);
        let dtype = FLOAT_DTYPES[case as usize % 3];
        let n = rng.random_range(1..6);
        let masked = case % 2 == 1;
        let layers: Vec<LayerData> = (0..rng.random_range(1..4)).map(|_| LayerData::random(&mut rng, n, dtype, masked)).collect();
        let host: Vec<GhgLayer<'_>> = layers.iter().map(LayerData::host).collect();
        let eta = 0.05 + rng.random::<f32>();
        let acc = random_acc(&mut rng, case % 3 == 2);
        let old = initial_out(&mut rng, n, acc);
        let (want, mag) = expected(&host, eta, &old, acc);
        let tol = Tol::for_depth(depth(&layers));
        let form = FORMS[case as usize % 4];
        let what = format!("case {case} ({dtype}, n {n}, {} layers, {form:?}, {acc:?})", layers.len());

        let mut got = old.clone();
        reference.ghg(&host, eta, &mut TensorMut::from(got.as_mut_slice()), acc, form).unwrap();
        assert_close(&format!("reference {what}"), &got, &want, &mag, &old, acc, tol);

        let mut got = old.clone();
        let choices = cpu.ghg(&host, eta, &mut TensorMut::from(got.as_mut_slice()), acc, form).unwrap();
        assert_eq!(choices.len(), 3 * layers.len());
        assert_close(&format!("cpu {what}"), &got, &want, &mag, &old, acc, tol);

        let dev: Vec<DevLayer> = layers.iter().map(|l| DevLayer::new(&rt, l)).collect();
        let dl: Vec<GhgLayer<'_>> = dev.iter().map(DevLayer::layer).collect();
        let mut out = rt.upload(&old, DType::F32).unwrap();
        gpu.ghg(&dl, eta, &mut TensorMut::from(out.view_mut()), acc, form).unwrap();
        let got = rt.read_f32(&out).unwrap();
        assert_close(&format!("interpreter {what}"), &got, &want, &mag, &old, acc, tol);
    }
}

#[test]
fn ghg_runs_two_passes_per_layer_after_forming_the_combined_queries() {
    // Per layer: one ghg_query_<dt> (comb = −η·b_val + (η²/2)·ḃ, and a_val widened for bf16 /
    // f16), then the combined pass (a_val, comb) with an f32 query, then (ȧ, b_val) in the factor
    // dtype; one grouped finalize at the end.
    let rt = interp();
    let gpu = Context::with_runtime(rt.clone());
    let mut rng = rng(7);
    for dtype in FLOAT_DTYPES {
        let layers: Vec<LayerData> = (0..3).map(|_| LayerData::random(&mut rng, 3, dtype, false)).collect();
        let dev: Vec<DevLayer> = layers.iter().map(|l| DevLayer::new(&rt, l)).collect();
        let dl: Vec<GhgLayer<'_>> = dev.iter().map(DevLayer::layer).collect();
        let mut out = rt.alloc_f32(3, f32::NAN).unwrap();
        rt.take_records().unwrap();
        let choices =
            gpu.ghg(&dl, 0.3, &mut TensorMut::from(out.view_mut()), Accumulate::overwrite(), FormRequest::Force(Form::Gram)).unwrap();
        assert_eq!(choices.len(), 9, "the API still reports all three pseudo-layers per layer");
        let rec = rt.take_records().unwrap();
        let names: Vec<&str> = rec.iter().map(|r| r.plan.kernel.as_str()).collect();
        let sfx = dtype.kernel_suffix();
        let combined = if dtype == DType::F32 { "ghost_dot_gram_f32".to_string() } else { format!("ghost_dot_gram_qf32_{sfx}") };
        let mut want = vec![format!("ghg_query_{sfx}"); 3];
        want.extend(std::iter::repeat_n(combined, 3));
        // The second pass: bf16 / f16 factors on the interpreter's sm_80 run on tensor cores.
        let plain = if dtype == DType::F32 { "ghost_dot_gram_f32".to_string() } else { format!("ghost_dot_gram_mma_{sfx}") };
        want.extend(std::iter::repeat_n(plain, 3));
        want.push("finalize_groups_f32".into());
        assert_eq!(names, want, "{dtype}");
        assert!(rt.read_f32(&out).unwrap().iter().all(|x| x.is_finite()), "{dtype}: every output written");
    }
}

/// `ghg_query_<dt>` launched directly with `count_b`, `count_a`: comb and (when widening) a_f32.
fn run_ghg_query(rt: &InterpRuntime, dtype: DType, b_val: &Buf, b_dot: &Buf, a_val: &Buf, widen: bool, w: (f32, f32)) -> (Vec<f32>, Vec<f32>) {
    use ghostgrad::runtime::{KernelArg, KernelRuntime, LaunchPlan};
    let (db, dd, da) = (up_buf(rt, b_val), up_buf(rt, b_dot), up_buf(rt, a_val));
    let comb = rt.alloc_f32(b_val.len() as u64, f32::NAN).unwrap();
    let a_f32 = rt.alloc_f32(a_val.len() as u64, f32::NAN).unwrap();
    let blocks = b_val.len().max(if widen { a_val.len() } else { 0 }).div_ceil(256) as u32;
    let plan = LaunchPlan {
        kernel: format!("ghg_query_{}", dtype.kernel_suffix()),
        grid: [blocks, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
        args: vec![
            KernelArg::Ptr(db.ptr),
            KernelArg::Ptr(dd.ptr),
            KernelArg::Ptr(comb.ptr),
            KernelArg::U64(b_val.len() as u64),
            KernelArg::Ptr(da.ptr),
            KernelArg::Ptr(if widen { a_f32.ptr } else { 0 }),
            KernelArg::U64(if widen { a_val.len() as u64 } else { 0 }),
            KernelArg::F32(w.0),
            KernelArg::F32(w.1),
        ],
    };
    rt.launch(&plan).unwrap();
    (rt.read_f32(&comb).unwrap(), rt.read_f32(&a_f32).unwrap())
}

#[test]
fn ghg_query_forms_the_fast_cpu_combination_bit_for_bit() {
    // The fast CPU path forms comb in f64 and rounds once to f32; the kernel must give the same
    // bits (both products are exact in f64, so one fma in f64 is that same single rounding).
    let rt = interp();
    let mut rng = rng(0xc0b);
    for (case, dtype) in FLOAT_DTYPES.into_iter().cycle().take(6).enumerate() {
        // Lengths straddle the 256-thread block; either count may be the larger one.
        let (len_b, len_a) = if case % 2 == 0 { (300, 517) } else { (611, 40) };
        let (b_val, b_dot, a_val) =
            (Buf::random(&mut rng, dtype, len_b), Buf::random(&mut rng, dtype, len_b), Buf::random(&mut rng, dtype, len_a));
        let eta = 0.05 + rng.random::<f32>() * 3.0;
        let w = (-eta, 0.5 * eta * eta);
        let widen = dtype != DType::F32;
        let (comb, a_f32) = run_ghg_query(&rt, dtype, &b_val, &b_dot, &a_val, widen, w);
        let want: Vec<f32> =
            (0..len_b).map(|i| (w.0 as f64 * b_val.get(i) + w.1 as f64 * b_dot.get(i)) as f32).collect();
        assert_bitwise_eq(&format!("comb, case {case} ({dtype})"), &comb, &want);
        if widen {
            let want: Vec<f32> = (0..len_a).map(|i| a_val.get(i) as f32).collect();
            assert_bitwise_eq(&format!("widened a_val, case {case} ({dtype})"), &a_f32, &want);
        } else {
            assert!(a_f32.iter().all(|x| x.is_nan()), "case {case}: a_f32 written without being asked");
        }
    }
}

#[test]
fn accumulate_values_is_the_sequential_f64_sum_on_every_backend() {
    let rt = interp();
    let gpu = Context::with_runtime(rt.clone());
    let mut rng = rng(11);
    // Ids repeat within the batch and span more than one 256-id stripe; N spans > 1 chunk.
    let n = 600;
    let num_ids = 300;
    let values: Vec<f32> = (0..n).map(|_| nonzero_gaussian(&mut rng) * 1e3).collect();
    let ids: Vec<i32> = (0..n).map(|_| rng.random_range(0..num_ids as i32)).collect();
    let init: Vec<f64> = (0..num_ids).map(|i| i as f64 * 0.1).collect();
    let mut want = init.clone();
    for (&x, &id) in values.iter().zip(&ids) {
        want[id as usize] += x as f64;
    }
    for ctx in [Context::cpu_reference(), Context::cpu()] {
        let mut phi = init.clone();
        ctx.accumulate_values(&Tensor::from(&values[..]), &Tensor::from(&ids[..]), &mut TensorMut::from(phi.as_mut_slice()))
            .unwrap();
        assert!(phi.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}", ctx.describe());
    }
    let (dv, di) = (rt.upload(&values, DType::F32).unwrap(), rt.upload(&ids, DType::I32).unwrap());
    let mut dphi = rt.upload(&init, DType::F64).unwrap();
    gpu.accumulate_values(&dv.view().into(), &di.view().into(), &mut TensorMut::from(dphi.view_mut())).unwrap();
    let got = rt.read_f64(&dphi).unwrap();
    let bad: Vec<usize> = (0..num_ids).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
    assert!(bad.is_empty(), "interpreter: ids {bad:?} differ (first: {} vs {})", got[bad[0]], want[bad[0]]);
}

#[test]
fn accumulate_values_rejects_out_of_range_ids_on_the_host_and_skips_them_on_a_device() {
    let values = [1.0f32, 2.0, 4.0];
    let mut phi = vec![0.0f64; 2];
    for bad in [[0, 2, 1], [0, -1, 1]] {
        let e = Context::cpu()
            .accumulate_values(&Tensor::from(&values[..]), &Tensor::from(&bad[..]), &mut TensorMut::from(phi.as_mut_slice()))
            .unwrap_err();
        assert!(matches!(e, GhostError::InvalidArgument { what: "ids", .. }), "{e}");
        assert_eq!(phi, [0.0, 0.0], "nothing written on error");
    }
    let mut f32_out = vec![0.0f32; 2];
    let e = Context::cpu()
        .accumulate_values(&Tensor::from(&values[..]), &Tensor::from(&[0i32, 1, 1][..]), &mut TensorMut::from(f32_out.as_mut_slice()))
        .unwrap_err();
    assert!(matches!(e, GhostError::UnsupportedDtype { what: "phi", .. }), "{e}");

    let rt = interp();
    let gpu = Context::with_runtime(rt.clone());
    let (dv, di) = (rt.upload(&values, DType::F32).unwrap(), rt.upload(&[0i32, 2, -1], DType::I32).unwrap());
    let mut dphi = rt.upload(&[0.0f64; 2], DType::F64).unwrap();
    gpu.accumulate_values(&dv.view().into(), &di.view().into(), &mut TensorMut::from(dphi.view_mut())).unwrap();
    assert_eq!(rt.read_f64(&dphi).unwrap(), [1.0, 0.0]);
}

#[test]
fn ghg_validates_its_arguments() {
    let mut rng = rng(3);
    let l = LayerData::random(&mut rng, 2, DType::F32, false);
    let mut out = vec![0.0f32; 2];
    let ctx = Context::cpu();
    let e = ctx.ghg(&[], 0.1, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto).unwrap_err();
    assert!(matches!(e, GhostError::ZeroSize { what: "layers" }), "{e}");
    let e = ctx.ghg(&[l.host()], f32::NAN, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto).unwrap_err();
    assert!(matches!(e, GhostError::InvalidArgument { what: "eta", .. }), "{e}");
    let mut bad = l.host();
    bad.t_v += 1;
    let e = ctx.ghg(&[bad], 0.1, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto).unwrap_err();
    assert!(matches!(e, GhostError::LengthMismatch { .. }), "{e}");
    let mut short = vec![0.0f32; 1];
    let e = ctx.ghg(&[l.host()], 0.1, &mut TensorMut::from(short.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto).unwrap_err();
    assert!(matches!(e, GhostError::LengthMismatch { what: "out", .. }), "{e}");
}

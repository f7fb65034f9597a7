//! In-Run Data Shapley inside a real training run, on a data set that ships inside a crate, with
//! 10 % of the training labels flipped: train a one-hidden-layer MLP by minibatch SGD, value
//! every training sample at every step with `Context::ghg` (first + second order, MATH.md §2),
//! accumulate in float64 with `Context::accumulate_values`, then rank: the flipped samples
//! should have the lowest values. Reports the ROC AUC of that ranking (first order and first +
//! second order side by side), the top and bottom samples, the wall-clock overhead against the
//! same training without attribution (measured in the same run), and writes an SVG plot.
//!
//! Data sets: `digits` (default; UCI optical digits, 1797 × 64, 10 classes, shipped in
//! smartcore) and `wine` (red-wine quality from linfa-datasets, 1599 × 11, quality ≥ 6 as the
//! class: a noisy label, many clean samples look mislabeled, so the AUC is lower there).
//!
//! Value sign: ghg returns φ = the sample's share of the CHANGE of the validation loss (negative
//! = helpful); the reported value is −φ (loss reduction), so lowest value = most suspicious.
//!
//! Validation minibatches: every step uses a fresh random minibatch of `--val-batch` validation
//! samples (scaled by 1/size). φ is linear in the validation loss — both the gradient and the
//! Hessian term — so this is an unbiased estimate of the value against the whole validation
//! set, and it keeps the per-step validation pass (forward + JVP) small next to the training
//! step. `--val-batch 0` uses the whole validation set every step.
//!
//! Backends (`--device`): `cpu` (default when no GPU), `cuda` (device buffers through cudarc,
//! kernels on a caller-owned stream; picked by `auto` when a driver and a device are present),
//! `interp` (the same device code path on the PTX interpreter: slow, use a few steps, e.g.
//! `--epochs 1 --max-steps 3`).
//!
//! Usage: cargo run --release --example inrun_shapley_demo -- [--dataset digits|wine]
//!        [--seed N] [--epochs E] [--lr LR] [--batch B] [--hidden H] [--val M] [--val-batch V]
//!        [--device auto|cpu|cuda|interp] [--max-steps S] [--plot PATH]

#[path = "../tests/common/mlp.rs"]
mod mlp;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime};
use ghostgrad::{
    Accumulate, Context, DType, DeviceSlice, DeviceSliceMut, FormRequest, GhgLayer, GhostDotLayer, LayerShape,
    QueryFactors, Segments, Tensor, TensorMut, TrainFactors,
};
use mlp::{Factors, Mlp};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let a: Vec<String> = std::env::args().collect();
    match a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| panic!("{name}: cannot parse `{s}`")),
    }
}

/// Where the factors live for ghostgrad: host memory, the PTX interpreter's memory, or a CUDA
/// device (cudarc allocations on the stream ghostgrad launches on).
enum Device {
    Cpu,
    Interp(Arc<InterpRuntime>),
    Cuda(Arc<CudaStream>),
}

enum Buf {
    Host(Vec<f32>),
    Interp(InterpBuffer),
    Cuda(CudaSlice<f32>),
}

enum Phi {
    Host(Vec<f64>),
    Interp(InterpBuffer),
    Cuda(CudaSlice<f64>),
}

impl Device {
    fn upload(&self, x: &[f64]) -> ghostgrad::Result<Buf> {
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        Ok(match self {
            Device::Cpu => Buf::Host(v),
            Device::Interp(rt) => Buf::Interp(rt.upload(&v, DType::F32)?),
            Device::Cuda(s) => Buf::Cuda(s.clone_htod(&v).map_err(cuda_err("cuMemcpyHtoD"))?),
        })
    }

    fn upload_i32(&self, x: &[i32]) -> ghostgrad::Result<(Vec<i32>, Option<IdsBuf>)> {
        Ok(match self {
            Device::Cpu => (x.to_vec(), None),
            Device::Interp(rt) => (x.to_vec(), Some(IdsBuf::Interp(rt.upload(x, DType::I32)?))),
            Device::Cuda(s) => (x.to_vec(), Some(IdsBuf::Cuda(s.clone_htod(x).map_err(cuda_err("cuMemcpyHtoD"))?))),
        })
    }

    fn zeros_f32(&self, n: usize) -> ghostgrad::Result<Buf> {
        self.upload(&vec![0.0; n])
    }

    fn phi(&self, n: usize) -> ghostgrad::Result<Phi> {
        Ok(match self {
            Device::Cpu => Phi::Host(vec![0.0; n]),
            Device::Interp(rt) => Phi::Interp(rt.upload(&vec![0.0f64; n], DType::F64)?),
            Device::Cuda(s) => Phi::Cuda(s.alloc_zeros::<f64>(n).map_err(cuda_err("cuMemAlloc"))?),
        })
    }

    fn read_phi(&self, p: &Phi) -> ghostgrad::Result<Vec<f64>> {
        Ok(match (self, p) {
            (_, Phi::Host(v)) => v.clone(),
            (Device::Interp(rt), Phi::Interp(b)) => rt.read_f64(b)?,
            (Device::Cuda(s), Phi::Cuda(b)) => s.clone_dtoh(b).map_err(cuda_err("cuMemcpyDtoH"))?,
            _ => unreachable!("phi lives on the demo's device"),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Interp(_) => "interp",
            Device::Cuda(_) => "cuda",
        }
    }
}

enum IdsBuf {
    Interp(InterpBuffer),
    Cuda(CudaSlice<i32>),
}

fn cuda_err(call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> ghostgrad::GhostError {
    move |e| ghostgrad::GhostError::Cuda { call, message: format!("{e:?}") }
}

/// A ghostgrad view of a cudarc allocation. The raw pointer is taken on `stream`, the stream
/// ghostgrad launches on, so the allocation and the kernels are ordered.
fn cuda_view<'a, T: cudarc::driver::DeviceRepr>(x: &'a CudaSlice<T>, stream: Option<&Arc<CudaStream>>, dtype: DType) -> DeviceSlice<'a> {
    let (ptr, _sync) = x.device_ptr(stream.expect("cuda stream"));
    // SAFETY: `x` is a live allocation of `x.len()` elements of `dtype` on the device of
    // `stream`, and outlives the returned view (lifetime 'a).
    unsafe { DeviceSlice::from_raw_parts(ptr, x.len() as u64, dtype) }
}

/// As [`cuda_view`], writable; `&mut` makes the view exclusive.
fn cuda_view_mut<'a, T: cudarc::driver::DeviceRepr>(x: &'a mut CudaSlice<T>, stream: Option<&Arc<CudaStream>>, dtype: DType) -> DeviceSliceMut<'a> {
    let len = x.len() as u64;
    let (ptr, _sync) = x.device_ptr(stream.expect("cuda stream"));
    // SAFETY: as in `cuda_view`.
    unsafe { DeviceSliceMut::from_raw_parts(ptr, len, dtype) }
}

/// A ghostgrad tensor over a buffer.
fn tensor<'a>(b: &'a Buf, stream: Option<&Arc<CudaStream>>) -> Tensor<'a> {
    match b {
        Buf::Host(v) => Tensor::from(&v[..]),
        Buf::Interp(x) => x.view().into(),
        Buf::Cuda(x) => Tensor::Device(cuda_view(x, stream, DType::F32)),
    }
}

fn tensor_i32<'a>(host: &'a [i32], dev: Option<&'a IdsBuf>, stream: Option<&Arc<CudaStream>>) -> Tensor<'a> {
    match dev {
        None => Tensor::from(host),
        Some(IdsBuf::Interp(x)) => x.view().into(),
        Some(IdsBuf::Cuda(x)) => Tensor::Device(cuda_view(x, stream, DType::I32)),
    }
}

fn tensor_mut<'a>(b: &'a mut Buf, stream: Option<&Arc<CudaStream>>) -> TensorMut<'a> {
    match b {
        Buf::Host(v) => TensorMut::from(v.as_mut_slice()),
        Buf::Interp(x) => x.view_mut().into(),
        Buf::Cuda(x) => TensorMut::Device(cuda_view_mut(x, stream, DType::F32)),
    }
}

fn phi_mut<'a>(p: &'a mut Phi, stream: Option<&Arc<CudaStream>>) -> TensorMut<'a> {
    match p {
        Phi::Host(v) => TensorMut::HostF64(v.as_mut_slice()),
        Phi::Interp(x) => x.view_mut().into(),
        Phi::Cuda(x) => TensorMut::Device(cuda_view_mut(x, stream, DType::F64)),
    }
}

/// Picks the device: `cuda` needs a driver and a device (checked through ghostgrad, which
/// refuses cleanly when libcuda cannot be loaded), `auto` falls back to the CPU.
fn open_device(which: &str) -> ghostgrad::Result<(Device, Context, String)> {
    let try_cuda = || -> ghostgrad::Result<(Device, Context, String)> {
        ghostgrad::runtime::cuda::driver_available()?;
        let cu = cudarc::driver::CudaContext::new(0).map_err(cuda_err("cuCtx (primary context)"))?;
        let stream = cu.new_stream().map_err(cuda_err("cuStreamCreate"))?;
        // SAFETY: the stream stays alive in `Device::Cuda` for the whole run.
        let ctx = unsafe { Context::cuda_on_stream(0, stream.cu_stream() as *mut std::ffi::c_void)? };
        Ok((Device::Cuda(stream), ctx, String::new()))
    };
    match which {
        "cpu" => Ok((Device::Cpu, Context::cpu(), String::new())),
        "interp" => {
            let rt = Arc::new(InterpRuntime::new()?);
            Ok((Device::Interp(rt.clone()), Context::with_runtime(rt), String::new()))
        }
        "cuda" => try_cuda(),
        "auto" => try_cuda().or_else(|e| Ok((Device::Cpu, Context::cpu(), format!("no CUDA device used ({e}); ")))),
        other => Err(ghostgrad::GhostError::InvalidArgument { what: "--device", reason: format!("unknown device `{other}`") }),
    }
}

fn auc(score: &[f64], positive: &[bool]) -> f64 {
    // P(score of a positive < score of a negative), ties count ½: low value = suspicious.
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let (mut below_neg, mut num) = (0.0f64, 0.0f64);
    let (np, nn) = (positive.iter().filter(|&&p| p).count() as f64, positive.iter().filter(|&&p| !p).count() as f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && score[idx[j]] == score[idx[i]] {
            j += 1;
        }
        let (p, n) = idx[i..j].iter().fold((0.0, 0.0), |(p, n), &k| if positive[k] { (p + 1.0, n) } else { (p, n + 1.0) });
        // Positives in this tie group rank above every later negative and tie with these.
        num += p * (nn - below_neg - n) + 0.5 * p * n;
        below_neg += n;
        i = j;
    }
    num / (np * nn)
}

struct Data {
    name: &'static str,
    d: usize,
    c: usize,
    x: Vec<f64>,
    y: Vec<usize>,
}

fn load(name: &str) -> Data {
    let (mut data, label) = match name {
        "digits" => {
            let ds = smartcore::dataset::digits::load_dataset();
            let y = ds.target.iter().map(|&v| v as usize).collect();
            let d = Data { name: "digits", d: ds.num_features, c: 10, x: ds.data.iter().map(|&v| v as f64).collect(), y };
            (d, "digit")
        }
        "wine" => {
            let ds = linfa_datasets::winequality();
            let (n, d) = (ds.records.nrows(), ds.records.ncols());
            let x = (0..n).flat_map(|i| (0..d).map(move |j| (i, j))).map(|(i, j)| ds.records[[i, j]]).collect();
            let y = (0..n).map(|i| (ds.targets[i] >= 6) as usize).collect();
            (Data { name: "winequality-red", d, c: 2, x, y }, "quality >= 6")
        }
        other => panic!("--dataset: unknown data set `{other}` (digits | wine)"),
    };
    let (n, d) = (data.y.len(), data.d);
    for j in 0..d {
        let m = (0..n).map(|i| data.x[i * d + j]).sum::<f64>() / n as f64;
        let s = ((0..n).map(|i| (data.x[i * d + j] - m).powi(2)).sum::<f64>() / n as f64).sqrt();
        let s = if s > 1e-12 { s } else { 1.0 }; // constant pixels of digits
        for i in 0..n {
            data.x[i * d + j] = (data.x[i * d + j] - m) / s;
        }
    }
    eprintln!("{}: {n} samples, {d} features, {} classes (label: {label})", data.name, data.c);
    data
}

fn main() -> ghostgrad::Result<()> {
    let dataset: String = arg("--dataset", "digits".to_string());
    let seed: u64 = arg("--seed", 0);
    let epochs: usize = arg("--epochs", 30);
    let lr: f64 = arg("--lr", 2.0);
    let batch: usize = arg("--batch", 256);
    let h: usize = arg("--hidden", 128);
    let n_val: usize = arg("--val", 300);
    let val_batch_arg: usize = arg("--val-batch", 16);
    let repeats: usize = arg("--repeats", 3).max(1);
    let device_arg: String = arg("--device", "auto".to_string());
    let max_steps: usize = arg("--max-steps", usize::MAX);
    let plot: String = arg("--plot", "target/inrun_values.svg".to_string());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let data = load(&dataset);
    let (d, c) = (data.d, data.c);
    let mut order: Vec<usize> = (0..data.y.len()).collect();
    order.shuffle(&mut rng);
    let (val_idx, train_idx) = order.split_at(n_val);
    let n = train_idx.len();
    let xt: Vec<f64> = train_idx.iter().flat_map(|&i| data.x[i * d..(i + 1) * d].to_vec()).collect();
    let xv: Vec<f64> = val_idx.iter().flat_map(|&i| data.x[i * d..(i + 1) * d].to_vec()).collect();
    let yv: Vec<usize> = val_idx.iter().map(|&i| data.y[i]).collect();
    let mut yt: Vec<usize> = train_idx.iter().map(|&i| data.y[i]).collect();
    let mut flipped = vec![false; n];
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    for &i in &perm[..n / 10] {
        flipped[i] = true;
        yt[i] = (yt[i] + 1 + rng.random_range(0..c - 1)) % c; // a different class, uniformly
    }
    let val_batch = if val_batch_arg == 0 { n_val } else { val_batch_arg.min(n_val) };
    eprintln!("{n} train ({} labels flipped), {n_val} validation (a random minibatch of {val_batch} per step)", n / 10);

    let init = |rng: &mut ChaCha8Rng| {
        let mut m = Mlp { d, h, c, t: 1, w: vec![0.0; h * d + h + c * h + c] };
        for j in 0..h * d {
            m.w[j] = (rng.random::<f64>() * 2.0 - 1.0) / (d as f64).sqrt();
        }
        for j in 0..c * h {
            m.w[h * d + h + j] = (rng.random::<f64>() * 2.0 - 1.0) / (h as f64).sqrt();
        }
        m
    };
    let model0 = init(&mut rng);

    // Startup check: the validation JVP (the second-order term's input) against central finite
    // differences of the validation gradient.
    {
        let m = &model0;
        let vs = 1.0 / n_val as f64;
        let f = m.factors(&m.w, &xt[..batch.min(n) * d], &yt[..batch.min(n)], 1.0);
        let v = m.flat_grad(&f, 0..batch.min(n));
        let (fv, dot) = m.factors_jvp(&m.w, &xv, &yv, vs, Some(&v));
        let mixed = Factors { a1: fv.a1.clone(), b1: dot.b1.clone(), a2: fv.a2.clone(), b2: dot.b2.clone() };
        let mut hv = m.flat_grad(&mixed, 0..n_val);
        let mixed = Factors { a1: dot.a1.clone(), b1: fv.b1.clone(), a2: dot.a2.clone(), b2: fv.b2.clone() };
        let second = m.flat_grad(&mixed, 0..n_val);
        let (o1, o2, o3) = (h * d, h * d + h, h * d + h + c * h);
        for (i, s) in second.iter().enumerate() {
            let is_bias = (o1..o2).contains(&i) || i >= o3;
            if !is_bias {
                hv[i] += s;
            }
        }
        let eps = 1e-5;
        let wp: Vec<f64> = m.w.iter().zip(&v).map(|(w, v)| w + eps * v).collect();
        let wm: Vec<f64> = m.w.iter().zip(&v).map(|(w, v)| w - eps * v).collect();
        let gp = m.flat_grad(&m.factors(&wp, &xv, &yv, vs), 0..n_val);
        let gm = m.flat_grad(&m.factors(&wm, &xv, &yv, vs), 0..n_val);
        let fd: Vec<f64> = gp.iter().zip(&gm).map(|(p, q)| (p - q) / (2.0 * eps)).collect();
        let err = hv.iter().zip(&fd).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let norm = fd.iter().map(|a| a.abs()).fold(0.0, f64::max);
        eprintln!("JVP check: max |H v (factored JVP) - H v (central FD)| = {err:.2e} (max |H v| = {norm:.2e})");
        assert!(err <= 1e-5 * norm.max(1e-12), "the validation JVP disagrees with finite differences");
    }

    let (dev, ctx, note) = open_device(&device_arg)?;
    let stream = match &dev {
        Device::Cuda(s) => Some(s.clone()),
        _ => None,
    };
    let st = stream.as_ref();
    let eta = (lr / batch as f64) as f32; // per-sample losses summed: w' = w - eta Σ_batch ∇ℓ_j
    let steps_per_epoch = n.div_ceil(batch);
    let total_steps = (epochs * steps_per_epoch).min(max_steps);

    struct RunOut {
        model: Mlp,
        phi: Vec<f64>,
        phi1: Vec<f64>,
        secs: f64,
        val_secs: f64,
        ghost_secs: f64,
        compare_secs: f64,
    }
    let train = |attribute: bool, rng: &mut ChaCha8Rng| -> ghostgrad::Result<RunOut> {
        let mut m = model0.clone();
        let mut vrng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0f_1a1);
        let mut phi = dev.phi(n)?;
        let mut phi1 = dev.phi(n)?;
        let (mut val_secs, mut ghost_secs, mut compare_secs) = (0.0, 0.0, 0.0);
        let mut vidx: Vec<usize> = (0..n_val).collect();
        let start = Instant::now();
        let mut done = 0;
        'outer: for _epoch in 0..epochs {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(rng);
            for chunk in idx.chunks(batch) {
                if done == total_steps {
                    break 'outer;
                }
                let xb: Vec<f64> = chunk.iter().flat_map(|&i| xt[i * d..(i + 1) * d].to_vec()).collect();
                let yb: Vec<usize> = chunk.iter().map(|&i| yt[i]).collect();
                let f = m.factors(&m.w, &xb, &yb, 1.0);
                let gsum = m.flat_grad(&f, 0..chunk.len());
                if attribute {
                    let t0 = Instant::now();
                    // This step's validation minibatch, its factors and their JVP along the
                    // batch gradient v = gsum (what a framework gets from one forward-over-reverse
                    // pass of the validation loss).
                    let (xvb, yvb) = if val_batch == n_val {
                        (xv.clone(), yv.clone())
                    } else {
                        let (pick, _) = vidx.partial_shuffle(&mut vrng, val_batch);
                        (pick.iter().flat_map(|&i| xv[i * d..(i + 1) * d].to_vec()).collect(), pick.iter().map(|&i| yv[i]).collect())
                    };
                    let (fv, dv) = m.factors_jvp(&m.w, &xvb, &yvb, 1.0 / val_batch as f64, Some(&gsum));
                    let tv = Instant::now();
                    val_secs += (tv - t0).as_secs_f64();
                    let nb = chunk.len() as u64;
                    let up = |x: &[f64]| dev.upload(x);
                    let (a1, b1, a2, b2) = (up(&f.a1)?, up(&f.b1)?, up(&f.a2)?, up(&f.b2)?);
                    let (va1, vb1, va2, vb2) = (up(&fv.a1)?, up(&fv.b1)?, up(&fv.a2)?, up(&fv.b2)?);
                    let (da1, db1, da2, db2) = (up(&dv.a1)?, up(&dv.b1)?, up(&dv.a2)?, up(&dv.b2)?);
                    let ids: Vec<i32> = chunk.iter().map(|&i| i as i32).collect();
                    let (ids_host, ids_dev) = dev.upload_i32(&ids)?;
                    let mut out = dev.zeros_f32(chunk.len())?;
                    let l1 = LayerShape::new(d as u64, h as u64).with_bias(true);
                    let l2 = LayerShape::new(h as u64, c as u64).with_bias(true);
                    let layers = [
                        GhgLayer {
                            shape: l1,
                            train: TrainFactors { a: tensor(&a1, st), b: tensor(&b1, st), n: nb, t: 1, mask: None },
                            a_val: tensor(&va1, st),
                            b_val: tensor(&vb1, st),
                            a_dot: tensor(&da1, st),
                            b_dot: tensor(&db1, st),
                            t_v: val_batch as u64,
                            val_mask: None,
                        },
                        GhgLayer {
                            shape: l2,
                            train: TrainFactors { a: tensor(&a2, st), b: tensor(&b2, st), n: nb, t: 1, mask: None },
                            a_val: tensor(&va2, st),
                            b_val: tensor(&vb2, st),
                            a_dot: tensor(&da2, st),
                            b_dot: tensor(&db2, st),
                            t_v: val_batch as u64,
                            val_mask: None,
                        },
                    ];
                    ctx.ghg(&layers, eta, &mut tensor_mut(&mut out, st), Accumulate::overwrite(), FormRequest::Auto)?;
                    let idt = tensor_i32(&ids_host, ids_dev.as_ref(), st);
                    ctx.accumulate_values(&tensor(&out, st), &idt, &mut phi_mut(&mut phi, st))?;
                    let t1 = Instant::now();
                    ghost_secs += (t1 - tv).as_secs_f64();
                    // First order alone, for the side-by-side comparison only (timed apart and
                    // excluded from the overhead): -eta Σ_l <G_n, g_val>.
                    let gl: Vec<GhostDotLayer<'_>> = layers
                        .iter()
                        .map(|l| GhostDotLayer {
                            shape: l.shape,
                            train: l.train,
                            query: QueryFactors { aq: l.a_val, bq: l.b_val, q: l.t_v, segments: Segments::Single, mask: None },
                            form: FormRequest::Auto,
                        })
                        .collect();
                    ctx.ghost_dot_layers(&gl, &mut tensor_mut(&mut out, st), Accumulate { scale: -eta, beta: 0.0 })?;
                    ctx.accumulate_values(&tensor(&out, st), &idt, &mut phi_mut(&mut phi1, st))?;
                    if let Some(s) = st {
                        // Buffers of this step are freed at the end of the scope: make sure the
                        // kernels that read them are done (cudarc frees stream-ordered, but the
                        // timing below should include the device work).
                        s.synchronize().map_err(cuda_err("cuStreamSynchronize"))?;
                    }
                    compare_secs += t1.elapsed().as_secs_f64();
                }
                for (w, g) in m.w.iter_mut().zip(&gsum) {
                    *w -= eta as f64 * g;
                }
                done += 1;
                if done % 10 == 0 || done == total_steps {
                    let width = 40;
                    let fill = done * width / total_steps;
                    eprint!(
                        "\r{} [{}{}] {done}/{total_steps} steps",
                        if attribute { "attributed" } else { "plain     " },
                        "#".repeat(fill),
                        " ".repeat(width - fill)
                    );
                    let _ = std::io::stderr().flush();
                }
            }
        }
        eprintln!();
        let secs = start.elapsed().as_secs_f64();
        Ok(RunOut { model: m, phi: dev.read_phi(&phi)?, phi1: dev.read_phi(&phi1)?, secs, val_secs, ghost_secs, compare_secs })
    };
    // Plain and attributed training see the same batches (the same shuffling stream). They run
    // alternately `repeats` times and the fastest of each counts, so the ratio is not a warm-up
    // or a noisy-neighbour artifact; every attributed repeat must give bitwise-identical values.
    let mut plain_secs = f64::INFINITY;
    let mut best: Option<RunOut> = None;
    for r in 0..repeats {
        plain_secs = plain_secs.min(train(false, &mut rng.clone())?.secs);
        let run = train(true, &mut rng.clone())?;
        if let Some(b) = &best {
            let same = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same(&b.phi, &run.phi) && same(&b.phi1, &run.phi1), "repeat {r}: values differ between identical runs");
        }
        if best.as_ref().map_or(true, |b| run.secs - run.compare_secs < b.secs - b.compare_secs) {
            best = Some(run);
        }
    }
    let run = best.expect("at least one repeat");

    let model = &run.model;
    let accuracy = |xs: &[f64], ys: &[usize]| {
        let ok = ys.iter().enumerate().filter(|(i, &y)| {
            let p = model.factors(&model.w, &xs[i * d..(i + 1) * d], &[0], 1.0).b2; // p - e_0
            let mut best = 0;
            for k in 1..c {
                let pk = |k: usize| p[k] + (k == 0) as u8 as f64;
                if pk(k) > pk(best) {
                    best = k;
                }
            }
            best == y
        });
        ok.count() as f64 / ys.len() as f64
    };
    let value: Vec<f64> = run.phi.iter().map(|p| -p).collect();
    let value1: Vec<f64> = run.phi1.iter().map(|p| -p).collect();
    let (auc1, auc2) = (auc(&value1, &flipped), auc(&value, &flipped));
    println!("backend: {note}{} ({})", ctx.describe(), dev.name());
    println!(
        "{}: seed {seed}, {total_steps} steps ({epochs} epochs), lr {lr}, batch {batch}, hidden {h}, eta (per-sample) {eta:e}, validation {n_val} ({val_batch} per step)",
        data.name
    );
    println!("validation accuracy {:.3}, train accuracy on (noisy) labels {:.3}", accuracy(&xv, &yv), accuracy(&xt, &yt));
    println!("ROC AUC for finding the flipped labels (lowest value first): first order {auc1:.4}, first + second order {auc2:.4}");
    let mut rank: Vec<usize> = (0..n).collect();
    rank.sort_by(|&a, &b| value[a].total_cmp(&value[b]));
    let caught = rank[..n / 10].iter().filter(|&&i| flipped[i]).count();
    println!("flipped among the lowest 10 %: {caught} of {}", n / 10);
    println!("lowest 5 (most suspicious):");
    for &i in &rank[..5] {
        println!("  sample {i:4}  value {:+.4e}  first-order {:+.4e}  flipped {}", value[i], value1[i], flipped[i]);
    }
    println!("highest 5:");
    for &i in rank.iter().rev().take(5) {
        println!("  sample {i:4}  value {:+.4e}  first-order {:+.4e}  flipped {}", value[i], value1[i], flipped[i]);
    }
    let attributed = run.secs - run.compare_secs;
    println!(
        "overhead: {:.2}x wall clock ({attributed:.3} s attributed training vs {plain_secs:.3} s plain, fastest of {repeats} alternating runs, values bitwise identical across runs)",
        attributed / plain_secs
    );
    println!(
        "  of which: validation minibatch forward + JVP (the framework's part) {:.3} s = {:.2}x plain, ghostgrad (uploads, ghg, accumulate_values) {:.3} s = {:.2}x plain; the first-order-only comparison ({:.3} s) is excluded",
        run.val_secs,
        run.val_secs / plain_secs,
        run.ghost_secs,
        run.ghost_secs / plain_secs,
        run.compare_secs
    );

    // Plot: value by sample index, flipped in red.
    let (wd, ht) = (900.0, 400.0);
    let (lo, hi) = value.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{wd}\" height=\"{ht}\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">In-Run Data Shapley value by training sample, {} (red = flipped label; AUC {auc2:.3})</text>\n",
        data.name
    );
    for i in 0..n {
        let px = 20.0 + (wd - 40.0) * i as f64 / n as f64;
        let py = ht - 20.0 - (ht - 60.0) * (value[i] - lo) / (hi - lo).max(1e-30);
        let col = if flipped[i] { "red" } else { "steelblue" };
        svg += &format!("<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"2\" fill=\"{col}\"/>\n");
    }
    svg += "</svg>\n";
    if let Some(dir) = std::path::Path::new(&plot).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&plot, svg).expect("write plot");
    println!("plot: {plot}");
    Ok(())
}

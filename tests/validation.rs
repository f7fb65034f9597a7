//! Every argument check of the public API, through both CPU contexts: each invalid call returns
//! the exact `GhostError` variant with the fields naming what was wrong (never a panic, never a
//! silent result).

use ghostgrad::{
    Accumulate, Context, DType, DeviceSlice, DeviceSliceMut, Form, FormChoice, FormRequest, GhostDotLayer, GhostError,
    LayerShape, QueryFactors, Result, Segments, Tensor, TensorMut, TrainFactors,
};
use half::bf16;

const N: u64 = 2;
const T: u64 = 3;
const DI: u64 = 4;
const DO: u64 = 5;
const Q: u64 = 6;
/// `Segments::Uniform(SEG)`: V = 3.
const SEG: u64 = 2;
const V: u64 = Q / SEG;

fn contexts() -> [Context; 2] {
    [Context::cpu(), Context::cpu_reference()]
}

fn shape() -> LayerShape {
    LayerShape::new(DI, DO)
}

/// A valid problem; each test breaks exactly one thing.
struct Fx {
    a: Vec<f32>,
    b: Vec<f32>,
    mask: Vec<u8>,
    aq: Vec<f32>,
    bq: Vec<f32>,
    qmask: Vec<u8>,
    a16: Vec<bf16>,
    m: Vec<f32>,
    m_bias: Vec<f32>,
    w: Vec<f32>,
}

fn fx() -> Fx {
    Fx {
        a: vec![1.0; (N * T * DI) as usize],
        b: vec![1.0; (N * T * DO) as usize],
        mask: vec![1; (N * T) as usize],
        aq: vec![1.0; (Q * DI) as usize],
        bq: vec![1.0; (Q * DO) as usize],
        qmask: vec![1; Q as usize],
        a16: vec![bf16::ONE; (N * T * DI) as usize],
        m: vec![1.0; (DO * DI) as usize],
        m_bias: vec![1.0; DO as usize],
        w: vec![1.0; Q as usize],
    }
}

impl Fx {
    fn train(&self) -> TrainFactors<'_> {
        TrainFactors { a: self.a.as_slice().into(), b: self.b.as_slice().into(), n: N, t: T, mask: Some(self.mask.as_slice().into()) }
    }
    fn query(&self) -> QueryFactors<'_> {
        QueryFactors {
            aq: self.aq.as_slice().into(),
            bq: self.bq.as_slice().into(),
            q: Q,
            segments: Segments::Uniform(SEG),
            mask: Some(self.qmask.as_slice().into()),
        }
    }
}

fn dot(ctx: &Context, s: LayerShape, tr: TrainFactors<'_>, q: QueryFactors<'_>, out_len: u64) -> Result<FormChoice> {
    let mut out = vec![0.0f32; out_len as usize];
    ctx.ghost_dot(&s, &tr, &q, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto)
}

/// Asserts the same error from both CPU contexts.
#[track_caller]
fn expect_err(what: &str, expected: GhostError, f: impl Fn(&Context) -> Result<()>) {
    for ctx in contexts() {
        match f(&ctx) {
            Err(e) => assert_eq!(e, expected, "{what} on {}", ctx.describe()),
            Ok(()) => panic!("{what} on {}: expected {expected:?}, got Ok", ctx.describe()),
        }
    }
}

fn dot_err(what: &str, expected: GhostError, f: impl Fn(&Fx) -> (LayerShape, TrainFactors<'_>, QueryFactors<'_>, u64)) {
    let x = fx();
    expect_err(what, expected, |ctx| {
        let (s, tr, q, len) = f(&x);
        dot(ctx, s, tr, q, len).map(|_| ())
    });
}

fn len_mismatch(what: &'static str, expected: u64, got: u64) -> GhostError {
    GhostError::LengthMismatch { what, expected, got }
}

fn overflow(what: &str, limit: &'static str) -> GhostError {
    GhostError::ShapeOverflow { what: what.to_string(), limit }
}

const KERNEL_RANGE: &str = "2^31 - 1 (kernel index range)";

#[test]
fn the_valid_fixture_is_accepted() {
    let x = fx();
    for ctx in contexts() {
        dot(&ctx, shape(), x.train(), x.query(), N * V).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Zero sizes

#[test]
fn zero_sizes_are_rejected_by_name() {
    let zero = |what| GhostError::ZeroSize { what };
    dot_err("d_in = 0", zero("d_in"), |x| (LayerShape::new(0, DO), x.train(), x.query(), N * V));
    dot_err("d_out = 0", zero("d_out"), |x| (LayerShape::new(DI, 0), x.train(), x.query(), N * V));
    dot_err("n = 0", zero("n"), |x| (shape(), TrainFactors { n: 0, ..x.train() }, x.query(), N * V));
    dot_err("t = 0", zero("t"), |x| (shape(), TrainFactors { t: 0, ..x.train() }, x.query(), N * V));
    dot_err("q = 0", zero("q"), |x| (shape(), x.train(), QueryFactors { q: 0, ..x.query() }, N * V));
    dot_err("segment length 0", zero("segment length"), |x| {
        (shape(), x.train(), QueryFactors { segments: Segments::Uniform(0), ..x.query() }, N * V)
    });
    let mut out = [0.0f32; 1];
    for ctx in contexts() {
        let e = ctx.ghost_dot_layers(&[], &mut TensorMut::from(&mut out[..]), Accumulate::overwrite()).unwrap_err();
        assert_eq!(e, zero("layers"));
    }
}

// ---------------------------------------------------------------------------------------------
// Length mismatches

#[test]
fn ghost_dot_length_mismatches_name_the_buffer() {
    let (nt, ntdi, ntdo) = (N * T, N * T * DI, N * T * DO);
    dot_err("a", len_mismatch("a", ntdi, ntdi - 1), |x| {
        (shape(), TrainFactors { a: x.a[1..].into(), ..x.train() }, x.query(), N * V)
    });
    dot_err("b", len_mismatch("b", ntdo, ntdo - 1), |x| {
        (shape(), TrainFactors { b: x.b[1..].into(), ..x.train() }, x.query(), N * V)
    });
    dot_err("mask", len_mismatch("mask", nt, nt - 1), |x| {
        (shape(), TrainFactors { mask: Some(x.mask[1..].into()), ..x.train() }, x.query(), N * V)
    });
    dot_err("aq", len_mismatch("aq", Q * DI, Q * DI - 1), |x| {
        (shape(), x.train(), QueryFactors { aq: x.aq[1..].into(), ..x.query() }, N * V)
    });
    dot_err("bq", len_mismatch("bq", Q * DO, Q * DO - 1), |x| {
        (shape(), x.train(), QueryFactors { bq: x.bq[1..].into(), ..x.query() }, N * V)
    });
    dot_err("query mask", len_mismatch("query mask", Q, Q - 1), |x| {
        (shape(), x.train(), QueryFactors { mask: Some(x.qmask[1..].into()), ..x.query() }, N * V)
    });
    dot_err("out short", len_mismatch("out", N * V, N * V - 1), |x| (shape(), x.train(), x.query(), N * V - 1));
    dot_err("out long", len_mismatch("out", N * V, N * V + 1), |x| (shape(), x.train(), x.query(), N * V + 1));
    // A bias changes no input length (it is an implicit column): the same buffers stay valid.
    let x = fx();
    for ctx in contexts() {
        dot(&ctx, shape().with_bias(true), x.train(), x.query(), N * V).unwrap();
    }
}

#[test]
fn ghost_dot_dense_length_mismatches_name_the_buffer() {
    let x = fx();
    let run = |ctx: &Context, m: &[f32], mb: Option<&[f32]>, bias: bool, out_len: u64| -> Result<()> {
        let mut out = vec![0.0f32; out_len as usize];
        let mbt = mb.map(Tensor::from);
        ctx.ghost_dot_dense(
            &shape().with_bias(bias),
            &x.train(),
            &Tensor::from(m),
            mbt.as_ref(),
            &mut TensorMut::from(out.as_mut_slice()),
            Accumulate::overwrite(),
        )
    };
    for ctx in contexts() {
        run(&ctx, &x.m, None, false, N).unwrap();
        run(&ctx, &x.m, Some(&x.m_bias), true, N).unwrap();
    }
    expect_err("m", len_mismatch("m", DO * DI, DO * DI - 1), |c| run(c, &x.m[1..], None, false, N));
    expect_err("m_bias", len_mismatch("m_bias", DO, DO - 1), |c| run(c, &x.m, Some(&x.m_bias[1..]), true, N));
    expect_err("out", len_mismatch("out", N, N + 1), |c| run(c, &x.m, None, false, N + 1));
    expect_err(
        "m_bias without bias",
        GhostError::InvalidArgument { what: "m_bias", reason: "given but the layer has no bias".into() },
        |c| run(c, &x.m, Some(&x.m_bias), false, N),
    );
    expect_err(
        "bias without m_bias",
        GhostError::InvalidArgument { what: "m_bias", reason: "the layer has a bias: pass m_bias [d_out]".into() },
        |c| run(c, &x.m, None, true, N),
    );
}

#[test]
fn factored_grad_length_mismatches_name_the_buffer() {
    let x = fx();
    let run = |ctx: &Context, q: QueryFactors<'_>, w: Option<&[f32]>, bias: bool, out_len: u64, ob_len: Option<u64>| -> Result<()> {
        let mut out = vec![0.0f32; out_len as usize];
        let mut ob = vec![0.0f32; ob_len.unwrap_or(0) as usize];
        let mut obt = TensorMut::from(ob.as_mut_slice());
        let wt = w.map(Tensor::from);
        ctx.factored_grad(
            &shape().with_bias(bias),
            &q,
            wt.as_ref(),
            &mut TensorMut::from(out.as_mut_slice()),
            ob_len.map(|_| &mut obt),
            Accumulate::overwrite(),
        )
    };
    let full = V * DO * DI;
    for ctx in contexts() {
        run(&ctx, x.query(), Some(&x.w), false, full, None).unwrap();
        run(&ctx, x.query(), None, true, full, Some(V * DO)).unwrap();
    }
    expect_err("row_weights", len_mismatch("row_weights", Q, Q + 1), |c| {
        let w = vec![1.0f32; Q as usize + 1];
        run(c, x.query(), Some(&w), false, full, None)
    });
    expect_err("out", len_mismatch("out", full, full - 1), |c| run(c, x.query(), None, false, full - 1, None));
    expect_err("out_bias", len_mismatch("out_bias", V * DO, V * DO + 1), |c| {
        run(c, x.query(), None, true, full, Some(V * DO + 1))
    });
    expect_err("aq", len_mismatch("aq", Q * DI, Q * DI - 1), |c| {
        run(c, QueryFactors { aq: x.aq[1..].into(), ..x.query() }, None, false, full, None)
    });
    expect_err(
        "out_bias without bias",
        GhostError::InvalidArgument { what: "out_bias", reason: "given but the layer has no bias".into() },
        |c| run(c, x.query(), None, false, full, Some(V * DO)),
    );
    expect_err(
        "bias without out_bias",
        GhostError::InvalidArgument { what: "out_bias", reason: "the layer has a bias: pass out_bias [V, d_out]".into() },
        |c| run(c, x.query(), None, true, full, None),
    );
}

#[test]
fn gram_and_sqnorm_length_mismatches_name_the_buffer() {
    let x = fx();
    let gram = |ctx: &Context, tr: TrainFactors<'_>, len: u64, form: FormRequest| -> Result<()> {
        let mut out = vec![0.0f32; len as usize];
        ctx.ghost_gram(&shape(), &tr, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), form).map(|_| ())
    };
    let norm = |ctx: &Context, tr: TrainFactors<'_>, len: u64, form: FormRequest| -> Result<()> {
        let mut out = vec![0.0f32; len as usize];
        ctx.ghost_sqnorm(&shape(), &tr, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), form).map(|_| ())
    };
    for ctx in contexts() {
        gram(&ctx, x.train(), N * N, FormRequest::Auto).unwrap();
        norm(&ctx, x.train(), N, FormRequest::Auto).unwrap();
    }
    expect_err("gram out", len_mismatch("out", N * N, N), |c| gram(c, x.train(), N, FormRequest::Auto));
    expect_err("sqnorm out", len_mismatch("out", N, N * N), |c| norm(c, x.train(), N * N, FormRequest::Auto));
    expect_err("gram a", len_mismatch("a", N * T * DI, N * T * DI - 1), |c| {
        gram(c, TrainFactors { a: x.a[1..].into(), ..x.train() }, N * N, FormRequest::Auto)
    });
    expect_err("sqnorm mask", len_mismatch("mask", N * T, N * T - 1), |c| {
        norm(c, TrainFactors { mask: Some(x.mask[1..].into()), ..x.train() }, N, FormRequest::Auto)
    });
    let dense_form = GhostError::InvalidArgument {
        what: "form",
        reason: "the dense-query form needs a separate query; use gram or materialize".into(),
    };
    expect_err("gram dense-query", dense_form.clone(), |c| {
        gram(c, x.train(), N * N, FormRequest::Force(Form::DenseQuery))
    });
    expect_err("sqnorm dense-query", dense_form, |c| norm(c, x.train(), N, FormRequest::Force(Form::DenseQuery)));
}

// ---------------------------------------------------------------------------------------------
// Dtypes

#[test]
fn dtype_mismatches_and_unsupported_dtypes_are_typed() {
    dot_err("b bf16 with a f32", GhostError::DtypeMismatch { what: "b", expected: DType::F32, got: DType::BF16 }, |x| {
        let b16: &'static [bf16] = Box::leak(vec![bf16::ONE; (N * T * DO) as usize].into_boxed_slice());
        (shape(), TrainFactors { b: b16.into(), ..x.train() }, x.query(), N * V)
    });
    dot_err("aq f32 with a bf16", GhostError::DtypeMismatch { what: "aq", expected: DType::BF16, got: DType::F32 }, |x| {
        let b16: &'static [bf16] = Box::leak(vec![bf16::ONE; (N * T * DO) as usize].into_boxed_slice());
        (shape(), TrainFactors { a: x.a16.as_slice().into(), b: b16.into(), ..x.train() }, x.query(), N * V)
    });
    dot_err("bq bf16 with f32", GhostError::DtypeMismatch { what: "bq", expected: DType::F32, got: DType::BF16 }, |x| {
        let b16: &'static [bf16] = Box::leak(vec![bf16::ONE; (Q * DO) as usize].into_boxed_slice());
        (shape(), x.train(), QueryFactors { bq: b16.into(), ..x.query() }, N * V)
    });
    dot_err("u8 as a", GhostError::UnsupportedDtype { what: "a", dtype: DType::U8, op: "ghost_dot" }, |x| {
        (shape(), TrainFactors { a: x.mask.as_slice().into(), ..x.train() }, x.query(), N * V)
    });
    dot_err("f32 as mask", GhostError::UnsupportedDtype { what: "mask", dtype: DType::F32, op: "ghost_dot" }, |x| {
        (shape(), TrainFactors { mask: Some(x.a[..(N * T) as usize].into()), ..x.train() }, x.query(), N * V)
    });
    dot_err("i32 as aq", GhostError::UnsupportedDtype { what: "aq", dtype: DType::I32, op: "ghost_dot" }, |x| {
        let i: &'static [i32] = Box::leak(vec![1i32; (Q * DI) as usize].into_boxed_slice());
        (shape(), x.train(), QueryFactors { aq: i.into(), ..x.query() }, N * V)
    });
    dot_err("f32 offsets", GhostError::UnsupportedDtype { what: "segment offsets", dtype: DType::F32, op: "ghost_dot" }, |x| {
        (shape(), x.train(), QueryFactors { segments: Segments::Offsets(x.w[..3].into()), ..x.query() }, N * V)
    });
    let x = fx();
    let m16 = vec![bf16::ONE; (DO * DI) as usize];
    expect_err("bf16 as m", GhostError::UnsupportedDtype { what: "m", dtype: DType::BF16, op: "ghost_dot_dense" }, |c| {
        let mut out = vec![0.0f32; N as usize];
        c.ghost_dot_dense(&shape(), &x.train(), &Tensor::from(m16.as_slice()), None, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite())
    });
    expect_err(
        "bf16 row weights",
        GhostError::UnsupportedDtype { what: "row_weights", dtype: DType::BF16, op: "factored_grad" },
        |c| {
            let w = vec![bf16::ONE; Q as usize];
            let mut out = vec![0.0f32; (V * DO * DI) as usize];
            c.factored_grad(&shape(), &x.query(), Some(&Tensor::from(w.as_slice())), &mut TensorMut::from(out.as_mut_slice()), None, Accumulate::overwrite())
        },
    );
    expect_err("u8 as aq (factored)", GhostError::UnsupportedDtype { what: "aq", dtype: DType::U8, op: "factored_grad" }, |c| {
        let aq = vec![1u8; (Q * DI) as usize];
        let mut out = vec![0.0f32; (V * DO * DI) as usize];
        let q = QueryFactors { aq: aq.as_slice().into(), ..x.query() };
        c.factored_grad(&shape(), &q, None, &mut TensorMut::from(out.as_mut_slice()), None, Accumulate::overwrite())
    });
    expect_err("f16 out", GhostError::UnsupportedDtype { what: "out", dtype: DType::F16, op: "ghost_dot" }, |c| {
        // SAFETY: never dereferenced; the dtype check comes before anything touches it.
        let out = unsafe { DeviceSliceMut::from_raw_parts(0x1000, N * V, DType::F16) };
        c.ghost_dot(&shape(), &x.train(), &x.query(), &mut TensorMut::from(out), Accumulate::overwrite(), FormRequest::Auto)
            .map(|_| ())
    });
}

// ---------------------------------------------------------------------------------------------
// Memory space

#[test]
fn device_buffers_are_rejected_by_cpu_contexts() {
    let wrong = |what| GhostError::WrongMemorySpace { what, expected: "host", got: "device" };
    // SAFETY: a CPU context never dereferences a DeviceSlice: it only reads its space and length.
    let dev = |len: u64, dtype| Tensor::from(unsafe { DeviceSlice::from_raw_parts(0x1000, len, dtype) });
    dot_err("a on device", wrong("a"), |x| (shape(), TrainFactors { a: dev(N * T * DI, DType::F32), ..x.train() }, x.query(), N * V));
    dot_err("b on device", wrong("b"), |x| (shape(), TrainFactors { b: dev(N * T * DO, DType::F32), ..x.train() }, x.query(), N * V));
    dot_err("mask on device", wrong("mask"), |x| {
        (shape(), TrainFactors { mask: Some(dev(N * T, DType::U8)), ..x.train() }, x.query(), N * V)
    });
    dot_err("aq on device", wrong("aq"), |x| (shape(), x.train(), QueryFactors { aq: dev(Q * DI, DType::F32), ..x.query() }, N * V));
    dot_err("bq on device", wrong("bq"), |x| (shape(), x.train(), QueryFactors { bq: dev(Q * DO, DType::F32), ..x.query() }, N * V));
    dot_err("query mask on device", wrong("query mask"), |x| {
        (shape(), x.train(), QueryFactors { mask: Some(dev(Q, DType::U8)), ..x.query() }, N * V)
    });
    dot_err("offsets on device", wrong("segment offsets"), |x| {
        (shape(), x.train(), QueryFactors { segments: Segments::Offsets(dev(4, DType::I32)), ..x.query() }, N * V)
    });
    let x = fx();
    expect_err("out on device", wrong("out"), |c| {
        // SAFETY: as above; the space check comes first.
        let out = unsafe { DeviceSliceMut::from_raw_parts(0x1000, N * V, DType::F32) };
        c.ghost_dot(&shape(), &x.train(), &x.query(), &mut TensorMut::from(out), Accumulate::overwrite(), FormRequest::Auto)
            .map(|_| ())
    });
    expect_err("m on device", wrong("m"), |c| {
        let mut out = vec![0.0f32; N as usize];
        c.ghost_dot_dense(&shape(), &x.train(), &dev(DO * DI, DType::F32), None, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite())
    });
    expect_err("row_weights on device", wrong("row_weights"), |c| {
        let mut out = vec![0.0f32; (V * DO * DI) as usize];
        c.factored_grad(&shape(), &x.query(), Some(&dev(Q, DType::F32)), &mut TensorMut::from(out.as_mut_slice()), None, Accumulate::overwrite())
    });
    expect_err("gram a on device", wrong("a"), |c| {
        let mut out = vec![0.0f32; (N * N) as usize];
        let tr = TrainFactors { a: dev(N * T * DI, DType::F32), ..x.train() };
        c.ghost_gram(&shape(), &tr, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto).map(|_| ())
    });
}

// ---------------------------------------------------------------------------------------------
// Scalars, segments, shapes, layers

#[test]
fn non_finite_scale_and_beta_are_rejected() {
    let x = fx();
    for (scale, beta, what, shown) in [
        (f32::NAN, 0.0, "scale", "NaN"),
        (f32::INFINITY, 0.0, "scale", "inf"),
        (1.0, f32::NAN, "beta", "NaN"),
        (1.0, f32::NEG_INFINITY, "beta", "-inf"),
    ] {
        let acc = Accumulate { scale, beta };
        let expected = GhostError::InvalidArgument { what, reason: format!("must be finite, got {shown}") };
        expect_err("ghost_dot", expected.clone(), |c| {
            let mut out = vec![0.0f32; (N * V) as usize];
            c.ghost_dot(&shape(), &x.train(), &x.query(), &mut TensorMut::from(out.as_mut_slice()), acc, FormRequest::Auto).map(|_| ())
        });
        expect_err("ghost_dot_dense", expected.clone(), |c| {
            let mut out = vec![0.0f32; N as usize];
            c.ghost_dot_dense(&shape(), &x.train(), &Tensor::from(x.m.as_slice()), None, &mut TensorMut::from(out.as_mut_slice()), acc)
        });
        expect_err("factored_grad", expected.clone(), |c| {
            let mut out = vec![0.0f32; (V * DO * DI) as usize];
            c.factored_grad(&shape(), &x.query(), None, &mut TensorMut::from(out.as_mut_slice()), None, acc)
        });
        expect_err("ghost_gram", expected.clone(), |c| {
            let mut out = vec![0.0f32; (N * N) as usize];
            c.ghost_gram(&shape(), &x.train(), &mut TensorMut::from(out.as_mut_slice()), acc, FormRequest::Auto).map(|_| ())
        });
        expect_err("ghost_sqnorm", expected, |c| {
            let mut out = vec![0.0f32; N as usize];
            c.ghost_sqnorm(&shape(), &x.train(), &mut TensorMut::from(out.as_mut_slice()), acc, FormRequest::Auto).map(|_| ())
        });
    }
}

type Call<'x> = (LayerShape, TrainFactors<'x>, QueryFactors<'x>, u64);

fn with(off: &'static [i32], v: u64) -> impl Fn(&Fx) -> Call<'_> {
    move |x| (shape(), x.train(), QueryFactors { segments: Segments::Offsets(off.into()), ..x.query() }, N * v)
}

fn big(n: u64, t: u64) -> impl Fn(&Fx) -> Call<'_> {
    move |x| (shape(), TrainFactors { n, t, ..x.train() }, x.query(), N * V)
}

#[test]
fn bad_segment_offsets_are_rejected() {
    let bad = |reason: &str| GhostError::InvalidArgument { what: "segment offsets", reason: reason.into() };
    dot_err("decreasing", bad("offsets must be nondecreasing within [0, Q=6]; offsets[2] = 1 after 4"), with(&[0, 4, 1, 6], 3));
    dot_err("beyond Q", bad("offsets must be nondecreasing within [0, Q=6]; offsets[2] = 7 after 2"), with(&[0, 2, 7], 2));
    dot_err("negative", bad("offsets must be nondecreasing within [0, Q=6]; offsets[0] = -1 after 0"), with(&[-1, 2], 1));
    dot_err("one offset", bad("need V+1 >= 2 offsets, got 1"), with(&[0], 1));
    dot_err("no offsets", bad("need V+1 >= 2 offsets, got 0"), with(&[], 1));
    // Valid edge cases: empty segments, rows outside every segment.
    let x = fx();
    for ctx in contexts() {
        let q = QueryFactors { segments: Segments::Offsets((&[2i32, 2, 5][..]).into()), ..x.query() };
        dot(&ctx, shape(), x.train(), q, N * 2).unwrap();
    }
}

#[test]
fn overflowing_shapes_are_rejected_before_touching_buffers() {
    dot_err("n*t > u64", overflow("n*t", "u64"), big(1 << 40, 1 << 40));
    dot_err("n*t*d_in > u64", overflow("n*t*d_in", "u64"), big(1 << 40, 1 << 22));
    dot_err("n*t >= 2^31", overflow("n*t", KERNEL_RANGE), big(1 << 16, 1 << 15));
    dot_err("d_in >= 2^31", overflow("d_in", KERNEL_RANGE), |x| (LayerShape::new(1 << 31, DO), x.train(), x.query(), N * V));
    dot_err("d_out >= 2^31", overflow("d_out", KERNEL_RANGE), |x| (LayerShape::new(DI, u64::MAX), x.train(), x.query(), N * V));
    dot_err("q >= 2^31", overflow("q", KERNEL_RANGE), |x| (shape(), x.train(), QueryFactors { q: 1 << 31, ..x.query() }, N * V));
    // q·d_in, q·d_out and V·d_out·d_in cannot overflow u64 once every factor is < 2^31 and the
    // query buffers have their exact lengths, so no host call can reach those overflows.
}

#[test]
fn layers_must_share_n_and_v() {
    let x = fx();
    let layer = |tr: TrainFactors<'static>, q: QueryFactors<'static>| GhostDotLayer { shape: shape(), train: tr, query: q, form: FormRequest::Auto };
    let x: &'static Fx = Box::leak(Box::new(x));
    let n1 = TrainFactors { n: 1, a: x.a[..(T * DI) as usize].into(), b: x.b[..(T * DO) as usize].into(), mask: None, ..x.train() };
    expect_err(
        "different N",
        GhostError::InvalidArgument { what: "layers", reason: "all layers need the same N: 1 vs 2".into() },
        |c| {
            let mut out = vec![0.0f32; (N * V) as usize];
            c.ghost_dot_layers(&[layer(x.train(), x.query()), layer(n1, x.query())], &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite())
                .map(|_| ())
        },
    );
    let single = QueryFactors { segments: Segments::Single, ..x.query() };
    expect_err(
        "different V",
        GhostError::InvalidArgument { what: "layers", reason: "all layers need the same number of query segments V: 1 vs 3".into() },
        |c| {
            let mut out = vec![0.0f32; (N * V) as usize];
            c.ghost_dot_layers(&[layer(x.train(), x.query()), layer(x.train(), single)], &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite())
                .map(|_| ())
        },
    );
    // Different shapes and dtypes with the same N and V are fine.
    let a16: &'static [bf16] = Box::leak(vec![bf16::ONE; (N * 7 * 2) as usize].into_boxed_slice());
    let b16: &'static [bf16] = Box::leak(vec![bf16::ONE; (N * 7 * 3) as usize].into_boxed_slice());
    let aq16: &'static [bf16] = Box::leak(vec![bf16::ONE; 9 * 2].into_boxed_slice());
    let bq16: &'static [bf16] = Box::leak(vec![bf16::ONE; 9 * 3].into_boxed_slice());
    let other = GhostDotLayer {
        shape: LayerShape::new(2, 3).with_bias(true),
        train: TrainFactors { a: a16.into(), b: b16.into(), n: N, t: 7, mask: None },
        query: QueryFactors { aq: aq16.into(), bq: bq16.into(), q: 9, segments: Segments::Uniform(3), mask: None },
        form: FormRequest::Force(Form::Materialize),
    };
    for ctx in contexts() {
        let mut out = vec![0.0f32; (N * V) as usize];
        let choices = ctx.ghost_dot_layers(&[layer(x.train(), x.query()), other], &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite()).unwrap();
        assert_eq!(choices.len(), 2);
        assert_eq!(choices[1].form, Form::Materialize);
    }
}

// ---------------------------------------------------------------------------------------------
// CUDA on a machine without it

#[test]
fn cuda_context_without_a_driver_is_a_typed_error() {
    match Context::cuda(0) {
        Err(GhostError::CudaDriverUnavailable(_)) | Err(GhostError::KernelsNotBuilt) => {}
        // A machine that does have a GPU and kernels: fine too, but say so.
        Ok(ctx) => eprintln!("CUDA is available here: {}", ctx.describe()),
        Err(other) => panic!("Context::cuda(0) returned an unexpected error: {other:?}"),
    }
}

/// Issue 11, defect 4: a host matrix the machine cannot hold is a typed out-of-memory error
/// naming it and its size, before anything is written (the process used to abort). Only the
/// failing reservation is attempted: nothing large is allocated.
#[test]
fn host_allocations_too_large_for_the_machine_are_typed_errors() {
    use ghostgrad::projection::precondition::RawFisher;
    use ghostgrad::{Distribution, OutColumns, ProjectionKind, ProjectionSpec};
    // kron_project with a random P_in of [2^20, 2^14] f32 = 64 GiB.
    let (d_in, d_out, k_i) = (1u64 << 14, 3u64, 1u64 << 20);
    let a: Vec<f32> = (0..d_in).map(|i| (i % 7) as f32 - 3.0).collect();
    let b = [0.5f32, -1.0, 2.0];
    let shape = LayerShape::new(d_in, d_out);
    let train = TrainFactors { a: a[..].into(), b: b[..].into(), n: 1, t: 1, mask: None };
    let proj = ProjectionSpec { k_i, k_o: 1, kind: ProjectionKind::Random { seed: 1, layer: 0, dist: Distribution::Gaussian } };
    for ctx in contexts() {
        let mut out = vec![f32::NAN; k_i as usize];
        let e = ctx
            .kron_project(&shape, &train, &proj, &mut (&mut out[..]).into(), OutColumns { offset: 0, row_stride: k_i }, Accumulate::overwrite())
            .unwrap_err();
        match &e {
            GhostError::OutOfMemory { what, bytes } => {
                assert!(what.contains("projection matrix") && what.contains("[1048576, 16384]"), "{e}");
                assert_eq!(*bytes, 1u64 << 36, "{e}");
            }
            _ => panic!("expected OutOfMemory, got {e:?}"),
        }
        assert!(out.iter().all(|x| x.is_nan()), "nothing is written before the error");
    }
    // A raw Fisher fit with k = 2^16: three [k, k] f64 matrices (96 GiB).
    let k = 1usize << 16;
    let grads: Vec<f32> = (0..k).map(|i| ((i % 5) as f32 - 2.0) * 0.25).collect();
    let e = RawFisher::fit(&grads, 1, k).err().expect("a fit of that size cannot succeed here");
    assert!(matches!(&e, GhostError::OutOfMemory { what, .. } if what.contains("raw Fisher")), "{e:?}");
    assert!(e.to_string().contains("bytes"), "{e}");
}

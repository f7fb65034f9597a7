//! The C ABI (`src/ffi.rs`, `include/ghostgrad.h`): a C program compiled against the static
//! library computes the right numbers, and every kind of bad input through the ABI comes back
//! as the right status with a message naming the problem, never as a crash or a panic.

use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

use ghostgrad::ffi::gg_status::{self, *};
use ghostgrad::ffi::*;

// ---------------------------------------------------------------------------------------------
// The C example
// ---------------------------------------------------------------------------------------------

/// The crate's staticlib that cargo built with this test: `target/<profile>/deps/libghostgrad.a`
/// (or the uplifted `target/<profile>/libghostgrad.a` of a `cargo build`), the newest of them.
fn static_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile = deps.parent().unwrap();
    let in_deps = std::fs::read_dir(deps).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("libghostgrad") && name.ends_with(".a")
    });
    std::iter::once(profile.join("libghostgrad.a"))
        .filter(|p| p.exists())
        .chain(in_deps)
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no libghostgrad.a in {} or {}", profile.display(), deps.display()))
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    println!("$ {cmd:?}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// Compiles `examples/c/<name>.c` against the static library with `-Werror -pedantic`, runs it,
/// asserts success and "all checks passed", and returns its stdout.
fn run_c_example(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = static_library();
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}_c_example"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = root.join(format!("examples/c/{name}.c"));
    let compiled = run(Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(&src)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe));
    assert!(compiled.status.success(), "compiling {} against {} failed", src.display(), lib.display());
    let ran = run(&mut Command::new(&exe));
    assert!(ran.status.success(), "the C example {name} failed ({})", ran.status);
    let stdout = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(stdout.contains("all checks passed"), "{stdout}");
    stdout
}

#[test]
fn c_example_matches_a_naive_double_precision_computation() {
    let stdout = run_c_example("ghost_dot");
    assert!(stdout.contains("GG_STATUS_NULL_POINTER"), "the error path was not shown: {stdout}");
}

/// examples/c/model.c: a tied embedding / LM head and a LayerNorm through gg_model_gram,
/// gg_kron_project_model and gg_influence_scores_groups, against explicit gradients in C.
#[test]
fn c_model_example_matches_explicit_gradients() {
    let stdout = run_c_example("model");
    assert_eq!(stdout.matches("relative error").count(), 3, "every check ran: {stdout}");
    assert!(stdout.contains("GG_STATUS_INVALID_ARGUMENT"), "the error path was not shown: {stdout}");
}

// ---------------------------------------------------------------------------------------------
// Rust-side calls with bad input
// ---------------------------------------------------------------------------------------------

fn last_error() -> String {
    // SAFETY: a NUL-terminated string owned by ghostgrad, valid until the next call.
    unsafe { CStr::from_ptr(gg_last_error_message()) }.to_str().unwrap().to_owned()
}

fn last_reason() -> String {
    // SAFETY: as above.
    unsafe { CStr::from_ptr(gg_last_form_reason()) }.to_str().unwrap().to_owned()
}

fn status_name(code: i32) -> String {
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(gg_status_name(code)) }.to_str().unwrap().to_owned()
}

/// Asserts the status and that the last error message mentions every `needle`.
#[track_caller]
fn expect(st: gg_status, want: gg_status, needles: &[&str]) -> String {
    let msg = last_error();
    assert_eq!(st, want, "status {} (message: {msg})", status_name(st as i32));
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not mention {n:?}");
    }
    msg
}

const ABSENT: gg_tensor = gg_tensor { ptr: ptr::null(), len: 0, dtype: 0 };

fn t<T>(v: &[T], dtype: gg_dtype) -> gg_tensor {
    gg_tensor { ptr: v.as_ptr() as *const c_void, len: v.len() as u64, dtype }
}

fn tm(v: &mut [f32]) -> gg_tensor_mut {
    gg_tensor_mut { ptr: v.as_mut_ptr() as *mut c_void, len: v.len() as u64 }
}

/// A small valid problem: N=2, T=3, d_in=4, d_out=5 with bias, Q=4 in 2 uniform segments.
struct Problem {
    a: Vec<f32>,
    b: Vec<f32>,
    aq: Vec<f32>,
    bq: Vec<f32>,
    mask: Vec<u8>,
}

const N: u64 = 2;
const T: u64 = 3;
const D_IN: u64 = 4;
const D_OUT: u64 = 5;
const Q: u64 = 4;
const V: u64 = 2;

impl Problem {
    fn new() -> Self {
        let vals = |len: u64, seed: u32| -> Vec<f32> {
            (0..len as u32).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0).collect()
        };
        Problem {
            a: vals(N * T * D_IN, 1),
            b: vals(N * T * D_OUT, 2),
            aq: vals(Q * D_IN, 3),
            bq: vals(Q * D_OUT, 4),
            mask: vec![1, 1, 0, 1, 1, 1],
        }
    }
    fn shape(&self) -> gg_layer_shape {
        gg_layer_shape { d_in: D_IN, d_out: D_OUT, has_bias: 1 }
    }
    fn train(&self) -> gg_train {
        gg_train { a: t(&self.a, GG_DTYPE_F32), b: t(&self.b, GG_DTYPE_F32), n: N, t: T, mask: t(&self.mask, GG_DTYPE_U8) }
    }
    fn query(&self) -> gg_query {
        gg_query {
            aq: t(&self.aq, GG_DTYPE_F32),
            bq: t(&self.bq, GG_DTYPE_F32),
            q: Q,
            segments: gg_segments { kind: GG_SEGMENTS_UNIFORM, uniform_len: Q / V, offsets: ABSENT },
            mask: ABSENT,
        }
    }
}

/// A CPU context destroyed on drop.
struct Ctx(*mut gg_context);

impl Ctx {
    fn cpu() -> Self {
        let mut p = ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let st = unsafe { gg_context_create_cpu(&mut p) };
        assert_eq!(st, GG_STATUS_OK, "{}", last_error());
        assert!(!p.is_null());
        Ctx(p)
    }
    fn reference() -> Self {
        let mut p = ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let st = unsafe { gg_context_create_cpu_reference(&mut p) };
        assert_eq!(st, GG_STATUS_OK, "{}", last_error());
        Ctx(p)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: created by gg_context_create_*, destroyed once.
        unsafe { gg_context_destroy(self.0) };
    }
}

/// `gg_ghost_dot` with the problem's descriptors, overriding train/query/out.
fn dot(ctx: *const gg_context, train: &gg_train, query: &gg_query, out: gg_tensor_mut, form: gg_form_request) -> gg_status {
    let p = Problem::new();
    // SAFETY: every descriptor points at live memory of this test (or is deliberately invalid,
    // which the ABI must detect before touching memory).
    unsafe { gg_ghost_dot(ctx, p.shape(), train, query, out, 1.0, 0.0, form, ptr::null_mut()) }
}

#[test]
fn valid_call_matches_the_safe_api_and_reports_its_form() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![f32::NAN; (N * V) as usize];
    let mut choice = std::mem::MaybeUninit::<gg_form_choice>::uninit();
    // SAFETY: valid descriptors and out-pointers.
    let st = unsafe {
        gg_ghost_dot(ctx.0, p.shape(), &p.train(), &p.query(), tm(&mut out), 2.0, 0.0, GG_FORM_REQUEST_AUTO, choice.as_mut_ptr())
    };
    assert_eq!(st, GG_STATUS_OK, "{}", last_error());
    assert_eq!(last_error(), "", "a success leaves an empty message");
    // SAFETY: written by the successful call.
    let choice = unsafe { choice.assume_init() };
    assert!(choice.form <= GG_FORM_MATERIALIZE);
    assert_eq!(choice.forced, 0);
    assert!(choice.flops.iter().all(|&f| f > 0.0) && choice.est_seconds.iter().all(|&s| s > 0.0), "{choice:?}");
    assert!(!last_reason().is_empty());

    // The same through the safe API.
    let shape = ghostgrad::LayerShape::new(D_IN, D_OUT).with_bias(true);
    let train = ghostgrad::TrainFactors { a: p.a[..].into(), b: p.b[..].into(), n: N, t: T, mask: Some(p.mask[..].into()) };
    let query = ghostgrad::QueryFactors {
        aq: p.aq[..].into(),
        bq: p.bq[..].into(),
        q: Q,
        segments: ghostgrad::Segments::Uniform(Q / V),
        mask: None,
    };
    let mut want = vec![0.0f32; (N * V) as usize];
    let c = ghostgrad::Context::cpu()
        .ghost_dot(&shape, &train, &query, &mut ghostgrad::TensorMut::from(&mut want[..]), ghostgrad::Accumulate { scale: 2.0, beta: 0.0 }, Default::default())
        .unwrap();
    assert_eq!(out, want);
    assert_eq!(choice.form, c.form as u32);
    assert_eq!(last_reason(), c.reason);

    // Forcing the reported form back as a request: GG_FORM_REQUEST_x = GG_FORM_x + 1.
    let mut forced = vec![0.0f32; (N * V) as usize];
    let mut choice2 = choice;
    // SAFETY: valid descriptors and out-pointers.
    let st = unsafe {
        gg_ghost_dot(ctx.0, p.shape(), &p.train(), &p.query(), tm(&mut forced), 2.0, 0.0, choice.form + 1, &mut choice2)
    };
    assert_eq!(st, GG_STATUS_OK, "{}", last_error());
    assert_eq!((choice2.form, choice2.forced), (choice.form, 1));
}

#[test]
fn null_context_is_a_null_pointer_error() {
    let p = Problem::new();
    let mut out = vec![0.0f32; (N * V) as usize];
    let st = dot(ptr::null(), &p.train(), &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_NULL_POINTER, &["ctx"]);
    let mut len = 0usize;
    // SAFETY: a null context is detected before anything else is read.
    let st = unsafe { gg_context_describe(ptr::null(), ptr::null_mut(), 0, &mut len) };
    expect(st, GG_STATUS_NULL_POINTER, &["ctx"]);
    // SAFETY: as above.
    let st = unsafe { gg_context_set_max_workspace_bytes(ptr::null_mut(), 1) };
    expect(st, GG_STATUS_NULL_POINTER, &["ctx"]);
    // Destroying NULL is a no-op.
    // SAFETY: NULL is explicitly allowed.
    unsafe { gg_context_destroy(ptr::null_mut()) };
}

#[test]
fn null_out_parameters_and_descriptors_are_null_pointer_errors() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    // SAFETY: null out-pointers are detected before any write.
    unsafe {
        expect(gg_context_create_cpu(ptr::null_mut()), GG_STATUS_NULL_POINTER, &["out"]);
        expect(gg_context_create_cpu_reference(ptr::null_mut()), GG_STATUS_NULL_POINTER, &["out"]);
        expect(gg_context_create_cuda(0, ptr::null_mut(), ptr::null_mut()), GG_STATUS_NULL_POINTER, &["out"]);
        let st = gg_choose_form(ctx.0, p.shape(), &p.train(), &p.query(), GG_FORM_REQUEST_AUTO, ptr::null_mut());
        expect(st, GG_STATUS_NULL_POINTER, &["choice_out"]);
    }
    let mut out = vec![0.0f32; (N * V) as usize];
    // SAFETY: null descriptors are detected before they are read.
    unsafe {
        let st = gg_ghost_dot(ctx.0, p.shape(), ptr::null(), &p.query(), tm(&mut out), 1.0, 0.0, 0, ptr::null_mut());
        expect(st, GG_STATUS_NULL_POINTER, &["train"]);
        let st = gg_ghost_dot(ctx.0, p.shape(), &p.train(), ptr::null(), tm(&mut out), 1.0, 0.0, 0, ptr::null_mut());
        expect(st, GG_STATUS_NULL_POINTER, &["query"]);
        let st = gg_ghost_dot_layers(ctx.0, ptr::null(), 1, tm(&mut out), 1.0, 0.0, ptr::null_mut());
        expect(st, GG_STATUS_NULL_POINTER, &["layers"]);
    }
    // A NULL output buffer.
    let st = dot(ctx.0, &p.train(), &p.query(), gg_tensor_mut { ptr: ptr::null_mut(), len: N * V }, GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_NULL_POINTER, &["`out`"]);
}

#[test]
fn null_tensor_with_a_length_is_a_null_pointer_error() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0.0f32; (N * V) as usize];
    let mut train = p.train();
    train.a.ptr = ptr::null();
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_NULL_POINTER, &["train.a", "nonzero length"]);
    // An optional tensor with a NULL pointer but a length is not "absent".
    let mut train = p.train();
    train.mask = gg_tensor { ptr: ptr::null(), len: N * T, dtype: GG_DTYPE_U8 };
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_NULL_POINTER, &["train.mask"]);
    // A required tensor left absent.
    let mut query = p.query();
    query.bq = ABSENT;
    let st = dot(ctx.0, &p.train(), &query, tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_NULL_POINTER, &["query.bq"]);
}

#[test]
fn misaligned_buffers_are_rejected_before_use() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0.0f32; (N * V) as usize];
    let mut bytes = vec![0u8; (N * T * D_IN * 4 + 4) as usize];
    let mut train = p.train();
    // SAFETY: one byte into a live allocation.
    train.a.ptr = unsafe { bytes.as_mut_ptr().add(1) } as *const c_void;
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_MISALIGNED, &["train.a", "aligned to 4"]);
    let mut raw = vec![0.0f32; (N * V + 1) as usize];
    // SAFETY: two bytes into a live allocation.
    let odd = unsafe { (raw.as_mut_ptr() as *mut u8).add(2) } as *mut c_void;
    let st = dot(ctx.0, &p.train(), &p.query(), gg_tensor_mut { ptr: odd, len: N * V }, GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_MISALIGNED, &["out"]);
}

#[test]
fn wrong_lengths_name_the_buffer_and_both_sizes() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0.0f32; (N * V) as usize];
    let mut train = p.train();
    train.b.len -= 1;
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    let expected = (N * T * D_OUT).to_string();
    let got = (N * T * D_OUT - 1).to_string();
    expect(st, GG_STATUS_LENGTH_MISMATCH, &["`b`", &expected, &got]);
    let mut short = vec![0.0f32; (N * V - 1) as usize];
    let st = dot(ctx.0, &p.train(), &p.query(), tm(&mut short), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_LENGTH_MISMATCH, &["`out`"]);
    let mut train = p.train();
    train.n = 0;
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_ZERO_SIZE, &["`n`"]);
}

#[test]
fn invalid_codes_are_errors_not_undefined_behaviour() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0.0f32; (N * V) as usize];
    let mut train = p.train();
    train.a.dtype = 7;
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_DTYPE, &["train.a", "dtype code 7"]);
    let st = dot(ctx.0, &p.train(), &p.query(), tm(&mut out), 9);
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["form", "9"]);
    let mut query = p.query();
    query.segments.kind = 5;
    let st = dot(ctx.0, &p.train(), &query, tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["segments.kind", "5"]);
    // A valid code with the wrong dtype for the argument.
    let mut train = p.train();
    train.mask.dtype = GG_DTYPE_I32;
    train.mask.len = N * T / 4; // same bytes, fewer elements; aligned since Vec<u8> from the allocator
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    assert!(matches!(st, GG_STATUS_DTYPE | GG_STATUS_MISALIGNED), "{st:?}: {}", last_error());
    // Unknown status codes have a name too.
    assert_eq!(status_name(1234), "GG_STATUS_UNKNOWN");
    assert_eq!(status_name(GG_STATUS_DTYPE as i32), "GG_STATUS_DTYPE");
}

#[test]
fn non_finite_scale_and_bias_mismatches_are_invalid_arguments() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0.0f32; (N * V) as usize];
    // SAFETY: valid descriptors.
    let st = unsafe {
        gg_ghost_dot(ctx.0, p.shape(), &p.train(), &p.query(), tm(&mut out), f32::NAN, 0.0, 0, ptr::null_mut())
    };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["scale"]);
    let m = vec![0.0f32; (D_IN * D_OUT) as usize];
    let mut out_n = vec![0.0f32; N as usize];
    // SAFETY: valid descriptors; the bias vector is missing on purpose.
    let st = unsafe { gg_ghost_dot_dense(ctx.0, p.shape(), &p.train(), t(&m, GG_DTYPE_F32), ABSENT, tm(&mut out_n), 1.0, 0.0) };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["m_bias"]);
    let mb = vec![0.5f32; D_OUT as usize];
    // SAFETY: valid descriptors.
    let st = unsafe {
        gg_ghost_dot_dense(ctx.0, p.shape(), &p.train(), t(&m, GG_DTYPE_F32), t(&mb, GG_DTYPE_F32), tm(&mut out_n), 1.0, 0.0)
    };
    expect(st, GG_STATUS_OK, &[]);
}

#[test]
fn outputs_overlapping_inputs_are_rejected() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut train = p.train();
    let mut aliased = p.a.clone();
    train.a = t(&aliased, GG_DTYPE_F32);
    let out = gg_tensor_mut { ptr: aliased.as_mut_ptr() as *mut c_void, len: N * V };
    let st = dot(ctx.0, &train, &p.query(), out, GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["`out`", "overlaps", "train.a"]);
}

#[test]
fn layer_errors_name_the_layer() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let good = gg_layer { shape: p.shape(), train: p.train(), query: p.query(), form: GG_FORM_REQUEST_AUTO };
    let mut bad = good;
    bad.query.aq.len -= 1;
    let mut out = vec![0.0f32; (N * V) as usize];
    let layers = [good, bad];
    // SAFETY: two valid layer descriptors (the second with a short length, which is detected).
    let st = unsafe { gg_ghost_dot_layers(ctx.0, layers.as_ptr(), 2, tm(&mut out), 1.0, 0.0, ptr::null_mut()) };
    expect(st, GG_STATUS_LENGTH_MISMATCH, &["layers[1]", "aq"]);
    let mut bad_form = good;
    bad_form.form = 42;
    let layers = [good, bad_form];
    // SAFETY: as above.
    let st = unsafe { gg_ghost_dot_layers(ctx.0, layers.as_ptr(), 2, tm(&mut out), 1.0, 0.0, ptr::null_mut()) };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["layers[1]", "form"]);
    // SAFETY: n_layers == 0 is detected before the array is read.
    let st = unsafe { gg_ghost_dot_layers(ctx.0, layers.as_ptr(), 0, tm(&mut out), 1.0, 0.0, ptr::null_mut()) };
    expect(st, GG_STATUS_ZERO_SIZE, &["n_layers"]);

    // Two good layers: twice one layer, and one choice per layer.
    let layers = [good, good];
    let mut choices = [std::mem::MaybeUninit::<gg_form_choice>::uninit(); 2];
    // SAFETY: valid descriptors; two writable choices.
    let st = unsafe {
        gg_ghost_dot_layers(ctx.0, layers.as_ptr(), 2, tm(&mut out), 1.0, 0.0, choices.as_mut_ptr() as *mut gg_form_choice)
    };
    expect(st, GG_STATUS_OK, &[]);
    assert_eq!(last_reason().lines().count(), 2, "{}", last_reason());
    let mut one = vec![0.0f32; (N * V) as usize];
    assert_eq!(dot(ctx.0, &p.train(), &p.query(), tm(&mut one), GG_FORM_REQUEST_AUTO), GG_STATUS_OK);
    for (o, x) in out.iter().zip(&one) {
        assert!((o - 2.0 * x).abs() <= 1e-5 * x.abs().max(1.0), "{out:?} vs 2 × {one:?}");
    }
}

#[test]
fn cuda_context_on_a_machine_without_gpu_fails_cleanly() {
    let mut p: *mut gg_context = 0x1 as *mut gg_context; // must be reset to NULL on failure
    // SAFETY: a valid out-pointer; NULL stream = a stream owned by ghostgrad.
    let st = unsafe { gg_context_create_cuda(0, ptr::null_mut(), &mut p) };
    if st == GG_STATUS_OK {
        // A machine with a GPU and the kernels built: a usable context.
        let mut len = 0usize;
        // SAFETY: a live context; length query only.
        assert_eq!(unsafe { gg_context_describe(p, ptr::null_mut(), 0, &mut len) }, GG_STATUS_OK);
        assert!(len > 0);
        // SAFETY: created above, destroyed once.
        unsafe { gg_context_destroy(p) };
        return;
    }
    let msg = expect(st, st, &[]);
    assert!(
        matches!(st, GG_STATUS_DRIVER_UNAVAILABLE | GG_STATUS_KERNELS_NOT_BUILT),
        "{}: {msg}",
        status_name(st as i32)
    );
    assert!(!msg.is_empty());
    assert!(p.is_null(), "a failed creation leaves NULL in *out");
    // SAFETY: a negative ordinal is rejected before the driver is touched.
    let st = unsafe { gg_context_create_cuda(-1, ptr::null_mut(), &mut p) };
    assert!(
        matches!(st, GG_STATUS_INVALID_ARGUMENT | GG_STATUS_DRIVER_UNAVAILABLE | GG_STATUS_KERNELS_NOT_BUILT),
        "{}: {}",
        status_name(st as i32),
        last_error()
    );
}

#[test]
fn describe_copies_like_snprintf() {
    let ctx = Ctx::reference();
    let mut len = 0usize;
    // SAFETY: a live context; length query.
    assert_eq!(unsafe { gg_context_describe(ctx.0, ptr::null_mut(), 0, &mut len) }, GG_STATUS_OK);
    assert_eq!(len, "cpu-reference (f64)".len());
    let mut buf = [0x7f as std::ffi::c_char; 8];
    // SAFETY: 8 writable bytes.
    assert_eq!(unsafe { gg_context_describe(ctx.0, buf.as_mut_ptr(), buf.len(), &mut len) }, GG_STATUS_OK);
    // SAFETY: NUL-terminated by the call.
    assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(), "cpu-ref");
    // SAFETY: NULL buffer with a capacity is an error, detected before writing.
    let st = unsafe { gg_context_describe(ctx.0, ptr::null_mut(), 4, ptr::null_mut()) };
    expect(st, GG_STATUS_NULL_POINTER, &["buf"]);
    // SAFETY: a static string.
    let version = unsafe { CStr::from_ptr(gg_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn every_status_has_its_name() {
    for code in 0..=17 {
        let s = gg_status::from_code(code).unwrap();
        assert_eq!(s as i32, code);
        let name = status_name(code);
        assert!(name.starts_with("GG_STATUS_") && name != "GG_STATUS_UNKNOWN", "{code}: {name}");
    }
    assert_eq!(status_name(GG_STATUS_PANIC as i32), "GG_STATUS_PANIC");
    assert_eq!(status_name(-1), "GG_STATUS_UNKNOWN");
}

#[test]
fn last_error_is_per_thread() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0.0f32; (N * V) as usize];
    let st = dot(ptr::null(), &p.train(), &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    assert_eq!(st, GG_STATUS_NULL_POINTER);
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert!(last_error().contains("ctx"));
    // The next successful call clears it.
    assert_eq!(dot(ctx.0, &p.train(), &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO), GG_STATUS_OK);
    assert_eq!(last_error(), "");
}

#[test]
fn train_only_operations_and_factored_grad_through_the_abi() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut gram = vec![0.0f32; (N * N) as usize];
    let mut norms = vec![0.0f32; N as usize];
    let mut choice = std::mem::MaybeUninit::<gg_form_choice>::uninit();
    // SAFETY: valid descriptors and out-pointers.
    unsafe {
        let st = gg_ghost_gram(ctx.0, p.shape(), &p.train(), tm(&mut gram), 1.0, 0.0, 0, choice.as_mut_ptr());
        expect(st, GG_STATUS_OK, &[]);
        let st = gg_ghost_sqnorm(ctx.0, p.shape(), &p.train(), tm(&mut norms), 1.0, 0.0, 0, ptr::null_mut());
        expect(st, GG_STATUS_OK, &[]);
        let st = gg_ghost_gram(ctx.0, p.shape(), &p.train(), tm(&mut gram), 1.0, 0.0, GG_FORM_REQUEST_DENSE_QUERY, ptr::null_mut());
        expect(st, GG_STATUS_INVALID_ARGUMENT, &["form", "dense-query"]);
    }
    for n in 0..N as usize {
        let d = gram[n * N as usize + n];
        assert!((d - norms[n]).abs() <= 1e-5 * d.abs(), "diag {d} vs norm {}", norms[n]);
    }
    let mut fg = vec![0.0f32; (V * D_OUT * D_IN) as usize];
    let mut fb = vec![0.0f32; (V * D_OUT) as usize];
    // SAFETY: valid descriptors.
    let st = unsafe { gg_factored_grad(ctx.0, p.shape(), &p.query(), ABSENT, tm(&mut fg), tm(&mut fb), 1.0, 0.0) };
    expect(st, GG_STATUS_OK, &[]);
    // SAFETY: the bias output is missing on purpose.
    let st = unsafe {
        gg_factored_grad(ctx.0, p.shape(), &p.query(), ABSENT, tm(&mut fg), gg_tensor_mut { ptr: ptr::null_mut(), len: 0 }, 1.0, 0.0)
    };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["out_bias"]);
}

#[test]
fn half_precision_inputs_pass_through_the_abi() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let to_bf16 = |v: &[f32]| v.iter().map(|&x| half::bf16::from_f32(x)).collect::<Vec<_>>();
    let (a, b, aq, bq) = (to_bf16(&p.a), to_bf16(&p.b), to_bf16(&p.aq), to_bf16(&p.bq));
    let mut train = p.train();
    train.a = t(&a, GG_DTYPE_BF16);
    train.b = t(&b, GG_DTYPE_BF16);
    let mut query = p.query();
    query.aq = t(&aq, GG_DTYPE_BF16);
    query.bq = t(&bq, GG_DTYPE_BF16);
    let mut out = vec![0.0f32; (N * V) as usize];
    expect(dot(ctx.0, &train, &query, tm(&mut out), GG_FORM_REQUEST_AUTO), GG_STATUS_OK, &[]);
    // Mixed dtypes between train and query.
    let st = dot(ctx.0, &train, &p.query(), tm(&mut out), GG_FORM_REQUEST_AUTO);
    expect(st, GG_STATUS_DTYPE, &["aq"]);
}

// =============================================================================================
// Projections, influence scores, In-Run Data Shapley and preconditioners through the ABI: each
// function against the Rust API, and its null / misaligned / length / overlap errors.
// =============================================================================================

use ghostgrad::projection::materialize_projection;
use ghostgrad::projection::precondition::{Kfac, RawFisher};
use ghostgrad::{
    Accumulate, Distribution, GhgLayer, OutColumns, ProjectLayer, ProjectionKind, ProjectionSpec, ScoreDims, ScoreMode,
    TensorMut, Which,
};

const K_I: u64 = 3;
const K_O: u64 = 2;
const KW: u64 = K_I * K_O;

/// Deterministic values in [-1, 1) (not zeros, not a pattern the code could special-case).
fn vals(len: u64, seed: u32) -> Vec<f32> {
    (0..len as u32).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 7) % 2001) as f32 / 1000.0 - 1.0).collect()
}

fn tf64(v: &mut [f64]) -> gg_tensor_f64_mut {
    gg_tensor_f64_mut { ptr: v.as_mut_ptr() as *mut c_void, len: v.len() as u64 }
}

fn random_proj(seed: u64, layer: u32) -> gg_projection {
    gg_projection {
        k_i: K_I,
        k_o: K_O,
        kind: GG_PROJECTION_RANDOM,
        dist: GG_DISTRIBUTION_GAUSSIAN,
        seed,
        layer,
        p_in: ABSENT,
        p_out: ABSENT,
    }
}

fn rust_random(seed: u64, layer: u32) -> ProjectionSpec<'static> {
    ProjectionSpec { k_i: K_I, k_o: K_O, kind: ProjectionKind::Random { seed, layer, dist: Distribution::Gaussian } }
}

fn rust_shape() -> ghostgrad::LayerShape {
    ghostgrad::LayerShape::new(D_IN, D_OUT).with_bias(true)
}

fn rust_train(p: &Problem) -> ghostgrad::TrainFactors<'_> {
    ghostgrad::TrainFactors { a: p.a[..].into(), b: p.b[..].into(), n: N, t: T, mask: Some(p.mask[..].into()) }
}

/// Max relative error of `got` against `want` (scaled by max |want|).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err = got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    assert!(scale > 0.0, "degenerate expected values {want:?}");
    err / scale
}

/// `gg_kron_project` of the problem into `out` at `(offset, stride)`.
fn project(ctx: *const gg_context, train: &gg_train, proj: &gg_projection, out: gg_tensor_mut, offset: u64, stride: u64) -> gg_status {
    let p = Problem::new();
    // SAFETY: descriptors of live memory of the test (or deliberately invalid ones).
    unsafe { gg_kron_project(ctx, p.shape(), train, proj, out, offset, stride, 1.5, 0.0) }
}

#[test]
fn kron_project_matches_the_rust_api_and_a_dense_projection_of_the_same_matrices() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    // Into columns 2..8 of a [N, 9] output: the other columns keep their sentinel.
    let stride = KW + 3;
    let mut out = vec![123.0f32; (N * stride) as usize];
    let st = project(ctx.0, &p.train(), &random_proj(11, 2), tm(&mut out), 2, stride);
    expect(st, GG_STATUS_OK, &[]);
    let mut want = vec![123.0f32; (N * stride) as usize];
    ghostgrad::Context::cpu()
        .kron_project(
            &rust_shape(),
            &rust_train(&p),
            &rust_random(11, 2),
            &mut TensorMut::from(&mut want[..]),
            OutColumns { offset: 2, row_stride: stride },
            Accumulate { scale: 1.5, beta: 0.0 },
        )
        .unwrap();
    assert_eq!(out, want);
    for n in 0..N as usize {
        let row = &out[n * stride as usize..(n + 1) * stride as usize];
        assert_eq!(&row[..2], &[123.0, 123.0]);
        assert_eq!(row[stride as usize - 1], 123.0);
        assert!(row[2..2 + KW as usize].iter().all(|x| x.is_finite() && *x != 123.0), "{row:?}");
    }

    // The generated matrices through gg_projection_matrix, given back as a dense projection,
    // on the float64 reference context: the same Ĝ within f32 rounding.
    let mut p_in = vec![f32::NAN; (K_I * (D_IN + 1)) as usize];
    let mut p_out = vec![f32::NAN; (K_O * D_OUT) as usize];
    // SAFETY: live outputs of the right lengths.
    unsafe {
        let st = gg_projection_matrix(ctx.0, 11, 2, GG_WHICH_IN, K_I, D_IN + 1, GG_DISTRIBUTION_GAUSSIAN, tm(&mut p_in));
        expect(st, GG_STATUS_OK, &[]);
        let st = gg_projection_matrix(ctx.0, 11, 2, GG_WHICH_OUT, K_O, D_OUT, GG_DISTRIBUTION_GAUSSIAN, tm(&mut p_out));
        expect(st, GG_STATUS_OK, &[]);
    }
    let mut dense = random_proj(0, 0);
    dense.kind = GG_PROJECTION_DENSE;
    dense.p_in = t(&p_in, GG_DTYPE_F32);
    dense.p_out = t(&p_out, GG_DTYPE_F32);
    let reference = Ctx::reference();
    let mut exact = vec![f32::NAN; (N * KW) as usize];
    expect(project(reference.0, &p.train(), &dense, tm(&mut exact), 0, KW), GG_STATUS_OK, &[]);
    let fast: Vec<f64> = (0..N as usize).flat_map(|n| out[n * stride as usize + 2..n * stride as usize + 2 + KW as usize].to_vec()).map(f64::from).collect();
    assert!(rel_err(&exact, &fast) < 1e-5, "{exact:?} vs {fast:?}");
}

#[test]
fn kron_project_rejects_bad_buffers_and_codes() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0.0f32; (N * KW) as usize];
    // SAFETY: null descriptors are detected before they are read.
    unsafe {
        let st = gg_kron_project(ctx.0, p.shape(), &p.train(), ptr::null(), tm(&mut out), 0, KW, 1.0, 0.0);
        expect(st, GG_STATUS_NULL_POINTER, &["proj"]);
        let st = gg_kron_project(ptr::null(), p.shape(), &p.train(), &random_proj(1, 0), tm(&mut out), 0, KW, 1.0, 0.0);
        expect(st, GG_STATUS_NULL_POINTER, &["ctx"]);
    }
    let st = project(ctx.0, &p.train(), &random_proj(1, 0), gg_tensor_mut { ptr: ptr::null_mut(), len: N * KW }, 0, KW);
    expect(st, GG_STATUS_NULL_POINTER, &["`out`"]);
    // A dense projection with a missing matrix.
    let mut dense = random_proj(1, 0);
    dense.kind = GG_PROJECTION_DENSE;
    let p_out = vals(K_O * D_OUT, 9);
    dense.p_out = t(&p_out, GG_DTYPE_F32);
    expect(project(ctx.0, &p.train(), &dense, tm(&mut out), 0, KW), GG_STATUS_NULL_POINTER, &["proj.p_in"]);
    // Misaligned dense matrix and output.
    let p_in_buf = vals(K_I * (D_IN + 1) + 1, 8);
    // SAFETY: two bytes into a live allocation.
    dense.p_in = gg_tensor { ptr: unsafe { (p_in_buf.as_ptr() as *const u8).add(2) } as *const c_void, len: K_I * (D_IN + 1), dtype: GG_DTYPE_F32 };
    expect(project(ctx.0, &p.train(), &dense, tm(&mut out), 0, KW), GG_STATUS_MISALIGNED, &["proj.p_in"]);
    let mut raw = vec![0.0f32; (N * KW + 1) as usize];
    // SAFETY: one byte into a live allocation.
    let odd = gg_tensor_mut { ptr: unsafe { (raw.as_mut_ptr() as *mut u8).add(1) } as *mut c_void, len: N * KW };
    expect(project(ctx.0, &p.train(), &random_proj(1, 0), odd, 0, KW), GG_STATUS_MISALIGNED, &["out"]);
    // Lengths: a short dense matrix, a short output, columns beyond the stride.
    dense.p_in = gg_tensor { ptr: p_in_buf.as_ptr() as *const c_void, len: K_I * D_IN, dtype: GG_DTYPE_F32 };
    let (want, got) = ((K_I * (D_IN + 1)).to_string(), (K_I * D_IN).to_string());
    expect(project(ctx.0, &p.train(), &dense, tm(&mut out), 0, KW), GG_STATUS_LENGTH_MISMATCH, &["p_in", &want, &got]);
    let mut short = vec![0.0f32; (N * KW - 1) as usize];
    expect(project(ctx.0, &p.train(), &random_proj(1, 0), tm(&mut short), 0, KW), GG_STATUS_LENGTH_MISMATCH, &["`out`"]);
    expect(project(ctx.0, &p.train(), &random_proj(1, 0), tm(&mut out), 1, KW), GG_STATUS_INVALID_ARGUMENT, &["row_stride"]);
    // Codes and sizes.
    let mut bad = random_proj(1, 0);
    bad.kind = 4;
    expect(project(ctx.0, &p.train(), &bad, tm(&mut out), 0, KW), GG_STATUS_INVALID_ARGUMENT, &["proj.kind", "4"]);
    let mut bad = random_proj(1, 0);
    bad.dist = 3;
    expect(project(ctx.0, &p.train(), &bad, tm(&mut out), 0, KW), GG_STATUS_INVALID_ARGUMENT, &["dist", "3"]);
    let mut bad = random_proj(1, 0);
    bad.k_i = 0;
    expect(project(ctx.0, &p.train(), &bad, tm(&mut out), 0, KW), GG_STATUS_ZERO_SIZE, &["k_i"]);
    // The output overlapping an input.
    let mut train = p.train();
    let mut aliased = p.b.clone();
    train.b = t(&aliased, GG_DTYPE_F32);
    let out_alias = gg_tensor_mut { ptr: aliased.as_mut_ptr() as *mut c_void, len: N * KW };
    expect(project(ctx.0, &train, &random_proj(1, 0), out_alias, 0, KW), GG_STATUS_INVALID_ARGUMENT, &["`out`", "overlaps", "train.b"]);
}

#[test]
fn kron_project_layers_matches_the_rust_api_and_names_the_bad_layer() {
    let p = Problem::new();
    let ctx = Ctx::cpu();
    // Layer 1: the problem without its mask and with a 2×2 Rademacher projection.
    let mut proj1 = random_proj(5, 1);
    proj1.k_i = 2;
    proj1.dist = GG_DISTRIBUTION_RADEMACHER;
    let mut train1 = p.train();
    train1.mask = ABSENT;
    let layers = [
        gg_project_layer { shape: p.shape(), train: p.train(), proj: random_proj(5, 0) },
        gg_project_layer { shape: p.shape(), train: train1, proj: proj1 },
    ];
    let width = KW + 2 * K_O;
    let mut out = vec![f32::NAN; (N * width) as usize];
    // SAFETY: two valid layer descriptors.
    let st = unsafe { gg_kron_project_layers(ctx.0, layers.as_ptr(), 2, tm(&mut out), 1.0, 0.0) };
    expect(st, GG_STATUS_OK, &[]);
    let rust_layers = [
        ProjectLayer { shape: rust_shape(), train: rust_train(&p), proj: rust_random(5, 0) },
        ProjectLayer {
            shape: rust_shape(),
            train: ghostgrad::TrainFactors { mask: None, ..rust_train(&p) },
            proj: ProjectionSpec { k_i: 2, k_o: K_O, kind: ProjectionKind::Random { seed: 5, layer: 1, dist: Distribution::Rademacher } },
        },
    ];
    let mut want = vec![0.0f32; (N * width) as usize];
    ghostgrad::Context::cpu().kron_project_layers(&rust_layers, &mut TensorMut::from(&mut want[..]), Accumulate::overwrite()).unwrap();
    assert_eq!(out, want);
    assert!(out.iter().all(|x| x.is_finite()));

    // Errors name the layer.
    let mut bad = layers;
    bad[1].train.a.len -= 1;
    // SAFETY: as above (the short length is detected).
    let st = unsafe { gg_kron_project_layers(ctx.0, bad.as_ptr(), 2, tm(&mut out), 1.0, 0.0) };
    expect(st, GG_STATUS_LENGTH_MISMATCH, &["layers[1]", "`a`"]);
    let mut bad = layers;
    bad[1].proj.kind = 9;
    // SAFETY: as above.
    let st = unsafe { gg_kron_project_layers(ctx.0, bad.as_ptr(), 2, tm(&mut out), 1.0, 0.0) };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["layers[1].proj.kind"]);
    let mut bad = layers;
    let unaligned = vec![0u32; (N * T * D_IN + 1) as usize];
    // SAFETY: one byte into a live allocation.
    bad[0].train.a.ptr = unsafe { (unaligned.as_ptr() as *const u8).add(1) } as *const c_void;
    // SAFETY: as above.
    let st = unsafe { gg_kron_project_layers(ctx.0, bad.as_ptr(), 2, tm(&mut out), 1.0, 0.0) };
    expect(st, GG_STATUS_MISALIGNED, &["layers[0].train.a"]);
    // SAFETY: null and empty arrays are detected before reading.
    unsafe {
        expect(gg_kron_project_layers(ctx.0, ptr::null(), 2, tm(&mut out), 1.0, 0.0), GG_STATUS_NULL_POINTER, &["layers"]);
        expect(gg_kron_project_layers(ctx.0, layers.as_ptr(), 0, tm(&mut out), 1.0, 0.0), GG_STATUS_ZERO_SIZE, &["n_layers"]);
        let mut short = vec![0.0f32; (N * width - 2) as usize];
        let st = gg_kron_project_layers(ctx.0, layers.as_ptr(), 2, tm(&mut short), 1.0, 0.0);
        expect(st, GG_STATUS_LENGTH_MISMATCH, &["out"]);
    }
    // The output overlapping layer 1's activations.
    let mut aliased = p.a.clone();
    let mut over = layers;
    over[1].train.a = t(&aliased, GG_DTYPE_F32);
    let out_alias = gg_tensor_mut { ptr: aliased.as_mut_ptr() as *mut c_void, len: N * width };
    // SAFETY: as above (the overlap is detected before anything is written).
    let st = unsafe { gg_kron_project_layers(ctx.0, over.as_ptr(), 2, out_alias, 1.0, 0.0) };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["overlaps", "layers[1].train.a"]);
}

#[test]
fn projection_matrix_is_the_generator_and_rejects_bad_arguments() {
    let ctx = Ctx::cpu();
    let (k, d) = (5u64, 7u64);
    let mut out = vec![f32::NAN; (k * d) as usize];
    // SAFETY: a live output of k·d floats.
    let st = unsafe { gg_projection_matrix(ctx.0, 42, 3, GG_WHICH_OUT, k, d, GG_DISTRIBUTION_RADEMACHER, tm(&mut out)) };
    expect(st, GG_STATUS_OK, &[]);
    assert_eq!(out, materialize_projection(42, 3, Which::Out, k, d, Distribution::Rademacher));
    let s = 1.0 / (k as f32).sqrt();
    assert!(out.iter().all(|&x| x == s || x == -s), "Rademacher entries are ±1/√k: {out:?}");
    // SAFETY: every call below is rejected before anything is written (or writes `out`).
    unsafe {
        let st = gg_projection_matrix(ctx.0, 42, 3, 2, k, d, GG_DISTRIBUTION_GAUSSIAN, tm(&mut out));
        expect(st, GG_STATUS_INVALID_ARGUMENT, &["which", "2"]);
        let st = gg_projection_matrix(ctx.0, 42, 3, GG_WHICH_IN, k, d, 7, tm(&mut out));
        expect(st, GG_STATUS_INVALID_ARGUMENT, &["dist", "7"]);
        let st = gg_projection_matrix(ctx.0, 42, 3, GG_WHICH_IN, k, d + 1, GG_DISTRIBUTION_GAUSSIAN, tm(&mut out));
        expect(st, GG_STATUS_LENGTH_MISMATCH, &["out", &(k * (d + 1)).to_string()]);
        let null = gg_tensor_mut { ptr: ptr::null_mut(), len: k * d };
        expect(gg_projection_matrix(ctx.0, 42, 3, GG_WHICH_IN, k, d, 0, null), GG_STATUS_NULL_POINTER, &["out"]);
        let mut raw = vec![0.0f32; (k * d + 1) as usize];
        let odd = gg_tensor_mut { ptr: (raw.as_mut_ptr() as *mut u8).add(2) as *mut c_void, len: k * d };
        expect(gg_projection_matrix(ctx.0, 42, 3, GG_WHICH_IN, k, d, 0, odd), GG_STATUS_MISALIGNED, &["out"]);
        expect(gg_projection_matrix(ptr::null(), 42, 3, GG_WHICH_IN, k, d, 0, tm(&mut out)), GG_STATUS_NULL_POINTER, &["ctx"]);
        expect(gg_projection_matrix(ctx.0, 42, 3, GG_WHICH_IN, 0, d, 0, tm(&mut out)), GG_STATUS_ZERO_SIZE, &["k"]);
    }
}

#[test]
fn influence_scores_match_the_rust_api_and_reject_bad_arguments() {
    let ctx = Ctx::cpu();
    let (nt, nb, k) = (3u64, 4u64, 5u64);
    let test = vals(nt * k, 21);
    let train = vals(nb * k, 22);
    let train_self: Vec<f32> = train.chunks(k as usize).map(|r| r.iter().map(|x| x * x).sum()).collect();
    let call = |test: gg_tensor, train: gg_tensor, ts: gg_tensor, mode, out: gg_tensor_mut| {
        // SAFETY: descriptors of live memory of the test (or deliberately invalid ones).
        unsafe { gg_influence_scores(ctx.0, test, train, nt, nb, k, ts, mode, out, 2.0, 0.0) }
    };
    for (mode, code) in [(ScoreMode::Dot, GG_SCORE_DOT), (ScoreMode::Cosine, GG_SCORE_COSINE), (ScoreMode::L2, GG_SCORE_L2)] {
        let ts = if mode == ScoreMode::Dot { ABSENT } else { t(&train_self, GG_DTYPE_F32) };
        let mut out = vec![f32::NAN; (nt * nb) as usize];
        expect(call(t(&test, GG_DTYPE_F32), t(&train, GG_DTYPE_F32), ts, code, tm(&mut out)), GG_STATUS_OK, &[]);
        let mut want = vec![0.0f32; (nt * nb) as usize];
        let ts_rust = ghostgrad::Tensor::from(&train_self[..]);
        ghostgrad::Context::cpu()
            .influence_scores(
                &test[..].into(),
                &train[..].into(),
                ScoreDims { n_test: nt, n_block: nb, k },
                &mut TensorMut::from(&mut want[..]),
                mode,
                if mode == ScoreMode::Dot { None } else { Some(&ts_rust) },
                Accumulate { scale: 2.0, beta: 0.0 },
            )
            .unwrap();
        assert_eq!(out, want, "{mode:?}");
        // And against the formula in f64.
        let exact: Vec<f64> = (0..(nt * nb) as usize)
            .map(|i| {
                let (q, j) = (i / nb as usize, i % nb as usize);
                let s: f64 = (0..k as usize).map(|c| test[q * k as usize + c] as f64 * train[j * k as usize + c] as f64).sum();
                2.0 * match mode {
                    ScoreMode::Dot => s,
                    ScoreMode::Cosine => s / (train_self[j] as f64).sqrt(),
                    ScoreMode::L2 => s - 0.5 * train_self[j] as f64,
                }
            })
            .collect();
        assert!(rel_err(&out, &exact) < 1e-5, "{mode:?}: {out:?} vs {exact:?}");
    }
    let mut out = vec![0.0f32; (nt * nb) as usize];
    let (te, tr, ts) = (t(&test, GG_DTYPE_F32), t(&train, GG_DTYPE_F32), t(&train_self, GG_DTYPE_F32));
    expect(call(te, tr, ts, GG_SCORE_DOT, tm(&mut out)), GG_STATUS_INVALID_ARGUMENT, &["train_self"]);
    expect(call(te, tr, ABSENT, GG_SCORE_L2, tm(&mut out)), GG_STATUS_INVALID_ARGUMENT, &["train_self"]);
    expect(call(te, tr, ABSENT, 3, tm(&mut out)), GG_STATUS_INVALID_ARGUMENT, &["mode", "3"]);
    expect(call(ABSENT, tr, ABSENT, GG_SCORE_DOT, tm(&mut out)), GG_STATUS_NULL_POINTER, &["test"]);
    let mut short = tr;
    short.len -= 1;
    expect(call(te, short, ABSENT, GG_SCORE_DOT, tm(&mut out)), GG_STATUS_LENGTH_MISMATCH, &["train_block"]);
    let mut wrong = te;
    wrong.dtype = GG_DTYPE_BF16;
    wrong.len *= 2;
    expect(call(wrong, tr, ABSENT, GG_SCORE_DOT, tm(&mut out)), GG_STATUS_DTYPE, &["test"]);
    let buf = vals(nt * k + 1, 23);
    // SAFETY: two bytes into a live allocation.
    let odd = gg_tensor { ptr: unsafe { (buf.as_ptr() as *const u8).add(2) } as *const c_void, len: nt * k, dtype: GG_DTYPE_F32 };
    expect(call(odd, tr, ABSENT, GG_SCORE_DOT, tm(&mut out)), GG_STATUS_MISALIGNED, &["test"]);
    let mut aliased = test.clone();
    let alias_out = gg_tensor_mut { ptr: aliased.as_mut_ptr() as *mut c_void, len: nt * nb };
    expect(call(t(&aliased, GG_DTYPE_F32), tr, ABSENT, GG_SCORE_DOT, alias_out), GG_STATUS_INVALID_ARGUMENT, &["overlaps", "test"]);
}

/// Validation-side factors of one In-Run layer for the problem's shapes (T_v = 3, with bias).
struct Val {
    a_val: Vec<f32>,
    b_val: Vec<f32>,
    a_dot: Vec<f32>,
    b_dot: Vec<f32>,
    val_mask: Vec<u8>,
}

const T_V: u64 = 3;

impl Val {
    fn new() -> Self {
        Val {
            a_val: vals(T_V * D_IN, 31),
            b_val: vals(T_V * D_OUT, 32),
            a_dot: vals(T_V * D_IN, 33),
            b_dot: vals(T_V * D_OUT, 34),
            val_mask: vec![1, 0, 1],
        }
    }
    fn layer(&self, p: &Problem) -> gg_ghg_layer {
        gg_ghg_layer {
            shape: p.shape(),
            train: p.train(),
            a_val: t(&self.a_val, GG_DTYPE_F32),
            b_val: t(&self.b_val, GG_DTYPE_F32),
            a_dot: t(&self.a_dot, GG_DTYPE_F32),
            b_dot: t(&self.b_dot, GG_DTYPE_F32),
            t_v: T_V,
            val_mask: t(&self.val_mask, GG_DTYPE_U8),
        }
    }
    fn rust<'a>(&'a self, p: &'a Problem) -> GhgLayer<'a> {
        GhgLayer {
            shape: rust_shape(),
            train: rust_train(p),
            a_val: self.a_val[..].into(),
            b_val: self.b_val[..].into(),
            a_dot: self.a_dot[..].into(),
            b_dot: self.b_dot[..].into(),
            t_v: T_V,
            val_mask: Some(self.val_mask[..].into()),
        }
    }
}

#[test]
fn ghg_matches_the_rust_api_reports_every_pseudo_layer_and_rejects_bad_arguments() {
    let p = Problem::new();
    let (v0, v1) = (Val::new(), Val { a_val: vals(T_V * D_IN, 41), ..Val::new() });
    let ctx = Ctx::cpu();
    let layers = [v0.layer(&p), v1.layer(&p)];
    let mut out = vec![f32::NAN; N as usize];
    let mut choices = [std::mem::MaybeUninit::<gg_form_choice>::uninit(); 6];
    let eta = 0.3f32;
    // SAFETY: valid descriptors; six writable choices.
    let st = unsafe {
        gg_ghg(ctx.0, layers.as_ptr(), 2, eta, tm(&mut out), 1.0, 0.0, GG_FORM_REQUEST_AUTO, choices.as_mut_ptr() as *mut gg_form_choice)
    };
    expect(st, GG_STATUS_OK, &[]);
    let mut want = vec![0.0f32; N as usize];
    let rust = ghostgrad::Context::cpu()
        .ghg(&[v0.rust(&p), v1.rust(&p)], eta, &mut TensorMut::from(&mut want[..]), Accumulate::overwrite(), Default::default())
        .unwrap();
    assert_eq!(out, want);
    assert!(out.iter().all(|x| x.is_finite() && *x != 0.0), "{out:?}");
    // SAFETY: all six written by the successful call.
    let choices: Vec<gg_form_choice> = choices.iter().map(|c| unsafe { c.assume_init() }).collect();
    assert_eq!(rust.len(), 6);
    for (c, r) in choices.iter().zip(&rust) {
        assert_eq!(c.form, r.form as u32);
    }
    let reason = last_reason();
    assert_eq!(reason.lines().count(), 6, "{reason}");
    assert!(reason.lines().next().unwrap().starts_with("layers[0] (a_val, b_val): "), "{reason}");
    assert!(reason.lines().nth(5).unwrap().starts_with("layers[1] (a_dot, b_val): "), "{reason}");
    // Independent check: the float64 reference context through the ABI.
    let reference = Ctx::reference();
    let mut exact = vec![f32::NAN; N as usize];
    // SAFETY: as above, no choices requested.
    let st = unsafe { gg_ghg(reference.0, layers.as_ptr(), 2, eta, tm(&mut exact), 1.0, 0.0, 0, ptr::null_mut()) };
    expect(st, GG_STATUS_OK, &[]);
    let exact: Vec<f64> = exact.iter().map(|&x| x as f64).collect();
    assert!(rel_err(&out, &exact) < 1e-5, "{out:?} vs {exact:?}");

    let run = |ls: &[gg_ghg_layer], out: gg_tensor_mut, eta: f32| {
        // SAFETY: descriptors of live memory (or deliberately invalid ones, detected first).
        unsafe { gg_ghg(ctx.0, ls.as_ptr(), ls.len(), eta, out, 1.0, 0.0, GG_FORM_REQUEST_AUTO, ptr::null_mut()) }
    };
    let mut bad = layers;
    bad[1].b_dot.len -= 1;
    expect(run(&bad, tm(&mut out), eta), GG_STATUS_LENGTH_MISMATCH, &["layers[1]"]);
    let mut bad = layers;
    bad[0].a_dot = ABSENT;
    expect(run(&bad, tm(&mut out), eta), GG_STATUS_NULL_POINTER, &["layers[0].a_dot"]);
    let buf = vals(T_V * D_IN + 1, 35);
    let mut bad = layers;
    // SAFETY: one byte into a live allocation.
    bad[1].a_val.ptr = unsafe { (buf.as_ptr() as *const u8).add(1) } as *const c_void;
    expect(run(&bad, tm(&mut out), eta), GG_STATUS_MISALIGNED, &["layers[1].a_val"]);
    expect(run(&layers, tm(&mut out), f32::INFINITY), GG_STATUS_INVALID_ARGUMENT, &["eta"]);
    let mut short = vec![0.0f32; N as usize + 1];
    expect(run(&layers, tm(&mut short), eta), GG_STATUS_LENGTH_MISMATCH, &["out"]);
    let mut aliased = v0.b_val.clone();
    let mut over = layers;
    over[0].b_val = t(&aliased, GG_DTYPE_F32);
    let alias_out = gg_tensor_mut { ptr: aliased.as_mut_ptr() as *mut c_void, len: N };
    expect(run(&over, alias_out, eta), GG_STATUS_INVALID_ARGUMENT, &["overlaps", "layers[0].b_val"]);
    // SAFETY: null and empty arrays are detected before reading.
    unsafe {
        expect(gg_ghg(ctx.0, ptr::null(), 1, eta, tm(&mut out), 1.0, 0.0, 0, ptr::null_mut()), GG_STATUS_NULL_POINTER, &["layers"]);
        expect(gg_ghg(ctx.0, layers.as_ptr(), 0, eta, tm(&mut out), 1.0, 0.0, 0, ptr::null_mut()), GG_STATUS_ZERO_SIZE, &["n_layers"]);
        expect(gg_ghg(ctx.0, layers.as_ptr(), 2, eta, tm(&mut out), 1.0, 0.0, 8, ptr::null_mut()), GG_STATUS_INVALID_ARGUMENT, &["form"]);
        // A misaligned choices array is rejected before anything is computed or written.
        let mut sentinel = vec![7.0f32; N as usize];
        let mut space = [0u64; 64];
        let odd = (space.as_mut_ptr() as *mut u8).add(4) as *mut gg_form_choice;
        let st = gg_ghg(ctx.0, layers.as_ptr(), 2, eta, tm(&mut sentinel), 1.0, 0.0, 0, odd);
        expect(st, GG_STATUS_MISALIGNED, &["choices_out"]);
        assert_eq!(sentinel, vec![7.0f32; N as usize]);
    }
}

#[test]
fn accumulate_values_sums_in_float64_and_rejects_bad_arguments() {
    let ctx = Ctx::cpu();
    let values: Vec<f32> = vec![1.0e-3, 2.5, -0.75, 1.0e8, 3.0e-5, -2.0];
    let ids: Vec<i32> = vec![2, 0, 2, 1, 1, 0];
    let mut phi = vec![0.5f64, -1.0, 0.25];
    // SAFETY: live buffers of matching lengths.
    let st = unsafe { gg_accumulate_values(ctx.0, t(&values, GG_DTYPE_F32), t(&ids, GG_DTYPE_I32), tf64(&mut phi)) };
    expect(st, GG_STATUS_OK, &[]);
    let mut want = vec![0.5f64, -1.0, 0.25];
    for (&x, &id) in values.iter().zip(&ids) {
        want[id as usize] += x as f64;
    }
    assert_eq!(phi, want);
    // 1e8 + 3e-5 is kept in f64 (in f32 the small value would vanish).
    assert_ne!(phi[1], (-1.0f32 + 1.0e8f32 + 3.0e-5f32) as f64);
    let mut rust = vec![0.5f64, -1.0, 0.25];
    ghostgrad::Context::cpu()
        .accumulate_values(&values[..].into(), &ids[..].into(), &mut TensorMut::from(&mut rust[..]))
        .unwrap();
    assert_eq!(phi, rust);

    let call = |v: gg_tensor, i: gg_tensor, phi: gg_tensor_f64_mut| {
        // SAFETY: descriptors of live memory (or deliberately invalid ones, detected first).
        unsafe { gg_accumulate_values(ctx.0, v, i, phi) }
    };
    let (v, i) = (t(&values, GG_DTYPE_F32), t(&ids, GG_DTYPE_I32));
    let before = phi.clone();
    let bad_ids = vec![0i32, 1, 3, 0, 0, 0];
    expect(call(v, t(&bad_ids, GG_DTYPE_I32), tf64(&mut phi)), GG_STATUS_INVALID_ARGUMENT, &["ids[2] = 3"]);
    assert_eq!(phi, before, "nothing written on error");
    expect(call(v, t(&ids[..5], GG_DTYPE_I32), tf64(&mut phi)), GG_STATUS_LENGTH_MISMATCH, &["ids"]);
    expect(call(v, t(&values, GG_DTYPE_F32), tf64(&mut phi)), GG_STATUS_DTYPE, &["ids"]);
    expect(call(v, i, gg_tensor_f64_mut { ptr: ptr::null_mut(), len: 3 }), GG_STATUS_NULL_POINTER, &["phi"]);
    expect(call(v, i, gg_tensor_f64_mut { ptr: phi.as_mut_ptr() as *mut c_void, len: 0 }), GG_STATUS_ZERO_SIZE, &["phi"]);
    let mut raw = vec![0.0f64; 4];
    // SAFETY: four bytes into a live allocation: 4-aligned, not 8-aligned.
    let odd = gg_tensor_f64_mut { ptr: unsafe { (raw.as_mut_ptr() as *mut u8).add(4) } as *mut c_void, len: 3 };
    expect(call(v, i, odd), GG_STATUS_MISALIGNED, &["phi", "8 bytes"]);
    let mut aliased = vec![0.0f64; 3];
    let alias_values = gg_tensor { ptr: aliased.as_ptr() as *const c_void, len: 6, dtype: GG_DTYPE_F32 };
    expect(call(alias_values, i, tf64(&mut aliased)), GG_STATUS_INVALID_ARGUMENT, &["`phi`", "overlaps", "values"]);
    // SAFETY: a null context is detected first.
    expect(unsafe { gg_accumulate_values(ptr::null(), v, i, tf64(&mut phi)) }, GG_STATUS_NULL_POINTER, &["ctx"]);
}

/// Projected gradients `[n, KW]` of many samples (more rows than columns: a full-rank Fisher).
fn grads(n: u64, seed: u32) -> Vec<f32> {
    vals(n * KW, seed)
}

#[test]
fn raw_fisher_handle_matches_the_rust_api_and_rejects_bad_arguments() {
    let n = 9u64;
    let g = grads(n, 51);
    let mut h: *mut gg_raw_fisher = ptr::null_mut();
    // SAFETY: a live buffer and out-pointer.
    expect(unsafe { gg_raw_fisher_fit(t(&g, GG_DTYPE_F32), n, KW, &mut h) }, GG_STATUS_OK, &[]);
    assert!(!h.is_null());
    let test = grads(2, 52);
    let mut out = vec![f32::NAN; (2 * KW) as usize];
    // SAFETY: a live handle and buffers.
    expect(unsafe { gg_raw_fisher_apply(h, t(&test, GG_DTYPE_F32), 2, tm(&mut out)) }, GG_STATUS_OK, &[]);
    let rust = RawFisher::fit(&g, n as usize, KW as usize).unwrap();
    assert_eq!(out, rust.apply(&test, 2).unwrap());
    let mut lambda = f64::NAN;
    // SAFETY: a live handle and a writable double.
    expect(unsafe { gg_raw_fisher_damping(h, &mut lambda) }, GG_STATUS_OK, &[]);
    assert_eq!(lambda, rust.damping());
    // Independent check: (F + λI)·out = test, F from the definition, in f64.
    let fisher = |i: usize, j: usize| (0..n as usize).map(|r| g[r * 6 + i] as f64 * g[r * 6 + j] as f64).sum::<f64>() / n as f64;
    let trace: f64 = (0..6).map(|i| fisher(i, i)).sum();
    assert!((lambda - 0.1 * trace / 6.0).abs() <= 1e-12 * lambda);
    for r in 0..2 {
        for i in 0..6 {
            let lhs: f64 = (0..6).map(|j| (fisher(i, j) + if i == j { lambda } else { 0.0 }) * out[r * 6 + j] as f64).sum();
            assert!((lhs - test[r * 6 + i] as f64).abs() < 1e-4, "row {r} col {i}: {lhs} vs {}", test[r * 6 + i]);
        }
    }

    // SAFETY: every call below is rejected before memory is touched (or uses live buffers).
    unsafe {
        expect(gg_raw_fisher_fit(t(&g, GG_DTYPE_F32), n, KW, ptr::null_mut()), GG_STATUS_NULL_POINTER, &["out"]);
        let mut h2: *mut gg_raw_fisher = 0x8 as *mut gg_raw_fisher;
        expect(gg_raw_fisher_fit(t(&g, GG_DTYPE_F32), n + 1, KW, &mut h2), GG_STATUS_LENGTH_MISMATCH, &["grads"]);
        assert!(h2.is_null(), "a failed fit leaves NULL in *out");
        expect(gg_raw_fisher_fit(ABSENT, n, KW, &mut h2), GG_STATUS_NULL_POINTER, &["grads"]);
        expect(gg_raw_fisher_fit(t(&g, GG_DTYPE_F32), n, 0, &mut h2), GG_STATUS_ZERO_SIZE, &["k"]);
        let odd = gg_tensor { ptr: (g.as_ptr() as *const u8).add(2) as *const c_void, len: n * KW - 1, dtype: GG_DTYPE_F32 };
        expect(gg_raw_fisher_fit(odd, n, KW, &mut h2), GG_STATUS_MISALIGNED, &["grads"]);
        let halves: Vec<half::bf16> = g.iter().map(|&x| half::bf16::from_f32(x)).collect();
        expect(gg_raw_fisher_fit(t(&halves, GG_DTYPE_BF16), n, KW, &mut h2), GG_STATUS_DTYPE, &["grads"]);
        let zeros = vec![0.0f32; (n * KW) as usize];
        expect(gg_raw_fisher_fit(t(&zeros, GG_DTYPE_F32), n, KW, &mut h2), GG_STATUS_INVALID_ARGUMENT, &["positive definite"]);
        assert!(h2.is_null());

        expect(gg_raw_fisher_apply(ptr::null(), t(&test, GG_DTYPE_F32), 2, tm(&mut out)), GG_STATUS_NULL_POINTER, &["fisher"]);
        expect(gg_raw_fisher_apply(h, t(&test, GG_DTYPE_F32), 1, tm(&mut out)), GG_STATUS_LENGTH_MISMATCH, &["grads"]);
        let mut short = vec![0.0f32; KW as usize];
        expect(gg_raw_fisher_apply(h, t(&test, GG_DTYPE_F32), 2, tm(&mut short)), GG_STATUS_LENGTH_MISMATCH, &["out"]);
        let mut raw = vec![0.0f32; (2 * KW + 1) as usize];
        let odd_out = gg_tensor_mut { ptr: (raw.as_mut_ptr() as *mut u8).add(1) as *mut c_void, len: 2 * KW };
        expect(gg_raw_fisher_apply(h, t(&test, GG_DTYPE_F32), 2, odd_out), GG_STATUS_MISALIGNED, &["out"]);
        let mut inplace = test.clone();
        let alias = gg_tensor_mut { ptr: inplace.as_mut_ptr() as *mut c_void, len: 2 * KW };
        expect(gg_raw_fisher_apply(h, t(&inplace, GG_DTYPE_F32), 2, alias), GG_STATUS_INVALID_ARGUMENT, &["overlaps", "grads"]);
        expect(gg_raw_fisher_damping(h, ptr::null_mut()), GG_STATUS_NULL_POINTER, &["out"]);
        expect(gg_raw_fisher_damping(ptr::null(), &mut lambda), GG_STATUS_NULL_POINTER, &["fisher"]);
        gg_raw_fisher_destroy(h);
        gg_raw_fisher_destroy(ptr::null_mut());
    }
}

#[test]
fn kfac_handle_matches_the_rust_api_including_ekfac_and_rejects_bad_arguments() {
    let p = Problem::new();
    let proj = random_proj(13, 0);
    let mut h: *mut gg_kfac = ptr::null_mut();
    // SAFETY: live descriptors and out-pointer.
    expect(unsafe { gg_kfac_fit(p.shape(), &p.train(), &proj, &mut h) }, GG_STATUS_OK, &[]);
    let (c_a, c_b) = Kfac::covariances(&rust_shape(), &rust_train(&p), &rust_random(13, 0)).unwrap();
    let mut rust = Kfac::from_covariances(&c_a, K_I as usize, &c_b, K_O as usize).unwrap();
    let test = grads(3, 61);
    let mut out = vec![f32::NAN; (3 * KW) as usize];
    let mut lambda = f64::NAN;
    // SAFETY: a live handle and buffers.
    unsafe {
        expect(gg_kfac_apply(h, t(&test, GG_DTYPE_F32), 3, tm(&mut out)), GG_STATUS_OK, &[]);
        expect(gg_kfac_damping(h, &mut lambda), GG_STATUS_OK, &[]);
    }
    assert_eq!(out, rust.apply(&test, 3).unwrap());
    assert_eq!(lambda, rust.damping());
    // K-FAC's damping from the definition: 0.1·mean(Λ_B Λ_Aᵀ) = 0.1·trace(C_B)·trace(C_A)/k.
    let tr = |c: &[f64], k: usize| (0..k).map(|i| c[i * k + i]).sum::<f64>();
    let want = 0.1 * tr(&c_a, 3) * tr(&c_b, 2) / 6.0;
    assert!((lambda - want).abs() <= 1e-9 * want, "{lambda} vs {want}");

    // EK-FAC on projected training gradients of the same layer.
    let n = 5u64;
    let g = grads(n, 62);
    // SAFETY: a live handle and buffers.
    unsafe {
        expect(gg_kfac_ekfac_correct(h, t(&g, GG_DTYPE_F32), n), GG_STATUS_OK, &[]);
        expect(gg_kfac_apply(h, t(&test, GG_DTYPE_F32), 3, tm(&mut out)), GG_STATUS_OK, &[]);
        expect(gg_kfac_damping(h, &mut lambda), GG_STATUS_OK, &[]);
    }
    rust.ekfac_correct(&g, n as usize).unwrap();
    assert_eq!(out, rust.apply(&test, 3).unwrap());
    assert_eq!(lambda, rust.damping());

    // SAFETY: every call below is rejected before memory is touched (or uses live buffers).
    unsafe {
        let mut h2: *mut gg_kfac = 0x8 as *mut gg_kfac;
        expect(gg_kfac_fit(p.shape(), ptr::null(), &proj, &mut h2), GG_STATUS_NULL_POINTER, &["train"]);
        assert!(h2.is_null(), "a failed fit leaves NULL in *out");
        expect(gg_kfac_fit(p.shape(), &p.train(), ptr::null(), &mut h2), GG_STATUS_NULL_POINTER, &["proj"]);
        expect(gg_kfac_fit(p.shape(), &p.train(), &proj, ptr::null_mut()), GG_STATUS_NULL_POINTER, &["out"]);
        let mut bad = proj;
        bad.dist = 5;
        expect(gg_kfac_fit(p.shape(), &p.train(), &bad, &mut h2), GG_STATUS_INVALID_ARGUMENT, &["dist"]);
        let mut bad = proj;
        bad.k_o = 0;
        expect(gg_kfac_fit(p.shape(), &p.train(), &bad, &mut h2), GG_STATUS_ZERO_SIZE, &["k_o"]);
        let mut train = p.train();
        train.a.len += 1;
        expect(gg_kfac_fit(p.shape(), &train, &proj, &mut h2), GG_STATUS_LENGTH_MISMATCH, &["`a`"]);
        let mut train = p.train();
        let buf = vals(N * T * D_IN + 1, 63);
        train.a.ptr = (buf.as_ptr() as *const u8).add(2) as *const c_void;
        expect(gg_kfac_fit(p.shape(), &train, &proj, &mut h2), GG_STATUS_MISALIGNED, &["train.a"]);

        // A failed EK-FAC correction leaves the handle as it was.
        let before = out.clone();
        expect(gg_kfac_ekfac_correct(h, t(&g, GG_DTYPE_F32), n + 1), GG_STATUS_LENGTH_MISMATCH, &["grads"]);
        let zeros = vec![0.0f32; (n * KW) as usize];
        expect(gg_kfac_ekfac_correct(h, t(&zeros, GG_DTYPE_F32), n), GG_STATUS_INVALID_ARGUMENT, &["not positive"]);
        expect(gg_kfac_apply(h, t(&test, GG_DTYPE_F32), 3, tm(&mut out)), GG_STATUS_OK, &[]);
        assert_eq!(out, before);
        expect(gg_kfac_ekfac_correct(ptr::null_mut(), t(&g, GG_DTYPE_F32), n), GG_STATUS_NULL_POINTER, &["kfac"]);
        let odd = gg_tensor { ptr: (g.as_ptr() as *const u8).add(1) as *const c_void, len: n * KW - 1, dtype: GG_DTYPE_F32 };
        expect(gg_kfac_ekfac_correct(h, odd, n), GG_STATUS_MISALIGNED, &["grads"]);

        expect(gg_kfac_apply(ptr::null(), t(&test, GG_DTYPE_F32), 3, tm(&mut out)), GG_STATUS_NULL_POINTER, &["kfac"]);
        expect(gg_kfac_apply(h, t(&test, GG_DTYPE_F32), 2, tm(&mut out)), GG_STATUS_LENGTH_MISMATCH, &["grads"]);
        let mut long = vec![0.0f32; (3 * KW + 1) as usize];
        expect(gg_kfac_apply(h, t(&test, GG_DTYPE_F32), 3, tm(&mut long)), GG_STATUS_LENGTH_MISMATCH, &["out"]);
        let mut inplace = test.clone();
        let alias = gg_tensor_mut { ptr: inplace.as_mut_ptr().add(1) as *mut c_void, len: 3 * KW };
        let src = gg_tensor { ptr: inplace.as_ptr() as *const c_void, len: 3 * KW, dtype: GG_DTYPE_F32 };
        expect(gg_kfac_apply(h, src, 3, alias), GG_STATUS_INVALID_ARGUMENT, &["overlaps", "grads"]);
        let mut raw = vec![0.0f32; (3 * KW + 1) as usize];
        let odd_out = gg_tensor_mut { ptr: (raw.as_mut_ptr() as *mut u8).add(2) as *mut c_void, len: 3 * KW };
        expect(gg_kfac_apply(h, t(&test, GG_DTYPE_F32), 3, odd_out), GG_STATUS_MISALIGNED, &["out"]);
        expect(gg_kfac_damping(ptr::null(), &mut lambda), GG_STATUS_NULL_POINTER, &["kfac"]);
        gg_kfac_destroy(h);
        gg_kfac_destroy(ptr::null_mut());
    }
}

#[test]
fn c_projection_example_matches_a_naive_double_precision_computation() {
    let stdout = run_c_example("projection");
    assert_eq!(stdout.matches("relative error").count(), 4, "every check ran: {stdout}");
    assert!(stdout.contains("GG_STATUS_INVALID_ARGUMENT"), "the error path was not shown: {stdout}");
}


// ---------------------------------------------------------------------------------------------
// Model-level calls (gg_model_dot / gg_model_gram / gg_model_sqnorm)
// ---------------------------------------------------------------------------------------------

/// A tiny model: an embedding [vocab = 6, d = 4] tied to an LM head (Linear 4 -> 6), a
/// LayerNorm (d = 4, bias), and a Conv1D-layout Linear 4 -> 3 with bias. N = 2, T = 3, Q = 4 in
/// two uniform segments; masks on the training side.
struct ModelProblem {
    ids: Vec<i32>,
    qids: Vec<i32>,
    emb_b: Vec<f32>,
    qemb_b: Vec<f32>,
    h: Vec<f32>,
    qh: Vec<f32>,
    logit_b: Vec<f32>,
    qlogit_b: Vec<f32>,
    lin_b: Vec<f32>,
    qlin_b: Vec<f32>,
    mask: Vec<u8>,
}

impl ModelProblem {
    fn new() -> Self {
        let vals = |len: u64, seed: u32| -> Vec<f32> {
            (0..len as u32).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0).collect()
        };
        ModelProblem {
            ids: vec![1, 3, 1, 0, 5, 5],
            qids: vec![3, 1, 2, 5],
            emb_b: vals(6 * 4, 10),
            qemb_b: vals(4 * 4, 11),
            h: vals(6 * 4, 12),
            qh: vals(4 * 4, 13),
            logit_b: vals(6 * 6, 14),
            qlogit_b: vals(4 * 6, 15),
            lin_b: vals(6 * 3, 16),
            qlin_b: vals(4 * 3, 17),
            mask: vec![1, 1, 1, 1, 0, 1],
        }
    }

    fn uses(&self) -> Vec<gg_layer_use> {
        let seg = gg_segments { kind: GG_SEGMENTS_UNIFORM, uniform_len: 2, offsets: ABSENT };
        let f = |v: &Vec<f32>| t(v, GG_DTYPE_F32);
        let mk = |param, kind, d_in, d_out, vocab, d, has_bias, layout, x: gg_tensor, b: gg_tensor, qx: gg_tensor, qb: gg_tensor| gg_layer_use {
            param,
            kind,
            d_in,
            d_out,
            vocab,
            d,
            has_bias,
            layout,
            train: gg_use_train { x, b, t: 3, mask: t(&self.mask, GG_DTYPE_U8) },
            query: gg_use_query { x: qx, b: qb, q: 4, segments: seg, mask: ABSENT },
            train_only: 0,
        };
        vec![
            mk(0, GG_LAYER_EMBEDDING, 0, 0, 6, 4, 0, 0, t(&self.ids, GG_DTYPE_I32), f(&self.emb_b), t(&self.qids, GG_DTYPE_I32), f(&self.qemb_b)),
            mk(1, GG_LAYER_NORM, 0, 0, 0, 4, 1, 0, f(&self.h), f(&self.emb_b), f(&self.qh), f(&self.qemb_b)),
            mk(2, GG_LAYER_LINEAR, 4, 3, 0, 0, 1, GG_WEIGHT_IN_OUT, f(&self.h), f(&self.lin_b), f(&self.qh), f(&self.qlin_b)),
            mk(0, GG_LAYER_LINEAR, 4, 6, 0, 0, 0, GG_WEIGHT_OUT_IN, f(&self.h), f(&self.logit_b), f(&self.qh), f(&self.qlogit_b)),
        ]
    }

    fn safe_uses(&self) -> Vec<ghostgrad::LayerUse<'_>> {
        use ghostgrad::{LayerKind, LayerUse, Segments, UseQuery, UseTrain, WeightLayout};
        fn mk<'a>(param: u32, kind: LayerKind, mask: &'a [u8], x: ghostgrad::Tensor<'a>, b: &'a [f32], qx: ghostgrad::Tensor<'a>, qb: &'a [f32]) -> LayerUse<'a> {
            LayerUse {
                param,
                kind,
                train: UseTrain { x, b: b.into(), t: 3, mask: Some(mask.into()) },
                query: ghostgrad::QuerySide::Factors(UseQuery { x: qx, b: qb.into(), q: 4, segments: Segments::Uniform(2), mask: None }),
            }
        }
        let m = &self.mask[..];
        vec![
            mk(0, LayerKind::Embedding { vocab: 6, d: 4 }, m, self.ids[..].into(), &self.emb_b, self.qids[..].into(), &self.qemb_b),
            mk(1, LayerKind::Norm { d: 4, has_bias: true }, m, self.h[..].into(), &self.emb_b, self.qh[..].into(), &self.qemb_b),
            mk(2, LayerKind::Linear { d_in: 4, d_out: 3, has_bias: true, layout: WeightLayout::InOut }, m, self.h[..].into(), &self.lin_b, self.qh[..].into(), &self.qlin_b),
            mk(0, LayerKind::linear(4, 6, false), m, self.h[..].into(), &self.logit_b, self.qh[..].into(), &self.qlogit_b),
        ]
    }
}

#[test]
fn model_level_calls_match_the_safe_api() {
    let p = ModelProblem::new();
    let uses = p.uses();
    let safe = p.safe_uses();
    let forms = ghostgrad::ModelForms::default();
    for (ctx, safe_ctx) in [(Ctx::cpu(), ghostgrad::Context::cpu()), (Ctx::reference(), ghostgrad::Context::cpu_reference())] {
        for (len, which) in [(4usize, 0), (4, 1), (2, 2)] {
            let mut out = vec![f32::NAN; len];
            // SAFETY: descriptors point at live memory of this test.
            let st = unsafe {
                match which {
                    0 => gg_model_dot(ctx.0, 2, uses.as_ptr(), uses.len(), tm(&mut out), 1.5, 0.0, GG_FORM_REQUEST_AUTO, GG_EMBEDDING_FORM_AUTO),
                    1 => gg_model_gram(ctx.0, 2, uses.as_ptr(), uses.len(), tm(&mut out), 1.5, 0.0, GG_FORM_REQUEST_AUTO, GG_EMBEDDING_FORM_SCATTER_GATHER),
                    _ => gg_model_sqnorm(ctx.0, 2, uses.as_ptr(), uses.len(), tm(&mut out), 1.5, 0.0, GG_FORM_REQUEST_AUTO, GG_EMBEDDING_FORM_MASKED_GRAM),
                }
            };
            expect(st, GG_STATUS_OK, &[]);
            assert!(last_reason().contains("uses[0]×uses[3]"), "{}", last_reason());
            let mut want = vec![f32::NAN; len];
            let acc = ghostgrad::Accumulate { scale: 1.5, beta: 0.0 };
            let forms = match which {
                1 => ghostgrad::ModelForms { embedding: Some(ghostgrad::EmbeddingForm::ScatterGather), ..forms },
                2 => ghostgrad::ModelForms { embedding: Some(ghostgrad::EmbeddingForm::MaskedGram), ..forms },
                _ => forms,
            };
            match which {
                0 => safe_ctx.model_dot(2, &safe, &mut (&mut want[..]).into(), acc, forms),
                1 => safe_ctx.model_gram(2, &safe, &mut (&mut want[..]).into(), acc, forms),
                _ => safe_ctx.model_sqnorm(2, &safe, &mut (&mut want[..]).into(), acc, forms),
            }
            .unwrap();
            assert!(want.iter().all(|x| x.is_finite() && *x != 0.0), "{want:?}");
            assert_eq!(out, want, "call {which}");
        }
    }
}

#[test]
fn model_level_errors_name_the_use() {
    let p = ModelProblem::new();
    let ctx = Ctx::cpu();
    let mut out = vec![0f32; 4];
    let call = |uses: &[gg_layer_use], out: &mut [f32], emb: u32| {
        // SAFETY: descriptors point at live memory of this test (or are invalid on purpose).
        unsafe { gg_model_dot(ctx.0, 2, uses.as_ptr(), uses.len(), tm(out), 1.0, 0.0, GG_FORM_REQUEST_AUTO, emb) }
    };
    let mut uses = p.uses();
    uses[1].kind = 7;
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["uses[1]", "gg_layer_kind"]);
    let mut uses = p.uses();
    uses[2].layout = 9;
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["uses[2]", "gg_weight_layout"]);
    let uses = p.uses();
    expect(call(&uses, &mut out, 5), GG_STATUS_INVALID_ARGUMENT, &["embedding_form"]);
    // A kept row (mask [1, 1, 1, 1, 0, 1]) with id 6 = vocab is an error naming the use.
    let bad_ids = vec![1i32, 3, 1, 0, 5, 6];
    let mut uses = p.uses();
    uses[0].train.x = t(&bad_ids, GG_DTYPE_I32);
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["uses[0].train.x", "id 6", "vocab = 6"]);
    let bad_ids64 = vec![1i64, 3, 1, 0, 5, 1 << 40];
    uses[0].train.x = t(&bad_ids64, GG_DTYPE_I64);
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["uses[0].train.x", "1099511627776"]);
    // Issue 11 defects 1, 6: the masked row's id is never read (−1, or any int64), and int64 ids
    // give the int32 result bit for bit.
    let mut want = vec![f32::NAN; 4];
    assert_eq!(call(&p.uses(), &mut want, 0), GG_STATUS_OK);
    for (ids, dt) in [(t(&vec![1i32, 3, 1, 0, -1, 5], GG_DTYPE_I32), 32), (t(&vec![1i64, 3, 1, 0, i64::MIN, 5], GG_DTYPE_I64), 64)] {
        let mut uses = p.uses();
        uses[0].train.x = ids;
        let mut got = vec![f32::NAN; 4];
        assert_eq!(call(&uses, &mut got, 0), GG_STATUS_OK, "{dt}: {}", last_error());
        assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{dt}");
    }
    let ids64: Vec<i64> = p.ids.iter().map(|&x| x as i64).collect();
    let qids64: Vec<i64> = p.qids.iter().map(|&x| x as i64).collect();
    let mut uses = p.uses();
    uses[0].train.x = t(&ids64, GG_DTYPE_I64);
    uses[0].query.x = t(&qids64, GG_DTYPE_I64);
    let mut got = vec![f32::NAN; 4];
    assert_eq!(call(&uses, &mut got, 0), GG_STATUS_OK, "{}", last_error());
    assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    // Defect 2: an absent query side is an error naming the use, unless `train_only` says so.
    let mut uses = p.uses();
    uses[0].query = gg_use_query { x: ABSENT, b: ABSENT, q: 0, segments: gg_segments { kind: GG_SEGMENTS_SINGLE, uniform_len: 0, offsets: ABSENT }, mask: ABSENT };
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["uses[0].query", "TrainOnly"]);
    uses[0].train_only = 1;
    assert_eq!(call(&uses, &mut out, 0), GG_STATUS_OK, "{}", last_error());
    let mut uses = p.uses();
    uses[0].train_only = 1;
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["uses[0].train_only"]);
    let mut uses = p.uses();
    uses[0].train.x = t(&p.emb_b[..6], GG_DTYPE_F32);
    expect(call(&uses, &mut out, 0), GG_STATUS_DTYPE, &["x"]);
    let mut uses = p.uses();
    uses[0].train.x = gg_tensor { ptr: ptr::null(), len: 6, dtype: GG_DTYPE_I32 };
    expect(call(&uses, &mut out, 0), GG_STATUS_NULL_POINTER, &["uses[0].train.x"]);
    let mut uses = p.uses();
    uses[3].param = 0;
    uses[3].d_out = 3; // LM head of another shape than the tied embedding
    uses[3].train.b = t(&p.lin_b, GG_DTYPE_F32);
    uses[3].query.b = t(&p.qlin_b, GG_DTYPE_F32);
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["param 0"]);
    let uses = p.uses();
    expect(call(&uses, &mut out[..3], 0), GG_STATUS_LENGTH_MISMATCH, &["out"]);
    // SAFETY: a null descriptor array must be detected.
    let st = unsafe { gg_model_sqnorm(ctx.0, 2, ptr::null(), 1, tm(&mut out), 1.0, 0.0, 0, 0) };
    expect(st, GG_STATUS_NULL_POINTER, &["uses"]);
}

/// `gg_kron_project_model` on the tied model (embedding + LM head in one block, a LayerNorm with
/// bias, a Conv1D-layout Linear with bias) equals the safe API bit for bit, fills the column
/// blocks, and names its errors.
#[test]
fn kron_project_model_matches_the_safe_api() {
    use ghostgrad::{ParamProjection, ProjectionKind, ProjectionSpec};
    let p = ModelProblem::new();
    let uses = p.uses();
    let safe = p.safe_uses();
    // Param 0 (wte [6, 4]) random 3×2, param 1 (norm [4, 2]) dense identity columns, param 2
    // (Conv1D [4 + 1, 3]) random 4×3.
    let p_rows1: Vec<f32> = (0..3 * 4).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let p_cols1 = vec![1.0f32, 0.0, 0.0, 1.0];
    let descs = [
        gg_param_projection { param: 0, proj: gg_projection { k_i: 2, k_o: 3, ..random_proj(5, 0) } },
        gg_param_projection {
            param: 1,
            proj: gg_projection { k_i: 2, k_o: 3, kind: GG_PROJECTION_DENSE, p_in: t(&p_cols1, GG_DTYPE_F32), p_out: t(&p_rows1, GG_DTYPE_F32), ..random_proj(0, 0) },
        },
        gg_param_projection { param: 2, proj: gg_projection { k_i: 3, k_o: 4, ..random_proj(5, 2) } },
    ];
    let spec = |d: &gg_projection, layer| ProjectionSpec { k_i: d.k_i, k_o: d.k_o, kind: ProjectionKind::Random { seed: 5, layer, dist: ghostgrad::Distribution::Gaussian } };
    let safe_params = [
        ParamProjection { param: 0, proj: spec(&descs[0].proj, 0) },
        ParamProjection { param: 1, proj: ProjectionSpec { k_i: 2, k_o: 3, kind: ProjectionKind::Dense { p_in: p_cols1[..].into(), p_out: p_rows1[..].into() } } },
        ParamProjection { param: 2, proj: spec(&descs[2].proj, 2) },
    ];
    let width = 6 + 6 + 12;
    for (ctx, safe_ctx) in [(Ctx::cpu(), ghostgrad::Context::cpu()), (Ctx::reference(), ghostgrad::Context::cpu_reference())] {
        let mut out = vec![f32::NAN; 2 * width];
        let mut groups = [gg_column_group { offset: 99, width: 99 }; 3];
        // SAFETY: descriptors point at live memory of this test.
        let st = unsafe { gg_kron_project_model(ctx.0, 2, uses.as_ptr(), uses.len(), descs.as_ptr(), descs.len(), tm(&mut out), -1.25, 0.0, groups.as_mut_ptr()) };
        expect(st, GG_STATUS_OK, &[]);
        let offs: Vec<(u64, u64)> = groups.iter().map(|g| (g.offset, g.width)).collect();
        assert_eq!(offs, [(0, 6), (6, 6), (12, 12)]);
        let mut want = vec![f32::NAN; 2 * width];
        safe_ctx.kron_project_model(2, &safe, &safe_params, &mut (&mut want[..]).into(), ghostgrad::Accumulate { scale: -1.25, beta: 0.0 }).unwrap();
        assert!(want.iter().all(|x| x.is_finite() && *x != 0.0), "{want:?}");
        assert_eq!(out, want);
        // groups_out may be NULL.
        let mut again = vec![f32::NAN; 2 * width];
        // SAFETY: as above.
        let st = unsafe { gg_kron_project_model(ctx.0, 2, uses.as_ptr(), uses.len(), descs.as_ptr(), descs.len(), tm(&mut again), -1.25, 0.0, ptr::null_mut()) };
        expect(st, GG_STATUS_OK, &[]);
        assert_eq!(again, out);
    }
    let ctx = Ctx::cpu();
    let mut out = vec![0f32; 2 * width];
    // SAFETY: null / invalid descriptors are detected.
    unsafe {
        let st = gg_kron_project_model(ctx.0, 2, uses.as_ptr(), uses.len(), ptr::null(), 3, tm(&mut out), 1.0, 0.0, ptr::null_mut());
        expect(st, GG_STATUS_NULL_POINTER, &["params"]);
        let mut bad = descs;
        bad[1].proj.p_in = t(&p_cols1[..3], GG_DTYPE_F32);
        let st = gg_kron_project_model(ctx.0, 2, uses.as_ptr(), uses.len(), bad.as_ptr(), bad.len(), tm(&mut out), 1.0, 0.0, ptr::null_mut());
        expect(st, GG_STATUS_LENGTH_MISMATCH, &["p_in"]);
        let st = gg_kron_project_model(ctx.0, 2, uses.as_ptr(), uses.len(), descs.as_ptr(), 2, tm(&mut out[..36]), 1.0, 0.0, ptr::null_mut());
        expect(st, GG_STATUS_INVALID_ARGUMENT, &["param 2"]);
        let st = gg_kron_project_model(ctx.0, 2, uses.as_ptr(), 0, descs.as_ptr(), descs.len(), tm(&mut out), 1.0, 0.0, ptr::null_mut());
        expect(st, GG_STATUS_ZERO_SIZE, &["n_uses"]);
        let st = gg_kron_project_model(ctx.0, 2, uses.as_ptr(), uses.len(), descs.as_ptr(), 0, tm(&mut out), 1.0, 0.0, ptr::null_mut());
        expect(st, GG_STATUS_ZERO_SIZE, &["n_params"]);
    }
}

/// `gg_kfac_covariances_model` on the tied embedding / LM head and the Conv1D Linear (the norm
/// is rejected) equals the safe API bit for bit.
#[test]
fn kfac_covariances_model_matches_the_safe_api() {
    use ghostgrad::{ParamProjection, ProjectionKind, ProjectionSpec};
    let p = ModelProblem::new();
    let all = p.uses();
    let uses = [all[0], all[2], all[3]];
    let all_safe = p.safe_uses();
    let safe = [all_safe[0], all_safe[2], all_safe[3]];
    let descs = [
        gg_param_projection { param: 0, proj: gg_projection { k_i: 2, k_o: 3, ..random_proj(5, 0) } },
        gg_param_projection { param: 2, proj: gg_projection { k_i: 3, k_o: 4, ..random_proj(5, 2) } },
    ];
    let spec = |d: &gg_projection, layer| ProjectionSpec { k_i: d.k_i, k_o: d.k_o, kind: ProjectionKind::Random { seed: 5, layer, dist: ghostgrad::Distribution::Gaussian } };
    let safe_params = [ParamProjection { param: 0, proj: spec(&descs[0].proj, 0) }, ParamProjection { param: 2, proj: spec(&descs[1].proj, 2) }];
    for (ctx, safe_ctx) in [(Ctx::cpu(), ghostgrad::Context::cpu()), (Ctx::reference(), ghostgrad::Context::cpu_reference())] {
        let (mut r0, mut r1, mut c0, mut c1) = (vec![f32::NAN; 9], vec![f32::NAN; 16], vec![f32::NAN; 4], vec![f32::NAN; 9]);
        let rows = [tm(&mut r0), tm(&mut r1)];
        let cols = [tm(&mut c0), tm(&mut c1)];
        // SAFETY: descriptors point at live memory of this test.
        let st = unsafe { gg_kfac_covariances_model(ctx.0, 2, uses.as_ptr(), uses.len(), descs.as_ptr(), 2, rows.as_ptr(), cols.as_ptr(), 2.0, 0.0) };
        expect(st, GG_STATUS_OK, &[]);
        let (mut w0, mut w1, mut v0, mut v1) = (vec![f32::NAN; 9], vec![f32::NAN; 16], vec![f32::NAN; 4], vec![f32::NAN; 9]);
        {
            let mut wr: Vec<ghostgrad::TensorMut<'_>> = vec![(&mut w0[..]).into(), (&mut w1[..]).into()];
            let mut wc: Vec<ghostgrad::TensorMut<'_>> = vec![(&mut v0[..]).into(), (&mut v1[..]).into()];
            safe_ctx.kfac_covariances_model(2, &safe, &safe_params, &mut wr, &mut wc, ghostgrad::Accumulate { scale: 2.0, beta: 0.0 }).unwrap();
        }
        assert!(w0.iter().chain(&v1).all(|x| x.is_finite()) && w0[0] > 0.0, "{w0:?}");
        assert_eq!((r0, r1, c0, c1), (w0, w1, v0, v1));
    }
    // The LayerNorm cannot be K-FAC factored: a typed error naming it.
    let ctx = Ctx::cpu();
    let norm = [gg_param_projection { param: 1, proj: gg_projection { k_i: 2, k_o: 3, ..random_proj(5, 1) } }];
    let (mut a, mut b) = (vec![0f32; 9], vec![0f32; 4]);
    let (rows, cols) = ([tm(&mut a)], [tm(&mut b)]);
    let one = [all[1]];
    // SAFETY: as above.
    let st = unsafe { gg_kfac_covariances_model(ctx.0, 2, one.as_ptr(), 1, norm.as_ptr(), 1, rows.as_ptr(), cols.as_ptr(), 1.0, 0.0) };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["norm"]);
    // SAFETY: a null factor array is detected.
    let st = unsafe { gg_kfac_covariances_model(ctx.0, 2, one.as_ptr(), 1, norm.as_ptr(), 1, ptr::null(), cols.as_ptr(), 1.0, 0.0) };
    expect(st, GG_STATUS_NULL_POINTER, &["c_rows"]);
}

// ---------------------------------------------------------------------------------------------
// Data value embedding (gg_dvemb_layers)
// ---------------------------------------------------------------------------------------------

/// MATH.md §5 written out in f64, one layer (columns `off .. off + k` of `[R, stride]` rows):
/// for s from the last step down, `E_s = η_s (G_s − G_s Mᵀ)`, `M += c_s E_sᵀ G_s`.
fn naive_dvemb(g: &[f32], stride: usize, off: usize, k: usize, rows: &[u64], etas: &[f64], mean: bool) -> (Vec<f64>, Vec<f64>) {
    let total: usize = rows.iter().map(|&r| r as usize).sum();
    let mut m = vec![0.0f64; k * k];
    let mut e = vec![0.0f64; total * k];
    let starts: Vec<usize> = rows.iter().scan(0usize, |acc, &r| {
        let s = *acc;
        *acc += r as usize;
        Some(s)
    }).collect();
    for s in (0..rows.len()).rev() {
        let (r0, nr) = (starts[s], rows[s] as usize);
        let gv = |r: usize, i: usize| g[r * stride + off + i] as f64;
        for r in r0..r0 + nr {
            for i in 0..k {
                let gm: f64 = (0..k).map(|j| gv(r, j) * m[i * k + j]).sum();
                e[r * k + i] = etas[s] * (gv(r, i) - gm);
            }
        }
        let c = if mean { 1.0 / nr as f64 } else { 1.0 };
        for i in 0..k {
            for j in 0..k {
                m[i * k + j] += c * (r0..r0 + nr).map(|r| e[r * k + i] * gv(r, j)).sum::<f64>();
            }
        }
    }
    (e, m)
}

#[test]
fn dvemb_layers_matches_the_rust_api_and_the_recursion_and_rejects_bad_arguments() {
    use ghostgrad::{Blocking, DvembLayer, DvembSteps, LossReduction};
    let (stride, rows, etas) = (11usize, [2u64, 3, 1, 2], [0.3f64, 0.2, 0.25, 0.1]);
    let r: usize = rows.iter().map(|&x| x as usize).sum();
    let g = vals((r * stride) as u64, 77);
    let layer_defs = [(0usize, 3usize), (4, 6)];
    for (blocking, max_rows) in [(GG_BLOCKING_PER_STEP, 0u64), (GG_BLOCKING_MAX_ROWS, 4), (GG_BLOCKING_AUTO, 0)] {
        let ctx = Ctx::cpu();
        let mut e = vec![f32::NAN; r * stride];
        let mut ms: Vec<Vec<f32>> = layer_defs.iter().map(|&(_, k)| vec![0.0f32; k * k]).collect();
        let descs: Vec<gg_dvemb_layer> = layer_defs
            .iter()
            .zip(ms.iter_mut())
            .map(|(&(off, k), m)| gg_dvemb_layer { offset: off as u64, k: k as u64, m: tm(m) })
            .collect();
        // SAFETY: every pointer points at live memory of the right length.
        let st = unsafe {
            gg_dvemb_layers(ctx.0, t(&g, GG_DTYPE_F32), stride as u64, descs.as_ptr(), descs.len(), rows.as_ptr(), etas.as_ptr(), rows.len(), GG_LOSS_MEAN, tm(&mut e), blocking, max_rows)
        };
        expect(st, GG_STATUS_OK, &[]);
        // The safe API on the same inputs gives the same bits.
        let mut e2 = vec![f32::NAN; r * stride];
        let mut ms2: Vec<Vec<f32>> = layer_defs.iter().map(|&(_, k)| vec![0.0f32; k * k]).collect();
        let mut mts: Vec<TensorMut<'_>> = ms2.iter_mut().map(|m| TensorMut::from(&mut m[..])).collect();
        let mut layers: Vec<DvembLayer<'_, '_>> =
            layer_defs.iter().zip(mts.iter_mut()).map(|(&(off, k), m)| DvembLayer { offset: off as u64, k: k as u64, m }).collect();
        let rust_blocking = match blocking {
            GG_BLOCKING_PER_STEP => Blocking::PerStep,
            GG_BLOCKING_MAX_ROWS => Blocking::MaxRows(max_rows),
            _ => Blocking::Auto,
        };
        let steps = DvembSteps { rows: &rows, etas: &etas, loss: LossReduction::Mean };
        ghostgrad::Context::cpu()
            .dvemb_layers(&g[..].into(), stride as u64, &mut layers, &steps, &mut TensorMut::from(&mut e2[..]), rust_blocking)
            .unwrap();
        drop(layers);
        drop(mts);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&e), bits(&e2), "blocking {blocking}");
        for (m, m2) in ms.iter().zip(&ms2) {
            assert_eq!(bits(m), bits(m2), "blocking {blocking}");
        }
        // And the recursion written out in f64: E in the layers' columns, untouched elsewhere.
        for (&(off, k), m) in layer_defs.iter().zip(&ms) {
            let (we, wm) = naive_dvemb(&g, stride, off, k, &rows, &etas, true);
            let got: Vec<f32> = (0..r).flat_map(|row| e[row * stride + off..row * stride + off + k].to_vec()).collect();
            assert!(rel_err(&got, &we) < 1e-5, "E layer at {off}: {}", rel_err(&got, &we));
            assert!(rel_err(m, &wm) < 1e-5, "M layer at {off}: {}", rel_err(m, &wm));
        }
        for row in 0..r {
            assert!(e[row * stride + 3].is_nan() && e[row * stride + 10].is_nan(), "a column outside the layers was written");
        }
    }
    // Errors name the argument.
    let ctx = Ctx::cpu();
    let mut e = vec![0f32; r * stride];
    let mut m0 = vec![0f32; 9];
    let call = |layers: &[gg_dvemb_layer], n_steps: usize, loss: u32, blocking: u32, max_rows: u64, e: &mut [f32]| {
        // SAFETY: descriptors and arrays point at live memory (or are invalid on purpose).
        unsafe {
            gg_dvemb_layers(ctx.0, t(&g, GG_DTYPE_F32), stride as u64, layers.as_ptr(), layers.len(), rows.as_ptr(), etas.as_ptr(), n_steps, loss, tm(e), blocking, max_rows)
        }
    };
    let one = [gg_dvemb_layer { offset: 0, k: 3, m: tm(&mut m0) }];
    expect(call(&one, 0, GG_LOSS_SUM, GG_BLOCKING_AUTO, 0, &mut e), GG_STATUS_ZERO_SIZE, &["n_steps"]);
    expect(call(&one, rows.len(), 7, GG_BLOCKING_AUTO, 0, &mut e), GG_STATUS_INVALID_ARGUMENT, &["loss"]);
    expect(call(&one, rows.len(), GG_LOSS_SUM, 9, 0, &mut e), GG_STATUS_INVALID_ARGUMENT, &["blocking"]);
    expect(call(&one, rows.len(), GG_LOSS_SUM, GG_BLOCKING_MAX_ROWS, 0, &mut e), GG_STATUS_ZERO_SIZE, &["MaxRows"]);
    expect(call(&one, rows.len(), GG_LOSS_SUM, GG_BLOCKING_AUTO, 0, &mut e[1..]), GG_STATUS_LENGTH_MISMATCH, &["e_out"]);
    let mut short = vec![0f32; 8];
    let bad_m = [gg_dvemb_layer { offset: 0, k: 3, m: tm(&mut short) }];
    expect(call(&bad_m, rows.len(), GG_LOSS_SUM, GG_BLOCKING_AUTO, 0, &mut e), GG_STATUS_LENGTH_MISMATCH, &["m"]);
    let alias = [gg_dvemb_layer { offset: 0, k: 3, m: gg_tensor_mut { ptr: e.as_mut_ptr() as *mut c_void, len: 9 } }];
    let st = call(&alias, rows.len(), GG_LOSS_SUM, GG_BLOCKING_AUTO, 0, &mut e);
    assert_ne!(st, GG_STATUS_OK, "M aliasing e_out must be rejected");
    // SAFETY: a null descriptor array must be detected.
    let st = unsafe {
        gg_dvemb_layers(ctx.0, t(&g, GG_DTYPE_F32), stride as u64, ptr::null(), 1, rows.as_ptr(), etas.as_ptr(), rows.len(), GG_LOSS_SUM, tm(&mut e), GG_BLOCKING_AUTO, 0)
    };
    expect(st, GG_STATUS_NULL_POINTER, &["layers"]);
    // SAFETY: a null step array must be detected.
    let st = unsafe {
        gg_dvemb_layers(ctx.0, t(&g, GG_DTYPE_F32), stride as u64, one.as_ptr(), 1, ptr::null(), etas.as_ptr(), rows.len(), GG_LOSS_SUM, tm(&mut e), GG_BLOCKING_AUTO, 0)
    };
    expect(st, GG_STATUS_NULL_POINTER, &["step_rows"]);
}

// ---------------------------------------------------------------------------------------------
// Projection extensions: embedding projections and second moments (end of src/ffi.rs)
// ---------------------------------------------------------------------------------------------

mod projection_extensions {
    use super::*;
    use ghostgrad::{
        Accumulate, Context, Distribution, EmbeddingLayer, LayerShape, OutColumns, ProjectLayer, ProjectionKind, ProjectionSpec,
        TensorMut, TokenFactors, TrainFactors,
    };

    const VOCAB: u64 = 7;
    const K_I: u64 = 3;
    const K_O: u64 = 2;

    fn random_proj() -> gg_projection {
        gg_projection { k_i: K_I, k_o: K_O, kind: GG_PROJECTION_RANDOM, dist: GG_DISTRIBUTION_RADEMACHER, seed: 11, layer: 2, p_in: ABSENT, p_out: ABSENT }
    }

    fn spec() -> ProjectionSpec<'static> {
        ProjectionSpec { k_i: K_I, k_o: K_O, kind: ProjectionKind::Random { seed: 11, layer: 2, dist: Distribution::Rademacher } }
    }

    /// Ids of the `Problem`'s N×T tokens (the masked one out of range: never read).
    const IDS: [i32; 6] = [0, 6, 99, 3, 3, 1];

    fn tokens<'a>(p: &'a Problem, ids: &'a [i32]) -> gg_token_train {
        gg_token_train { ids: t(ids, GG_DTYPE_I32), b: t(&p.b, GG_DTYPE_F32), n: N, t: T, mask: t(&p.mask, GG_DTYPE_U8) }
    }

    fn emb_shape() -> gg_layer_shape {
        gg_layer_shape { d_in: VOCAB, d_out: D_OUT, has_bias: 0 }
    }

    #[test]
    fn embedding_projection_matches_the_safe_api_and_reports_bad_ids() {
        let p = Problem::new();
        let ctx = Ctx::cpu();
        let ld = K_I * K_O + 1;
        let mut out = vec![f32::NAN; (N * ld) as usize];
        // SAFETY: valid descriptors pointing at live test memory.
        let st = unsafe { gg_kron_project_embedding(ctx.0, emb_shape(), &tokens(&p, &IDS), &random_proj(), tm(&mut out), 1, ld, 1.0, 0.0) };
        expect(st, GG_STATUS_OK, &[]);
        let mut want = vec![f32::NAN; (N * ld) as usize];
        let tf = TokenFactors { ids: IDS[..].into(), b: p.b[..].into(), n: N, t: T, mask: Some(p.mask[..].into()) };
        Context::cpu()
            .kron_project_embedding(&LayerShape::new(VOCAB, D_OUT), &tf, &spec(), &mut TensorMut::from(&mut want[..]), OutColumns { offset: 1, row_stride: ld }, Accumulate::overwrite())
            .unwrap();
        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        assert!(out[1..7].iter().all(|x| x.is_finite()) && out[0].is_nan(), "{out:?}");
        // A kept id outside the vocabulary.
        let mut bad = IDS;
        bad[4] = 7;
        // SAFETY: as above.
        let st = unsafe { gg_kron_project_embedding(ctx.0, emb_shape(), &tokens(&p, &bad), &random_proj(), tm(&mut out), 1, ld, 1.0, 0.0) };
        expect(st, GG_STATUS_INVALID_ARGUMENT, &["ids[1, 1] = 7", "[0, 7)"]);
        // A dense projection with the wrong p_in length; an unknown distribution code; a NULL
        // descriptor; float ids.
        let (m, mo) = (vec![0.5f32; (K_I * (VOCAB - 1)) as usize], vec![0.5f32; (K_O * D_OUT) as usize]);
        let dense = gg_projection { kind: GG_PROJECTION_DENSE, p_in: t(&m, GG_DTYPE_F32), p_out: t(&mo, GG_DTYPE_F32), ..random_proj() };
        // SAFETY: as above (the NULL descriptor is detected before use).
        unsafe {
            let st = gg_kron_project_embedding(ctx.0, emb_shape(), &tokens(&p, &IDS), &dense, tm(&mut out), 1, ld, 1.0, 0.0);
            expect(st, GG_STATUS_LENGTH_MISMATCH, &["p_in", "21", "18"]);
            let st = gg_kron_project_embedding(ctx.0, emb_shape(), &tokens(&p, &IDS), &gg_projection { dist: 9, ..random_proj() }, tm(&mut out), 1, ld, 1.0, 0.0);
            expect(st, GG_STATUS_INVALID_ARGUMENT, &["dist", "9"]);
            let st = gg_kron_project_embedding(ctx.0, emb_shape(), &tokens(&p, &IDS), ptr::null(), tm(&mut out), 1, ld, 1.0, 0.0);
            expect(st, GG_STATUS_NULL_POINTER, &["proj"]);
            let fids: Vec<f32> = IDS.iter().map(|&x| x as f32).collect();
            let tk = gg_token_train { ids: t(&fids, GG_DTYPE_F32), ..tokens(&p, &IDS) };
            let st = gg_kron_project_embedding(ctx.0, emb_shape(), &tk, &random_proj(), tm(&mut out), 1, ld, 1.0, 0.0);
            expect(st, GG_STATUS_DTYPE, &["ids"]);
        }
    }

    #[test]
    fn second_moments_match_the_safe_api() {
        let p = Problem::new();
        let ctx = Ctx::reference();
        let reference = Context::cpu_reference();
        // Raw Fisher of N rows of width 4 at offset 1 of a stride-5 buffer.
        let grads: Vec<f32> = p.aq.iter().chain(&p.a).copied().take(10).collect();
        let mut f = vec![f32::NAN; 4];
        // SAFETY: valid buffers.
        let st = unsafe { gg_projected_fisher(ctx.0, t(&grads, GG_DTYPE_F32), 2, 2, 1, 5, tm(&mut f), 0.5, 0.0) };
        expect(st, GG_STATUS_OK, &[]);
        let mut want = vec![f32::NAN; 4];
        reference.projected_fisher(&grads[..].into(), 2, 2, OutColumns { offset: 1, row_stride: 5 }, &mut TensorMut::from(&mut want[..]), Accumulate { scale: 0.5, beta: 0.0 }).unwrap();
        assert_eq!(f, want);
        // SAFETY: as above; the length does not match n·row_stride.
        let st = unsafe { gg_projected_fisher(ctx.0, t(&grads[..9], GG_DTYPE_F32), 2, 2, 1, 5, tm(&mut f), 1.0, 0.0) };
        expect(st, GG_STATUS_LENGTH_MISMATCH, &["grads", "10", "9"]);
        // K-FAC covariances, linear and embedding.
        let (mut ca, mut cb) = (vec![f32::NAN; (K_I * K_I) as usize], vec![f32::NAN; (K_O * K_O) as usize]);
        let (mut wa, mut wb) = (ca.clone(), cb.clone());
        // SAFETY: valid descriptors.
        let st = unsafe { gg_kfac_covariances(ctx.0, p.shape(), &p.train(), &random_proj(), tm(&mut ca), tm(&mut cb), 1.0, 0.0) };
        expect(st, GG_STATUS_OK, &[]);
        let train = TrainFactors { a: p.a[..].into(), b: p.b[..].into(), n: N, t: T, mask: Some(p.mask[..].into()) };
        let shape = LayerShape::new(D_IN, D_OUT).with_bias(true);
        reference.kfac_covariances(ProjectLayer { shape, train, proj: spec() }, &mut TensorMut::from(&mut wa[..]), &mut TensorMut::from(&mut wb[..]), Accumulate::overwrite()).unwrap();
        assert_eq!((&ca, &cb), (&wa, &wb));
        // SAFETY: valid descriptors.
        let st = unsafe { gg_kfac_covariances_embedding(ctx.0, emb_shape(), &tokens(&p, &IDS), &random_proj(), tm(&mut ca), tm(&mut cb), 1.0, 0.0) };
        expect(st, GG_STATUS_OK, &[]);
        let tf = TokenFactors { ids: IDS[..].into(), b: p.b[..].into(), n: N, t: T, mask: Some(p.mask[..].into()) };
        reference
            .kfac_covariances(EmbeddingLayer { shape: LayerShape::new(VOCAB, D_OUT), train: tf, proj: spec() }, &mut TensorMut::from(&mut wa[..]), &mut TensorMut::from(&mut wb[..]), Accumulate::overwrite())
            .unwrap();
        assert_eq!((&ca, &cb), (&wa, &wb));
        // c_a and c_b overlapping.
        let mut both = vec![0f32; 16];
        let (pa, pb) = (both.as_mut_ptr(), both[4..].as_mut_ptr());
        // SAFETY: the overlap is detected before any write.
        let st = unsafe {
            gg_kfac_covariances(ctx.0, p.shape(), &p.train(), &random_proj(), gg_tensor_mut { ptr: pa as *mut c_void, len: 9 }, gg_tensor_mut { ptr: pb as *mut c_void, len: 4 }, 1.0, 0.0)
        };
        expect(st, GG_STATUS_INVALID_ARGUMENT, &["overlaps", "c_a", "c_b"]);
        // EK-FAC correction on the projected gradients of a 2×2 layer.
        let (qb, qa) = ([0.6f32, 0.8, -0.8, 0.6], [1.0f32, 0.0, 0.0, 1.0]);
        let mut lam = vec![f32::NAN; 4];
        // SAFETY: valid buffers.
        let st = unsafe { gg_ekfac_eigen_correction(ctx.0, t(&grads, GG_DTYPE_F32), 2, 2, 2, 1, 5, t(&qb, GG_DTYPE_F32), t(&qa, GG_DTYPE_F32), tm(&mut lam), 1.0, 0.0) };
        expect(st, GG_STATUS_OK, &[]);
        let mut wl = vec![f32::NAN; 4];
        reference
            .ekfac_eigen_correction(&grads[..].into(), 2, 2, 2, OutColumns { offset: 1, row_stride: 5 }, &qb[..].into(), &qa[..].into(), &mut TensorMut::from(&mut wl[..]), Accumulate::overwrite())
            .unwrap();
        assert_eq!(lam, wl);
        // SAFETY: q_a has the wrong length.
        let st = unsafe { gg_ekfac_eigen_correction(ctx.0, t(&grads, GG_DTYPE_F32), 2, 2, 2, 1, 5, t(&qb, GG_DTYPE_F32), t(&qa[..3], GG_DTYPE_F32), tm(&mut lam), 1.0, 0.0) };
        expect(st, GG_STATUS_LENGTH_MISMATCH, &["q_a", "4", "3"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Preconditioners fitted from accumulated moments
// ---------------------------------------------------------------------------------------------

/// `Σ_r x_r x_rᵀ` of the `[rows, k]` matrix `x`, in f64, rounded once (what an accumulator returns).
fn second_moment(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    (0..k * k).map(|ij| (0..rows).map(|r| x[r * k + ij / k] as f64 * x[r * k + ij % k] as f64).sum::<f64>() as f32).collect()
}

#[test]
fn preconditioners_from_accumulated_moments_match_the_rust_api_and_the_gradient_fit() {
    let (n, k) = (40usize, 6usize);
    let g = vals((n * k) as u64, 5);
    let probe = vals((3 * k) as u64, 9);
    // Raw Fisher from Σ ĝĝᵀ: the Rust API bit for bit, and the fit from the gradients themselves.
    let sum = second_moment(&g, n, k);
    let mut h = ptr::null_mut();
    // SAFETY: live buffers, a writable out-pointer.
    expect(unsafe { gg_raw_fisher_from_sum(t(&sum, GG_DTYPE_F32), k as u64, n as u64, &mut h) }, GG_STATUS_OK, &[]);
    let mut out = vec![f32::NAN; probe.len()];
    // SAFETY: a live handle and live buffers.
    expect(unsafe { gg_raw_fisher_apply(h, t(&probe, GG_DTYPE_F32), 3, tm(&mut out)) }, GG_STATUS_OK, &[]);
    assert_eq!(out, RawFisher::from_sum(&sum, k, n).unwrap().apply(&probe, 3).unwrap());
    let fitted = RawFisher::fit(&g, n, k).unwrap().apply_f64(&probe, 3).unwrap();
    assert!(rel_err(&out, &fitted) < 1e-4, "from_sum vs fit: {}", rel_err(&out, &fitted));
    // SAFETY: destroyed once.
    unsafe { gg_raw_fisher_destroy(h) };

    // K-FAC from covariances, its eigenvectors, and EK-FAC from an accumulated sum.
    let (k_i, k_o) = (3usize, 2usize);
    let xa = vals(50 * k_i as u64, 11);
    let xb = vals(50 * k_o as u64, 12);
    let (c_a, c_b) = (second_moment(&xa, 50, k_i), second_moment(&xb, 50, k_o));
    let mut h = ptr::null_mut();
    // SAFETY: live buffers, a writable out-pointer.
    let st = unsafe { gg_kfac_from_covariances(t(&c_a, GG_DTYPE_F32), k_i as u64, t(&c_b, GG_DTYPE_F32), k_o as u64, &mut h) };
    expect(st, GG_STATUS_OK, &[]);
    let mut rust = Kfac::from_covariances_f32(&c_a, k_i, &c_b, k_o).unwrap();
    let probe = vals((4 * k_i * k_o) as u64, 13);
    let apply = |h: *const gg_kfac| {
        let mut out = vec![f32::NAN; probe.len()];
        // SAFETY: a live handle and live buffers.
        expect(unsafe { gg_kfac_apply(h, t(&probe, GG_DTYPE_F32), 4, tm(&mut out)) }, GG_STATUS_OK, &[]);
        out
    };
    assert_eq!(apply(h), rust.apply(&probe, 4).unwrap());
    let (mut qa, mut qb) = (vec![f32::NAN; k_i * k_i], vec![f32::NAN; k_o * k_o]);
    // SAFETY: a live handle and live buffers.
    expect(unsafe { gg_kfac_eigenvectors(h, tm(&mut qa), tm(&mut qb)) }, GG_STATUS_OK, &[]);
    assert_eq!((qa.clone(), qb.clone()), rust.eigenvectors_f32());
    // Q_A has orthonormal columns (an independent property of what came back).
    for c in 0..k_i {
        let norm: f64 = (0..k_i).map(|r| (qa[r * k_i + c] as f64).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-5, "column {c} of q_a has norm² {norm}");
    }
    let ek: Vec<f32> = vals((k_o * k_i) as u64, 14).iter().map(|x| x * x + 0.1).collect();
    // SAFETY: a live handle and live buffers.
    expect(unsafe { gg_kfac_set_ekfac_sum(h, t(&ek, GG_DTYPE_F32), 7) }, GG_STATUS_OK, &[]);
    rust.set_ekfac_sum(&ek, 7).unwrap();
    let before = apply(h);
    assert_eq!(before, rust.apply(&probe, 4).unwrap());

    // Errors name the argument; a failed correction leaves the handle as it was.
    // SAFETY: every call below passes live buffers or deliberately bad arguments.
    unsafe {
        let mut h2 = ptr::null_mut();
        expect(gg_raw_fisher_from_sum(t(&sum[1..], GG_DTYPE_F32), k as u64, n as u64, &mut h2), GG_STATUS_LENGTH_MISMATCH, &["sum"]);
        assert!(h2.is_null());
        expect(gg_raw_fisher_from_sum(t(&sum, GG_DTYPE_F32), k as u64, 0, &mut h2), GG_STATUS_ZERO_SIZE, &["n"]);
        expect(gg_raw_fisher_from_sum(t(&sum, GG_DTYPE_F32), k as u64, n as u64, ptr::null_mut()), GG_STATUS_NULL_POINTER, &["out"]);
        let mut h3 = ptr::null_mut();
        expect(gg_kfac_from_covariances(t(&c_a, GG_DTYPE_F32), k_i as u64, t(&c_b[1..], GG_DTYPE_F32), k_o as u64, &mut h3), GG_STATUS_LENGTH_MISMATCH, &["c_b"]);
        assert!(h3.is_null());
        expect(gg_kfac_eigenvectors(ptr::null(), tm(&mut qa), tm(&mut qb)), GG_STATUS_NULL_POINTER, &["kfac"]);
        expect(gg_kfac_eigenvectors(h, tm(&mut qa[1..]), tm(&mut qb)), GG_STATUS_LENGTH_MISMATCH, &["q_a"]);
        let alias = gg_tensor_mut { ptr: qa.as_mut_ptr() as *mut c_void, len: (k_o * k_o) as u64 };
        assert_ne!(gg_kfac_eigenvectors(h, tm(&mut qa), alias), GG_STATUS_OK, "q_a and q_b overlap");
        expect(gg_kfac_set_ekfac_sum(h, t(&ek[1..], GG_DTYPE_F32), 7), GG_STATUS_LENGTH_MISMATCH, &["sum"]);
        expect(gg_kfac_set_ekfac_sum(h, t(&ek, GG_DTYPE_F32), 0), GG_STATUS_ZERO_SIZE, &["n"]);
        expect(gg_kfac_set_ekfac_sum(ptr::null_mut(), t(&ek, GG_DTYPE_F32), 7), GG_STATUS_NULL_POINTER, &["kfac"]);
        assert_eq!(apply(h), before, "a failed call changed the handle");
        gg_kfac_destroy(h);
    }
}

#[test]
fn influence_scores_groups_match_the_rust_api_and_reject_bad_groups() {
    use ghostgrad::ColumnGroup;
    let (nt, nb, rs) = (3usize, 5usize, 12usize);
    let (te, tr) = (vals((nt * rs) as u64, 61), vals((nb * rs) as u64, 62));
    let descs = [gg_column_group { offset: 0, width: 4 }, gg_column_group { offset: 5, width: 7 }];
    let groups = [ColumnGroup { offset: 0, width: 4 }, ColumnGroup { offset: 5, width: 7 }];
    let selfn: Vec<f32> = (0..2 * nb).map(|i| 1.0 + i as f32 * 0.25).collect();
    let ctx = Ctx::cpu();
    let mut out = vec![f32::NAN; 2 * nt * nb];
    // SAFETY: every pointer points at live memory of the right length.
    let st = unsafe {
        gg_influence_scores_groups(ctx.0, t(&te, GG_DTYPE_F32), t(&tr, GG_DTYPE_F32), nt as u64, nb as u64, rs as u64, descs.as_ptr(), 2, t(&selfn, GG_DTYPE_F32), GG_SCORE_L2, tm(&mut out), 1.0, 0.0)
    };
    expect(st, GG_STATUS_OK, &[]);
    let mut want = vec![f32::NAN; 2 * nt * nb];
    ghostgrad::Context::cpu()
        .influence_scores_groups(&te[..].into(), &tr[..].into(), nt as u64, nb as u64, rs as u64, &groups, &mut TensorMut::from(&mut want[..]), ScoreMode::L2, Some(&selfn[..].into()), Accumulate::overwrite())
        .unwrap();
    assert_eq!(out, want);
    // The formula for one entry: group 1, q = 2, j = 4.
    let dot: f64 = (5..12).map(|c| te[2 * rs + c] as f64 * tr[4 * rs + c] as f64).sum();
    let one = dot - 0.5 * selfn[nb + 4] as f64;
    assert!((out[nt * nb + 2 * nb + 4] as f64 - one).abs() <= 1e-5 * one.abs().max(1.0));
    let bad = [gg_column_group { offset: 8, width: 7 }];
    // SAFETY: as above, with a group outside the rows on purpose.
    let st = unsafe {
        gg_influence_scores_groups(ctx.0, t(&te, GG_DTYPE_F32), t(&tr, GG_DTYPE_F32), nt as u64, nb as u64, rs as u64, bad.as_ptr(), 1, ABSENT, GG_SCORE_DOT, tm(&mut out[..nt * nb]), 1.0, 0.0)
    };
    expect(st, GG_STATUS_INVALID_ARGUMENT, &["groups", "group 0"]);
    // SAFETY: a null group array must be detected.
    let st = unsafe {
        gg_influence_scores_groups(ctx.0, t(&te, GG_DTYPE_F32), t(&tr, GG_DTYPE_F32), nt as u64, nb as u64, rs as u64, ptr::null(), 1, ABSENT, GG_SCORE_DOT, tm(&mut out[..nt * nb]), 1.0, 0.0)
    };
    expect(st, GG_STATUS_NULL_POINTER, &["groups"]);
}

#[test]
fn model_ghg_matches_the_safe_api_with_and_without_the_tied_lm_head() {
    let p = ModelProblem::new();
    let (uses, safe) = (p.uses(), p.safe_uses());
    let dots = |len: u64, seed: u32| vals(len, seed);
    let (qemb_dot, qln_dot, qlin_dot, qh_dot, qlogit_dot) = (dots(16, 71), dots(16, 72), dots(12, 73), dots(16, 74), dots(24, 75));
    let x_dot = [ABSENT, t(&qh_dot, GG_DTYPE_F32), t(&qh_dot, GG_DTYPE_F32), t(&qh_dot, GG_DTYPE_F32)];
    let b_dot = [t(&qemb_dot, GG_DTYPE_F32), t(&qln_dot, GG_DTYPE_F32), t(&qlin_dot, GG_DTYPE_F32), t(&qlogit_dot, GG_DTYPE_F32)];
    // The first three uses (embedding, norm, Conv1D linear) are untied.
    let ctx = Ctx::cpu();
    let mut out = vec![f32::NAN; 2 * 2];
    // SAFETY: every descriptor points at live memory of the right length.
    let st = unsafe { gg_model_ghg(ctx.0, 2, uses.as_ptr(), x_dot.as_ptr(), b_dot.as_ptr(), 3, 0.3, tm(&mut out), 1.0, 0.0, GG_FORM_REQUEST_AUTO, 0) };
    expect(st, GG_STATUS_OK, &[]);
    let bd: [&[f32]; 3] = [&qemb_dot, &qln_dot, &qlin_dot];
    let gu: Vec<ghostgrad::GhgUse<'_>> = safe[..3]
        .iter()
        .zip(bd)
        .enumerate()
        .map(|(i, (u, b))| ghostgrad::GhgUse {
            param: u.param,
            kind: u.kind,
            train: u.train,
            val: *u.query.factors().unwrap(),
            x_dot: (i > 0).then(|| qh_dot[..].into()),
            b_dot: b.into(),
        })
        .collect();
    let mut want = vec![f32::NAN; 4];
    ghostgrad::Context::cpu().model_ghg(2, &gu, 0.3, &mut (&mut want[..]).into(), Accumulate::overwrite(), ghostgrad::ModelForms::default()).unwrap();
    assert_eq!(out, want);
    assert!(out.iter().all(|x| x.is_finite()), "{out:?}");
    // All four uses: the embedding (no x_dot) tied to the LM head (x_dot), as in GPT-2.
    // SAFETY: as above.
    let st = unsafe { gg_model_ghg(ctx.0, 2, uses.as_ptr(), x_dot.as_ptr(), b_dot.as_ptr(), 4, 0.3, tm(&mut out), 1.0, 0.0, GG_FORM_REQUEST_AUTO, 0) };
    expect(st, GG_STATUS_OK, &[]);
    let bd4: [&[f32]; 4] = [&qemb_dot, &qln_dot, &qlin_dot, &qlogit_dot];
    let gu4: Vec<ghostgrad::GhgUse<'_>> = safe
        .iter()
        .zip(bd4)
        .enumerate()
        .map(|(i, (u, b))| ghostgrad::GhgUse {
            param: u.param,
            kind: u.kind,
            train: u.train,
            val: *u.query.factors().unwrap(),
            x_dot: (i > 0).then(|| qh_dot[..].into()),
            b_dot: b.into(),
        })
        .collect();
    ghostgrad::Context::cpu().model_ghg(2, &gu4, 0.3, &mut (&mut want[..]).into(), Accumulate::overwrite(), ghostgrad::ModelForms::default()).unwrap();
    assert_eq!(out, want);
    // SAFETY: a null derivative array must be detected.
    let st = unsafe { gg_model_ghg(ctx.0, 2, uses.as_ptr(), ptr::null(), b_dot.as_ptr(), 3, 0.3, tm(&mut out), 1.0, 0.0, GG_FORM_REQUEST_AUTO, 0) };
    expect(st, GG_STATUS_NULL_POINTER, &["x_dot"]);
    let short = [t(&qemb_dot[..15], GG_DTYPE_F32), b_dot[1], b_dot[2]];
    // SAFETY: as above, with a short b_dot[0] on purpose.
    let st = unsafe { gg_model_ghg(ctx.0, 2, uses.as_ptr(), x_dot.as_ptr(), short.as_ptr(), 3, 0.3, tm(&mut out), 1.0, 0.0, GG_FORM_REQUEST_AUTO, 0) };
    assert_ne!(st, GG_STATUS_OK, "a short b_dot must be rejected");
}

/// Issue 11, defect 4 through the ABI: `GG_STATUS_OUT_OF_MEMORY` (not an abort, not
/// `GG_STATUS_PANIC`) for a 64 GiB random projection matrix and a k = 2^16 raw Fisher fit.
#[test]
fn host_allocations_too_large_for_the_machine_are_out_of_memory() {
    let ctx = Ctx::cpu();
    let (d_in, k_i) = (1u64 << 14, 1u64 << 20);
    let a: Vec<f32> = (0..d_in).map(|i| (i % 7) as f32 - 3.0).collect();
    let b = vec![0.5f32, -1.0, 2.0];
    let train = gg_train { a: t(&a, GG_DTYPE_F32), b: t(&b, GG_DTYPE_F32), n: 1, t: 1, mask: ABSENT };
    let proj = gg_projection { k_i, k_o: 1, kind: GG_PROJECTION_RANDOM, dist: GG_DISTRIBUTION_GAUSSIAN, seed: 1, layer: 0, p_in: ABSENT, p_out: ABSENT };
    let mut out = vec![f32::NAN; k_i as usize];
    // SAFETY: every descriptor points at live memory of this test.
    let st = unsafe { gg_kron_project(ctx.0, gg_layer_shape { d_in, d_out: 3, has_bias: 0 }, &train, &proj, tm(&mut out), 0, k_i, 1.0, 0.0) };
    expect(st, GG_STATUS_OUT_OF_MEMORY, &["projection matrix", "68719476736 bytes"]);
    assert!(out.iter().all(|x| x.is_nan()));
    let k = 1u64 << 16;
    let grads: Vec<f32> = (0..k).map(|i| ((i % 5) as f32 - 2.0) * 0.25).collect();
    let mut f: *mut gg_raw_fisher = ptr::null_mut();
    // SAFETY: as above; `f` is a valid out-parameter.
    let st = unsafe { gg_raw_fisher_fit(t(&grads, GG_DTYPE_F32), 1, k, &mut f) };
    expect(st, GG_STATUS_OUT_OF_MEMORY, &["raw Fisher"]);
    assert!(f.is_null());
}

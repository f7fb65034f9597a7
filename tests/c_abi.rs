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

#[test]
fn c_example_matches_a_naive_double_precision_computation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = static_library();
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ghost_dot_c_example");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let compiled = run(Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("examples/c/ghost_dot.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe));
    assert!(compiled.status.success(), "compiling examples/c/ghost_dot.c against {} failed", lib.display());
    let ran = run(&mut Command::new(&exe));
    assert!(ran.status.success(), "the C example failed ({})", ran.status);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stdout.contains("GG_STATUS_NULL_POINTER"), "the error path was not shown: {stdout}");
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
                query: Some(UseQuery { x: qx, b: qb.into(), q: 4, segments: Segments::Uniform(2), mask: None }),
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
    let bad_ids = vec![1i32, 3, 1, 0, 6, 5];
    let mut uses = p.uses();
    uses[0].train.x = t(&bad_ids, GG_DTYPE_I32);
    expect(call(&uses, &mut out, 0), GG_STATUS_INVALID_ARGUMENT, &["id 6", "vocab = 6"]);
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

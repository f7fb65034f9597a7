//! Every descriptor field of the ghost-dot and In-Run calls of the C ABI, walked with a fault
//! (a wrong length, a zero size, a NULL or misaligned out-parameter): the error names the field
//! exactly as the C caller spells it (`layers[1].a_dot`, `choice_out`), and no output is touched
//! (outputs are NaN-poisoned and compared bit for bit after every failed call).
//!
//! A case builds its descriptors through a [`Site`], which hands out every buffer and size under
//! its C path; a first run with no fault must succeed and lists the paths, then each path is
//! faulted in turn.
//!
//! Not walked yet (issue 11, defect 3, still open): the model-level calls (`uses[i].*`
//! length mismatches are named by the Rust model validation without the use), the projection,
//! covariance, DVEmb and preconditioner calls.

#![allow(clippy::too_many_arguments)]

use std::ffi::{c_void, CStr};
use std::ptr;

use ghostgrad::ffi::gg_status::{self, *};
use ghostgrad::ffi::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// One element fewer than the shapes ask for.
    Short,
    /// A size that must be at least 1 set to 0.
    Zero,
    /// An out-parameter moved by one byte.
    Misaligned,
    /// A required out-parameter set to NULL.
    Null,
}

/// Hands out a case's buffers and sizes under their C paths, applies the fault aimed at one of
/// them, and remembers the outputs to compare after a failed call.
struct Site {
    target: Option<(String, Fault)>,
    seen: Vec<(String, Fault)>,
    outputs: Vec<(String, *const u8, Vec<u8>)>,
}

impl Site {
    fn new(target: Option<(String, Fault)>) -> Self {
        Site { target, seen: Vec::new(), outputs: Vec::new() }
    }
    fn hit(&mut self, path: &str, fault: Fault) -> bool {
        self.seen.push((path.to_string(), fault));
        self.target.as_ref().is_some_and(|(p, f)| p == path && *f == fault)
    }
    fn input<T>(&mut self, path: &str, v: &[T], dtype: gg_dtype) -> gg_tensor {
        let short = self.hit(path, Fault::Short);
        gg_tensor { ptr: v.as_ptr() as *const c_void, len: v.len() as u64 - short as u64, dtype }
    }
    fn size(&mut self, path: &str, x: u64) -> u64 {
        if self.hit(path, Fault::Zero) {
            0
        } else {
            x
        }
    }
    fn remember(&mut self, path: &str, p: *const u8, bytes: usize) {
        // SAFETY: `p` points at `bytes` live bytes of the case.
        let snapshot = unsafe { std::slice::from_raw_parts(p, bytes) }.to_vec();
        self.outputs.push((path.to_string(), p, snapshot));
    }
    fn output(&mut self, path: &str, v: &mut [f32]) -> gg_tensor_mut {
        v.fill(f32::NAN);
        self.remember(path, v.as_ptr() as *const u8, v.len() * 4);
        let short = self.hit(path, Fault::Short);
        let shift = self.hit(path, Fault::Misaligned) as usize;
        gg_tensor_mut { ptr: (v.as_mut_ptr() as usize + shift) as *mut c_void, len: v.len() as u64 - short as u64 - shift as u64 }
    }
    /// An array of `T` the call fills in (`choice_out`, `choices_out`), poisoned with 0xff bytes.
    fn out_array<T>(&mut self, path: &str, v: &mut [T], required: bool) -> *mut T {
        let bytes = std::mem::size_of_val(v);
        // SAFETY: overwriting plain-old-data test structs byte by byte.
        unsafe { ptr::write_bytes(v.as_mut_ptr() as *mut u8, 0xff, bytes) };
        self.remember(path, v.as_ptr() as *const u8, bytes);
        if required && self.hit(path, Fault::Null) {
            return ptr::null_mut();
        }
        let shift = self.hit(path, Fault::Misaligned) as usize;
        (v.as_mut_ptr() as usize + shift) as *mut T
    }
    /// The status, after checking that a failed call wrote no output.
    fn done(&self, st: gg_status) -> gg_status {
        if st != GG_STATUS_OK {
            for (path, p, snapshot) in &self.outputs {
                // SAFETY: the buffers of the case are still alive (done is called inside it).
                let now = unsafe { std::slice::from_raw_parts(*p, snapshot.len()) };
                assert!(now == &snapshot[..], "{:?}: `{path}` was written by a call that failed: {}", self.target, last_error());
            }
        }
        st
    }
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated thread-local string owned by ghostgrad.
    unsafe { CStr::from_ptr(gg_last_error_message()) }.to_string_lossy().into_owned()
}

/// Runs `case` without a fault (it must succeed), then with each of its faults: every one fails,
/// names its field, and leaves every output untouched.
fn walk(name: &str, case: impl Fn(&mut Site) -> gg_status) {
    let mut site = Site::new(None);
    let st = case(&mut site);
    assert_eq!(st, GG_STATUS_OK, "{name}: the valid call failed: {}", last_error());
    assert!(site.seen.len() > 3, "{name}: only {:?}", site.seen);
    for (path, fault) in site.seen.clone() {
        let mut s = Site::new(Some((path.clone(), fault)));
        let st = case(&mut s);
        let msg = last_error();
        assert_ne!(st, GG_STATUS_OK, "{name}: {fault:?} `{path}` was accepted");
        assert!(msg.contains(&format!("`{path}`")), "{name}: {fault:?} `{path}`: the message does not name it: {msg}");
    }
}

fn vals(len: u64, seed: u32) -> Vec<f32> {
    (0..len as u32).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0).collect()
}

struct Ctx(*mut gg_context);
impl Ctx {
    fn cpu() -> Self {
        let mut p = ptr::null_mut();
        // SAFETY: a valid out-pointer.
        assert_eq!(unsafe { gg_context_create_cpu(&mut p) }, GG_STATUS_OK);
        Ctx(p)
    }
}
impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        unsafe { gg_context_destroy(self.0) };
    }
}

const N: u64 = 3;
const T: u64 = 2;
const DI: u64 = 4;
const DO: u64 = 3;
const Q: u64 = 5;

/// Training and query factors of one layer (seeded), and descriptors of them under `prefix`.
struct Layer {
    a: Vec<f32>,
    b: Vec<f32>,
    mask: Vec<u8>,
    aq: Vec<f32>,
    bq: Vec<f32>,
    qmask: Vec<u8>,
    offsets: Vec<i32>,
}

impl Layer {
    fn new(seed: u32) -> Self {
        Layer {
            a: vals(N * T * DI, seed),
            b: vals(N * T * DO, seed + 1),
            mask: vec![1, 0, 1, 1, 1, 1],
            aq: vals(Q * DI, seed + 2),
            bq: vals(Q * DO, seed + 3),
            qmask: vec![1, 1, 0, 1, 1],
            offsets: vec![0, 2, 5],
        }
    }
    fn shape(&self, s: &mut Site, p: &str) -> gg_layer_shape {
        gg_layer_shape { d_in: s.size(&format!("{p}shape.d_in"), DI), d_out: s.size(&format!("{p}shape.d_out"), DO), has_bias: 1 }
    }
    fn train(&self, s: &mut Site, p: &str) -> gg_train {
        gg_train {
            a: s.input(&format!("{p}train.a"), &self.a, GG_DTYPE_F32),
            b: s.input(&format!("{p}train.b"), &self.b, GG_DTYPE_F32),
            n: s.size(&format!("{p}train.n"), N),
            t: s.size(&format!("{p}train.t"), T),
            mask: s.input(&format!("{p}train.mask"), &self.mask, GG_DTYPE_U8),
        }
    }
    fn query(&self, s: &mut Site, p: &str) -> gg_query {
        // The offsets' length defines V: a short one is a valid query of other shape.
        let offsets = gg_tensor { ptr: self.offsets.as_ptr() as *const c_void, len: 3, dtype: GG_DTYPE_I32 };
        gg_query {
            aq: s.input(&format!("{p}query.aq"), &self.aq, GG_DTYPE_F32),
            bq: s.input(&format!("{p}query.bq"), &self.bq, GG_DTYPE_F32),
            q: s.size(&format!("{p}query.q"), Q),
            segments: gg_segments { kind: GG_SEGMENTS_OFFSETS, uniform_len: 0, offsets },
            mask: s.input(&format!("{p}query.mask"), &self.qmask, GG_DTYPE_U8),
        }
    }
}

#[test]
fn ghost_dot_family_errors_name_the_c_field_and_write_nothing() {
    let ctx = Ctx::cpu();
    let l = Layer::new(1);
    let l2 = Layer::new(7);
    walk("gg_ghost_dot", |s| {
        let mut out = vec![0.0f32; (N * 2) as usize];
        let mut choice = [gg_form_choice { form: 0, forced: 0, est_seconds: [0.0; 3], flops: [0.0; 3], bytes: [0.0; 3], extra_bytes: [0.0; 3], fits: [0; 3] }; 1];
        let (shape, train, query) = (l.shape(s, ""), l.train(s, ""), l.query(s, ""));
        let (out, choice) = (s.output("out", &mut out), s.out_array("choice_out", &mut choice, false));
        // SAFETY: descriptors of live buffers (faults are detected before any access).
        s.done(unsafe { gg_ghost_dot(ctx.0, shape, &train, &query, out, 1.0, 0.0, GG_FORM_REQUEST_AUTO, choice) })
    });
    walk("gg_ghost_dot_layers", |s| {
        let mut out = vec![0.0f32; (N * 2) as usize];
        let mut choices = [gg_form_choice { form: 0, forced: 0, est_seconds: [0.0; 3], flops: [0.0; 3], bytes: [0.0; 3], extra_bytes: [0.0; 3], fits: [0; 3] }; 2];
        let layers = [
            gg_layer { shape: l.shape(s, "layers[0]."), train: l.train(s, "layers[0]."), query: l.query(s, "layers[0]."), form: 0 },
            gg_layer { shape: l2.shape(s, "layers[1]."), train: l2.train(s, "layers[1]."), query: l2.query(s, "layers[1]."), form: 0 },
        ];
        let (out, choices) = (s.output("out", &mut out), s.out_array("choices_out", &mut choices, false));
        // SAFETY: as above.
        s.done(unsafe { gg_ghost_dot_layers(ctx.0, layers.as_ptr(), 2, out, 1.0, 0.0, choices) })
    });
    for gram in [true, false] {
        walk(if gram { "gg_ghost_gram" } else { "gg_ghost_sqnorm" }, |s| {
            let mut out = vec![0.0f32; if gram { N * N } else { N } as usize];
            let mut choice = [gg_form_choice { form: 0, forced: 0, est_seconds: [0.0; 3], flops: [0.0; 3], bytes: [0.0; 3], extra_bytes: [0.0; 3], fits: [0; 3] }; 1];
            let (shape, train) = (l.shape(s, ""), l.train(s, ""));
            let (out, choice) = (s.output("out", &mut out), s.out_array("choice_out", &mut choice, false));
            // SAFETY: as above.
            s.done(unsafe {
                if gram {
                    gg_ghost_gram(ctx.0, shape, &train, out, 1.0, 0.0, GG_FORM_REQUEST_AUTO, choice)
                } else {
                    gg_ghost_sqnorm(ctx.0, shape, &train, out, 1.0, 0.0, GG_FORM_REQUEST_AUTO, choice)
                }
            })
        });
    }
    walk("gg_choose_form", |s| {
        let mut choice = [gg_form_choice { form: 0, forced: 0, est_seconds: [0.0; 3], flops: [0.0; 3], bytes: [0.0; 3], extra_bytes: [0.0; 3], fits: [0; 3] }; 1];
        let (shape, train, query) = (l.shape(s, ""), l.train(s, ""), l.query(s, ""));
        let choice = s.out_array("choice_out", &mut choice, true);
        // SAFETY: as above.
        s.done(unsafe { gg_choose_form(ctx.0, shape, &train, &query, GG_FORM_REQUEST_AUTO, choice) })
    });
    walk("gg_ghost_dot_dense", |s| {
        let (m, mb) = (vals(DO * DI, 30), vals(DO, 31));
        let mut out = vec![0.0f32; N as usize];
        let (shape, train) = (l.shape(s, ""), l.train(s, ""));
        let (m, mb, out) = (s.input("m", &m, GG_DTYPE_F32), s.input("m_bias", &mb, GG_DTYPE_F32), s.output("out", &mut out));
        // SAFETY: as above.
        s.done(unsafe { gg_ghost_dot_dense(ctx.0, shape, &train, m, mb, out, 1.0, 0.0) })
    });
    walk("gg_factored_grad", |s| {
        let w = vals(Q, 40);
        let (mut out, mut ob) = (vec![0.0f32; (2 * DO * DI) as usize], vec![0.0f32; (2 * DO) as usize]);
        let (shape, query) = (l.shape(s, ""), l.query(s, ""));
        let (w, out, ob) = (s.input("row_weights", &w, GG_DTYPE_F32), s.output("out", &mut out), s.output("out_bias", &mut ob));
        // SAFETY: as above.
        s.done(unsafe { gg_factored_grad(ctx.0, shape, &query, w, out, ob, 1.0, 0.0) })
    });
}

#[test]
fn ghg_errors_name_the_c_field_and_write_nothing() {
    let ctx = Ctx::cpu();
    const TV: u64 = 4;
    let data: Vec<(Layer, [Vec<f32>; 4], Vec<u8>)> = (0..2)
        .map(|i| {
            let l = Layer::new(50 + 10 * i);
            let f = [vals(TV * DI, 60 + i), vals(TV * DO, 61 + i), vals(TV * DI, 62 + i), vals(TV * DO, 63 + i)];
            (l, f, vec![1, 1, 0, 1])
        })
        .collect();
    walk("gg_ghg", |s| {
        let mut out = vec![0.0f32; N as usize];
        let mut choices = [gg_form_choice { form: 0, forced: 0, est_seconds: [0.0; 3], flops: [0.0; 3], bytes: [0.0; 3], extra_bytes: [0.0; 3], fits: [0; 3] }; 6];
        let layers: Vec<gg_ghg_layer> = data
            .iter()
            .enumerate()
            .map(|(i, (l, [av, bv, ad, bd], vm))| {
                let p = format!("layers[{i}].");
                gg_ghg_layer {
                    shape: l.shape(s, &p),
                    train: l.train(s, &p),
                    a_val: s.input(&format!("{p}a_val"), av, GG_DTYPE_F32),
                    b_val: s.input(&format!("{p}b_val"), bv, GG_DTYPE_F32),
                    a_dot: s.input(&format!("{p}a_dot"), ad, GG_DTYPE_F32),
                    b_dot: s.input(&format!("{p}b_dot"), bd, GG_DTYPE_F32),
                    t_v: s.size(&format!("{p}t_v"), TV),
                    val_mask: s.input(&format!("{p}val_mask"), vm, GG_DTYPE_U8),
                }
            })
            .collect();
        let (out, choices) = (s.output("out", &mut out), s.out_array("choices_out", &mut choices, false));
        // SAFETY: as above.
        s.done(unsafe { gg_ghg(ctx.0, layers.as_ptr(), 2, 0.1, out, 1.0, 0.0, GG_FORM_REQUEST_AUTO, choices) })
    });
}

#[test]
fn snprintf_style_copies_check_len_out_before_writing_buf() {
    let ctx = Ctx::cpu();
    let mut buf = [0x7f_u8 as std::ffi::c_char; 16];
    let mut lens = [0usize; 2];
    let misaligned = (lens.as_mut_ptr() as usize + 1) as *mut usize;
    // SAFETY: buf has 16 writable bytes; len_out is misaligned on purpose (detected).
    let st = unsafe { gg_context_describe(ctx.0, buf.as_mut_ptr(), buf.len(), misaligned) };
    assert_eq!(st, GG_STATUS_MISALIGNED, "{}", last_error());
    assert!(last_error().contains("`len_out`"), "{}", last_error());
    assert!(buf.iter().all(|&c| c == 0x7f_u8 as std::ffi::c_char), "buf was written before the error");
}

#[test]
fn model_calls_report_their_terms_as_data() {
    // A tied embedding + LM head (param 0) and a LayerNorm (param 1); train × train Gram.
    let ctx = Ctx::cpu();
    let ids = vec![1i32, 3, 1, 0, 5, 5];
    let (emb_b, h, logit_b, xhat, ln_b) = (vals(24, 1), vals(24, 2), vals(36, 3), vals(24, 4), vals(24, 5));
    let absent = gg_tensor { ptr: ptr::null(), len: 0, dtype: 0 };
    let no_query = gg_use_query { x: absent, b: absent, q: 0, segments: gg_segments { kind: 0, uniform_len: 0, offsets: absent }, mask: absent };
    let t = |v: &[f32]| gg_tensor { ptr: v.as_ptr() as *const c_void, len: v.len() as u64, dtype: GG_DTYPE_F32 };
    let mk = |param, kind, x: gg_tensor, b: gg_tensor| gg_layer_use {
        param,
        kind,
        d_in: 4,
        d_out: 6,
        vocab: 6,
        d: 4,
        has_bias: 0,
        layout: GG_WEIGHT_OUT_IN,
        train: gg_use_train { x, b, t: 3, mask: absent },
        query: no_query,
        train_only: 0,
    };
    let ids_t = gg_tensor { ptr: ids.as_ptr() as *const c_void, len: 6, dtype: GG_DTYPE_I32 };
    let uses = [mk(0, GG_LAYER_EMBEDDING, ids_t, t(&emb_b)), mk(1, GG_LAYER_NORM, t(&xhat), t(&ln_b)), mk(0, GG_LAYER_LINEAR, t(&h), t(&logit_b))];
    let mut out = vec![f32::NAN; 4];
    let none = gg_term_choice { param: u32::MAX, algorithm: u32::MAX, linear_form: u32::MAX, use_a: u64::MAX, use_b: u64::MAX };
    let mut terms = [none; 8];
    let mut count = 0usize;
    let out_t = gg_tensor_mut { ptr: out.as_mut_ptr() as *mut c_void, len: 4 };
    // SAFETY: live descriptors; 8 writable terms and a writable count.
    let st = unsafe { gg_model_gram(ctx.0, 2, uses.as_ptr(), 3, out_t, 1.0, 0.0, 0, GG_EMBEDDING_FORM_MASKED_GRAM, terms.as_mut_ptr(), 8, &mut count) };
    assert_eq!(st, GG_STATUS_OK, "{}", last_error());
    assert_eq!(count, 5);
    let got: Vec<(u32, u32, u64, u64)> = terms[..5].iter().map(|c| (c.param, c.algorithm, c.use_a, c.use_b)).collect();
    assert_eq!(
        got,
        vec![
            (0, GG_TERM_EMBEDDING_MASKED_GRAM, 0, 0),
            (0, GG_TERM_CROSS_GRAM, 0, 2),
            (0, GG_TERM_CROSS_GRAM, 2, 0),
            (0, GG_TERM_LINEAR, 2, 2),
            (1, GG_TERM_NORM_MATERIALIZE, 1, 1),
        ]
    );
    assert!(terms[3].linear_form <= GG_FORM_MATERIALIZE);
    assert_eq!(terms[5], none, "entries past the count are not written");
    // A smaller capacity truncates (snprintf-style) and still reports the full count.
    let mut two = [none; 3];
    // SAFETY: as above with 2 of 3 entries offered.
    let st = unsafe { gg_model_gram(ctx.0, 2, uses.as_ptr(), 3, out_t, 1.0, 0.0, 0, GG_EMBEDDING_FORM_MASKED_GRAM, two.as_mut_ptr(), 2, &mut count) };
    assert_eq!(st, GG_STATUS_OK, "{}", last_error());
    assert_eq!((count, two[0], two[1], two[2]), (5, terms[0], terms[1], none));
    // A misaligned choices_out or a NULL one with a capacity is an error before anything is written.
    out.fill(f32::NAN);
    let out_t = gg_tensor_mut { ptr: out.as_mut_ptr() as *mut c_void, len: 4 };
    let bad = (terms.as_mut_ptr() as usize + 1) as *mut gg_term_choice;
    for (p, want) in [(bad, GG_STATUS_MISALIGNED), (ptr::null_mut(), GG_STATUS_NULL_POINTER)] {
        // SAFETY: the bad pointers are detected before use.
        let st = unsafe { gg_model_gram(ctx.0, 2, uses.as_ptr(), 3, out_t, 1.0, 0.0, 0, 0, p, 4, &mut count) };
        assert_eq!(st, want, "{}", last_error());
        assert!(last_error().contains("`choices_out`"), "{}", last_error());
        assert!(out.iter().all(|x| x.is_nan()), "out was written before the error");
    }
}

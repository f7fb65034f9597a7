//! Per-opcode golden tests. Each case is one or a few instructions run by a single thread:
//! inputs are loaded from global memory into typed registers, outputs stored back and compared
//! bit-exactly with values computed by hand from the PTX ISA (or, for the mechanical integer and
//! compare families, from Rust's own typed arithmetic). One test runs every case and then checks
//! that every allowlisted opcode form was exercised.
#![allow(clippy::needless_range_loop)]

mod common;
use std::collections::BTreeSet;

use ptx_interp::*;

fn f(x: f32) -> u64 {
    x.to_bits() as u64
}
fn d(x: f64) -> u64 {
    x.to_bits()
}
fn fb(b: u32) -> u64 {
    b as u64
}

/// Register class by name prefix: (declared width, load/store type).
fn reg_width(r: &str) -> u32 {
    if r.starts_with("%p") {
        1
    } else if r.starts_with("%rs") {
        16
    } else if r.starts_with("%rd") || r.starts_with("%fd") {
        64
    } else {
        32
    }
}

fn mask(w: u32) -> u64 {
    if w >= 64 {
        u64::MAX
    } else {
        (1 << w) - 1
    }
}

const DECLS: &str = ".reg .pred %p<16>;\n.reg .b16 %rs<16>;\n.reg .b32 %r<100>;\n.reg .f32 %f<16>;\n.reg .b64 %rd<100>;\n.reg .f64 %fd<16>;\n";

fn build_ptx(body: &str, ins: &[(&str, u64)], outs: &[&str]) -> String {
    let mut s = String::from(".version 9.5\n.target sm_80\n.address_size 64\n\n.visible .entry k(\n.param .u64 k_in,\n.param .u64 k_out\n)\n{\n");
    s.push_str(DECLS);
    s.push_str("ld.param.u64 %rd98, [k_in];\nld.param.u64 %rd99, [k_out];\n");
    for (i, (r, _)) in ins.iter().enumerate() {
        let off = i * 8;
        match reg_width(r) {
            1 => s.push_str(&format!(
                "ld.global.u32 %r99, [%rd98+{off}];\nsetp.ne.u32 {r}, %r99, 0;\n"
            )),
            w => s.push_str(&format!("ld.global.b{w} {r}, [%rd98+{off}];\n")),
        }
    }
    s.push_str(body);
    s.push('\n');
    for (i, r) in outs.iter().enumerate() {
        let off = i * 8;
        match reg_width(r) {
            1 => s.push_str(&format!(
                "selp.u32 %r99, 1, 0, {r};\nst.global.u32 [%rd99+{off}], %r99;\n"
            )),
            w => s.push_str(&format!("st.global.b{w} [%rd99+{off}], {r};\n")),
        }
    }
    s.push_str("ret;\n}\n");
    s
}

struct Runner {
    forms: BTreeSet<String>,
    failures: Vec<String>,
    cases: usize,
}

impl Runner {
    fn run_raw(
        &mut self,
        body: &str,
        ins: &[(&str, u64)],
        outs: &[&str],
    ) -> Result<Vec<u64>, String> {
        let ptx = build_ptx(body, ins, outs);
        let m = Module::parse(&ptx).map_err(|e| format!("{e}"))?;
        self.forms.extend(m.opcode_forms());
        let mut dev = Device::new();
        let pin = dev.alloc(8 * ins.len().max(1) as u64).unwrap();
        let mut bytes = Vec::new();
        for (_, v) in ins {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        if !bytes.is_empty() {
            dev.write(pin, &bytes).unwrap();
        }
        let pout = dev.alloc(8 * outs.len().max(1) as u64).unwrap();
        dev.write(pout, &vec![0u8; 8 * outs.len().max(1)]).unwrap();
        dev.launch(
            &m,
            "k",
            &LaunchConfig {
                grid: [1, 1, 1],
                block: [1, 1, 1],
                dynamic_shared_bytes: 0,
            },
            &[ParamValue::U64(pin), ParamValue::U64(pout)],
            &Options::default(),
        )
        .map_err(|e| format!("{e}"))?;
        let out = dev.read(pout, 8 * outs.len() as u64).unwrap();
        Ok(outs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                u64::from_le_bytes(out[i * 8..i * 8 + 8].try_into().unwrap())
                    & mask(if reg_width(r) == 1 { 32 } else { reg_width(r) })
            })
            .collect())
    }

    /// Runs `body` and compares each output register with the expected bits (at register width).
    #[track_caller]
    fn case(&mut self, body: &str, ins: &[(&str, u64)], outs: &[(&str, u64)]) {
        self.cases += 1;
        let names: Vec<&str> = outs.iter().map(|o| o.0).collect();
        match self.run_raw(body, ins, &names) {
            Err(e) => self.failures.push(format!("`{body}`: {e}")),
            Ok(got) => {
                for ((r, want), g) in outs.iter().zip(got) {
                    let w = reg_width(r);
                    let want = want & mask(if w == 1 { 32 } else { w });
                    if g != want {
                        self.failures.push(format!(
                            "`{body}` inputs {:x?}: {r} = {g:#x}, expected {want:#x}",
                            ins
                        ));
                    }
                }
            }
        }
    }

    #[track_caller]
    fn err_case(&mut self, body: &str, ins: &[(&str, u64)], outs: &[&str], needle: &str) {
        self.cases += 1;
        match self.run_raw(body, ins, outs) {
            Ok(v) => self.failures.push(format!(
                "`{body}`: expected error containing `{needle}`, got {v:x?}"
            )),
            Err(e) if e.contains(needle) => {}
            Err(e) => self.failures.push(format!(
                "`{body}`: expected error containing `{needle}`, got {e}"
            )),
        }
    }
}

fn reg_for(ty: &str, i: usize) -> String {
    match ty {
        "pred" => format!("%p{i}"),
        "u8" | "s8" | "b8" | "u16" | "s16" | "b16" => format!("%rs{i}"),
        "u32" | "s32" | "b32" => format!("%r{i}"),
        "f32" => format!("%f{i}"),
        "f64" => format!("%fd{i}"),
        _ => format!("%rd{i}"),
    }
}

fn bits_of(ty: &str) -> u32 {
    match ty {
        "u8" | "s8" | "b8" => 8,
        "u16" | "s16" | "b16" => 16,
        "u32" | "s32" | "b32" | "f32" => 32,
        _ => 64,
    }
}

fn sx(v: u64, w: u32) -> i128 {
    let s = 128 - w;
    (((v as u128) << s) as i128) >> s
}

/// Mechanical integer families, reference from i128 arithmetic.
fn integer_families(r: &mut Runner) {
    let pairs: [(i64, i64); 5] = [
        (7, 3),
        (-5, 3),
        (0x7fff_ffff_ffff, 2),
        (-1, -1),
        (1234567, -89),
    ];
    for t in ["s16", "u16", "s32", "u32", "s64", "u64"] {
        let w = bits_of(t);
        let signed = t.starts_with('s');
        let val = |v: i64| -> i128 {
            if signed {
                sx(v as u64, w)
            } else {
                (v as u64 & mask(w)) as i128
            }
        };
        let (ra, rb, rc, rd) = (reg_for(t, 1), reg_for(t, 2), reg_for(t, 3), reg_for(t, 4));
        for &(a, b) in &pairs {
            let (x, y) = (val(a), val(b));
            let ins = [(ra.as_str(), a as u64), (rb.as_str(), b as u64)];
            let m = |v: i128| (v as u64) & mask(w);
            r.case(
                &format!("add.{t} {rd}, {ra}, {rb};"),
                &ins,
                &[(&rd, m(x + y))],
            );
            r.case(
                &format!("sub.{t} {rd}, {ra}, {rb};"),
                &ins,
                &[(&rd, m(x - y))],
            );
            r.case(
                &format!("mul.lo.{t} {rd}, {ra}, {rb};"),
                &ins,
                &[(&rd, m(x.wrapping_mul(y)))],
            );
            r.case(
                &format!("min.{t} {rd}, {ra}, {rb};"),
                &ins,
                &[(&rd, m(x.min(y)))],
            );
            r.case(
                &format!("max.{t} {rd}, {ra}, {rb};"),
                &ins,
                &[(&rd, m(x.max(y)))],
            );
            if w >= 32 {
                r.case(
                    &format!("mul.hi.{t} {rd}, {ra}, {rb};"),
                    &ins,
                    &[(&rd, m(x.wrapping_mul(y) >> w))],
                );
                let insc = [
                    (ra.as_str(), a as u64),
                    (rb.as_str(), b as u64),
                    (rc.as_str(), 5),
                ];
                r.case(
                    &format!("mad.lo.{t} {rd}, {ra}, {rb}, {rc};"),
                    &insc,
                    &[(&rd, m(x.wrapping_mul(y) + 5))],
                );
                if w == 32 {
                    r.case(
                        &format!("mad.hi.{t} {rd}, {ra}, {rb}, {rc};"),
                        &insc,
                        &[(&rd, m((x.wrapping_mul(y) >> w) + 5))],
                    );
                }
                if y != 0 {
                    r.case(
                        &format!("div.{t} {rd}, {ra}, {rb};"),
                        &ins,
                        &[(&rd, m(x / y))],
                    );
                    r.case(
                        &format!("rem.{t} {rd}, {ra}, {rb};"),
                        &ins,
                        &[(&rd, m(x % y))],
                    );
                }
            }
            if w <= 32 {
                let wt = format!("{}{}", &t[..1], 2 * w);
                let rw = reg_for(&wt, 5);
                let rwc = reg_for(&wt, 6);
                r.case(
                    &format!("mul.wide.{t} {rw}, {ra}, {rb};"),
                    &ins,
                    &[(&rw, ((x * y) as u64) & mask(2 * w))],
                );
                let insc = [
                    (ra.as_str(), a as u64),
                    (rb.as_str(), b as u64),
                    (rwc.as_str(), 1000),
                ];
                r.case(
                    &format!("mad.wide.{t} {rw}, {ra}, {rb}, {rwc};"),
                    &insc,
                    &[(&rw, ((x * y + 1000) as u64) & mask(2 * w))],
                );
            }
        }
        if w >= 32 {
            r.err_case(
                &format!("div.{t} {rd}, {ra}, {rb};"),
                &[(&ra, 1), (&rb, 0)],
                &[&rd],
                "division by zero",
            );
            r.err_case(
                &format!("rem.{t} {rd}, {ra}, {rb};"),
                &[(&ra, 1), (&rb, 0)],
                &[&rd],
                "division by zero",
            );
        }
    }
    for t in ["s16", "s32", "s64"] {
        let w = bits_of(t);
        let (ra, rd) = (reg_for(t, 1), reg_for(t, 2));
        r.case(
            &format!("neg.{t} {rd}, {ra};"),
            &[(&ra, 5)],
            &[(&rd, (-5i64 as u64) & mask(w))],
        );
        r.case(
            &format!("abs.{t} {rd}, {ra};"),
            &[(&ra, -7i64 as u64)],
            &[(&rd, 7)],
        );
        // abs of the most negative value wraps to itself
        r.case(
            &format!("abs.{t} {rd}, {ra};"),
            &[(&ra, 1u64 << (w - 1))],
            &[(&rd, 1u64 << (w - 1))],
        );
    }
    // bitwise and shifts
    for t in ["b16", "b32", "b64"] {
        let w = bits_of(t);
        let (ra, rb, rd) = (reg_for(t, 1), reg_for(t, 2), reg_for(t, 3));
        let (a, b) = (
            0xF0F0_F0F0_F0F0_F0F0u64 & mask(w),
            0xFF00_FF00_FF00_FF00u64 & mask(w),
        );
        let ins = [(ra.as_str(), a), (rb.as_str(), b)];
        r.case(&format!("and.{t} {rd}, {ra}, {rb};"), &ins, &[(&rd, a & b)]);
        r.case(&format!("or.{t} {rd}, {ra}, {rb};"), &ins, &[(&rd, a | b)]);
        r.case(&format!("xor.{t} {rd}, {ra}, {rb};"), &ins, &[(&rd, a ^ b)]);
        r.case(
            &format!("not.{t} {rd}, {ra};"),
            &ins,
            &[(&rd, !a & mask(w))],
        );
        r.case(&format!("cnot.{t} {rd}, {ra};"), &[(&ra, 0)], &[(&rd, 1)]);
        r.case(&format!("cnot.{t} {rd}, {ra};"), &[(&ra, 8)], &[(&rd, 0)]);
        // shift amounts are u32 and clamp at the register width
        for (n, want) in [
            (4u64, (a << 4) & mask(w)),
            (w as u64 - 1, (a << (w - 1)) & mask(w)),
            (w as u64, 0),
            (1000, 0),
        ] {
            r.case(
                &format!("shl.{t} {rd}, {ra}, %r20;"),
                &[(&ra, a), ("%r20", n)],
                &[(&rd, want)],
            );
        }
        r.case(&format!("shl.{t} {rd}, {ra}, 3;"), &[(&ra, 1)], &[(&rd, 8)]);
    }
    for t in [
        "b16", "b32", "b64", "u16", "u32", "u64", "s16", "s32", "s64",
    ] {
        let w = bits_of(t);
        let (ra, rd) = (reg_for(t, 1), reg_for(t, 3));
        let a = 1u64 << (w - 1) | 0x10; // sign bit set
        let signed = t.starts_with('s');
        for n in [0u64, 4, w as u64 - 1, w as u64, 0xFFFF_FFFF] {
            let want = if signed {
                ((sx(a, w) >> n.min(w as u64 - 1)) as u64) & mask(w)
            } else if n >= w as u64 {
                0
            } else {
                a >> n
            };
            r.case(
                &format!("shr.{t} {rd}, {ra}, %r20;"),
                &[(&ra, a), ("%r20", n)],
                &[(&rd, want)],
            );
        }
    }
    for t in ["b32", "b64"] {
        let w = bits_of(t);
        let (ra, rd) = (reg_for(t, 1), reg_for(t, 3));
        let a = 0x0000_0000_00F0_0001u64;
        r.case(&format!("popc.{t} %r5, {ra};"), &[(&ra, a)], &[("%r5", 5)]);
        r.case(
            &format!("clz.{t} %r5, {ra};"),
            &[(&ra, a)],
            &[("%r5", (w - 24) as u64)],
        );
        r.case(
            &format!("clz.{t} %r5, {ra};"),
            &[(&ra, 0)],
            &[("%r5", w as u64)],
        );
        r.case(
            &format!("brev.{t} {rd}, {ra};"),
            &[(&ra, 1)],
            &[(&rd, 1u64 << (w - 1))],
        );
    }
    // bfe: pos 4, len 8 of 0x...F7A5 -> 0x7A, signed: sign bit of field is bit 11 (=0 here); 0x8A0 -> field 0x8A signed -> sign-extended
    for t in ["u32", "s32", "u64", "s64"] {
        let w = bits_of(t);
        let (ra, rd) = (reg_for(t, 1), reg_for(t, 3));
        r.case(
            &format!("bfe.{t} {rd}, {ra}, 4, 8;"),
            &[(&ra, 0xF7A5)],
            &[(&rd, 0x7A)],
        );
        let want = if t.starts_with('s') {
            (-118i64 as u64) & mask(w)
        } else {
            0x8A
        };
        r.case(
            &format!("bfe.{t} {rd}, {ra}, 4, 8;"),
            &[(&ra, 0x8A0)],
            &[(&rd, want)],
        );
        // len 0 gives 0; pos beyond msb replicates the sign (or 0)
        r.case(
            &format!("bfe.{t} {rd}, {ra}, 4, 0;"),
            &[(&ra, 0xFFFF)],
            &[(&rd, 0)],
        );
    }
    // bfi: insert a[len-1:0] into b at pos; bits beyond the msb are dropped
    r.case(
        "bfi.b32 %r3, %r1, %r2, 4, 4;",
        &[("%r1", 0xF), ("%r2", 0xFFFF_0000)],
        &[("%r3", 0xFFFF_00F0)],
    );
    r.case(
        "bfi.b32 %r3, %r1, %r2, 30, 4;",
        &[("%r1", 0xF), ("%r2", 0)],
        &[("%r3", 0xC000_0000)],
    );
    r.case(
        "bfi.b32 %r3, %r1, %r2, 8, 0;",
        &[("%r1", 0xF), ("%r2", 0x1234)],
        &[("%r3", 0x1234)],
    );
    r.case(
        "bfi.b64 %rd3, %rd1, %rd2, 60, 8;",
        &[("%rd1", 0xFF), ("%rd2", 1)],
        &[("%rd3", 0xF000_0000_0000_0001)],
    );
    // prmt default mode: selectors pick bytes of {b,a}; bit 3 replicates the sign
    r.case(
        "prmt.b32 %r3, %r1, %r2, 0x3210;",
        &[("%r1", 0x44332211), ("%r2", 0x88776655)],
        &[("%r3", 0x44332211)],
    );
    r.case(
        "prmt.b32 %r3, %r1, %r2, 0x7654;",
        &[("%r1", 0x44332211), ("%r2", 0x88776655)],
        &[("%r3", 0x88776655)],
    );
    r.case(
        "prmt.b32 %r3, %r1, %r2, 0x0F08;",
        &[("%r1", 0x44332211), ("%r2", 0x88776655)],
        &[("%r3", 0x11FF_1100)],
    );
    // selp / slct
    for t in [
        "b16", "u16", "s16", "b32", "u32", "s32", "f32", "b64", "u64", "s64", "f64",
    ] {
        let (ra, rb, rd) = (reg_for(t, 1), reg_for(t, 2), reg_for(t, 3));
        r.case(
            &format!("selp.{t} {rd}, {ra}, {rb}, %p1;"),
            &[(&ra, 11), (&rb, 22), ("%p1", 1)],
            &[(&rd, 11)],
        );
        r.case(
            &format!("selp.{t} {rd}, {ra}, {rb}, %p1;"),
            &[(&ra, 11), (&rb, 22), ("%p1", 0)],
            &[(&rd, 22)],
        );
    }
    for dt in ["b32", "u32", "s32", "f32"] {
        let (ra, rb, rd) = (reg_for(dt, 1), reg_for(dt, 2), reg_for(dt, 3));
        r.case(
            &format!("slct.{dt}.s32 {rd}, {ra}, {rb}, %r9;"),
            &[(&ra, 1), (&rb, 2), ("%r9", 0)],
            &[(&rd, 1)],
        );
        r.case(
            &format!("slct.{dt}.s32 {rd}, {ra}, {rb}, %r9;"),
            &[(&ra, 1), (&rb, 2), ("%r9", -1i64 as u64)],
            &[(&rd, 2)],
        );
        r.case(
            &format!("slct.{dt}.f32 {rd}, {ra}, {rb}, %f9;"),
            &[(&ra, 1), (&rb, 2), ("%f9", f(-0.0))],
            &[(&rd, 1)],
        );
        r.case(
            &format!("slct.{dt}.f32 {rd}, {ra}, {rb}, %f9;"),
            &[(&ra, 1), (&rb, 2), ("%f9", f(-1.0))],
            &[(&rd, 2)],
        );
    }
    // predicate logic
    for (op, want) in [
        ("and", [0, 0, 0, 1]),
        ("or", [0, 1, 1, 1]),
        ("xor", [0, 1, 1, 0]),
    ] {
        for (i, (a, b)) in [(0, 0), (0, 1), (1, 0), (1, 1)].iter().enumerate() {
            r.case(
                &format!("{op}.pred %p3, %p1, %p2;"),
                &[("%p1", *a), ("%p2", *b)],
                &[("%p3", want[i])],
            );
        }
    }
    r.case("not.pred %p3, %p1;", &[("%p1", 1)], &[("%p3", 0)]);
    r.case("not.pred %p3, %p1;", &[("%p1", 0)], &[("%p3", 1)]);
}

fn float_cases(r: &mut Runner) {
    let sub = f32::from_bits(0x0000_0100); // subnormal
    let nan = f32::NAN;
    let canon = 0x7fff_ffffu64;
    for fl in ["", ".rn", ".ftz", ".rn.ftz"] {
        let ftz = fl.contains("ftz");
        let ins = [("%f1", f(1.5)), ("%f2", f(2.25))];
        r.case(
            &format!("add{fl}.f32 %f3, %f1, %f2;"),
            &ins,
            &[("%f3", f(3.75))],
        );
        r.case(
            &format!("sub{fl}.f32 %f3, %f1, %f2;"),
            &ins,
            &[("%f3", f(-0.75))],
        );
        r.case(
            &format!("mul{fl}.f32 %f3, %f1, %f2;"),
            &ins,
            &[("%f3", f(3.375))],
        );
        // subnormal handling: kept without .ftz, flushed (sign-preserving) with it
        let want = if ftz { f(0.0) } else { f(sub * 2.0) };
        r.case(
            &format!("add{fl}.f32 %f3, %f1, %f2;"),
            &[("%f1", f(sub)), ("%f2", f(sub))],
            &[("%f3", want)],
        );
        let want = if ftz { f(-0.0) } else { f(-sub) };
        r.case(
            &format!("mul{fl}.f32 %f3, %f1, %f2;"),
            &[("%f1", f(-sub)), ("%f2", f(1.0))],
            &[("%f3", want)],
        );
        // NaN results are the canonical NaN
        r.case(
            &format!("add{fl}.f32 %f3, %f1, %f2;"),
            &[("%f1", f(f32::INFINITY)), ("%f2", f(f32::NEG_INFINITY))],
            &[("%f3", canon)],
        );
        r.case(
            &format!("mul{fl}.f32 %f3, %f1, %f2;"),
            &[("%f1", fb(0x7fc0_1234)), ("%f2", f(1.0))],
            &[("%f3", canon)],
        );
    }
    // round to nearest even on a tie: 1 + 2^-24 rounds to 1; 1 + 3*2^-24 rounds up
    r.case(
        "add.rn.f32 %f3, %f1, %f2;",
        &[("%f1", f(1.0)), ("%f2", f(2f32.powi(-24)))],
        &[("%f3", f(1.0))],
    );
    r.case(
        "add.rn.f32 %f3, %f1, %f2;",
        &[("%f1", f(1.0)), ("%f2", f(3.0 * 2f32.powi(-24)))],
        &[("%f3", fb(0x3f80_0002))],
    );
    for fl in ["", ".rn"] {
        r.case(
            &format!("add{fl}.f64 %fd3, %fd1, %fd2;"),
            &[("%fd1", d(0.1)), ("%fd2", d(0.2))],
            &[("%fd3", d(0.1 + 0.2))],
        );
        r.case(
            &format!("sub{fl}.f64 %fd3, %fd1, %fd2;"),
            &[("%fd1", d(1.0)), ("%fd2", d(0.25))],
            &[("%fd3", d(0.75))],
        );
        r.case(
            &format!("mul{fl}.f64 %fd3, %fd1, %fd2;"),
            &[("%fd1", d(3.0)), ("%fd2", d(0.5))],
            &[("%fd3", d(1.5))],
        );
    }
    // fma: single rounding. a = 1 + 2^-12, a*a = 1 + 2^-11 + 2^-24; c = -(1 + 2^-11) -> exactly 2^-24
    let a = 1.0 + 2f32.powi(-12);
    let c = -(1.0 + 2f32.powi(-11));
    for op in [
        "fma.rn.f32",
        "fma.rn.ftz.f32",
        "mad.rn.f32",
        "mad.rn.ftz.f32",
    ] {
        r.case(
            &format!("{op} %f4, %f1, %f2, %f3;"),
            &[("%f1", f(a)), ("%f2", f(a)), ("%f3", f(c))],
            &[("%f4", f(2f32.powi(-24)))],
        );
    }
    // ... while separate mul + add rounds twice and gives 0
    r.case(
        "mul.rn.f32 %f4, %f1, %f2;\nadd.rn.f32 %f4, %f4, %f3;",
        &[("%f1", f(a)), ("%f2", f(a)), ("%f3", f(c))],
        &[("%f4", f(0.0))],
    );
    // fma.ftz flushes a subnormal result
    r.case(
        "fma.rn.ftz.f32 %f4, %f1, %f2, %f3;",
        &[("%f1", f(sub)), ("%f2", f(1.0)), ("%f3", f(0.0))],
        &[("%f4", f(0.0))],
    );
    r.case(
        "fma.rn.f32 %f4, %f1, %f2, %f3;",
        &[("%f1", f(sub)), ("%f2", f(1.0)), ("%f3", f(0.0))],
        &[("%f4", f(sub))],
    );
    for op in ["fma.rn.f64", "mad.rn.f64"] {
        let a = 1.0 + 2f64.powi(-27);
        let c = -(1.0 + 2f64.powi(-26));
        r.case(
            &format!("{op} %fd4, %fd1, %fd2, %fd3;"),
            &[("%fd1", d(a)), ("%fd2", d(a)), ("%fd3", d(c))],
            &[("%fd4", d(2f64.powi(-54)))],
        );
    }
    // division and square root (IEEE correctly rounded for .rn)
    for fl in [
        ".rn",
        ".rn.ftz",
        ".approx",
        ".approx.ftz",
        ".full",
        ".full.ftz",
    ] {
        r.case(
            &format!("div{fl}.f32 %f3, %f1, %f2;"),
            &[("%f1", f(1.0)), ("%f2", f(4.0))],
            &[("%f3", f(0.25))],
        );
    }
    r.case(
        "div.rn.f32 %f3, %f1, %f2;",
        &[("%f1", f(1.0)), ("%f2", f(3.0))],
        &[("%f3", f(1.0 / 3.0))],
    );
    r.case(
        "div.rn.f32 %f3, %f1, %f2;",
        &[("%f1", f(1.0)), ("%f2", f(0.0))],
        &[("%f3", f(f32::INFINITY))],
    );
    r.case(
        "div.rn.f32 %f3, %f1, %f2;",
        &[("%f1", f(0.0)), ("%f2", f(0.0))],
        &[("%f3", canon)],
    );
    r.case(
        "div.rn.f64 %fd3, %fd1, %fd2;",
        &[("%fd1", d(1.0)), ("%fd2", d(3.0))],
        &[("%fd3", d(1.0 / 3.0))],
    );
    for fl in [".rn", ".rn.ftz", ".approx", ".approx.ftz"] {
        r.case(
            &format!("sqrt{fl}.f32 %f3, %f1;"),
            &[("%f1", f(2.25))],
            &[("%f3", f(1.5))],
        );
        r.case(
            &format!("rcp{fl}.f32 %f3, %f1;"),
            &[("%f1", f(4.0))],
            &[("%f3", f(0.25))],
        );
    }
    r.case(
        "sqrt.rn.f32 %f3, %f1;",
        &[("%f1", f(2.0))],
        &[("%f3", f(2f32.sqrt()))],
    );
    r.case(
        "sqrt.rn.f32 %f3, %f1;",
        &[("%f1", f(-1.0))],
        &[("%f3", canon)],
    );
    r.case(
        "sqrt.rn.f32 %f3, %f1;",
        &[("%f1", f(-0.0))],
        &[("%f3", f(-0.0))],
    );
    r.case(
        "sqrt.rn.f64 %fd3, %fd1;",
        &[("%fd1", d(2.0))],
        &[("%fd3", d(2f64.sqrt()))],
    );
    r.case(
        "rcp.rn.f64 %fd3, %fd1;",
        &[("%fd1", d(8.0))],
        &[("%fd3", d(0.125))],
    );
    // approximate transcendentals: exact on these inputs
    for fl in ["", ".ftz"] {
        r.case(
            &format!("rsqrt.approx{fl}.f32 %f3, %f1;"),
            &[("%f1", f(4.0))],
            &[("%f3", f(0.5))],
        );
        r.case(
            &format!("ex2.approx{fl}.f32 %f3, %f1;"),
            &[("%f1", f(-3.0))],
            &[("%f3", f(0.125))],
        );
        r.case(
            &format!("lg2.approx{fl}.f32 %f3, %f1;"),
            &[("%f1", f(8.0))],
            &[("%f3", f(3.0))],
        );
        r.case(
            &format!("lg2.approx{fl}.f32 %f3, %f1;"),
            &[("%f1", f(0.0))],
            &[("%f3", f(f32::NEG_INFINITY))],
        );
        r.case(
            &format!("sin.approx{fl}.f32 %f3, %f1;"),
            &[("%f1", f(0.0))],
            &[("%f3", f(0.0))],
        );
        r.case(
            &format!("cos.approx{fl}.f32 %f3, %f1;"),
            &[("%f1", f(0.0))],
            &[("%f3", f(1.0))],
        );
    }
    r.case(
        "tanh.approx.f32 %f3, %f1;",
        &[("%f1", f(0.0))],
        &[("%f3", f(0.0))],
    );
    // neg/abs: sign bit only (NaN payload kept); .ftz flushes subnormal inputs
    r.case(
        "neg.f32 %f3, %f1;",
        &[("%f1", fb(0x7fc0_1234))],
        &[("%f3", fb(0xffc0_1234))],
    );
    r.case("abs.f32 %f3, %f1;", &[("%f1", f(-sub))], &[("%f3", f(sub))]);
    r.case(
        "abs.ftz.f32 %f3, %f1;",
        &[("%f1", f(-sub))],
        &[("%f3", f(0.0))],
    );
    r.case(
        "neg.ftz.f32 %f3, %f1;",
        &[("%f1", f(2.0))],
        &[("%f3", f(-2.0))],
    );
    r.case(
        "neg.f64 %fd3, %fd1;",
        &[("%fd1", d(2.0))],
        &[("%fd3", d(-2.0))],
    );
    r.case(
        "abs.f64 %fd3, %fd1;",
        &[("%fd1", d(-2.0))],
        &[("%fd3", d(2.0))],
    );
    // min/max: one NaN -> the other operand; both NaN -> canonical NaN; -0 < +0
    for t in ["f32", "ftz.f32"] {
        r.case(
            &format!("min.{t} %f3, %f1, %f2;"),
            &[("%f1", f(nan)), ("%f2", f(2.0))],
            &[("%f3", f(2.0))],
        );
        r.case(
            &format!("max.{t} %f3, %f1, %f2;"),
            &[("%f1", f(1.0)), ("%f2", f(nan))],
            &[("%f3", f(1.0))],
        );
        r.case(
            &format!("max.{t} %f3, %f1, %f2;"),
            &[("%f1", f(nan)), ("%f2", f(nan))],
            &[("%f3", canon)],
        );
        r.case(
            &format!("min.{t} %f3, %f1, %f2;"),
            &[("%f1", f(0.0)), ("%f2", f(-0.0))],
            &[("%f3", f(-0.0))],
        );
        r.case(
            &format!("max.{t} %f3, %f1, %f2;"),
            &[("%f1", f(-0.0)), ("%f2", f(0.0))],
            &[("%f3", f(0.0))],
        );
    }
    r.case(
        "max.ftz.f32 %f3, %f1, %f2;",
        &[("%f1", f(sub)), ("%f2", f(-0.0))],
        &[("%f3", f(0.0))],
    );
    r.case(
        "max.f32 %f3, %f1, %f2;",
        &[("%f1", f(sub)), ("%f2", f(-0.0))],
        &[("%f3", f(sub))],
    );
    r.case(
        "min.f64 %fd3, %fd1, %fd2;",
        &[("%fd1", d(f64::NAN)), ("%fd2", d(-2.0))],
        &[("%fd3", d(-2.0))],
    );
    r.case(
        "max.f64 %fd3, %fd1, %fd2;",
        &[("%fd1", d(1.0)), ("%fd2", d(-2.0))],
        &[("%fd3", d(1.0))],
    );
    // directed rounding (.rz/.rm/.rp): 1 + 2^-24 is a tie that RNE rounds to 1
    let t24 = 2f32.powi(-24);
    let a12 = 1.0 + 2f32.powi(-12);
    for (rm, add_p, add_n, sub_p, mul_p, mul_n) in [
        (
            "rz",
            0x3f80_0000u32,
            0xbf80_0000u32,
            0x3f7f_ffffu32,
            0x3f80_1000u32,
            0xbf80_1000u32,
        ),
        (
            "rm",
            0x3f80_0000,
            0xbf80_0001,
            0x3f7f_ffff,
            0x3f80_1000,
            0xbf80_1001,
        ),
        (
            "rp",
            0x3f80_0001,
            0xbf80_0000,
            0x3f80_0000,
            0x3f80_1001,
            0xbf80_1000,
        ),
    ] {
        for fz in ["", ".ftz"] {
            r.case(
                &format!("add.{rm}{fz}.f32 %f3, %f1, %f2;"),
                &[("%f1", f(1.0)), ("%f2", f(t24))],
                &[("%f3", fb(add_p))],
            );
            r.case(
                &format!("add.{rm}{fz}.f32 %f3, %f1, %f2;"),
                &[("%f1", f(-1.0)), ("%f2", f(-t24))],
                &[("%f3", fb(add_n))],
            );
            r.case(
                &format!("sub.{rm}{fz}.f32 %f3, %f1, %f2;"),
                &[("%f1", f(1.0)), ("%f2", f(t24 / 2.0))],
                &[("%f3", fb(sub_p))],
            );
            r.case(
                &format!("mul.{rm}{fz}.f32 %f3, %f1, %f2;"),
                &[("%f1", f(a12)), ("%f2", f(a12))],
                &[("%f3", fb(mul_p))],
            );
            r.case(
                &format!("mul.{rm}{fz}.f32 %f3, %f1, %f2;"),
                &[("%f1", f(-a12)), ("%f2", f(a12))],
                &[("%f3", fb(mul_n))],
            );
            r.case(
                &format!("fma.{rm}{fz}.f32 %f4, %f1, %f2, %f3;"),
                &[("%f1", f(a12)), ("%f2", f(a12)), ("%f3", f(0.0))],
                &[("%f4", fb(mul_p))],
            );
            r.case(
                &format!("fma.{rm}{fz}.f32 %f4, %f1, %f2, %f3;"),
                &[("%f1", f(a12)), ("%f2", f(a12)), ("%f3", f(-1.0))],
                &[("%f4", f(2f32.powi(-11) + t24))],
            );
        }
        let want_zero = if rm == "rm" { f(-0.0) } else { f(0.0) };
        r.case(
            &format!("add.{rm}.f32 %f3, %f1, %f2;"),
            &[("%f1", f(1.0)), ("%f2", f(-1.0))],
            &[("%f3", want_zero)],
        );
        let t53 = 2f64.powi(-53);
        let (ap, sp) = match rm {
            "rp" => (d(1.0 + 2.0 * t53), d(1.0)),
            _ => (d(1.0), d(1.0 - t53)),
        };
        r.case(
            &format!("add.{rm}.f64 %fd3, %fd1, %fd2;"),
            &[("%fd1", d(1.0)), ("%fd2", d(t53))],
            &[("%fd3", ap)],
        );
        r.case(
            &format!("sub.{rm}.f64 %fd3, %fd1, %fd2;"),
            &[("%fd1", d(1.0)), ("%fd2", d(t53 / 2.0))],
            &[("%fd3", sp)],
        );
        let a27 = 1.0 + 2f64.powi(-27);
        let mp = if rm == "rp" {
            f64::from_bits((1.0 + 2f64.powi(-26)).to_bits() + 1)
        } else {
            1.0 + 2f64.powi(-26)
        };
        r.case(
            &format!("mul.{rm}.f64 %fd3, %fd1, %fd2;"),
            &[("%fd1", d(a27)), ("%fd2", d(a27))],
            &[("%fd3", d(mp))],
        );
    }
    // overflow under directed rounding stops at the largest finite value on the rounding side
    r.case(
        "add.rz.f32 %f3, %f1, %f2;",
        &[("%f1", f(f32::MAX)), ("%f2", f(f32::MAX))],
        &[("%f3", f(f32::MAX))],
    );
    r.case(
        "add.rp.f32 %f3, %f1, %f2;",
        &[("%f1", f(f32::MAX)), ("%f2", f(f32::MAX))],
        &[("%f3", f(f32::INFINITY))],
    );
    r.case(
        "add.rm.f32 %f3, %f1, %f2;",
        &[("%f1", f(-f32::MAX)), ("%f2", f(-f32::MAX))],
        &[("%f3", f(f32::NEG_INFINITY))],
    );
    r.case(
        "add.rz.f64 %fd3, %fd1, %fd2;",
        &[("%fd1", d(f64::MAX)), ("%fd2", d(f64::MAX))],
        &[("%fd3", d(f64::MAX))],
    );
    // copysign d = |b| with the sign of a
    r.case(
        "copysign.f32 %f3, %f1, %f2;",
        &[("%f1", f(-1.0)), ("%f2", f(2.0))],
        &[("%f3", f(-2.0))],
    );
    r.case(
        "copysign.f32 %f3, %f1, %f2;",
        &[("%f1", f(1.0)), ("%f2", fb(0xffc0_0001))],
        &[("%f3", fb(0x7fc0_0001))],
    );
    r.case(
        "copysign.f64 %fd3, %fd1, %fd2;",
        &[("%fd1", d(-0.0)), ("%fd2", d(3.0))],
        &[("%fd3", d(-3.0))],
    );
    // immediates: 0f (f32 bits), 0d (f64 bits), negative decimal
    r.case(
        "add.f32 %f3, %f1, 0f3F800000;",
        &[("%f1", f(1.0))],
        &[("%f3", f(2.0))],
    );
    r.case(
        "add.f64 %fd3, %fd1, 0d3FF0000000000000;",
        &[("%fd1", d(1.0))],
        &[("%fd3", d(2.0))],
    );
    r.case("add.s32 %r3, %r1, -1;", &[("%r1", 5)], &[("%r3", 4)]);
    r.case("mov.b32 %r3, 0xFFFFFFFF;", &[], &[("%r3", 0xFFFF_FFFF)]);
}

fn cvt_cases(r: &mut Runner) {
    // integer <-> integer, mechanical, with Rust casts as reference
    let ints = ["u8", "s8", "u16", "s16", "u32", "s32", "u64", "s64"];
    let vals: [u64; 6] = [0x7f, 0x80, 0xff, 300, -1i64 as u64, 0x1234_5678_9abc_def0];
    for dt in ints {
        for st in ints {
            if dt == st {
                continue;
            }
            let (dw, sw) = (bits_of(dt), bits_of(st));
            let (rs_, rd_) = (reg_for(st, 1), reg_for(dt, 2));
            let rw = reg_width(&rd_);
            for &v in &vals {
                let x: i128 = if st.starts_with('s') {
                    sx(v, sw)
                } else {
                    (v & mask(sw)) as i128
                };
                for sat in [false, true] {
                    let y = if sat {
                        let (lo, hi) = if dt.starts_with('s') {
                            (-(1i128 << (dw - 1)), (1i128 << (dw - 1)) - 1)
                        } else {
                            (0, (1i128 << dw) - 1)
                        };
                        x.clamp(lo, hi)
                    } else {
                        x
                    };
                    let t = (y as u64) & mask(dw);
                    // result is sign- or zero-extended to the destination register width
                    let want = if dt.starts_with('s') {
                        (sx(t, dw) as u64) & mask(rw)
                    } else {
                        t
                    };
                    let s = if sat { ".sat" } else { "" };
                    r.case(
                        &format!("cvt{s}.{dt}.{st} {rd_}, {rs_};"),
                        &[(&rs_, v)],
                        &[(&rd_, want)],
                    );
                }
            }
        }
    }
    // int -> float (.rn)
    r.case(
        "cvt.rn.f32.s32 %f1, %r1;",
        &[("%r1", -3i64 as u64)],
        &[("%f1", f(-3.0))],
    );
    r.case(
        "cvt.rn.f32.u32 %f1, %r1;",
        &[("%r1", 0xFFFF_FFFF)],
        &[("%f1", f(4294967296.0))],
    );
    r.case(
        "cvt.rn.f32.s32 %f1, %r1;",
        &[("%r1", 16777217)],
        &[("%f1", f(16777216.0))],
    ); // tie -> even
    r.case(
        "cvt.rn.f32.s64 %f1, %rd1;",
        &[("%rd1", -5i64 as u64)],
        &[("%f1", f(-5.0))],
    );
    r.case(
        "cvt.rn.f32.u64 %f1, %rd1;",
        &[("%rd1", 1 << 40)],
        &[("%f1", f(2f32.powi(40)))],
    );
    r.case(
        "cvt.rn.f64.s32 %fd1, %r1;",
        &[("%r1", -7i64 as u64)],
        &[("%fd1", d(-7.0))],
    );
    r.case(
        "cvt.rn.f64.u32 %fd1, %r1;",
        &[("%r1", 0xFFFF_FFFF)],
        &[("%fd1", d(4294967295.0))],
    );
    r.case(
        "cvt.rn.f64.s64 %fd1, %rd1;",
        &[("%rd1", -9i64 as u64)],
        &[("%fd1", d(-9.0))],
    );
    r.case(
        "cvt.rn.f64.u64 %fd1, %rd1;",
        &[("%rd1", 12)],
        &[("%fd1", d(12.0))],
    );
    // float -> int with integer rounding; saturating; NaN -> 0
    let cases: [(f32, [i128; 4]); 5] = [
        (2.5, [2, 2, 2, 3]),
        (-2.5, [-2, -2, -3, -2]),
        (3.5, [4, 3, 3, 4]),
        (-0.4, [0, 0, -1, 0]),
        (1e20, [100_000_002_004_087_734_272; 4]),
    ];
    for (ri, rn) in ["rni", "rzi", "rmi", "rpi"].iter().enumerate() {
        for dt in ["s32", "u32", "s64", "u64"] {
            let dw = bits_of(dt);
            let rd_ = reg_for(dt, 2);
            for (x, wants) in cases {
                let w = wants[ri];
                let w = if dt.starts_with('s') {
                    w.clamp(-(1i128 << (dw - 1)), (1i128 << (dw - 1)) - 1)
                } else {
                    w.clamp(0, (1i128 << dw) - 1)
                };
                let want = (w as u64) & mask(dw);
                r.case(
                    &format!("cvt.{rn}.{dt}.f32 {rd_}, %f1;"),
                    &[("%f1", f(x))],
                    &[(&rd_, want)],
                );
                r.case(
                    &format!("cvt.{rn}.{dt}.f64 {rd_}, %fd1;"),
                    &[("%fd1", d(x as f64))],
                    &[(&rd_, want)],
                );
            }
            r.case(
                &format!("cvt.{rn}.{dt}.f32 {rd_}, %f1;"),
                &[("%f1", f(f32::NAN))],
                &[(&rd_, 0)],
            );
        }
        let want = [2.0f32, 2.0, 2.0, 3.0][ri];
        r.case(
            &format!("cvt.{rn}.f32.f32 %f2, %f1;"),
            &[("%f1", f(2.5))],
            &[("%f2", f(want))],
        );
        r.case(
            &format!("cvt.{rn}.f64.f64 %fd2, %fd1;"),
            &[("%fd1", d(2.5))],
            &[("%fd2", d(want as f64))],
        );
    }
    r.case(
        "cvt.rmi.f32.f32 %f2, %f1;",
        &[("%f1", f(-0.5))],
        &[("%f2", f(-1.0))],
    );
    r.case(
        "cvt.rni.f32.f32 %f2, %f1;",
        &[("%f1", f(-0.5))],
        &[("%f2", f(-0.0))],
    );
    // float <-> float
    r.case(
        "cvt.f64.f32 %fd1, %f1;",
        &[("%f1", f(0.1))],
        &[("%fd1", d(0.1f32 as f64))],
    );
    r.case(
        "cvt.rn.f32.f64 %f1, %fd1;",
        &[("%fd1", d(0.1))],
        &[("%f1", f(0.1))],
    );
    r.case(
        "cvt.rn.f32.f64 %f1, %fd1;",
        &[("%fd1", d(1e300))],
        &[("%f1", f(f32::INFINITY))],
    );
    r.case(
        "cvt.sat.f32.f32 %f2, %f1;",
        &[("%f1", f(1.5))],
        &[("%f2", f(1.0))],
    );
    r.case(
        "cvt.sat.f32.f32 %f2, %f1;",
        &[("%f1", f(-1.5))],
        &[("%f2", f(0.0))],
    );
    r.case(
        "cvt.sat.f32.f32 %f2, %f1;",
        &[("%f1", f(f32::NAN))],
        &[("%f2", f(0.0))],
    );
    r.case(
        "cvt.ftz.sat.f32.f32 %f2, %f1;",
        &[("%f1", f(f32::from_bits(1)))],
        &[("%f2", f(0.0))],
    );
    r.case(
        "cvt.sat.f32.f32 %f2, %f1;",
        &[("%f1", f(f32::from_bits(1)))],
        &[("%f2", fb(1))],
    );
    // half precision
    r.case(
        "cvt.rn.f16.f32 %rs1, %f1;",
        &[("%f1", f(1.0))],
        &[("%rs1", 0x3c00)],
    );
    r.case(
        "cvt.rn.f16.f32 %rs1, %f1;",
        &[("%f1", f(65520.0))],
        &[("%rs1", 0x7c00)],
    ); // rounds to +inf
    r.case(
        "cvt.rn.f16.f32 %rs1, %f1;",
        &[("%f1", f(1.0 + 2f32.powi(-11)))],
        &[("%rs1", 0x3c00)],
    ); // tie -> even
    r.case(
        "cvt.f32.f16 %f1, %rs1;",
        &[("%rs1", 0x3555)],
        &[("%f1", f(0.333_251_95))],
    );
    r.case(
        "cvt.f32.f16 %f1, %rs1;",
        &[("%rs1", 0x0001)],
        &[("%f1", f(2f32.powi(-24)))],
    );
    // bf16: round to nearest even on the top 16 bits; NaN -> quiet NaN
    r.case(
        "cvt.rn.bf16.f32 %rs1, %f1;",
        &[("%f1", fb(0x3f80_8000))],
        &[("%rs1", 0x3f80)],
    ); // tie, even stays
    r.case(
        "cvt.rn.bf16.f32 %rs1, %f1;",
        &[("%f1", fb(0x3f81_8000))],
        &[("%rs1", 0x3f82)],
    ); // tie, odd rounds up
    r.case(
        "cvt.rn.bf16.f32 %rs1, %f1;",
        &[("%f1", fb(0x3f80_8001))],
        &[("%rs1", 0x3f81)],
    );
    r.case(
        "cvt.rn.bf16.f32 %rs1, %f1;",
        &[("%f1", fb(0x7f80_0001))],
        &[("%rs1", 0x7fc0)],
    ); // sNaN -> qNaN
    r.case(
        "cvt.rn.bf16.f32 %rs1, %f1;",
        &[("%f1", fb(0x7f7f_ffff))],
        &[("%rs1", 0x7f80)],
    ); // overflow -> inf
    r.case(
        "cvt.f32.bf16 %f1, %rs1;",
        &[("%rs1", 0xbfc0)],
        &[("%f1", f(-1.5))],
    );
    // packed pairs: a goes to the upper half
    r.case(
        "cvt.rn.bf16x2.f32 %r1, %f1, %f2;",
        &[("%f1", f(1.0)), ("%f2", fb(0x3f81_8000))],
        &[("%r1", 0x3f80_3f82)],
    );
    r.case(
        "cvt.rn.f16x2.f32 %r1, %f1, %f2;",
        &[("%f1", f(1.0)), ("%f2", f(-2.0))],
        &[("%r1", 0x3c00_c000)],
    );
    // mov packing (used for bf16 -> f32 by cuda_bf16.h)
    r.case(
        "mov.b32 %f1, {0,%rs1};",
        &[("%rs1", 0x3fc0)],
        &[("%f1", f(1.5))],
    );
    r.case(
        "mov.b64 %rd1, {%r1,%r2};",
        &[("%r1", 0x1111_2222), ("%r2", 0x3333_4444)],
        &[("%rd1", 0x3333_4444_1111_2222)],
    );
    r.case(
        "mov.b64 {%r1,%r2}, %rd1;",
        &[("%rd1", 0x3333_4444_1111_2222)],
        &[("%r1", 0x1111_2222), ("%r2", 0x3333_4444)],
    );
    r.case(
        "mov.b32 {%rs1,%rs2}, %r1;",
        &[("%r1", 0xAAAA_BBBB)],
        &[("%rs1", 0xBBBB), ("%rs2", 0xAAAA)],
    );
    for t in [
        "b16", "u16", "s16", "b32", "u32", "s32", "f32", "b64", "u64", "s64", "f64", "pred",
    ] {
        let (ra, rd_) = (reg_for(t, 1), reg_for(t, 2));
        r.case(&format!("mov.{t} {rd_}, {ra};"), &[(&ra, 1)], &[(&rd_, 1)]);
    }
    r.case("mov.u32 %r1, %tid.x;\nmov.u32 %r2, %ntid.y;\nmov.u32 %r3, %laneid;\nmov.u32 %r4, %nctaid.z;", &[], &[("%r1", 0), ("%r2", 1), ("%r3", 0), ("%r4", 1)]);
}

/// setp: every allowlisted form, reference from typed Rust comparisons.
fn setp_cases(r: &mut Runner, allow: &BTreeSet<String>) {
    for form in allow.iter().filter(|s| s.starts_with("setp.")) {
        let parts: Vec<&str> = form.split('.').collect();
        let cmp = parts[1];
        let bop = parts
            .get(2)
            .copied()
            .filter(|p| matches!(*p, "and" | "or" | "xor"));
        let ty = *parts.last().unwrap();
        let ftz = parts.contains(&"ftz");
        let (ra, rb) = (reg_for(ty, 1), reg_for(ty, 2));
        let inputs: Vec<(u64, u64)> = match ty {
            "f32" => vec![
                (f(1.0), f(2.0)),
                (f(2.0), f(1.0)),
                (f(2.0), f(2.0)),
                (f(f32::NAN), f(1.0)),
                (f(-0.0), f(0.0)),
                (f(f32::from_bits(3)), f(0.0)),
            ],
            "f64" => vec![
                (d(1.0), d(2.0)),
                (d(2.0), d(1.0)),
                (d(2.0), d(2.0)),
                (d(f64::NAN), d(1.0)),
            ],
            _ => vec![(1, 2), (2, 1), (2, 2), (-1i64 as u64, 1)],
        };
        for (a, b) in inputs {
            let truth: bool = match ty {
                "f32" | "f64" => {
                    let (mut x, mut y) = if ty == "f32" {
                        (
                            f32::from_bits(a as u32) as f64,
                            f32::from_bits(b as u32) as f64,
                        )
                    } else {
                        (f64::from_bits(a), f64::from_bits(b))
                    };
                    if ftz {
                        if x != 0.0 && x.abs() < f32::MIN_POSITIVE as f64 {
                            x = 0.0;
                        }
                        if y != 0.0 && y.abs() < f32::MIN_POSITIVE as f64 {
                            y = 0.0;
                        }
                    }
                    let un = x.is_nan() || y.is_nan();
                    match cmp {
                        "eq" => x == y,
                        "ne" => !un && x != y,
                        "lt" => x < y,
                        "le" => x <= y,
                        "gt" => x > y,
                        "ge" => x >= y,
                        "equ" => un || x == y,
                        "neu" => x != y,
                        "ltu" => un || x < y,
                        "leu" => un || x <= y,
                        "gtu" => un || x > y,
                        "geu" => un || x >= y,
                        "num" => !un,
                        "nan" => un,
                        _ => unreachable!(),
                    }
                }
                _ => {
                    let w = bits_of(ty);
                    let s = ty.starts_with('s');
                    let (x, y) = if s {
                        (sx(a, w), sx(b, w))
                    } else {
                        ((a & mask(w)) as i128, (b & mask(w)) as i128)
                    };
                    match cmp {
                        "eq" => x == y,
                        "ne" => x != y,
                        "lt" | "lo" => x < y,
                        "le" | "ls" => x <= y,
                        "gt" | "hi" => x > y,
                        "ge" | "hs" => x >= y,
                        _ => unreachable!(),
                    }
                }
            };
            match bop {
                None => r.case(
                    &format!("{form} %p3|%p4, {ra}, {rb};"),
                    &[(&ra, a), (&rb, b)],
                    &[("%p3", truth as u64), ("%p4", !truth as u64)],
                ),
                Some(bo) => {
                    for c in [false, true] {
                        let op = |v: bool| match bo {
                            "and" => v && c,
                            "or" => v || c,
                            _ => v ^ c,
                        };
                        r.case(
                            &format!("{form} %p3|%p4, {ra}, {rb}, %p5;"),
                            &[(&ra, a), (&rb, b), ("%p5", c as u64)],
                            &[("%p3", op(truth) as u64), ("%p4", op(!truth) as u64)],
                        );
                        // negated boolean operand
                        r.case(
                            &format!("{form} %p3, {ra}, {rb}, !%p5;"),
                            &[(&ra, a), (&rb, b), ("%p5", !c as u64)],
                            &[("%p3", op(truth) as u64)],
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn golden_opcodes_and_allowlist_coverage() {
    let allow = supported_opcode_forms();
    let mut r = Runner {
        forms: BTreeSet::new(),
        failures: Vec::new(),
        cases: 0,
    };
    integer_families(&mut r);
    float_cases(&mut r);
    cvt_cases(&mut r);
    setp_cases(&mut r, &allow);
    memory_cases(&mut r, &allow);
    atomic_cases(&mut r, &allow);
    warp_cases(&mut r);
    async_tensor_cases(&mut r);
    wmma_cases(&mut r);
    let forms = r.forms.clone();
    if !r.failures.is_empty() {
        panic!(
            "{} of {} golden cases failed:\n{}",
            r.failures.len(),
            r.cases,
            r.failures.join("\n")
        );
    }
    eprintln!(
        "{} golden cases over {} allowlisted forms",
        r.cases,
        allow.len()
    );
    let missing: Vec<&String> = allow.iter().filter(|f| !forms.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "{} allowlisted forms have no golden test: {:?}",
        missing.len(),
        missing
    );
}

impl Runner {
    /// Runs a hand-built kernel `k(in, out, extra...)` and returns `out_len` bytes of `out`.
    fn run_custom(
        &mut self,
        ptx: &str,
        extra: &[ParamValue],
        block: u32,
        input: &[u8],
        out_len: usize,
    ) -> Result<Vec<u8>, String> {
        self.cases += 1;
        let m = Module::parse(ptx).map_err(|e| format!("{e}"))?;
        self.forms.extend(m.opcode_forms());
        let mut dev = Device::new();
        let pin = dev.alloc(input.len().max(1) as u64).unwrap();
        if !input.is_empty() {
            dev.write(pin, input).unwrap();
        }
        let pout = dev.alloc(out_len as u64).unwrap();
        dev.write(pout, &vec![0u8; out_len]).unwrap();
        let mut params = vec![ParamValue::U64(pin), ParamValue::U64(pout)];
        params.extend_from_slice(extra);
        dev.launch(
            &m,
            "k",
            &LaunchConfig {
                grid: [1, 1, 1],
                block: [block, 1, 1],
                dynamic_shared_bytes: 0,
            },
            &params,
            &Options::default(),
        )
        .map_err(|e| format!("{e}"))?;
        Ok(dev.read(pout, out_len as u64).unwrap())
    }
    fn check_bytes(
        &mut self,
        what: &str,
        got: Result<Vec<u8>, String>,
        want: &[(usize, u64, usize)],
    ) {
        match got {
            Err(e) => self.failures.push(format!("{what}: {e}")),
            Ok(b) => {
                for &(off, val, n) in want {
                    let mut g = 0u64;
                    for j in 0..n {
                        g |= (b[off + j] as u64) << (8 * j);
                    }
                    let v = val & mask(8 * n as u32);
                    if g != v {
                        self.failures
                            .push(format!("{what}: bytes at {off} = {g:#x}, expected {v:#x}"));
                    }
                }
            }
        }
    }
}

fn header(extra_params: &str) -> String {
    format!(".version 9.5\n.target sm_80\n.address_size 64\n\n.visible .entry k(\n.param .u64 k_in,\n.param .u64 k_out{extra_params}\n)\n{{\n{DECLS}.shared .align 16 .b8 sbuf[64];\n.local .align 16 .b8 lbuf[64];\n.shared .align 16 .b8 mbuf[512];\nld.param.u64 %rd98, [k_in];\nld.param.u64 %rd99, [k_out];\n")
}

fn input_pattern() -> Vec<u8> {
    (0..64u32).map(|i| (0x81 + i * 7) as u8).collect()
}

/// Every ld/st form: loads check extension rules, stores check the bytes written.
fn memory_cases(r: &mut Runner, allow: &BTreeSet<String>) {
    let inp = input_pattern();
    let fill = |space: &str| -> String {
        let sym = if space == "shared" { "sbuf" } else { "lbuf" };
        (0..8)
            .map(|i| {
                format!(
                    "ld.global.b64 %rd90, [%rd98+{}];\nst.{space}.b64 [{sym}+{}], %rd90;\n",
                    8 * i,
                    8 * i
                )
            })
            .collect()
    };
    for form in allow
        .iter()
        .filter(|s| s.starts_with("ld.") || s.starts_with("ld") && s.split('.').count() == 2)
    {
        let parts: Vec<&str> = form.split('.').collect();
        let ty = *parts.last().unwrap();
        let n = if parts.contains(&"v4") {
            4
        } else if parts.contains(&"v2") {
            2
        } else {
            1
        };
        let e = (bits_of(ty) / 8) as usize;
        let regs: Vec<String> = (0..n).map(|i| reg_for(ty, i + 1)).collect();
        let rlist = if n == 1 {
            regs[0].clone()
        } else {
            format!("{{{}}}", regs.join(", "))
        };
        let mut ptx;
        let base: usize;
        let mut src_bytes = inp.clone();
        if parts.contains(&"param") {
            ptx = header(",\n.param .u64 k_p");
            ptx.push_str(&format!("{form} {rlist}, [k_p];\n"));
            src_bytes = 0x8877_6655_4433_2211u64.to_le_bytes().to_vec();
            base = 0;
        } else if parts.contains(&"shared") {
            ptx = header("");
            ptx.push_str(&fill("shared"));
            ptx.push_str(&format!("{form} {rlist}, [sbuf+16];\n"));
            base = 16;
        } else if parts.contains(&"local") {
            ptx = header("");
            ptx.push_str(&fill("local"));
            ptx.push_str(&format!("{form} {rlist}, [lbuf+16];\n"));
            base = 16;
        } else {
            ptx = header("");
            ptx.push_str(&format!("{form} {rlist}, [%rd98+16];\n"));
            base = 16;
        }
        let mut want = Vec::new();
        for (i, rg) in regs.iter().enumerate() {
            let rw = reg_width(rg);
            ptx.push_str(&format!("st.global.b{rw} [%rd99+{}], {rg};\n", 8 * i));
            let mut v = 0u64;
            for j in 0..e {
                v |= (src_bytes[base + i * e + j] as u64) << (8 * j);
            }
            if ty.starts_with('s') {
                v = (sx(v, 8 * e as u32) as u64) & mask(rw);
            }
            want.push((8 * i, v, (rw / 8) as usize));
        }
        ptx.push_str("ret;\n}\n");
        let extra: Vec<ParamValue> = if parts.contains(&"param") {
            vec![ParamValue::U64(0x8877_6655_4433_2211)]
        } else {
            vec![]
        };
        let got = r.run_custom(&ptx, &extra, 1, &inp, 64);
        r.check_bytes(form, got, &want);
    }
    for form in allow
        .iter()
        .filter(|s| s.starts_with("st.") || s.starts_with("st") && s.split('.').count() == 2)
    {
        let parts: Vec<&str> = form.split('.').collect();
        let ty = *parts.last().unwrap();
        let n = if parts.contains(&"v4") {
            4
        } else if parts.contains(&"v2") {
            2
        } else {
            1
        };
        let e = (bits_of(ty) / 8) as usize;
        let regs: Vec<String> = (0..n).map(|i| reg_for(ty, i + 1)).collect();
        let rlist = if n == 1 {
            regs[0].clone()
        } else {
            format!("{{{}}}", regs.join(", "))
        };
        let mut ptx = header("");
        let vals: Vec<u64> = (0..n as u64)
            .map(|i| 0x1122_3344_5566_7788u64.wrapping_add(i * 0x0101_0101_0101_0101))
            .collect();
        for (i, rg) in regs.iter().enumerate() {
            ptx.push_str(&format!(
                "ld.global.b{} {rg}, [%rd98+{}];\n",
                reg_width(rg),
                8 * i
            ));
        }
        let space = if parts.contains(&"shared") {
            Some(("shared", "sbuf"))
        } else if parts.contains(&"local") {
            Some(("local", "lbuf"))
        } else {
            None
        };
        match space {
            Some((sp, sym)) => {
                for i in 0..8 {
                    ptx.push_str(&format!("st.{sp}.b64 [{sym}+{}], 0;\n", 8 * i));
                }
                ptx.push_str(&format!("{form} [{sym}+16], {rlist};\n"));
                for i in 0..8 {
                    ptx.push_str(&format!(
                        "ld.{sp}.b64 %rd90, [{sym}+{}];\nst.global.b64 [%rd99+{}], %rd90;\n",
                        8 * i,
                        8 * i
                    ));
                }
            }
            None => ptx.push_str(&format!("{form} [%rd99+16], {rlist};\n")),
        }
        ptx.push_str("ret;\n}\n");
        let input: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let want: Vec<(usize, u64, usize)> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| (16 + i * e, *v, e))
            .collect();
        let got = r.run_custom(&ptx, &[], 1, &input, 64);
        r.check_bytes(form, got, &want);
    }
}

/// Every atom/red form on global and shared memory, single thread.
fn atomic_cases(r: &mut Runner, allow: &BTreeSet<String>) {
    for form in allow
        .iter()
        .filter(|s| s.starts_with("atom.") || s.starts_with("red."))
    {
        let parts: Vec<&str> = form.split('.').collect();
        let is_atom = parts[0] == "atom";
        let generic = parts.len() == 3;
        let space = if generic { "global" } else { parts[1] };
        let op = parts[parts.len() - 2];
        let ty = parts[parts.len() - 1];
        let w = bits_of(ty);
        for init_neg in [false, true] {
            let (init, b, c): (u64, u64, u64) = if ty == "f32" {
                (f(1.5), f(2.25), 0)
            } else if ty == "f64" {
                (d(1.5), d(2.25), 0)
            } else if init_neg {
                ((-1i64 as u64) & mask(w), 3, 77)
            } else {
                (10, 3, 77)
            };
            let b = if op == "cas" && !init_neg { init } else { b };
            let (old, new): (u64, u64) = match (op, ty) {
                ("add", "f32") => (init, f(3.75)),
                ("add", "f64") => (init, d(3.75)),
                ("add", _) => (init, init.wrapping_add(b) & mask(w)),
                ("min", "s32") => (init, if init_neg { init } else { 3 }),
                ("min", _) => (init, 3),
                ("max", "s32") => (init, if init_neg { 3 } else { 10 }),
                ("max", _) => (init, init),
                ("and", _) => (init, init & b),
                ("or", _) => (init, init | b),
                ("xor", _) => (init, init ^ b),
                ("inc", _) => (init, if init >= b { 0 } else { init + 1 }),
                ("dec", _) => (init, if init == 0 || init > b { b } else { init - 1 }),
                ("exch", _) => (init, b),
                ("cas", _) => (init, if init == b { c } else { init }),
                _ => unreachable!("{form}"),
            };
            let rg = |i| reg_for(ty, i);
            let (rd_, rb, rc, ri) = (rg(1), rg(2), rg(3), rg(4));
            let mut ptx = header("");
            let regw = reg_width(&rb);
            for (i, reg) in [&rb, &rc, &ri].iter().enumerate() {
                ptx.push_str(&format!("ld.global.b{regw} {reg}, [%rd98+{}];\n", 8 * i));
            }
            let addr = if space == "shared" {
                "sbuf".to_string()
            } else {
                "%rd99+32".to_string()
            };
            ptx.push_str(&format!("st.{space}.b{w} [{addr}], {ri};\n"));
            let operands = if op == "cas" {
                format!("{rb}, {rc}")
            } else {
                rb.clone()
            };
            if is_atom {
                ptx.push_str(&format!(
                    "{form} {rd_}, [{addr}], {operands};\nst.global.b{regw} [%rd99], {rd_};\n"
                ));
            } else {
                ptx.push_str(&format!("{form} [{addr}], {operands};\n"));
            }
            ptx.push_str(&format!(
                "ld.{space}.b{w} {ri}, [{addr}];\nst.global.b{w} [%rd99+8], {ri};\nret;\n}}\n"
            ));
            let input: Vec<u8> = [b, c, init].iter().flat_map(|v| v.to_le_bytes()).collect();
            let got = r.run_custom(&ptx, &[], 1, &input, 64);
            let mut want = vec![(8usize, new, (w / 8) as usize)];
            if is_atom {
                want.push((0, old, (w / 8) as usize));
            }
            r.check_bytes(&format!("{form} init {init:#x}"), got, &want);
            if ty == "f32" || ty == "f64" {
                break;
            }
        }
    }
    // atom.add.f32 flushes subnormals on global memory but not on shared memory
    for (space, want) in [
        ("global", f(0.0)),
        ("shared", f(f32::from_bits(0x0040_0000))),
    ] {
        let addr = if space == "shared" {
            "sbuf"
        } else {
            "%rd99+32"
        };
        let ptx = format!(
            "{}ld.global.f32 %f1, [%rd98];\nst.{space}.f32 [{addr}], %f1;\natom.{space}.add.f32 %f2, [{addr}], %f1;\nld.{space}.f32 %f3, [{addr}];\nst.global.f32 [%rd99], %f3;\nret;\n}}\n",
            header("")
        );
        let got = r.run_custom(
            &ptx,
            &[],
            1,
            &f(f32::from_bits(0x0020_0000)).to_le_bytes()[..4],
            64,
        );
        r.check_bytes(
            &format!("atom.{space}.add.f32 subnormal"),
            got,
            &[(0, want, 4)],
        );
    }
}

/// Runs `body` in one warp of 32 threads (`%r1` = tid) and returns each thread's `outs`.
fn warp_run(r: &mut Runner, body: &str, outs: &[&str]) -> Result<Vec<Vec<u64>>, String> {
    let mut ptx = header("");
    ptx.push_str(
        "mov.u32 %r1, %tid.x;\nmul.wide.u32 %rd97, %r1, 64;\nadd.s64 %rd96, %rd99, %rd97;\n",
    );
    ptx.push_str(body);
    ptx.push('\n');
    for (i, o) in outs.iter().enumerate() {
        match reg_width(o) {
            1 => ptx.push_str(&format!(
                "selp.u32 %r99, 1, 0, {o};\nst.global.u32 [%rd96+{}], %r99;\n",
                8 * i
            )),
            w => ptx.push_str(&format!("st.global.b{w} [%rd96+{}], {o};\n", 8 * i)),
        }
    }
    ptx.push_str("ret;\n}\n");
    let b = r.run_custom(&ptx, &[], 32, &[0u8; 8], 64 * 32)?;
    Ok((0..32)
        .map(|t| {
            (0..outs.len())
                .map(|i| {
                    u64::from_le_bytes(b[t * 64 + 8 * i..t * 64 + 8 * i + 8].try_into().unwrap())
                        & mask(reg_width(outs[i]).max(32))
                })
                .collect()
        })
        .collect())
}

#[track_caller]
fn warp_case(r: &mut Runner, body: &str, outs: &[&str], want: impl Fn(u64) -> Vec<u64>) {
    match warp_run(r, body, outs) {
        Err(e) => r.failures.push(format!("`{body}`: {e}")),
        Ok(got) => {
            for (t, g) in got.iter().enumerate() {
                let w = want(t as u64);
                if *g != w {
                    r.failures
                        .push(format!("`{body}` lane {t}: got {g:x?}, expected {w:x?}"));
                    break;
                }
            }
        }
    }
}

fn warp_cases(r: &mut Runner) {
    // shfl, following the ISA pseudo-code (c = 31 for down/bfly/idx, 0 for up, segmask in c[12:8])
    warp_case(
        r,
        "shfl.sync.down.b32 %r2|%p1, %r1, 3, 31, -1;",
        &["%r2", "%p1"],
        |l| {
            if l + 3 <= 31 {
                vec![l + 3, 1]
            } else {
                vec![l, 0]
            }
        },
    );
    warp_case(
        r,
        "shfl.sync.up.b32 %r2|%p1, %r1, 3, 0, -1;",
        &["%r2", "%p1"],
        |l| if l >= 3 { vec![l - 3, 1] } else { vec![l, 0] },
    );
    warp_case(
        r,
        "shfl.sync.bfly.b32 %r2|%p1, %r1, 5, 31, -1;",
        &["%r2", "%p1"],
        |l| vec![l ^ 5, 1],
    );
    warp_case(
        r,
        "shfl.sync.idx.b32 %r2|%p1, %r1, 7, 31, -1;",
        &["%r2", "%p1"],
        |_| vec![7, 1],
    );
    // only b[4:0] counts: 33 acts as 1
    warp_case(
        r,
        "shfl.sync.bfly.b32 %r2, %r1, 33, 31, -1;",
        &["%r2"],
        |l| vec![l ^ 1],
    );
    // width 8 segments: c = ((32-8) << 8) | 31
    warp_case(
        r,
        "shfl.sync.idx.b32 %r2|%p1, %r1, 2, 0x181f, -1;",
        &["%r2", "%p1"],
        |l| vec![(l & 24) | 2, 1],
    );
    warp_case(
        r,
        "shfl.sync.down.b32 %r2|%p1, %r1, 3, 0x101f, -1;",
        &["%r2", "%p1"],
        |l| {
            if (l & 15) + 3 <= 15 {
                vec![l + 3, 1]
            } else {
                vec![l, 0]
            }
        },
    );
    warp_case(
        r,
        "shfl.sync.up.b32 %r2|%p1, %r1, 1, 0x1800, -1;",
        &["%r2", "%p1"],
        |l| {
            if l & 7 >= 1 {
                vec![l - 1, 1]
            } else {
                vec![l, 0]
            }
        },
    );
    // bfly twice is the identity
    warp_case(
        r,
        "shfl.sync.bfly.b32 %r2, %r1, 6, 31, -1;\nshfl.sync.bfly.b32 %r3, %r2, 6, 31, -1;",
        &["%r3"],
        |l| vec![l],
    );
    // vote
    let pre = "setp.lt.u32 %p1, %r1, 5;\n";
    warp_case(
        r,
        &format!("{pre}vote.sync.ballot.b32 %r2, %p1, -1;"),
        &["%r2"],
        |_| vec![0x1f],
    );
    warp_case(
        r,
        &format!("{pre}vote.sync.ballot.b32 %r2, !%p1, -1;"),
        &["%r2"],
        |_| vec![0xffff_ffe0],
    );
    warp_case(
        r,
        &format!("{pre}vote.sync.all.pred %p2, %p1, -1;"),
        &["%p2"],
        |_| vec![0],
    );
    warp_case(
        r,
        &format!("{pre}vote.sync.any.pred %p2, %p1, -1;"),
        &["%p2"],
        |_| vec![1],
    );
    warp_case(
        r,
        &format!("{pre}vote.sync.uni.pred %p2, %p1, -1;"),
        &["%p2"],
        |_| vec![0],
    );
    warp_case(r, "setp.lt.u32 %p1, %r1, 99;\nvote.sync.uni.pred %p2, %p1, -1;\nvote.sync.all.pred %p3, %p1, -1;", &["%p2", "%p3"], |_| vec![1, 1]);
    // redux
    warp_case(r, "redux.sync.add.u32 %r2, %r1, -1;", &["%r2"], |_| {
        vec![496]
    });
    warp_case(r, "redux.sync.add.s32 %r2, %r1, -1;", &["%r2"], |_| {
        vec![496]
    });
    warp_case(
        r,
        "sub.s32 %r3, %r1, 5;\nredux.sync.min.s32 %r2, %r3, -1;",
        &["%r2"],
        |_| vec![(-5i64 as u64) & 0xffff_ffff],
    );
    warp_case(
        r,
        "sub.s32 %r3, %r1, 5;\nredux.sync.min.u32 %r2, %r3, -1;",
        &["%r2"],
        |_| vec![0],
    );
    warp_case(
        r,
        "sub.s32 %r3, %r1, 5;\nredux.sync.max.s32 %r2, %r3, -1;",
        &["%r2"],
        |_| vec![26],
    );
    warp_case(
        r,
        "sub.s32 %r3, %r1, 5;\nredux.sync.max.u32 %r2, %r3, -1;",
        &["%r2"],
        |_| vec![0xffff_ffff],
    );
    warp_case(
        r,
        "or.b32 %r3, %r1, 0x100;\nredux.sync.and.b32 %r2, %r3, -1;",
        &["%r2"],
        |_| vec![0x100],
    );
    warp_case(r, "redux.sync.or.b32 %r2, %r1, -1;", &["%r2"], |_| vec![31]);
    warp_case(r, "redux.sync.xor.b32 %r2, %r1, -1;", &["%r2"], |_| vec![0]);
    // barriers, fences, branches, exits, cvta: exercise every control form
    let sync_body = "bar.warp.sync -1;\nbar.sync 0;\nbarrier.sync 0;\nbarrier.sync.aligned 0;\nmembar.cta;\nmembar.gl;\nmembar.sys;\nfence.sc.cta;\nfence.acq_rel.cta;\nfence.sc.gpu;\nfence.acq_rel.gpu;\nfence.sc.sys;\nfence.acq_rel.sys;\nmov.u32 %r2, 1;\nbra.uni $L_a;\nmov.u32 %r2, 2;\n$L_a:\nsetp.eq.u32 %p1, %r1, 3;\n@%p1 bra $L_b;\nmov.u32 %r3, 10;\nbra $L_c;\n$L_b:\nmov.u32 %r3, 20;\n$L_c:";
    warp_case(r, sync_body, &["%r2", "%r3"], |l| {
        vec![1, if l == 3 { 20 } else { 10 }]
    });
    let cvta_body = "cvta.to.global.u64 %rd5, %rd99;\ncvta.global.u64 %rd6, %rd5;\nmov.u64 %rd7, sbuf;\ncvta.shared.u64 %rd8, %rd7;\nst.u32 [%rd8+4], %r1;\nbar.warp.sync -1;\ncvta.to.shared.u64 %rd9, %rd8;\nld.shared.u32 %r4, [%rd9+4];\nmov.u64 %rd10, lbuf;\ncvta.local.u64 %rd11, %rd10;\nst.u32 [%rd11], %r1;\ncvta.to.local.u64 %rd12, %rd11;\nld.local.u32 %r5, [%rd12];\nsub.s64 %rd13, %rd6, %rd99;";
    match warp_run(r, cvta_body, &["%rd13", "%r5"]) {
        Ok(v) => {
            if v.iter()
                .enumerate()
                .any(|(t, g)| g[0] != 0 || g[1] != t as u64)
            {
                r.failures.push(format!("cvta round trips: {v:x?}"));
            }
        }
        Err(e) => {
            // the shared store races between lanes (every lane writes sbuf+4): expected
            if !e.contains("race") {
                r.failures.push(format!("cvta: {e}"));
            }
        }
    }
    // exit: lanes >= 16 leave early
    warp_case(
        r,
        "mov.u32 %r2, 5;\nsetp.ge.u32 %p1, %r1, 16;\n@%p1 bra $L_x;\nmov.u32 %r2, 6;\n$L_x:",
        &["%r2"],
        |l| vec![if l >= 16 { 5 } else { 6 }],
    );
    let ex = format!("{}mov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 16;\n@%p1 exit;\nmul.wide.u32 %rd97, %r1, 4;\nadd.s64 %rd96, %rd99, %rd97;\nst.global.u32 [%rd96], %r1;\nret;\n}}\n", header(""));
    let got = r.run_custom(&ex, &[], 32, &[0u8; 8], 128);
    let want: Vec<(usize, u64, usize)> = (0..32)
        .map(|t| (4 * t, if t < 16 { t as u64 } else { 0 }, 4))
        .collect();
    r.check_bytes("exit", got, &want);
}

fn lane_prologue() -> String {
    // %r1 = tid, %rd96 = out + 64*tid, %r10 = mbuf + 16*tid, %rd95 = in + 16*tid
    format!("{}mov.u32 %r1, %tid.x;\nmul.wide.u32 %rd97, %r1, 64;\nadd.s64 %rd96, %rd99, %rd97;\nmov.u32 %r10, mbuf;\nshl.b32 %r11, %r1, 4;\nadd.s32 %r10, %r10, %r11;\nmul.wide.u32 %rd94, %r1, 16;\nadd.s64 %rd95, %rd98, %rd94;\n", header(""))
}

fn per_lane_u32(got: Result<Vec<u8>, String>, n: usize) -> Result<Vec<Vec<u32>>, String> {
    let b = got?;
    Ok((0..32)
        .map(|t| {
            (0..n)
                .map(|i| {
                    u32::from_le_bytes(b[t * 64 + 4 * i..t * 64 + 4 * i + 4].try_into().unwrap())
                })
                .collect()
        })
        .collect())
}

fn async_tensor_cases(r: &mut Runner) {
    // ldmatrix: row t of the 32x8 b16 grid holds elements 8t..8t+7 (value = element index)
    for num in [1usize, 2, 4] {
        for trans in [false, true] {
            let mut ptx = lane_prologue();
            for j in 0..4 {
                let lo = |t: u32| 8 * t + 2 * j;
                let _ = lo;
                ptx.push_str(&format!(
                    "shl.b32 %r20, %r1, 3;\nadd.s32 %r20, %r20, {};\nadd.s32 %r21, %r20, 1;\nshl.b32 %r21, %r21, 16;\nor.b32 %r20, %r20, %r21;\nst.shared.u32 [%r10+{}], %r20;\n",
                    2 * j,
                    4 * j
                ));
            }
            let regs: Vec<String> = (0..num).map(|i| format!("%r{}", 30 + i)).collect();
            let form = format!(
                "ldmatrix.sync.aligned.m8n8.x{num}{}.shared.b16",
                if trans { ".trans" } else { "" }
            );
            ptx.push_str(&format!(
                "bar.warp.sync -1;\n{form} {{{}}}, [%r10];\n",
                regs.join(", ")
            ));
            for (i, rg) in regs.iter().enumerate() {
                ptx.push_str(&format!("st.global.u32 [%rd96+{}], {rg};\n", 4 * i));
            }
            ptx.push_str("ret;\n}\n");
            match per_lane_u32(r.run_custom(&ptx, &[], 32, &[0u8; 8], 64 * 32), num) {
                Err(e) => r.failures.push(format!("{form}: {e}")),
                Ok(v) => {
                    for t in 0..32u32 {
                        for m in 0..num as u32 {
                            let want = if trans {
                                (8 * (8 * m + 2 * (t % 4)) + t / 4)
                                    | (8 * (8 * m + 2 * (t % 4) + 1) + t / 4) << 16
                            } else {
                                (8 * (8 * m + t / 4) + 2 * (t % 4))
                                    | (8 * (8 * m + t / 4) + 2 * (t % 4) + 1) << 16
                            };
                            if v[t as usize][m as usize] != want {
                                r.failures.push(format!(
                                    "{form}: lane {t} reg {m} = {:#x}, expected {want:#x}",
                                    v[t as usize][m as usize]
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    // mma: A = 1, B = 2 everywhere, C = tid + e -> D = 32 + C
    for (ty, one, two) in [("bf16", 0x3f80u32, 0x4000u32), ("f16", 0x3c00, 0x4000)] {
        let form = format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32");
        let mut ptx = lane_prologue();
        ptx.push_str(&format!("mov.b32 %r20, {};\nmov.b32 %r21, {};\ncvt.rn.f32.u32 %f1, %r1;\nadd.f32 %f2, %f1, 0f3F800000;\nadd.f32 %f3, %f1, 0f40000000;\nadd.f32 %f4, %f1, 0f40400000;\n", one | one << 16, two | two << 16));
        ptx.push_str(&format!("{form} {{%f5, %f6, %f7, %f8}}, {{%r20, %r20, %r20, %r20}}, {{%r21, %r21}}, {{%f1, %f2, %f3, %f4}};\n"));
        for i in 0..4 {
            ptx.push_str(&format!("st.global.f32 [%rd96+{}], %f{};\n", 4 * i, 5 + i));
        }
        ptx.push_str("ret;\n}\n");
        match per_lane_u32(r.run_custom(&ptx, &[], 32, &[0u8; 8], 64 * 32), 4) {
            Err(e) => r.failures.push(format!("{form}: {e}")),
            Ok(v) => {
                for t in 0..32 {
                    for e in 0..4 {
                        let want = (32.0 + t as f32 + e as f32).to_bits();
                        if v[t][e] != want {
                            r.failures.push(format!(
                                "{form}: lane {t} d{e} = {}, expected {}",
                                f32::from_bits(v[t][e]),
                                f32::from_bits(want)
                            ));
                        }
                    }
                }
            }
        }
    }
    // cp.async: each lane copies its 16-B chunk (cg 16 B, ca 4 B with src-size 2 -> zero fill)
    let input: Vec<u8> = (0..512u32).map(|i| (i * 3 + 1) as u8).collect();
    for (form, size, src_size, wait) in [
        ("cp.async.cg.shared.global", 16u32, None, "cp.async.commit_group;\ncp.async.wait_group 0;"),
        ("cp.async.ca.shared.global", 4, Some(2u32), "cp.async.wait_all;"),
        ("cp.async.ca.shared.global", 8, None, "cp.async.commit_group;\ncp.async.commit_group;\ncp.async.wait_group 1;\ncp.async.wait_group 0;"),
    ] {
        let mut ptx = lane_prologue();
        if size < 16 {
            ptx.push_str("st.shared.v4.u32 [%r10], {%r0, %r0, %r0, %r0};\n".replace("%r0", "0").as_str());
        }
        let ss = src_size.map(|s| format!(", {s}")).unwrap_or_default();
        ptx.push_str(&format!("{form} [%r10], [%rd95], {size}{ss};\n{wait}\nld.shared.v4.u32 {{%r30, %r31, %r32, %r33}}, [%r10];\n"));
        for i in 0..4 {
            ptx.push_str(&format!("st.global.u32 [%rd96+{}], %r{};\n", 4 * i, 30 + i));
        }
        ptx.push_str("ret;\n}\n");
        match per_lane_u32(r.run_custom(&ptx, &[], 32, &input, 64 * 32), 4) {
            Err(e) => r.failures.push(format!("{form} {size}: {e}")),
            Ok(v) => {
                for t in 0..32usize {
                    let mut want = [0u8; 16];
                    let n = src_size.unwrap_or(size) as usize;
                    want[..n].copy_from_slice(&input[16 * t..16 * t + n]);
                    let got: Vec<u8> = v[t].iter().flat_map(|w| w.to_le_bytes()).collect();
                    if got != want {
                        r.failures.push(format!("{form} {size}: lane {t} {got:x?} expected {want:x?}"));
                    }
                }
            }
        }
    }
    // reading a cp.async destination before wait_group is an error
    let mut ptx = lane_prologue();
    ptx.push_str("cp.async.cg.shared.global [%r10], [%rd95], 16;\nld.shared.u32 %r30, [%r10];\ncp.async.wait_all;\nret;\n}\n");
    match r.run_custom(&ptx, &[], 32, &input, 64 * 32) {
        Err(e) if e.contains("before its wait_group") => {}
        other => r.failures.push(format!(
            "cp.async pending read: expected an error, got {other:?}"
        )),
    }
}

/// wmma m16n16k16: every layout / space / type combination against an exact small-integer GEMM.
fn wmma_cases(r: &mut Runner) {
    let am = |i: usize, k: usize| ((i * 3 + k) % 7) as f32 - 3.0;
    let bm = |k: usize, n: usize| ((k + 2 * n) % 5) as f32 - 2.0;
    let cm = |i: usize, n: usize| i as f32 - n as f32;
    let at = |lay: &str, i: usize, j: usize| if lay == "row" { i * 16 + j } else { j * 16 + i };
    for ty in ["bf16", "f16"] {
        let enc = |x: f32| -> u16 {
            if ty == "bf16" {
                half::bf16::from_f32(x).to_bits()
            } else {
                half::f16::from_f32(x).to_bits()
            }
        };
        let nreg = if ty == "bf16" { 4 } else { 8 };
        for alay in ["row", "col"] {
            for blay in ["row", "col"] {
                for sp in ["", ".global", ".shared"] {
                    for clay in ["row", "col"] {
                        // inputs: A (512 B), B (512 B), C (1024 B)
                        let mut input = vec![0u8; 2048];
                        for i in 0..16 {
                            for j in 0..16 {
                                input[2 * at(alay, i, j)..][..2]
                                    .copy_from_slice(&enc(am(i, j)).to_le_bytes());
                                input[512 + 2 * at(blay, i, j)..][..2]
                                    .copy_from_slice(&enc(bm(i, j)).to_le_bytes());
                                input[1024 + 4 * at(clay, i, j)..][..4]
                                    .copy_from_slice(&cm(i, j).to_le_bytes());
                            }
                        }
                        let regs = |base: usize, n: usize, p: &str| {
                            (0..n)
                                .map(|i| format!("%{p}{}", base + i))
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        let mut ptx = String::from(".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 k_in, .param .u64 k_out)\n{\n.reg .b32 %r<64>;\n.reg .f32 %f<32>;\n.reg .b64 %rd<16>;\n.shared .align 32 .b8 sA[512];\n.shared .align 32 .b8 sB[512];\n.shared .align 32 .b8 sC[1024];\nld.param.u64 %rd1, [k_in];\nld.param.u64 %rd2, [k_out];\nmov.u32 %r1, %tid.x;\nmul.wide.u32 %rd3, %r1, 16;\nadd.s64 %rd4, %rd1, %rd3;\nshl.b32 %r7, %r1, 4;\n");
                        let (pa, pb, pc, pd);
                        if sp == ".shared" {
                            for (off, sym) in
                                [(0, "sA"), (512, "sB"), (1024, "sC"), (1536, "sC+512")]
                            {
                                let (sym, extra) = sym
                                    .split_once('+')
                                    .map(|(s, e)| (s, e.parse::<u32>().unwrap()))
                                    .unwrap_or((sym, 0));
                                ptx.push_str(&format!("ld.global.v4.u32 {{%r2, %r3, %r4, %r5}}, [%rd4+{off}];\nmov.u32 %r6, {sym};\nadd.s32 %r8, %r6, %r7;\nst.shared.v4.u32 [%r8+{extra}], {{%r2, %r3, %r4, %r5}};\n"));
                            }
                            ptx.push_str("bar.warp.sync -1;\nmov.u32 %r10, sA;\nmov.u32 %r11, sB;\nmov.u32 %r12, sC;\n");
                            (pa, pb, pc, pd) = ("%r10", "%r11", "%r12", "%r12");
                        } else {
                            ptx.push_str("add.s64 %rd6, %rd1, 512;\nadd.s64 %rd7, %rd1, 1024;\n");
                            (pa, pb, pc, pd) = ("%rd1", "%rd6", "%rd7", "%rd2");
                        }
                        let tys = if ty == "bf16" {
                            "f32.bf16.bf16.f32"
                        } else {
                            "f32.f32"
                        };
                        ptx.push_str(&format!("wmma.load.a.sync.aligned.{alay}.m16n16k16{sp}.{ty} {{{}}}, [{pa}], 16;\n", regs(20, nreg, "r")));
                        ptx.push_str(&format!("wmma.load.b.sync.aligned.{blay}.m16n16k16{sp}.{ty} {{{}}}, [{pb}], 16;\n", regs(40, nreg, "r")));
                        ptx.push_str(&format!("wmma.load.c.sync.aligned.{clay}.m16n16k16{sp}.f32 {{{}}}, [{pc}], 16;\n", regs(0, 8, "f")));
                        ptx.push_str(&format!(
                            "wmma.mma.sync.aligned.{alay}.{blay}.m16n16k16.{tys} {{{}}}, {{{}}}, {{{}}}, {{{}}};\n",
                            regs(8, 8, "f"),
                            regs(20, nreg, "r"),
                            regs(40, nreg, "r"),
                            regs(0, 8, "f")
                        ));
                        ptx.push_str(&format!("wmma.store.d.sync.aligned.{clay}.m16n16k16{sp}.f32 [{pd}], {{{}}}, 16;\n", regs(8, 8, "f")));
                        if sp == ".shared" {
                            ptx.push_str("bar.warp.sync -1;\nmul.wide.u32 %rd8, %r1, 32;\nadd.s64 %rd9, %rd2, %rd8;\nshl.b32 %r13, %r1, 5;\nadd.s32 %r14, %r12, %r13;\nld.shared.v4.u32 {%r2, %r3, %r4, %r5}, [%r14];\nst.global.v4.u32 [%rd9], {%r2, %r3, %r4, %r5};\nld.shared.v4.u32 {%r2, %r3, %r4, %r5}, [%r14+16];\nst.global.v4.u32 [%rd9+16], {%r2, %r3, %r4, %r5};\n");
                        }
                        ptx.push_str("ret;\n}\n");
                        let what = format!("wmma {ty} a.{alay} b.{blay} c/d.{clay} space '{sp}'");
                        match r.run_custom(&ptx, &[], 32, &input, 1024) {
                            Err(e) => r.failures.push(format!("{what}: {e}")),
                            Ok(out) => {
                                for i in 0..16 {
                                    for n in 0..16 {
                                        let want: f32 =
                                            (0..16).map(|k| am(i, k) * bm(k, n)).sum::<f32>()
                                                + cm(i, n);
                                        let o = 4 * at(clay, i, n);
                                        let got =
                                            f32::from_le_bytes(out[o..o + 4].try_into().unwrap());
                                        if got != want {
                                            r.failures.push(format!(
                                                "{what}: D[{i}][{n}] = {got}, expected {want}"
                                            ));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // a fragment loaded .col but consumed by a .row mma is reported
    let ptx = ".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 k_in, .param .u64 k_out)\n{\n.reg .b32 %r<64>;\n.reg .f32 %f<32>;\n.reg .b64 %rd<16>;\nld.param.u64 %rd1, [k_in];\nld.param.u64 %rd2, [k_out];\nadd.s64 %rd6, %rd1, 512;\nadd.s64 %rd7, %rd1, 1024;\nwmma.load.a.sync.aligned.col.m16n16k16.global.bf16 {%r20, %r21, %r22, %r23}, [%rd1], 16;\nwmma.load.b.sync.aligned.row.m16n16k16.global.bf16 {%r40, %r41, %r42, %r43}, [%rd6], 16;\nwmma.load.c.sync.aligned.row.m16n16k16.global.f32 {%f0, %f1, %f2, %f3, %f4, %f5, %f6, %f7}, [%rd7], 16;\nwmma.mma.sync.aligned.row.row.m16n16k16.f32.bf16.bf16.f32 {%f8, %f9, %f10, %f11, %f12, %f13, %f14, %f15}, {%r20, %r21, %r22, %r23}, {%r40, %r41, %r42, %r43}, {%f0, %f1, %f2, %f3, %f4, %f5, %f6, %f7};\nret;\n}\n";
    match r.run_custom(ptx, &[], 32, &[0u8; 2048], 1024) {
        Err(e) if e.contains("layouts differ") => {}
        other => r.failures.push(format!(
            "wmma layout mismatch: expected an error, got {other:?}"
        )),
    }
}

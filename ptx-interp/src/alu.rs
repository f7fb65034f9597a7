//! Per-lane arithmetic. Registers are raw `u64` bit containers; each operation reads the bits at
//! its own type. Floating point follows the PTX ISA: `.rn` = IEEE round-to-nearest-even (Rust's
//! default), `fma` via `mul_add` (single rounding), `.ftz` flushes subnormal inputs and results to
//! sign-preserving zero, f32 arithmetic that produces NaN returns the canonical NaN `0x7fffffff`.

use crate::ir::*;

pub(crate) const CANON_NAN32: u32 = 0x7fff_ffff;

#[inline]
pub(crate) fn mask(w: u32) -> u64 {
    if w >= 64 {
        u64::MAX
    } else {
        (1u64 << w) - 1
    }
}

#[inline]
pub(crate) fn sext(v: u64, w: u32) -> i64 {
    if w >= 64 {
        v as i64
    } else {
        let s = 64 - w;
        ((v << s) as i64) >> s
    }
}

#[inline]
pub(crate) fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        if x.is_sign_negative() {
            -0.0
        } else {
            0.0
        }
    } else {
        x
    }
}

#[inline]
fn fin(bits: u64, ftz: bool) -> f32 {
    let x = f32::from_bits(bits as u32);
    if ftz {
        ftz32(x)
    } else {
        x
    }
}

#[inline]
fn fout(x: f32, ftz: bool) -> u64 {
    if x.is_nan() {
        return CANON_NAN32 as u64;
    }
    let x = if ftz { ftz32(x) } else { x };
    x.to_bits() as u64
}

#[inline]
fn din(bits: u64) -> f64 {
    f64::from_bits(bits)
}

#[inline]
fn dout(x: f64) -> u64 {
    x.to_bits()
}

/// f32 -> bf16 bits, round to nearest even, NaN -> quiet NaN with the sign kept.
pub(crate) fn f32_to_bf16_rn(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// PTX min/max for f32/f64: a NaN operand is ignored; both NaN -> canonical NaN; -0 < +0.
fn fminmax32(a: f32, b: f32, is_max: bool) -> u64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => CANON_NAN32 as u64,
        (true, false) => b.to_bits() as u64,
        (false, true) => a.to_bits() as u64,
        _ => {
            let r = if a == b {
                // only differs for signed zeros
                if is_max == a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if (a < b) != is_max {
                a
            } else {
                b
            };
            r.to_bits() as u64
        }
    }
}

fn fminmax64(a: f64, b: f64, is_max: bool) -> u64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => 0x7fff_ffff_ffff_ffff,
        (true, false) => b.to_bits(),
        (false, true) => a.to_bits(),
        _ => {
            let r = if a == b {
                if is_max == a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if (a < b) != is_max {
                a
            } else {
                b
            };
            r.to_bits()
        }
    }
}

#[inline]
fn shl(a: u64, n: u64, w: u32) -> u64 {
    let n = n & 0xffff_ffff;
    if n >= w as u64 {
        0
    } else {
        (a << n) & mask(w)
    }
}

#[inline]
fn shr(a: u64, n: u64, w: u32, signed: bool) -> u64 {
    let n = (n & 0xffff_ffff).min(w as u64) as u32;
    if signed {
        let v = sext(a, w);
        let r = if n >= 64 { v >> 63 } else { v >> n.min(63) };
        (r as u64) & mask(w)
    } else if n >= w {
        0
    } else {
        ((a & mask(w)) >> n) & mask(w)
    }
}

fn round_int(x: f64, r: FRnd) -> f64 {
    match r {
        FRnd::Rn => x.round_ties_even(),
        FRnd::Rz => x.trunc(),
        FRnd::Rm => x.floor(),
        FRnd::Rp => x.ceil(),
    }
}

/// Reads a value of `ty` from raw register bits as f64 (exact for every supported type).
fn as_f64(bits: u64, ty: Ty, ftz: bool) -> f64 {
    match ty {
        Ty::F32 => fin(bits, ftz) as f64,
        Ty::F64 => din(bits),
        Ty::F16 => half::f16::from_bits(bits as u16).to_f64(),
        Ty::Bf16 => bf16_to_f32(bits as u16) as f64,
        _ => unreachable!(),
    }
}

pub(crate) fn cvt(c: &Cvt, a: u64) -> u64 {
    let (d, s) = (c.dst, c.src);
    if !d.is_float() && !s.is_float() {
        let sw = s.bits();
        let v: i128 = if s.signed() {
            sext(a, sw) as i128
        } else {
            (a & mask(sw)) as i128
        };
        let dw = d.bits();
        let v = if c.sat {
            let (lo, hi): (i128, i128) = if d.signed() {
                (-(1i128 << (dw - 1)), (1i128 << (dw - 1)) - 1)
            } else {
                (0, (1i128 << dw) - 1)
            };
            v.clamp(lo, hi)
        } else {
            v
        };
        let t = (v as u64) & mask(dw);
        return if d.signed() { sext(t, dw) as u64 } else { t };
    }
    if s.is_float() && !d.is_float() {
        // float -> int: round, saturate to the destination range, NaN -> 0
        let x = as_f64(a, s, c.ftz);
        if x.is_nan() {
            return 0;
        }
        let r = round_int(x, c.irnd.unwrap_or(FRnd::Rz));
        let dw = d.bits();
        return if d.signed() {
            let lo = -(2f64.powi(dw as i32 - 1));
            let hi = 2f64.powi(dw as i32 - 1) - 1.0;
            let v = r.clamp(lo, hi) as i64;
            (v as u64) & mask(dw)
        } else {
            let hi = 2f64.powi(dw as i32) - 1.0;
            let v = r.clamp(0.0, hi) as u64;
            v & mask(dw)
        };
    }
    if !s.is_float() && d.is_float() {
        let sw = s.bits();
        return match (d, s.signed()) {
            (Ty::F32, true) => (sext(a, sw) as f32).to_bits() as u64,
            (Ty::F32, false) => ((a & mask(sw)) as f32).to_bits() as u64,
            (Ty::F64, true) => (sext(a, sw) as f64).to_bits(),
            (Ty::F64, false) => ((a & mask(sw)) as f64).to_bits(),
            _ => unreachable!(),
        };
    }
    // float -> float
    match (d, s) {
        (Ty::F32, Ty::F32) => {
            let x = fin(a, c.ftz);
            let mut y = match c.irnd {
                Some(r) => round_int(x as f64, r) as f32,
                None => x,
            };
            if c.sat {
                y = if y.is_nan() { 0.0 } else { y.clamp(0.0, 1.0) };
            }
            if y.is_nan() {
                return CANON_NAN32 as u64;
            }
            (if c.ftz { ftz32(y) } else { y }).to_bits() as u64
        }
        (Ty::F64, Ty::F64) => {
            let x = din(a);
            dout(match c.irnd {
                Some(r) => round_int(x, r),
                None => x,
            })
        }
        (Ty::F64, Ty::F32) => dout(fin(a, c.ftz) as f64),
        (Ty::F32, Ty::F64) => {
            let y = din(a) as f32;
            if y.is_nan() {
                CANON_NAN32 as u64
            } else {
                y.to_bits() as u64
            }
        }
        (Ty::F16, Ty::F32) => half::f16::from_f32(fin(a, c.ftz)).to_bits() as u64,
        (Ty::F32, Ty::F16) => half::f16::from_bits(a as u16).to_f32().to_bits() as u64,
        (Ty::Bf16, Ty::F32) => f32_to_bf16_rn(fin(a, c.ftz)) as u64,
        (Ty::F32, Ty::Bf16) => bf16_to_f32(a as u16).to_bits() as u64,
        _ => unreachable!("cvt {d:?} <- {s:?}"),
    }
}

fn prmt(a: u64, b: u64, c: u64) -> u64 {
    let bytes = ((b & 0xffff_ffff) << 32) | (a & 0xffff_ffff);
    let mut d = 0u64;
    for i in 0..4 {
        let sel = (c >> (4 * i)) & 0xf;
        let byte = (bytes >> (8 * (sel & 7))) & 0xff;
        let byte = if sel & 8 != 0 {
            if byte & 0x80 != 0 {
                0xff
            } else {
                0
            }
        } else {
            byte
        };
        d |= byte << (8 * i);
    }
    d
}

fn bfe(a: u64, pos: u64, len: u64, w: u32, signed: bool) -> u64 {
    let pos = (pos & 0xff) as u32;
    let len = (len & 0xff) as u32;
    let msb = w - 1;
    let sbit = if !signed || len == 0 {
        0
    } else {
        let idx = (pos + len - 1).min(msb);
        (a >> idx) & 1
    };
    let mut d = 0u64;
    for i in 0..w {
        let bit = if i < len && pos + i <= msb {
            (a >> (pos + i)) & 1
        } else {
            sbit
        };
        d |= bit << i;
    }
    d
}

// next_up/next_down by hand (std's are newer than the workspace's minimum Rust version)
fn next_up32(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}
fn next_down32(x: f32) -> f32 {
    -next_up32(-x)
}
fn next_up64(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}
fn next_down64(x: f64) -> f64 {
    -next_up64(-x)
}

/// Error-free transform: s + e == a + b exactly (when no overflow).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// Rounds the exact value s + e to f32 with a directed mode. `opp_zero`: an exact zero sum of
/// operands with opposite signs (IEEE gives -0 only when rounding toward -inf).
fn round_f32_directed(s: f64, e: f64, rnd: FRnd, opp_zero: bool) -> f32 {
    if s.is_nan() {
        return f32::NAN;
    }
    if s == 0.0 && e == 0.0 {
        return if opp_zero && rnd == FRnd::Rm {
            -0.0
        } else {
            s as f32
        };
    }
    if s.is_infinite() {
        return s as f32;
    }
    let x = s as f32;
    // sign of (x - exact); x - s is exact in f64
    let diff = if x.is_infinite() {
        x as f64
    } else {
        ((x as f64) - s) - e
    };
    let exact_pos = if s != 0.0 { s > 0.0 } else { e > 0.0 };
    let toward_neg = match rnd {
        FRnd::Rm => true,
        FRnd::Rp => false,
        FRnd::Rz => exact_pos,
        FRnd::Rn => return x,
    };
    if toward_neg && diff > 0.0 {
        next_down32(x)
    } else if !toward_neg && diff < 0.0 {
        next_up32(x)
    } else {
        x
    }
}

fn round_f64_directed(s: f64, e: f64, rnd: FRnd, opp_zero: bool, finite_inputs: bool) -> f64 {
    if s.is_nan() {
        return s;
    }
    if s == 0.0 && e == 0.0 {
        return if opp_zero && rnd == FRnd::Rm { -0.0 } else { s };
    }
    if s.is_infinite() {
        if !finite_inputs {
            return s;
        }
        // overflow: directed modes stop at the largest finite value on their side
        let toward_zero = match rnd {
            FRnd::Rz => true,
            FRnd::Rm => s > 0.0,
            FRnd::Rp => s < 0.0,
            FRnd::Rn => false,
        };
        return if toward_zero { f64::MAX.copysign(s) } else { s };
    }
    let exact_pos = if s != 0.0 { s > 0.0 } else { e > 0.0 };
    let toward_neg = match rnd {
        FRnd::Rm => true,
        FRnd::Rp => false,
        FRnd::Rz => exact_pos,
        FRnd::Rn => return s,
    };
    // s - exact = -e
    if toward_neg && e < 0.0 {
        next_down64(s)
    } else if !toward_neg && e > 0.0 {
        next_up64(s)
    } else {
        s
    }
}

/// bfi: insert the low `len` bits of `a` into `b` at `pos` (fields beyond the msb are cut).
pub(crate) fn bfi(a: u64, b: u64, pos: u64, len: u64, w: u32) -> u64 {
    let pos = (pos & 0xff) as u32;
    let len = (len & 0xff) as u32;
    let mut f = b & mask(w);
    for i in 0..len {
        if pos + i >= w {
            break;
        }
        let bit = (a >> i) & 1;
        f = (f & !(1u64 << (pos + i))) | (bit << (pos + i));
    }
    f
}

/// Error raised by a lane computation.
pub(crate) enum AluErr {
    DivByZero,
}

#[inline]
pub(crate) fn eval(op: &AluOp, a: u64, b: u64, c: u64) -> Result<u64, AluErr> {
    Ok(match *op {
        AluOp::Mov(w) => a & mask(w),
        AluOp::IAdd(w) => a.wrapping_add(b) & mask(w),
        AluOp::ISub(w) => a.wrapping_sub(b) & mask(w),
        AluOp::IMulLo(w) => a.wrapping_mul(b) & mask(w),
        AluOp::IMulHi(w, s) => {
            let p: i128 = if s {
                sext(a, w) as i128 * sext(b, w) as i128
            } else {
                (a & mask(w)) as i128 * (b & mask(w)) as i128
            };
            ((p >> w) as u64) & mask(w)
        }
        AluOp::IMulWide(w, s) => {
            let p: i128 = if s {
                sext(a, w) as i128 * sext(b, w) as i128
            } else {
                (a & mask(w)) as i128 * (b & mask(w)) as i128
            };
            (p as u64) & mask(2 * w)
        }
        AluOp::IMadLo(w) => a.wrapping_mul(b).wrapping_add(c) & mask(w),
        AluOp::IMadHi(w, s) => {
            let p: i128 = if s {
                sext(a, w) as i128 * sext(b, w) as i128
            } else {
                (a & mask(w)) as i128 * (b & mask(w)) as i128
            };
            ((p >> w) as u64).wrapping_add(c) & mask(w)
        }
        AluOp::IMadWide(w, s) => {
            let p: i128 = if s {
                sext(a, w) as i128 * sext(b, w) as i128
            } else {
                (a & mask(w)) as i128 * (b & mask(w)) as i128
            };
            (p as u64).wrapping_add(c) & mask(2 * w)
        }
        AluOp::INeg(w) => a.wrapping_neg() & mask(w),
        AluOp::IAbs(w) => (sext(a, w).wrapping_abs() as u64) & mask(w),
        AluOp::IMin(w, s) => {
            if s {
                (sext(a, w).min(sext(b, w)) as u64) & mask(w)
            } else {
                (a & mask(w)).min(b & mask(w))
            }
        }
        AluOp::IMax(w, s) => {
            if s {
                (sext(a, w).max(sext(b, w)) as u64) & mask(w)
            } else {
                (a & mask(w)).max(b & mask(w))
            }
        }
        AluOp::IDiv(w, s) | AluOp::IRem(w, s) => {
            if b & mask(w) == 0 {
                return Err(AluErr::DivByZero);
            }
            let is_div = matches!(op, AluOp::IDiv(..));
            if s {
                let (x, y) = (sext(a, w), sext(b, w));
                let r = if is_div {
                    x.wrapping_div(y)
                } else {
                    x.wrapping_rem(y)
                };
                (r as u64) & mask(w)
            } else {
                let (x, y) = (a & mask(w), b & mask(w));
                if is_div {
                    x / y
                } else {
                    x % y
                }
            }
        }
        AluOp::And(w) => a & b & mask(w),
        AluOp::Or(w) => (a | b) & mask(w),
        AluOp::Xor(w) => (a ^ b) & mask(w),
        AluOp::Not(w) => !a & mask(w),
        AluOp::CNot(w) => (a & mask(w) == 0) as u64,
        AluOp::Shl(w) => shl(a, b, w),
        AluOp::Shr(w, s) => shr(a, b, w, s),
        AluOp::Popc(w) => (a & mask(w)).count_ones() as u64,
        AluOp::Clz(w) => ((a & mask(w)).leading_zeros() - (64 - w)) as u64,
        AluOp::Brev(w) => (a.reverse_bits() >> (64 - w)) & mask(w),
        AluOp::Bfe(w, s) => bfe(a, b, c, w, s),
        AluOp::Prmt => prmt(a, b, c),
        AluOp::Selp(w) => (if c & 1 != 0 { a } else { b }) & mask(w),
        AluOp::Slct { bits, cf32, ftz } => {
            let take_a = if cf32 {
                fin(c, ftz) >= 0.0
            } else {
                (c as u32 as i32) >= 0
            };
            (if take_a { a } else { b }) & mask(bits)
        }
        AluOp::FAdd {
            f64: false, ftz, ..
        } => fout(fin(a, ftz) + fin(b, ftz), ftz),
        AluOp::FSub {
            f64: false, ftz, ..
        } => fout(fin(a, ftz) - fin(b, ftz), ftz),
        AluOp::FMul {
            f64: false, ftz, ..
        } => fout(fin(a, ftz) * fin(b, ftz), ftz),
        AluOp::FFma {
            f64: false, ftz, ..
        } => fout(fin(a, ftz).mul_add(fin(b, ftz), fin(c, ftz)), ftz),
        AluOp::FDiv {
            f64: false, ftz, ..
        } => fout(fin(a, ftz) / fin(b, ftz), ftz),
        AluOp::FAdd { f64: true, .. } => dout(din(a) + din(b)),
        AluOp::FSub { f64: true, .. } => dout(din(a) - din(b)),
        AluOp::FMul { f64: true, .. } => dout(din(a) * din(b)),
        AluOp::FFma { f64: true, .. } => dout(din(a).mul_add(din(b), din(c))),
        AluOp::FDiv { f64: true, .. } => dout(din(a) / din(b)),
        AluOp::FNeg { f64: false, ftz } => (fin(a, ftz).to_bits() ^ 0x8000_0000) as u64,
        AluOp::FAbs { f64: false, ftz } => (fin(a, ftz).to_bits() & 0x7fff_ffff) as u64,
        AluOp::FNeg { f64: true, .. } => a ^ (1 << 63),
        AluOp::FAbs { f64: true, .. } => a & !(1 << 63),
        AluOp::FMin { f64: false, ftz } => fminmax32(fin(a, ftz), fin(b, ftz), false),
        AluOp::FMax { f64: false, ftz } => fminmax32(fin(a, ftz), fin(b, ftz), true),
        AluOp::FMin { f64: true, .. } => fminmax64(din(a), din(b), false),
        AluOp::FMax { f64: true, .. } => fminmax64(din(a), din(b), true),
        AluOp::FSqrt {
            f64: false, ftz, ..
        } => fout(fin(a, ftz).sqrt(), ftz),
        AluOp::FSqrt { f64: true, .. } => dout(din(a).sqrt()),
        AluOp::FRcp {
            f64: false, ftz, ..
        } => fout(1.0 / fin(a, ftz), ftz),
        AluOp::FRcp { f64: true, .. } => dout(1.0 / din(a)),
        AluOp::FRsqrt { ftz } => fout((1.0 / (fin(a, ftz) as f64).sqrt()) as f32, ftz),
        AluOp::FEx2 { ftz } => fout((fin(a, ftz) as f64).exp2() as f32, ftz),
        AluOp::FLg2 { ftz } => fout((fin(a, ftz) as f64).log2() as f32, ftz),
        AluOp::FSin { ftz } => fout((fin(a, ftz) as f64).sin() as f32, ftz),
        AluOp::FCos { ftz } => fout((fin(a, ftz) as f64).cos() as f32, ftz),
        AluOp::FTanh => fout((fin(a, false) as f64).tanh() as f32, false),
        AluOp::Cvt(ref cv) => cvt(cv, a),
        AluOp::CvtPack { bf16 } => {
            let one = |x: u64| -> u64 {
                let f = f32::from_bits(x as u32);
                if bf16 {
                    f32_to_bf16_rn(f) as u64
                } else {
                    half::f16::from_f32(f).to_bits() as u64
                }
            };
            (one(a) << 16) | one(b)
        }
        AluOp::FDirected {
            op,
            f64: false,
            ftz,
            rnd,
        } => {
            let (x, y, z) = (fin(a, ftz) as f64, fin(b, ftz) as f64, fin(c, ftz) as f64);
            let (s, e, opp_zero) = match op {
                0 => {
                    let (s, e) = two_sum(x, y);
                    (s, e, x == -y)
                }
                1 => {
                    let (s, e) = two_sum(x, -y);
                    (s, e, x == y)
                }
                2 => (x * y, 0.0, false),
                _ => {
                    let p = x * y; // exact for f32 operands
                    let (s, e) = two_sum(p, z);
                    (s, e, p == -z)
                }
            };
            let r = round_f32_directed(s, e, rnd, opp_zero);
            fout(r, ftz)
        }
        AluOp::FDirected {
            op, f64: true, rnd, ..
        } => {
            let (x, y) = (din(a), din(b));
            let (s, e, opp_zero) = match op {
                0 => {
                    let (s, e) = two_sum(x, y);
                    (s, e, x == -y)
                }
                1 => {
                    let (s, e) = two_sum(x, -y);
                    (s, e, x == y)
                }
                _ => {
                    let p = x * y;
                    (p, x.mul_add(y, -p), false)
                }
            };
            dout(round_f64_directed(
                s,
                e,
                rnd,
                opp_zero,
                x.is_finite() && y.is_finite(),
            ))
        }
        AluOp::CopySign { f64: false } => ((b & 0x7fff_ffff) | (a & 0x8000_0000)) & 0xffff_ffff,
        AluOp::CopySign { f64: true } => (b & !(1u64 << 63)) | (a & (1u64 << 63)),
    })
}

/// setp comparison.
pub(crate) fn compare(cmp: Cmp, ty: Ty, ftz: bool, a: u64, b: u64) -> bool {
    if ty.is_float() {
        let (x, y) = (as_f64(a, ty, ftz), as_f64(b, ty, ftz));
        let un = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !un && x == y,
            Cmp::Ne => !un && x != y,
            Cmp::Lt => !un && x < y,
            Cmp::Le => !un && x <= y,
            Cmp::Gt => !un && x > y,
            Cmp::Ge => !un && x >= y,
            Cmp::Equ => un || x == y,
            Cmp::Neu => un || x != y,
            Cmp::Ltu => un || x < y,
            Cmp::Leu => un || x <= y,
            Cmp::Gtu => un || x > y,
            Cmp::Geu => un || x >= y,
            Cmp::Num => !un,
            Cmp::Nan => un,
            _ => unreachable!(),
        };
    }
    let w = ty.bits();
    let (ua, ub) = (a & mask(w), b & mask(w));
    let (sa, sb) = (sext(a, w), sext(b, w));
    let s = ty.signed();
    match cmp {
        Cmp::Eq => ua == ub,
        Cmp::Ne => ua != ub,
        Cmp::Lt => {
            if s {
                sa < sb
            } else {
                ua < ub
            }
        }
        Cmp::Le => {
            if s {
                sa <= sb
            } else {
                ua <= ub
            }
        }
        Cmp::Gt => {
            if s {
                sa > sb
            } else {
                ua > ub
            }
        }
        Cmp::Ge => {
            if s {
                sa >= sb
            } else {
                ua >= ub
            }
        }
        Cmp::Lo => ua < ub,
        Cmp::Ls => ua <= ub,
        Cmp::Hi => ua > ub,
        Cmp::Hs => ua >= ub,
        _ => unreachable!(),
    }
}

//! Golden test of `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32` with a
//! distinct value in every element of A, B and C (the uniform-operand golden case in golden.rs
//! cannot see a fragment-layout error). Each lane loads its fragment registers from a buffer
//! packed on the host by the PTX ISA's fragment tables (written out here independently of the
//! interpreter); D is compared exactly (small integers: every product and sum is exact).

use ptx_interp::{Device, LaunchConfig, Module, Options, ParamValue};

const PTX: &str = r#".version 9.5
.target sm_80
.address_size 64
.visible .entry k(.param .u64 k_in, .param .u64 k_out)
{
.reg .b32 %r<16>;
.reg .f32 %f<16>;
.reg .b64 %rd<8>;
ld.param.u64 %rd1, [k_in];
ld.param.u64 %rd2, [k_out];
mov.u32 %r1, %tid.x;
mul.wide.u32 %rd3, %r1, 48;
add.s64 %rd4, %rd1, %rd3;
ld.global.v4.u32 {%r2, %r3, %r4, %r5}, [%rd4];
ld.global.v2.u32 {%r6, %r7}, [%rd4+16];
ld.global.v2.f32 {%f1, %f2}, [%rd4+24];
ld.global.v2.f32 {%f3, %f4}, [%rd4+32];
MMA {%f5, %f6, %f7, %f8}, {%r2, %r3, %r4, %r5}, {%r6, %r7}, {%f1, %f2, %f3, %f4};
mul.wide.u32 %rd5, %r1, 16;
add.s64 %rd6, %rd2, %rd5;
st.global.v4.f32 [%rd6], {%f5, %f6, %f7, %f8};
ret;
}
"#;

fn a_val(r: usize, k: usize) -> f32 {
    (r * 16 + k) as f32 - 128.0 // 256 distinct integers in [-128, 127]
}
fn b_val(k: usize, n: usize) -> f32 {
    (k * 8 + n) as f32 - 64.0 // 128 distinct integers in [-64, 63]
}
fn c_val(r: usize, n: usize) -> f32 {
    0.25 * (r * 8 + n) as f32 + 1000.0 // 128 distinct quarter-integers
}

/// Packs the fragments of every lane (PTX ISA 9.x, "Matrix Fragments for mma.m16n8k16 with
/// floating point type"): g = lane / 4, q = lane % 4;
/// A regs: (row g, k 2q..2q+1), (row g+8, k 2q..), (row g, k 2q+8..), (row g+8, k 2q+8..);
/// B regs: (k 2q..2q+1, col g), (k 2q+8.., col g); C: (row g, col 2q..2q+1), (row g+8, ..).
fn packed_input(enc: impl Fn(f32) -> u16) -> Vec<u8> {
    let pair = |lo: f32, hi: f32| (enc(lo) as u32) | (enc(hi) as u32) << 16;
    let mut buf = vec![0u8; 48 * 32];
    for lane in 0..32 {
        let (g, q) = (lane / 4, lane % 4);
        let regs = [
            pair(a_val(g, 2 * q), a_val(g, 2 * q + 1)),
            pair(a_val(g + 8, 2 * q), a_val(g + 8, 2 * q + 1)),
            pair(a_val(g, 2 * q + 8), a_val(g, 2 * q + 9)),
            pair(a_val(g + 8, 2 * q + 8), a_val(g + 8, 2 * q + 9)),
            pair(b_val(2 * q, g), b_val(2 * q + 1, g)),
            pair(b_val(2 * q + 8, g), b_val(2 * q + 9, g)),
            c_val(g, 2 * q).to_bits(),
            c_val(g, 2 * q + 1).to_bits(),
            c_val(g + 8, 2 * q).to_bits(),
            c_val(g + 8, 2 * q + 1).to_bits(),
        ];
        for (i, r) in regs.iter().enumerate() {
            buf[48 * lane + 4 * i..48 * lane + 4 * i + 4].copy_from_slice(&r.to_le_bytes());
        }
    }
    buf
}

fn run(ty: &str, enc: impl Fn(f32) -> u16) {
    let form = format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32");
    let m = Module::parse(&PTX.replace("MMA", &form)).unwrap();
    assert!(m.opcode_forms().contains(&form), "{form} not used by the test kernel");
    let mut dev = Device::new();
    let input = packed_input(enc);
    let pin = dev.alloc(input.len() as u64).unwrap();
    dev.write(pin, &input).unwrap();
    let pout = dev.alloc(16 * 32).unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [32, 1, 1], dynamic_shared_bytes: 0 };
    dev.launch(&m, "k", &cfg, &[ParamValue::U64(pin), ParamValue::U64(pout)], &Options::default()).unwrap();
    let out = dev.read(pout, 16 * 32).unwrap();
    let mut bad = Vec::new();
    for lane in 0..32 {
        let (g, q) = (lane / 4, lane % 4);
        for e in 0..4 {
            let (r, n) = (g + 8 * (e / 2), 2 * q + e % 2);
            let want = c_val(r, n) as f64 + (0..16).map(|k| a_val(r, k) as f64 * b_val(k, n) as f64).sum::<f64>();
            let got = f32::from_le_bytes(out[16 * lane + 4 * e..16 * lane + 4 * e + 4].try_into().unwrap());
            if got as f64 != want {
                bad.push(format!("lane {lane} d{e} (row {r}, col {n}): {got}, expected {want}"));
            }
        }
    }
    assert!(bad.is_empty(), "{form}:\n{}", bad.join("\n"));
}

#[test]
fn mma_m16n8k16_bf16_fragments_with_distinct_elements() {
    // Integers of magnitude ≤ 256 are exact in bf16: the bit pattern is the f32's upper half.
    run("bf16", |x| {
        assert_eq!(x.to_bits() & 0xffff, 0, "{x} not exact in bf16");
        (x.to_bits() >> 16) as u16
    });
}

#[test]
fn mma_m16n8k16_f16_fragments_with_distinct_elements() {
    run("f16", |x| {
        let h = half::f16::from_f32(x);
        assert_eq!(h.to_f32(), x, "{x} not exact in f16");
        h.to_bits()
    });
}

/// `[%r+imm]` on .shared wraps modulo 2^32 (a 32-bit base below the symbol plus an offset
/// back into it), as nvcc's code for rings of shared stages relies on.
#[test]
fn shared_addresses_wrap_at_32_bits() {
    let ptx = ".version 9.5\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 k_in, .param .u64 k_out)\n{\n.reg .b32 %r<8>;\n.reg .b64 %rd<4>;\n.shared .align 16 .b8 buf[64];\nld.param.u64 %rd1, [k_out];\nmov.u32 %r1, buf;\nadd.s32 %r2, %r1, -8192;\nmov.u32 %r3, 1234567;\nst.shared.u32 [%r2+8196], %r3;\nld.shared.u32 %r4, [%r1+4];\nst.global.u32 [%rd1], %r4;\nret;\n}\n";
    let m = Module::parse(ptx).unwrap();
    let mut dev = Device::new();
    let pin = dev.alloc(16).unwrap();
    let pout = dev.alloc(4).unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [1, 1, 1], dynamic_shared_bytes: 0 };
    dev.launch(&m, "k", &cfg, &[ParamValue::U64(pin), ParamValue::U64(pout)], &Options::default()).unwrap();
    assert_eq!(u32::from_le_bytes(dev.read(pout, 4).unwrap().try_into().unwrap()), 1234567);
}

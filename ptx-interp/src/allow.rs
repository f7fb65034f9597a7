//! The opcode-form allowlist. Decoding any form outside this set is a [`crate::ParseError`].

use std::collections::BTreeSet;
use std::sync::OnceLock;

pub(crate) const INTS: [&str; 6] = ["s16", "u16", "s32", "u32", "s64", "u64"];
pub(crate) const CVT_INTS: [&str; 8] = ["u8", "s8", "u16", "s16", "u32", "s32", "u64", "s64"];
pub(crate) const FLOAT_CMPS: [&str; 14] = [
    "eq", "ne", "lt", "le", "gt", "ge", "equ", "neu", "ltu", "leu", "gtu", "geu", "num", "nan",
];
pub(crate) const LD_PREFIXES: [&str; 13] = [
    "ld.param",
    "ld.global",
    "ld.global.nc",
    "ld.global.cg",
    "ld.global.ca",
    "ld.global.cs",
    "ld.global.lu",
    "ld.global.cv",
    "ld.volatile.global",
    "ld.relaxed.gpu.global",
    "ld.acquire.gpu.global",
    "ld.shared",
    "ld.volatile.shared",
];
pub(crate) const LD_PREFIXES_GENERIC: [&str; 3] = ["ld.local", "ld", "ld.volatile"];
pub(crate) const ST_PREFIXES: [&str; 11] = [
    "st.global",
    "st.global.cg",
    "st.global.cs",
    "st.global.wb",
    "st.volatile.global",
    "st.relaxed.gpu.global",
    "st.release.gpu.global",
    "st.shared",
    "st.volatile.shared",
    "st.local",
    "st",
];
pub(crate) const MEM_TYPES: [&str; 14] = [
    "u8", "s8", "b8", "u16", "s16", "b16", "u32", "s32", "b32", "f32", "u64", "s64", "b64", "f64",
];

fn build() -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    let mut add = |x: String| {
        s.insert(x);
    };
    let f32_flags = ["", ".rn", ".ftz", ".rn.ftz"];
    // integer arithmetic
    for op in ["add", "sub"] {
        for t in INTS {
            add(format!("{op}.{t}"));
        }
        for fl in f32_flags {
            add(format!("{op}{fl}.f32"));
        }
        add(format!("{op}.f64"));
        add(format!("{op}.rn.f64"));
    }
    for t in INTS {
        add(format!("mul.lo.{t}"));
    }
    for t in ["s32", "u32", "s64", "u64"] {
        add(format!("mul.hi.{t}"));
        add(format!("mad.lo.{t}"));
    }
    for t in ["s16", "u16", "s32", "u32"] {
        add(format!("mul.wide.{t}"));
        add(format!("mad.wide.{t}"));
    }
    for t in ["s32", "u32"] {
        add(format!("mad.hi.{t}"));
    }
    for fl in f32_flags {
        add(format!("mul{fl}.f32"));
    }
    add("mul.f64".into());
    add("mul.rn.f64".into());
    for fl in [".rn", ".rn.ftz"] {
        add(format!("fma{fl}.f32"));
        add(format!("mad{fl}.f32"));
    }
    add("fma.rn.f64".into());
    for r in ["rz", "rm", "rp"] {
        for op in ["add", "sub", "mul"] {
            add(format!("{op}.{r}.f32"));
            add(format!("{op}.{r}.ftz.f32"));
            add(format!("{op}.{r}.f64"));
        }
        add(format!("fma.{r}.f32"));
        add(format!("fma.{r}.ftz.f32"));
    }
    add("copysign.f32".into());
    add("copysign.f64".into());
    add("bfi.b32".into());
    add("bfi.b64".into());
    add("mad.rn.f64".into());
    for t in ["s32", "u32", "s64", "u64"] {
        add(format!("div.{t}"));
        add(format!("rem.{t}"));
    }
    for fl in [
        ".rn",
        ".rn.ftz",
        ".approx",
        ".approx.ftz",
        ".full",
        ".full.ftz",
    ] {
        add(format!("div{fl}.f32"));
    }
    add("div.rn.f64".into());
    for op in ["neg", "abs"] {
        for t in ["s16", "s32", "s64", "f32", "ftz.f32", "f64"] {
            add(format!("{op}.{t}"));
        }
    }
    for op in ["min", "max"] {
        for t in INTS {
            add(format!("{op}.{t}"));
        }
        for t in ["f32", "ftz.f32", "f64"] {
            add(format!("{op}.{t}"));
        }
    }
    for op in ["sqrt", "rcp"] {
        for fl in [".rn", ".rn.ftz", ".approx", ".approx.ftz"] {
            add(format!("{op}{fl}.f32"));
        }
        add(format!("{op}.rn.f64"));
    }
    for op in ["rsqrt", "ex2", "lg2", "sin", "cos"] {
        add(format!("{op}.approx.f32"));
        add(format!("{op}.approx.ftz.f32"));
    }
    add("tanh.approx.f32".into());
    for op in ["and", "or", "xor", "not"] {
        for t in ["b16", "b32", "b64", "pred"] {
            add(format!("{op}.{t}"));
        }
    }
    for t in ["b16", "b32", "b64"] {
        add(format!("cnot.{t}"));
        add(format!("shl.{t}"));
    }
    for t in [
        "b16", "b32", "b64", "u16", "u32", "u64", "s16", "s32", "s64",
    ] {
        add(format!("shr.{t}"));
    }
    for t in ["b32", "b64"] {
        add(format!("popc.{t}"));
        add(format!("clz.{t}"));
        add(format!("brev.{t}"));
    }
    for t in ["u32", "s32", "u64", "s64"] {
        add(format!("bfe.{t}"));
    }
    add("prmt.b32".into());
    for t in [
        "b16", "u16", "s16", "b32", "u32", "s32", "f32", "b64", "u64", "s64", "f64",
    ] {
        add(format!("selp.{t}"));
    }
    for d in ["b32", "u32", "s32", "f32"] {
        add(format!("slct.{d}.s32"));
        add(format!("slct.{d}.f32"));
    }
    // setp
    let mut setp_bases: Vec<(String, String)> = Vec::new();
    for t in INTS {
        for c in ["eq", "ne", "lt", "le", "gt", "ge"] {
            setp_bases.push((c.into(), t.into()));
        }
    }
    for t in ["u16", "u32", "u64"] {
        for c in ["lo", "ls", "hi", "hs"] {
            setp_bases.push((c.into(), t.into()));
        }
    }
    for t in ["b16", "b32", "b64"] {
        for c in ["eq", "ne"] {
            setp_bases.push((c.into(), t.into()));
        }
    }
    for t in ["f32", "ftz.f32", "f64"] {
        for c in FLOAT_CMPS {
            setp_bases.push((c.into(), t.into()));
        }
    }
    for (c, t) in &setp_bases {
        add(format!("setp.{c}.{t}"));
        for b in ["and", "or", "xor"] {
            add(format!("setp.{c}.{b}.{t}"));
        }
    }
    // mov
    for t in [
        "pred", "b16", "u16", "s16", "b32", "u32", "s32", "f32", "b64", "u64", "s64", "f64",
    ] {
        add(format!("mov.{t}"));
    }
    // cvt
    for d in CVT_INTS {
        for s2 in CVT_INTS {
            if d != s2 {
                add(format!("cvt.{d}.{s2}"));
                add(format!("cvt.sat.{d}.{s2}"));
            }
        }
    }
    for d in ["f32", "f64"] {
        for s2 in ["s32", "u32", "s64", "u64"] {
            add(format!("cvt.rn.{d}.{s2}"));
        }
    }
    for r in ["rni", "rzi", "rmi", "rpi"] {
        for d in ["s32", "u32", "s64", "u64"] {
            add(format!("cvt.{r}.{d}.f32"));
            add(format!("cvt.{r}.{d}.f64"));
        }
        add(format!("cvt.{r}.f32.f32"));
        add(format!("cvt.{r}.f64.f64"));
    }
    add("cvt.f64.f32".into());
    add("cvt.rn.f32.f64".into());
    add("cvt.sat.f32.f32".into());
    add("cvt.ftz.sat.f32.f32".into());
    add("cvt.rn.f16.f32".into());
    add("cvt.f32.f16".into());
    add("cvt.rn.bf16.f32".into());
    add("cvt.f32.bf16".into());
    add("cvt.rn.bf16x2.f32".into());
    add("cvt.rn.f16x2.f32".into());
    // cvta
    for sp in ["global", "shared", "local"] {
        add(format!("cvta.to.{sp}.u64"));
        add(format!("cvta.{sp}.u64"));
    }
    // ld / st
    let vec_ok = |t: &str| !matches!(t, "u64" | "s64" | "b64" | "f64");
    for p in LD_PREFIXES.iter().chain(LD_PREFIXES_GENERIC.iter()) {
        for t in MEM_TYPES {
            add(format!("{p}.{t}"));
            if *p != "ld.param" {
                add(format!("{p}.v2.{t}"));
                if vec_ok(t) {
                    add(format!("{p}.v4.{t}"));
                }
            }
        }
    }
    for p in ST_PREFIXES {
        for t in MEM_TYPES {
            add(format!("{p}.{t}"));
            add(format!("{p}.v2.{t}"));
            if vec_ok(t) {
                add(format!("{p}.v4.{t}"));
            }
        }
    }
    // atomics (generic addresses: nvcc emits them when it cannot prove the state space)
    for sp in ["global", "shared", ""] {
        for op in ["atom", "red"] {
            for f in [
                "add.f32", "add.f64", "add.u32", "add.s32", "add.u64", "min.s32", "min.u32",
                "max.s32", "max.u32", "and.b32", "or.b32", "xor.b32", "inc.u32", "dec.u32",
            ] {
                add(format!(
                    "{op}{}{sp}.{f}",
                    if sp.is_empty() { "" } else { "." }
                ));
            }
        }
        for f in ["cas.b32", "cas.b64", "exch.b32", "exch.b64"] {
            add(format!(
                "atom{}{sp}.{f}",
                if sp.is_empty() { "" } else { "." }
            ));
        }
    }
    // wmma m16n16k16 with f32 accumulation
    for lay in ["row", "col"] {
        for sp in ["", ".global", ".shared"] {
            for fr in ["a", "b"] {
                for t in ["bf16", "f16"] {
                    add(format!(
                        "wmma.load.{fr}.sync.aligned.{lay}.m16n16k16{sp}.{t}"
                    ));
                }
            }
            add(format!("wmma.load.c.sync.aligned.{lay}.m16n16k16{sp}.f32"));
            add(format!("wmma.store.d.sync.aligned.{lay}.m16n16k16{sp}.f32"));
        }
        for lb in ["row", "col"] {
            add(format!(
                "wmma.mma.sync.aligned.{lay}.{lb}.m16n16k16.f32.bf16.bf16.f32"
            ));
            add(format!(
                "wmma.mma.sync.aligned.{lay}.{lb}.m16n16k16.f32.f32"
            ));
        }
    }
    // control and synchronisation
    for x in [
        "bra",
        "bra.uni",
        "ret",
        "exit",
        "bar.sync",
        "barrier.sync",
        "barrier.sync.aligned",
        "bar.warp.sync",
        "membar.cta",
        "membar.gl",
        "membar.sys",
        "fence.sc.cta",
        "fence.acq_rel.cta",
        "fence.sc.gpu",
        "fence.acq_rel.gpu",
        "fence.sc.sys",
        "fence.acq_rel.sys",
        "shfl.sync.up.b32",
        "shfl.sync.down.b32",
        "shfl.sync.bfly.b32",
        "shfl.sync.idx.b32",
        "vote.sync.all.pred",
        "vote.sync.any.pred",
        "vote.sync.uni.pred",
        "vote.sync.ballot.b32",
        "redux.sync.add.u32",
        "redux.sync.add.s32",
        "redux.sync.min.u32",
        "redux.sync.min.s32",
        "redux.sync.max.u32",
        "redux.sync.max.s32",
        "redux.sync.and.b32",
        "redux.sync.or.b32",
        "redux.sync.xor.b32",
        "cp.async.ca.shared.global",
        "cp.async.cg.shared.global",
        "cp.async.commit_group",
        "cp.async.wait_group",
        "cp.async.wait_all",
        "ldmatrix.sync.aligned.m8n8.x1.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x2.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
    ] {
        add(x.into());
    }
    s
}

pub(crate) fn allowlist() -> &'static BTreeSet<String> {
    static SET: OnceLock<BTreeSet<String>> = OnceLock::new();
    SET.get_or_init(build)
}

/// Every opcode form (opcode with all modifiers, e.g. `fma.rn.f32`, `ld.global.nc.v4.f32`) that the
/// interpreter accepts. Anything else is rejected when the module is parsed.
pub fn supported_opcode_forms() -> BTreeSet<String> {
    allowlist().clone()
}

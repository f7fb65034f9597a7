//! Decoded, typed instruction representation. Everything here is resolved at parse time:
//! registers are dense indices, labels are instruction indices, symbols are offsets.

/// Scalar value types as far as execution cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    Bf16,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub(crate) fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "bf16" => Ty::Bf16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }
    pub(crate) fn bytes(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
            Ty::Pred => 1,
        }
    }
    pub(crate) fn bits(self) -> u32 {
        self.bytes() * 8
    }
    pub(crate) fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    pub(crate) fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::Bf16 | Ty::F32 | Ty::F64)
    }
}

/// A source operand.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Src {
    Reg(u32),
    Imm(u64),
    Special(Special),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    DynSmemSize,
    TotalSmemSize,
    LanemaskEq,
    LanemaskLt,
    LanemaskLe,
    LanemaskGt,
    LanemaskGe,
}

/// Memory state spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Space {
    Generic,
    Global,
    Shared,
    Local,
    Param,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Base {
    Reg(u32),
    /// Absolute address (immediate or a resolved symbol address in its window).
    Abs(u64),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Addr {
    pub base: Base,
    pub off: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FRnd {
    Rn,
    Rz,
    Rm,
    Rp,
}

/// Per-lane ALU operations with their types folded in. (`sat`/`approx` are kept for the
/// record; approximate results are flagged on the instruction.)
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum AluOp {
    Mov(u32),
    IAdd(u32),
    ISub(u32),
    IMulLo(u32),
    IMulHi(u32, bool),
    IMulWide(u32, bool),
    IMadLo(u32),
    IMadHi(u32, bool),
    IMadWide(u32, bool),
    INeg(u32),
    IAbs(u32),
    IMin(u32, bool),
    IMax(u32, bool),
    IDiv(u32, bool),
    IRem(u32, bool),
    And(u32),
    Or(u32),
    Xor(u32),
    Not(u32),
    CNot(u32),
    Shl(u32),
    Shr(u32, bool),
    Popc(u32),
    Clz(u32),
    Brev(u32),
    Bfe(u32, bool),
    Prmt,
    Selp(u32),
    /// slct.dtype.s32 / slct.dtype.f32: d = (c >= 0) ? a : b
    Slct {
        bits: u32,
        cf32: bool,
        ftz: bool,
    },
    FAdd {
        f64: bool,
        ftz: bool,
        sat: bool,
    },
    FSub {
        f64: bool,
        ftz: bool,
        sat: bool,
    },
    FMul {
        f64: bool,
        ftz: bool,
        sat: bool,
    },
    FFma {
        f64: bool,
        ftz: bool,
        sat: bool,
    },
    FDiv {
        f64: bool,
        ftz: bool,
        approx: bool,
    },
    /// add/sub/mul/fma (op 0..3) with directed rounding .rz/.rm/.rp
    FDirected {
        op: u8,
        f64: bool,
        ftz: bool,
        rnd: FRnd,
    },
    /// copysign: |b| with the sign of a
    CopySign {
        f64: bool,
    },
    FNeg {
        f64: bool,
        ftz: bool,
    },
    FAbs {
        f64: bool,
        ftz: bool,
    },
    FMin {
        f64: bool,
        ftz: bool,
    },
    FMax {
        f64: bool,
        ftz: bool,
    },
    FSqrt {
        f64: bool,
        ftz: bool,
        approx: bool,
    },
    FRcp {
        f64: bool,
        ftz: bool,
        approx: bool,
    },
    FRsqrt {
        ftz: bool,
    },
    FEx2 {
        ftz: bool,
    },
    FLg2 {
        ftz: bool,
    },
    FSin {
        ftz: bool,
    },
    FCos {
        ftz: bool,
    },
    FTanh,
    Cvt(Cvt),
    /// cvt.rn.{bf16x2,f16x2}.f32 d, a, b: d[31:16] = cvt(a), d[15:0] = cvt(b)
    CvtPack {
        bf16: bool,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Cvt {
    pub dst: Ty,
    pub src: Ty,
    pub rnd: Option<FRnd>,
    /// integer rounding (rni/rzi/rmi/rpi) for float->int or float->float-integral
    pub irnd: Option<FRnd>,
    pub ftz: bool,
    pub sat: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BoolOp {
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AtomOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
    Exch,
    Cas,
    Inc,
    Dec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReduxOp {
    Add,
    Min(bool),
    Max(bool),
    And,
    Or,
    Xor,
}

/// Memory-ordering / caching qualifiers that matter to the checkers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemQual {
    /// `.nc`: read-only non-coherent path; the data must not be written during the launch.
    pub nc: bool,
    /// `.cg`, `.cv`, `.volatile`, `.relaxed`, `.acquire`, `.release`: coherent at L2; exempt from
    /// the cross-CTA global race check.
    pub strong: bool,
}

#[allow(dead_code)]
#[derive(Clone, Debug)]
pub(crate) enum Inst {
    Alu {
        op: AluOp,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    /// setp: p = (a cmp b) [boolop c]; q = !(a cmp b) [boolop c]
    Setp {
        cmp: Cmp,
        ty: Ty,
        ftz: bool,
        p: u32,
        q: Option<u32>,
        a: Src,
        b: Src,
        bop: Option<(BoolOp, Src, bool)>,
    },
    /// and/or/xor/not on predicates (stored as 0/1)
    PredOp {
        op: u8,
        d: u32,
        a: Src,
        b: Src,
    },
    /// mov.b64 d, {a, b} / mov.b32 d, {h0, h1}: pack parts little-endian
    Pack {
        part_bits: u32,
        d: u32,
        parts: Vec<Src>,
    },
    /// mov.b64 {a, b}, s
    Unpack {
        part_bits: u32,
        ds: Vec<Option<u32>>,
        a: Src,
    },
    Cvta {
        to_generic: bool,
        space: Space,
        d: u32,
        a: Src,
        wide: bool,
    },
    Ld {
        space: Space,
        ty: Ty,
        ds: Vec<u32>,
        addr: Addr,
        qual: MemQual,
    },
    St {
        space: Space,
        ty: Ty,
        srcs: Vec<Src>,
        addr: Addr,
        qual: MemQual,
    },
    Atom {
        space: Space,
        op: AtomOp,
        ty: Ty,
        d: Option<u32>,
        addr: Addr,
        b: Src,
        c: Src,
    },
    Bra {
        target: u32,
        uni: bool,
    },
    Exit,
    Bar {
        id: Src,
        count: Option<Src>,
    },
    WarpSync {
        mask: Src,
    },
    Fence,
    Shfl {
        mode: ShflMode,
        d: u32,
        p: Option<u32>,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    Vote {
        mode: VoteMode,
        d: u32,
        a: Src,
        neg: bool,
        mask: Src,
    },
    Redux {
        op: ReduxOp,
        d: u32,
        a: Src,
        mask: Src,
    },
    /// bfi.b32/b64 d, a (insert), b (base), c (pos), e (len)
    Bfi {
        w: u32,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        e: Src,
    },
    /// cp.async.{ca,cg}.shared.global [dst], [src], size{, src_size}
    CpAsync {
        dst: Addr,
        src: Addr,
        size: u32,
        src_size: Option<Src>,
    },
    CpCommit,
    /// wait until at most `n` committed groups of this thread are pending (`wait_all`: commit + 0)
    CpWait {
        n: u32,
        all: bool,
    },
    /// ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16
    Ldmatrix {
        trans: bool,
        ds: Vec<u32>,
        addr: Addr,
    },
    /// wmma.load.{a,b,c}.sync.aligned.{row,col}.m16n16k16{.space}.{bf16,f16,f32}
    /// (fragment layout of this interpreter: lane l holds logical elements 8l..8l+7, row-major;
    /// f16 a/b fragments repeat them in registers 4..7)
    WmmaLoad {
        frag: u8,
        col: bool,
        space: Space,
        ety: Ty,
        ds: Vec<u32>,
        addr: Addr,
        ld: Option<Src>,
    },
    /// wmma.store.d.sync.aligned.{row,col}.m16n16k16{.space}.f32
    WmmaStore {
        col: bool,
        space: Space,
        srcs: Vec<Src>,
        addr: Addr,
        ld: Option<Src>,
    },
    /// wmma.mma.sync.aligned.{row,col}.{row,col}.m16n16k16.f32.{bf16.bf16.,}f32
    WmmaMma {
        bf16: bool,
        acol: bool,
        bcol: bool,
        d: Vec<u32>,
        a: Vec<Src>,
        b: Vec<Src>,
        c: Vec<Src>,
    },
    /// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
    Mma {
        bf16: bool,
        d: [u32; 4],
        a: [Src; 4],
        b: [Src; 2],
        c: [Src; 4],
    },
}

/// Source location from `.loc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: u32,
    pub line: u32,
    /// outermost `inlined_at` location, when the line is inside an inlined function
    pub inlined_at: Option<(u32, u32)>,
}

#[derive(Clone, Debug)]
pub(crate) struct Instr {
    pub inst: Inst,
    pub guard: Option<(u32, bool)>,
    pub line: u32,
    pub text: String,
    pub loc: Option<Loc>,
    pub form: u32,
    pub class: OpClass,
    /// result is computed by an approximate instruction (`.approx`, `div.full`)
    pub approx: bool,
}

/// Coarse opcode class for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpClass {
    IntAlu,
    FloatAlu,
    Fp64,
    Transcendental,
    Convert,
    Move,
    Predicate,
    LoadGlobal,
    StoreGlobal,
    LoadShared,
    StoreShared,
    LoadLocal,
    StoreLocal,
    LoadParam,
    Atomic,
    Control,
    Barrier,
    WarpCollective,
    Fence,
    AsyncCopy,
    TensorCore,
}

#[derive(Clone, Debug)]
pub(crate) struct ParamDecl {
    pub name: String,
    pub ty: Ty,
    pub offset: u32,
    pub size: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct SharedSym {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    pub name: String,
    pub params: Vec<ParamDecl>,
    pub param_bytes: u32,
    pub insts: Vec<Instr>,
    pub nregs: u32,
    /// static shared symbols (window offsets), redzones between them
    pub shared: Vec<SharedSym>,
    pub static_shared_end: u32,
    /// window offset where dynamic (extern) shared memory starts
    pub dyn_shared_offset: u32,
    pub has_dyn_shared: bool,
    pub local_bytes: u32,
    /// PTX lines of plain `add/sub.f32` fed by a plain `mul.f32` (ptxas may fuse them into FFMA)
    pub contractible: Vec<u32>,
    /// reads `%warpid`/`%nwarpid` (volatile on hardware)
    pub reads_warpid: bool,
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
}

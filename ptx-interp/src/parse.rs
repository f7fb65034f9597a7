//! PTX text -> decoded [`Kernel`]s. One pass over a token stream; every instruction is decoded to a
//! typed [`Inst`] right away (registers resolved in their lexical scope), labels patched at the end.

use std::collections::{BTreeSet, HashMap};

use crate::allow::allowlist;
use crate::error::ParseError;
use crate::ir::*;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Id(String),
    Num(String),
    Str(String),
    P(char),
}

#[derive(Clone, Debug)]
struct T {
    t: Tok,
    line: u32,
}

fn lex(src: &str) -> Result<Vec<T>, ParseError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut line = 1u32;
    let mut out = Vec::new();
    let is_id =
        |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'%' || c == b'.';
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
        } else if c == b'"' {
            let s = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            out.push(T {
                t: Tok::Str(src[s..i.min(b.len())].to_string()),
                line,
            });
            i += 1;
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push(T {
                t: Tok::Num(src[s..i].to_string()),
                line,
            });
        } else if is_id(c) {
            let s = i;
            // `::` belongs to qualifiers such as `.L2::128B` / `.L1::no_allocate`
            while i < b.len()
                && (is_id(b[i])
                    || (b[i] == b':' && i + 2 < b.len() && b[i + 1] == b':' && is_id(b[i + 2])))
            {
                i += if b[i] == b':' { 2 } else { 1 };
            }
            out.push(T {
                t: Tok::Id(src[s..i].to_string()),
                line,
            });
        } else {
            out.push(T {
                t: Tok::P(c as char),
                line,
            });
            i += 1;
        }
    }
    Ok(out)
}

/// Operand syntax before decoding.
#[derive(Clone, Debug)]
enum Opnd {
    Name(String),
    Num(String, bool),
    Not(String),
    Pair(String, String),
    Vec(Vec<Opnd>),
    Addr(Option<String>, i64),
}

pub(crate) struct ParsedModule {
    pub kernels: Vec<Kernel>,
    pub files: HashMap<u32, String>,
    pub forms: Vec<String>,
}

struct RegInfo {
    idx: u32,
}

struct P<'a> {
    toks: Vec<T>,
    pos: usize,
    lines: Vec<&'a str>,
    files: HashMap<u32, String>,
    forms: Vec<String>,
    form_idx: HashMap<String, u32>,
    module_shared: Vec<(String, u32, u32, bool)>, // name, align, size, extern
}

fn err(line: u32, lines: &[&str], reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        text: lines
            .get(line.saturating_sub(1) as usize)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        reason: reason.into(),
    }
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.t)
    }
    fn line(&self) -> u32 {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map(|t| t.line)
            .unwrap_or(0)
    }
    fn next(&mut self) -> Result<Tok, ParseError> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| self.err("unexpected end of input"))?;
        self.pos += 1;
        Ok(t.t)
    }
    fn err(&self, r: impl Into<String>) -> ParseError {
        err(self.line(), &self.lines, r)
    }
    fn expect_p(&mut self, c: char) -> Result<(), ParseError> {
        match self.next()? {
            Tok::P(x) if x == c => Ok(()),
            t => {
                self.pos -= 1;
                Err(self.err(format!("expected `{c}`, found {t:?}")))
            }
        }
    }
    fn expect_id(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Tok::Id(s) => Ok(s),
            t => {
                self.pos -= 1;
                Err(self.err(format!("expected identifier, found {t:?}")))
            }
        }
    }
    fn expect_num(&mut self) -> Result<u64, ParseError> {
        match self.next()? {
            Tok::Num(s) => parse_int(&s)
                .map(|v| v as u64)
                .ok_or_else(|| self.err(format!("bad number {s}"))),
            t => {
                self.pos -= 1;
                Err(self.err(format!("expected number, found {t:?}")))
            }
        }
    }
    fn skip_line(&mut self, line: u32) {
        while self.pos < self.toks.len() && self.toks[self.pos].line == line {
            self.pos += 1;
        }
    }
    fn skip_past(&mut self, c: char) -> Result<(), ParseError> {
        loop {
            if let Tok::P(x) = self.next()? {
                if x == c {
                    return Ok(());
                }
            }
        }
    }
}

pub(crate) fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim_end_matches(['U', 'u']);
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok().map(|v| v as i64)
    } else if s.len() > 1 && s.starts_with('0') && s.bytes().all(|c| c.is_ascii_digit()) {
        u64::from_str_radix(&s[1..], 8).ok().map(|v| v as i64)
    } else {
        s.parse::<i64>()
            .ok()
            .or_else(|| s.parse::<u64>().ok().map(|v| v as i64))
    }
}

/// The PTX ISA versions the interpreter accepts: what nvcc 13 (9.x) and NVRTC / ptxas 12
/// (8.x) emit for the kernels. Both define the same semantics for every instruction form of
/// the allowlist; a version outside the range is rejected rather than assumed compatible.
pub(crate) const ISA_VERSIONS: std::ops::RangeInclusive<(u32, u32)> = (7, 0)..=(9, 99);

/// Checks a `.version M.m` line against [`ISA_VERSIONS`].
fn check_isa_version(line: &str) -> Result<(), String> {
    let v = line.trim().strip_prefix(".version").unwrap_or("").trim();
    let parsed = v.split_once('.').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
    match parsed {
        Some(ver) if ISA_VERSIONS.contains(&ver) => Ok(()),
        Some((a, b)) => Err(format!("PTX ISA {a}.{b} is outside the versions the interpreter accepts (7.0 to 9.x)")),
        None => Err(format!("cannot read the PTX ISA version `{v}`")),
    }
}

/// Parses a PTX module.
pub(crate) fn parse_module(src: &str) -> Result<ParsedModule, ParseError> {
    let toks = lex(src)?;
    let mut p = P {
        toks,
        pos: 0,
        lines: src.lines().collect(),
        files: HashMap::new(),
        forms: Vec::new(),
        form_idx: HashMap::new(),
        module_shared: Vec::new(),
    };
    let mut kernels = Vec::new();
    while p.pos < p.toks.len() {
        let line = p.line();
        match p.next()? {
            Tok::Id(d) => match d.as_str() {
                ".version" => {
                    let text = p.lines.get(line.saturating_sub(1) as usize).copied().unwrap_or("");
                    check_isa_version(text).map_err(|r| err(line, &p.lines, r))?;
                    p.skip_line(line);
                }
                ".target" => p.skip_line(line),
                // A module-scope `.global` variable: NVRTC 12 emits the `static constexpr` members
                // of C++ traits (`gg_same_type<..>::value`) as initialised `.global .u8`s that no
                // instruction references. They are accepted and dropped; an instruction naming one
                // fails with "unknown operand" / "unknown address base" (global variables are not
                // modelled).
                ".global" => p.skip_past(';')?,
                ".address_size" => {
                    let n = p.expect_num()?;
                    if n != 64 {
                        return Err(err(line, &p.lines, "only .address_size 64 is supported"));
                    }
                }
                ".file" => {
                    let n = p.expect_num()? as u32;
                    if let Some(Tok::Str(s)) = p.peek().cloned() {
                        p.pos += 1;
                        p.files.insert(n, s);
                    }
                    p.skip_line(line);
                }
                ".loc" => p.skip_line(line),
                ".section" => {
                    p.skip_past('{')?;
                    p.skip_past('}')?;
                }
                ".visible" | ".weak" | ".extern" => {
                    let is_extern = d == ".extern";
                    match p.peek() {
                        Some(Tok::Id(x)) if x == ".shared" => {
                            p.pos += 1;
                            let (name, align, size) = parse_var_decl(&mut p)?;
                            p.module_shared.push((name, align, size, is_extern));
                        }
                        _ => {}
                    }
                }
                ".entry" => kernels.push(parse_entry(&mut p)?),
                ".shared" => {
                    let (name, align, size) = parse_var_decl(&mut p)?;
                    p.module_shared.push((name, align, size, false));
                }
                ".func" => {
                    return Err(err(
                        line,
                        &p.lines,
                        "`.func` (device function calls) is not supported",
                    ))
                }
                other => {
                    return Err(err(
                        line,
                        &p.lines,
                        format!("unsupported module-level directive `{other}`"),
                    ));
                }
            },
            Tok::P(';') => {}
            t => {
                return Err(err(
                    line,
                    &p.lines,
                    format!("unexpected token {t:?} at module level"),
                ))
            }
        }
    }
    Ok(ParsedModule {
        kernels,
        files: p.files,
        forms: p.forms,
    })
}

/// `.shared .align 4 .b8 name[1088];` after the state space; returns (name, align, bytes). `name[]` has size 0.
fn parse_var_decl(p: &mut P) -> Result<(String, u32, u32), ParseError> {
    let mut align = 0u32;
    let mut elem = 1u32;
    loop {
        let id = p.expect_id()?;
        if id == ".align" {
            align = p.expect_num()? as u32;
        } else if let Some(t) = id.strip_prefix('.').and_then(Ty::parse) {
            elem = t.bytes();
        } else if id.starts_with('.') {
            return Err(p.err(format!("unsupported variable qualifier `{id}`")));
        } else {
            let mut n = 1u32;
            while let Some(Tok::P('[')) = p.peek() {
                p.pos += 1;
                if let Some(Tok::P(']')) = p.peek() {
                    p.pos += 1;
                    n = 0;
                    continue;
                }
                n *= p.expect_num()? as u32;
                p.expect_p(']')?;
            }
            if let Some(Tok::P('=')) = p.peek() {
                return Err(p.err("initialised variables are not supported"));
            }
            p.expect_p(';')?;
            if align == 0 {
                align = elem;
            }
            return Ok((id, align, n * elem));
        }
    }
}

struct KCtx {
    scopes: Vec<HashMap<String, RegInfo>>,
    nregs: u32,
    params: HashMap<String, (u32, Ty)>,
    shared: HashMap<String, u32>,
    local: HashMap<String, u32>,
    labels: HashMap<String, u32>,
    fixups: Vec<(usize, String, u32)>,
}

impl KCtx {
    fn reg(&self, name: &str) -> Option<u32> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(name))
            .map(|r| r.idx)
    }
}

fn parse_entry(p: &mut P) -> Result<Kernel, ParseError> {
    let name = p.expect_id()?;
    p.expect_p('(')?;
    let mut params = Vec::new();
    let mut off = 0u32;
    if let Some(Tok::P(')')) = p.peek() {
        p.pos += 1;
    } else {
        loop {
            let d = p.expect_id()?;
            if d != ".param" {
                return Err(p.err("expected .param"));
            }
            let mut align = 0;
            let mut ty = None;
            let pname;
            loop {
                let id = p.expect_id()?;
                if id == ".align" {
                    align = p.expect_num()? as u32;
                } else if let Some(t) = id.strip_prefix('.').and_then(Ty::parse) {
                    ty = Some(t);
                } else if id.starts_with('.') {
                    return Err(p.err(format!("unsupported parameter qualifier `{id}`")));
                } else {
                    pname = id;
                    break;
                }
            }
            let ty = ty.ok_or_else(|| p.err("parameter without type"))?;
            let mut size = ty.bytes();
            if let Some(Tok::P('[')) = p.peek() {
                p.pos += 1;
                size *= p.expect_num()? as u32;
                p.expect_p(']')?;
            }
            let al = if align == 0 { ty.bytes() } else { align };
            off = off.div_ceil(al) * al;
            params.push(ParamDecl {
                name: pname,
                ty,
                offset: off,
                size,
            });
            off += size;
            match p.next()? {
                Tok::P(',') => continue,
                Tok::P(')') => break,
                t => return Err(p.err(format!("unexpected {t:?} in parameter list"))),
            }
        }
    }
    let mut maxntid = None;
    let mut reqntid = None;
    loop {
        match p.next()? {
            Tok::P('{') => break,
            Tok::Id(d) if d == ".maxntid" || d == ".reqntid" => {
                let mut v = [1u32; 3];
                for (i, slot) in v.iter_mut().enumerate() {
                    if i > 0 {
                        if let Some(Tok::P(',')) = p.peek() {
                            p.pos += 1;
                        } else {
                            break;
                        }
                    }
                    *slot = p.expect_num()? as u32;
                }
                if d == ".maxntid" {
                    maxntid = Some(v);
                } else {
                    reqntid = Some(v);
                }
            }
            Tok::Id(_) | Tok::Num(_) | Tok::P(',') => {}
            t => return Err(p.err(format!("unexpected {t:?} before kernel body"))),
        }
    }
    let mut k = KCtx {
        scopes: vec![HashMap::new()],
        nregs: 0,
        params: params
            .iter()
            .map(|q| (q.name.clone(), (q.offset, q.ty)))
            .collect(),
        shared: HashMap::new(),
        local: HashMap::new(),
        labels: HashMap::new(),
        fixups: Vec::new(),
    };
    // shared layout: 128-B aligned symbols, 128-B redzones between them
    let mut shared_syms: Vec<SharedSym> = Vec::new();
    let mut shared_end = 0u32;
    let mut dyn_align = 16u32;
    let mut has_dyn = false;
    let place_shared =
        |name: &str, size: u32, syms: &mut Vec<SharedSym>, end: &mut u32, k: &mut KCtx| {
            let base = if syms.is_empty() {
                0
            } else {
                (*end + 128).div_ceil(128) * 128
            };
            syms.push(SharedSym {
                name: name.to_string(),
                offset: base,
                size,
            });
            k.shared.insert(name.to_string(), base);
            *end = base + size;
        };
    let module_shared = p.module_shared.clone();
    let mut dyn_names = Vec::new();
    for (n, al, size, ext) in &module_shared {
        if *ext && *size == 0 {
            dyn_align = dyn_align.max(*al);
            has_dyn = true;
            dyn_names.push(n.clone());
            k.shared.insert(n.clone(), u32::MAX);
        } else {
            place_shared(n, *size, &mut shared_syms, &mut shared_end, &mut k);
        }
    }
    let mut local_bytes = 0u32;
    let mut insts: Vec<Instr> = Vec::new();
    let mut cur_loc: Option<Loc> = None;
    let mut loc_outer: HashMap<(u32, u32, u32), Option<(u32, u32)>> = HashMap::new();
    let mut depth = 1;
    loop {
        let line = p.line();
        let tok = p.next()?;
        match tok {
            Tok::P('{') => {
                depth += 1;
                k.scopes.push(HashMap::new());
            }
            Tok::P('}') => {
                depth -= 1;
                k.scopes.pop();
                if depth == 0 {
                    break;
                }
            }
            Tok::P(';') => {}
            Tok::Id(d) if d == ".loc" => {
                let f = p.expect_num()? as u32;
                let l = p.expect_num()? as u32;
                let c = p.expect_num()? as u32;
                let mut inl = None;
                while p.pos < p.toks.len() && p.toks[p.pos].line == line {
                    if let Tok::Id(x) = &p.toks[p.pos].t {
                        if x == "inlined_at" {
                            p.pos += 1;
                            let f2 = p.expect_num()? as u32;
                            let l2 = p.expect_num()? as u32;
                            let c2 = p.expect_num()? as u32;
                            let outer = loc_outer
                                .get(&(f2, l2, c2))
                                .copied()
                                .flatten()
                                .unwrap_or((f2, l2));
                            inl = Some(outer);
                            continue;
                        }
                    }
                    p.pos += 1;
                }
                loc_outer.insert((f, l, c), inl);
                cur_loc = if l == 0 {
                    None
                } else {
                    Some(Loc {
                        file: f,
                        line: l,
                        inlined_at: inl,
                    })
                };
            }
            Tok::Id(d) if d == ".pragma" => {
                p.skip_past(';')?;
            }
            Tok::Id(d) if d == ".reg" => {
                let mut ty = None;
                loop {
                    match p.next()? {
                        Tok::Id(x) if x.starts_with('.') && !x.starts_with("..") => {
                            if x == ".v2" || x == ".v4" {
                                return Err(err(
                                    line,
                                    &p.lines,
                                    "vector registers are not supported",
                                ));
                            }
                            ty = Some(x);
                        }
                        Tok::Id(n) => {
                            if let Some(Tok::P('<')) = p.peek() {
                                p.pos += 1;
                                let cnt = p.expect_num()? as u32;
                                p.expect_p('>')?;
                                for i in 0..cnt {
                                    let idx = k.nregs;
                                    k.nregs += 1;
                                    k.scopes
                                        .last_mut()
                                        .unwrap()
                                        .insert(format!("{n}{i}"), RegInfo { idx });
                                }
                            } else {
                                let idx = k.nregs;
                                k.nregs += 1;
                                k.scopes.last_mut().unwrap().insert(n, RegInfo { idx });
                            }
                        }
                        Tok::P(',') => {}
                        Tok::P(';') => break,
                        t => {
                            return Err(err(
                                line,
                                &p.lines,
                                format!("bad .reg declaration near {t:?}"),
                            ))
                        }
                    }
                }
                if ty.is_none() {
                    return Err(err(line, &p.lines, ".reg without type"));
                }
            }
            Tok::Id(d) if d == ".shared" => {
                let (n, al, size) = parse_var_decl(p)?;
                if size == 0 {
                    has_dyn = true;
                    dyn_align = dyn_align.max(al);
                    k.shared.insert(n.clone(), u32::MAX);
                    dyn_names.push(n);
                } else {
                    let _ = al;
                    place_shared(&n, size, &mut shared_syms, &mut shared_end, &mut k);
                }
            }
            Tok::Id(d) if d == ".local" => {
                let (n, al, size) = parse_var_decl(p)?;
                let al = al.max(1);
                let base = local_bytes.div_ceil(al) * al;
                k.local.insert(n, base);
                local_bytes = base + size;
            }
            Tok::Id(d) if d.starts_with('.') => {
                return Err(err(
                    line,
                    &p.lines,
                    format!("unsupported directive `{d}` in kernel body"),
                ));
            }
            Tok::Id(lbl) if matches!(p.peek(), Some(Tok::P(':'))) => {
                p.pos += 1;
                k.labels.insert(lbl, insts.len() as u32);
            }
            Tok::P('@') | Tok::Id(_) => {
                let mut guard = None;
                let opcode = if tok == Tok::P('@') {
                    let neg = if let Some(Tok::P('!')) = p.peek() {
                        p.pos += 1;
                        true
                    } else {
                        false
                    };
                    let g = p.expect_id()?;
                    let r = k.reg(&g).ok_or_else(|| {
                        err(line, &p.lines, format!("unknown guard register {g}"))
                    })?;
                    guard = Some((r, neg));
                    p.expect_id()?
                } else if let Tok::Id(s) = tok {
                    s
                } else {
                    unreachable!()
                };
                let ops = parse_operands(p)?;
                let lines = p.lines.clone();
                let text = lines
                    .get(line as usize - 1)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                if !allowlist().contains(&opcode) {
                    return Err(err(
                        line,
                        &lines,
                        format!(
                            "unsupported opcode form `{opcode}` (not in the ptx-interp allowlist)"
                        ),
                    ));
                }
                let form = match p.form_idx.get(&opcode) {
                    Some(&f) => f,
                    None => {
                        let f = p.forms.len() as u32;
                        p.forms.push(opcode.clone());
                        p.form_idx.insert(opcode.clone(), f);
                        f
                    }
                };
                let mut dec = Dec {
                    k: &mut k,
                    line,
                    lines: &lines,
                    pc: insts.len(),
                };
                let (inst, class, approx) = dec.decode(&opcode, &ops)?;
                insts.push(Instr {
                    inst,
                    guard,
                    line,
                    text,
                    loc: cur_loc,
                    form,
                    class,
                    approx,
                });
            }
            t => {
                return Err(err(
                    line,
                    &p.lines,
                    format!("unexpected token {t:?} in kernel body"),
                ))
            }
        }
    }
    // dynamic shared memory sits after the static symbols (with a redzone)
    let dyn_off = if shared_syms.is_empty() {
        0
    } else {
        (shared_end + 128).div_ceil(dyn_align.max(128)) * dyn_align.max(128)
    };
    for inst in insts.iter_mut() {
        patch_dyn(&mut inst.inst, dyn_off);
    }
    for (pc, lbl, line) in std::mem::take(&mut k.fixups) {
        let t = *k
            .labels
            .get(&lbl)
            .ok_or_else(|| err(line, &p.lines, format!("unknown label {lbl}")))?;
        if let Inst::Bra { target, .. } = &mut insts[pc].inst {
            *target = t;
        }
    }
    // contraction lint: plain mul.f32 results consumed by plain add/sub.f32
    let plain = |i: &Instr| -> Option<&'static str> {
        let f = p.forms[i.form as usize].as_str();
        match f {
            "mul.f32" | "mul.ftz.f32" => Some("mul"),
            "add.f32" | "add.ftz.f32" | "sub.f32" | "sub.ftz.f32" => Some("add"),
            _ => None,
        }
    };
    let mut mul_dsts = std::collections::HashSet::new();
    for i in &insts {
        if let (Some("mul"), Inst::Alu { d, .. }) = (plain(i), &i.inst) {
            mul_dsts.insert(*d);
        }
    }
    let mut contractible = Vec::new();
    for i in &insts {
        if let (Some("add"), Inst::Alu { a, b, .. }) = (plain(i), &i.inst) {
            let fed = |s: &Src| matches!(s, Src::Reg(r) if mul_dsts.contains(r));
            if fed(a) || fed(b) {
                contractible.push(i.line);
            }
        }
    }
    let reads_warpid = insts.iter().any(|i| {
        matches!(
            &i.inst,
            Inst::Alu {
                a: Src::Special(Special::WarpId | Special::NWarpId),
                ..
            }
        )
    });
    Ok(Kernel {
        contractible,
        reads_warpid,
        name,
        params,
        param_bytes: off,
        insts,
        nregs: k.nregs.max(1),
        shared: shared_syms,
        static_shared_end: shared_end,
        dyn_shared_offset: dyn_off,
        has_dyn_shared: has_dyn,
        local_bytes,
        maxntid,
        reqntid,
    })
}

const DYN_MARK: u64 = 0xD1D1_0000_0000_0000;

fn patch_dyn(i: &mut Inst, dyn_off: u32) {
    let fix = |s: &mut Src| {
        if let Src::Imm(v) = s {
            if *v & 0xFFFF_0000_0000_0000 == DYN_MARK {
                *v = dyn_off as u64 + (*v & 0xFFFF_FFFF);
            }
        }
    };
    let fixa = |a: &mut Addr| {
        if let Base::Abs(v) = &mut a.base {
            if *v & 0xFFFF_0000_0000_0000 == DYN_MARK {
                *v = dyn_off as u64 + (*v & 0xFFFF_FFFF);
            }
        }
    };
    match i {
        Inst::Alu { a, b, c, .. } => {
            fix(a);
            fix(b);
            fix(c);
        }
        Inst::Cvta { a, .. } => fix(a),
        Inst::Ld { addr, .. }
        | Inst::St { addr, .. }
        | Inst::Atom { addr, .. }
        | Inst::Ldmatrix { addr, .. }
        | Inst::WmmaLoad { addr, .. }
        | Inst::WmmaStore { addr, .. } => fixa(addr),
        Inst::CpAsync { dst, .. } => fixa(dst),
        _ => {}
    }
}

fn parse_one_operand(p: &mut P) -> Result<Opnd, ParseError> {
    match p.next()? {
        Tok::P('[') => {
            let mut base = None;
            let mut off: i64 = 0;
            loop {
                match p.next()? {
                    Tok::P(']') => break,
                    Tok::Id(s) => base = Some(s),
                    Tok::Num(n) => {
                        off = parse_int(&n).ok_or_else(|| p.err(format!("bad offset {n}")))?;
                    }
                    Tok::P('+') => {
                        let neg = if let Some(Tok::P('-')) = p.peek() {
                            p.pos += 1;
                            true
                        } else {
                            false
                        };
                        match p.next()? {
                            Tok::Num(n) => {
                                let v = parse_int(&n)
                                    .ok_or_else(|| p.err(format!("bad offset {n}")))?;
                                off += if neg { -v } else { v };
                            }
                            t => return Err(p.err(format!("bad address offset {t:?}"))),
                        }
                    }
                    Tok::P('-') => match p.next()? {
                        Tok::Num(n) => {
                            let v =
                                parse_int(&n).ok_or_else(|| p.err(format!("bad offset {n}")))?;
                            off -= v;
                        }
                        t => return Err(p.err(format!("bad address offset {t:?}"))),
                    },
                    t => return Err(p.err(format!("unexpected {t:?} in address"))),
                }
            }
            Ok(Opnd::Addr(base, off))
        }
        Tok::P('{') => {
            let mut v = Vec::new();
            loop {
                if let Some(Tok::P('}')) = p.peek() {
                    p.pos += 1;
                    break;
                }
                v.push(parse_one_operand(p)?);
                match p.next()? {
                    Tok::P(',') => {}
                    Tok::P('}') => break,
                    t => return Err(p.err(format!("unexpected {t:?} in vector operand"))),
                }
            }
            Ok(Opnd::Vec(v))
        }
        Tok::P('!') => Ok(Opnd::Not(p.expect_id()?)),
        Tok::P('-') => match p.next()? {
            Tok::Num(n) => Ok(Opnd::Num(n, true)),
            t => Err(p.err(format!("unexpected {t:?} after `-`"))),
        },
        Tok::Num(n) => Ok(Opnd::Num(n, false)),
        Tok::Id(s) => {
            if let Some(Tok::P('|')) = p.peek() {
                p.pos += 1;
                let q = p.expect_id()?;
                Ok(Opnd::Pair(s, q))
            } else {
                Ok(Opnd::Name(s))
            }
        }
        t => Err(p.err(format!("unexpected operand token {t:?}"))),
    }
}

fn parse_operands(p: &mut P) -> Result<Vec<Opnd>, ParseError> {
    let mut ops = Vec::new();
    if let Some(Tok::P(';')) = p.peek() {
        p.pos += 1;
        return Ok(ops);
    }
    loop {
        ops.push(parse_one_operand(p)?);
        match p.next()? {
            Tok::P(',') => {}
            Tok::P(';') => return Ok(ops),
            t => return Err(p.err(format!("unexpected {t:?} after operand"))),
        }
    }
}

struct Dec<'a> {
    k: &'a mut KCtx,
    line: u32,
    lines: &'a [&'a str],
    pc: usize,
}

fn special(name: &str) -> Option<Special> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((a, b)) = name.split_once('.') {
        let d = dim(b)?;
        return Some(match a {
            "%tid" => Special::Tid(d),
            "%ntid" => Special::Ntid(d),
            "%ctaid" => Special::Ctaid(d),
            "%nctaid" => Special::Nctaid(d),
            _ => return None,
        });
    }
    Some(match name {
        "%laneid" => Special::LaneId,
        "%warpid" => Special::WarpId,
        "%nwarpid" => Special::NWarpId,
        "%dynamic_smem_size" => Special::DynSmemSize,
        "%total_smem_size" => Special::TotalSmemSize,
        "%lanemask_eq" => Special::LanemaskEq,
        "%lanemask_lt" => Special::LanemaskLt,
        "%lanemask_le" => Special::LanemaskLe,
        "%lanemask_gt" => Special::LanemaskGt,
        "%lanemask_ge" => Special::LanemaskGe,
        _ => return None,
    })
}

/// Parses an immediate for an instruction operating on `ty`.
fn imm_value(s: &str, neg: bool, ty: Ty) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    if let Some(h) = lower.strip_prefix("0f") {
        let v = u32::from_str_radix(h, 16).ok()?;
        let f = f32::from_bits(v);
        return Some(match ty {
            Ty::F64 => (if neg { -(f as f64) } else { f as f64 }).to_bits(),
            _ => (if neg { v ^ 0x8000_0000 } else { v }) as u64,
        });
    }
    if let Some(h) = lower.strip_prefix("0d") {
        let v = u64::from_str_radix(h, 16).ok()?;
        let f = f64::from_bits(v);
        return Some(match ty {
            Ty::F32 => (if neg { -(f as f32) } else { f as f32 }).to_bits() as u64,
            _ => {
                if neg {
                    v ^ (1 << 63)
                } else {
                    v
                }
            }
        });
    }
    if ty.is_float() {
        let f: f64 = s.parse().ok().or_else(|| parse_int(s).map(|v| v as f64))?;
        let f = if neg { -f } else { f };
        return Some(match ty {
            Ty::F64 => f.to_bits(),
            Ty::F32 => (f as f32).to_bits() as u64,
            _ => return None,
        });
    }
    let v = parse_int(s)?;
    Some(if neg {
        v.wrapping_neg() as u64
    } else {
        v as u64
    })
}

impl<'a> Dec<'a> {
    fn err(&self, r: impl Into<String>) -> ParseError {
        err(self.line, self.lines, r)
    }
    fn dst(&self, o: &Opnd) -> Result<u32, ParseError> {
        match o {
            Opnd::Name(n) => self
                .k
                .reg(n)
                .ok_or_else(|| self.err(format!("unknown register `{n}`"))),
            _ => Err(self.err(format!("expected a destination register, found {o:?}"))),
        }
    }
    fn src(&self, o: &Opnd, ty: Ty) -> Result<Src, ParseError> {
        match o {
            Opnd::Name(n) => {
                if let Some(r) = self.k.reg(n) {
                    return Ok(Src::Reg(r));
                }
                if let Some(s) = special(n) {
                    return Ok(Src::Special(s));
                }
                if let Some(&off) = self.k.shared.get(n) {
                    return Ok(Src::Imm(if off == u32::MAX {
                        DYN_MARK
                    } else {
                        off as u64
                    }));
                }
                if let Some(&off) = self.k.local.get(n) {
                    return Ok(Src::Imm(off as u64));
                }
                if n.starts_with('%')
                    && (n.starts_with("%clock")
                        || n.starts_with("%smid")
                        || n.starts_with("%globaltimer"))
                {
                    return Err(self.err(format!(
                        "nondeterministic special register `{n}` is not supported"
                    )));
                }
                Err(self.err(format!("unknown operand `{n}`")))
            }
            Opnd::Num(s, neg) => imm_value(s, *neg, ty)
                .map(Src::Imm)
                .ok_or_else(|| self.err(format!("bad immediate `{s}` for .{ty:?}"))),
            _ => Err(self.err(format!("unexpected operand {o:?}"))),
        }
    }
    fn addr(&self, o: &Opnd, space: Space) -> Result<Addr, ParseError> {
        let Opnd::Addr(base, off) = o else {
            return Err(self.err("expected an address operand [..]"));
        };
        let base = match base {
            None => Base::Abs(0),
            Some(n) => {
                if let Some(r) = self.k.reg(n) {
                    Base::Reg(r)
                } else if let Some(&(o2, _)) = self.k.params.get(n) {
                    if space != Space::Param {
                        return Err(self.err("kernel parameters can only be read with ld.param"));
                    }
                    Base::Abs(o2 as u64)
                } else if let Some(&o2) = self.k.shared.get(n) {
                    if space != Space::Shared {
                        return Err(self.err(
                            "shared symbols must be accessed with .shared (or through cvta)",
                        ));
                    }
                    Base::Abs(if o2 == u32::MAX { DYN_MARK } else { o2 as u64 })
                } else if let Some(&o2) = self.k.local.get(n) {
                    if space != Space::Local {
                        return Err(self.err("local symbols must be accessed with .local"));
                    }
                    Base::Abs(o2 as u64)
                } else {
                    return Err(self.err(format!("unknown address base `{n}`")));
                }
            }
        };
        if let (Space::Param, Base::Reg(_)) = (space, base) {
            return Err(self.err("ld.param through a register address is not supported"));
        }
        Ok(Addr { base, off: *off })
    }
    fn n(&self, ops: &[Opnd], n: usize) -> Result<(), ParseError> {
        if ops.len() != n {
            return Err(self.err(format!("expected {n} operands, found {}", ops.len())));
        }
        Ok(())
    }

    fn decode(&mut self, opcode: &str, ops: &[Opnd]) -> Result<(Inst, OpClass, bool), ParseError> {
        let parts: Vec<&str> = opcode.split('.').collect();
        let base = parts[0];
        let mods: Vec<&str> = parts[1..].to_vec();
        let has = |m: &str| mods.contains(&m);
        let last_ty = mods.last().and_then(|t| Ty::parse(t));
        let ftz = has("ftz");
        let approx = has("approx") || has("full");
        let z = Src::Imm(0);
        let alu3 = |s: &Self,
                    op: AluOp,
                    ty: Ty,
                    n: usize,
                    class: OpClass|
         -> Result<(Inst, OpClass, bool), ParseError> {
            s.n(ops, n + 1)?;
            let d = s.dst(&ops[0])?;
            let a = if n > 0 { s.src(&ops[1], ty)? } else { z };
            let b = if n > 1 { s.src(&ops[2], ty)? } else { z };
            let c = if n > 2 { s.src(&ops[3], ty)? } else { z };
            Ok((Inst::Alu { op, d, a, b, c }, class, approx))
        };
        let ty = last_ty.unwrap_or(Ty::B32);
        let w = ty.bits();
        let sg = ty.signed();
        let f64_ = ty == Ty::F64;
        let fclass = if f64_ {
            OpClass::Fp64
        } else {
            OpClass::FloatAlu
        };
        match base {
            "add" | "sub" | "mul" | "fma"
                if ty.is_float() && (has("rz") || has("rm") || has("rp")) =>
            {
                let rnd = if has("rz") {
                    FRnd::Rz
                } else if has("rm") {
                    FRnd::Rm
                } else {
                    FRnd::Rp
                };
                let op = match base {
                    "add" => 0,
                    "sub" => 1,
                    "mul" => 2,
                    _ => 3,
                };
                let n = if base == "fma" { 3 } else { 2 };
                alu3(
                    self,
                    AluOp::FDirected {
                        op,
                        f64: f64_,
                        ftz,
                        rnd,
                    },
                    ty,
                    n,
                    fclass,
                )
            }
            "copysign" => alu3(self, AluOp::CopySign { f64: f64_ }, ty, 2, fclass),
            "bfi" => {
                self.n(ops, 5)?;
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], ty)?;
                let b = self.src(&ops[2], ty)?;
                let c = self.src(&ops[3], Ty::U32)?;
                let e = self.src(&ops[4], Ty::U32)?;
                Ok((Inst::Bfi { w, d, a, b, c, e }, OpClass::IntAlu, false))
            }
            "add" | "sub" | "mul" | "mad" | "fma" if ty.is_float() => {
                let op = match base {
                    "add" => AluOp::FAdd {
                        f64: f64_,
                        ftz,
                        sat: false,
                    },
                    "sub" => AluOp::FSub {
                        f64: f64_,
                        ftz,
                        sat: false,
                    },
                    "mul" => AluOp::FMul {
                        f64: f64_,
                        ftz,
                        sat: false,
                    },
                    _ => AluOp::FFma {
                        f64: f64_,
                        ftz,
                        sat: false,
                    },
                };
                let n = if matches!(base, "mad" | "fma") { 3 } else { 2 };
                alu3(self, op, ty, n, fclass)
            }
            "add" => alu3(self, AluOp::IAdd(w), ty, 2, OpClass::IntAlu),
            "sub" => alu3(self, AluOp::ISub(w), ty, 2, OpClass::IntAlu),
            "mul" | "mad" => {
                let n = if base == "mad" { 3 } else { 2 };
                let op = match (mods[0], base) {
                    ("lo", "mul") => AluOp::IMulLo(w),
                    ("hi", "mul") => AluOp::IMulHi(w, sg),
                    ("wide", "mul") => AluOp::IMulWide(w, sg),
                    ("lo", _) => AluOp::IMadLo(w),
                    ("hi", _) => AluOp::IMadHi(w, sg),
                    _ => AluOp::IMadWide(w, sg),
                };
                // mad.wide: c is 2w wide
                alu3(self, op, ty, n, OpClass::IntAlu)
            }
            "div" if ty.is_float() => alu3(
                self,
                AluOp::FDiv {
                    f64: f64_,
                    ftz,
                    approx,
                },
                ty,
                2,
                if approx {
                    OpClass::Transcendental
                } else {
                    fclass
                },
            ),
            "div" => alu3(self, AluOp::IDiv(w, sg), ty, 2, OpClass::IntAlu),
            "rem" => alu3(self, AluOp::IRem(w, sg), ty, 2, OpClass::IntAlu),
            "neg" if ty.is_float() => alu3(self, AluOp::FNeg { f64: f64_, ftz }, ty, 1, fclass),
            "abs" if ty.is_float() => alu3(self, AluOp::FAbs { f64: f64_, ftz }, ty, 1, fclass),
            "neg" => alu3(self, AluOp::INeg(w), ty, 1, OpClass::IntAlu),
            "abs" => alu3(self, AluOp::IAbs(w), ty, 1, OpClass::IntAlu),
            "min" if ty.is_float() => alu3(self, AluOp::FMin { f64: f64_, ftz }, ty, 2, fclass),
            "max" if ty.is_float() => alu3(self, AluOp::FMax { f64: f64_, ftz }, ty, 2, fclass),
            "min" => alu3(self, AluOp::IMin(w, sg), ty, 2, OpClass::IntAlu),
            "max" => alu3(self, AluOp::IMax(w, sg), ty, 2, OpClass::IntAlu),
            "sqrt" => alu3(
                self,
                AluOp::FSqrt {
                    f64: f64_,
                    ftz,
                    approx,
                },
                ty,
                1,
                if approx {
                    OpClass::Transcendental
                } else {
                    fclass
                },
            ),
            "rcp" => alu3(
                self,
                AluOp::FRcp {
                    f64: f64_,
                    ftz,
                    approx,
                },
                ty,
                1,
                if approx {
                    OpClass::Transcendental
                } else {
                    fclass
                },
            ),
            "rsqrt" => alu3(self, AluOp::FRsqrt { ftz }, ty, 1, OpClass::Transcendental),
            "ex2" => alu3(self, AluOp::FEx2 { ftz }, ty, 1, OpClass::Transcendental),
            "lg2" => alu3(self, AluOp::FLg2 { ftz }, ty, 1, OpClass::Transcendental),
            "sin" => alu3(self, AluOp::FSin { ftz }, ty, 1, OpClass::Transcendental),
            "cos" => alu3(self, AluOp::FCos { ftz }, ty, 1, OpClass::Transcendental),
            "tanh" => alu3(self, AluOp::FTanh, ty, 1, OpClass::Transcendental),
            "and" | "or" | "xor" | "not" if ty == Ty::Pred => {
                let nsrc = if base == "not" { 1 } else { 2 };
                self.n(ops, nsrc + 1)?;
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], Ty::Pred)?;
                let b = if nsrc == 2 {
                    self.src(&ops[2], Ty::Pred)?
                } else {
                    z
                };
                let op = match base {
                    "and" => 0,
                    "or" => 1,
                    "xor" => 2,
                    _ => 3,
                };
                Ok((Inst::PredOp { op, d, a, b }, OpClass::Predicate, false))
            }
            "and" => alu3(self, AluOp::And(w), ty, 2, OpClass::IntAlu),
            "or" => alu3(self, AluOp::Or(w), ty, 2, OpClass::IntAlu),
            "xor" => alu3(self, AluOp::Xor(w), ty, 2, OpClass::IntAlu),
            "not" => alu3(self, AluOp::Not(w), ty, 1, OpClass::IntAlu),
            "cnot" => alu3(self, AluOp::CNot(w), ty, 1, OpClass::IntAlu),
            "shl" | "shr" => {
                self.n(ops, 3)?;
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], ty)?;
                let b = self.src(&ops[2], Ty::U32)?;
                let op = if base == "shl" {
                    AluOp::Shl(w)
                } else {
                    AluOp::Shr(w, sg)
                };
                Ok((Inst::Alu { op, d, a, b, c: z }, OpClass::IntAlu, false))
            }
            "popc" => alu3(self, AluOp::Popc(w), ty, 1, OpClass::IntAlu),
            "clz" => alu3(self, AluOp::Clz(w), ty, 1, OpClass::IntAlu),
            "brev" => alu3(self, AluOp::Brev(w), ty, 1, OpClass::IntAlu),
            "bfe" => {
                self.n(ops, 4)?;
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], ty)?;
                let b = self.src(&ops[2], Ty::U32)?;
                let c = self.src(&ops[3], Ty::U32)?;
                Ok((
                    Inst::Alu {
                        op: AluOp::Bfe(w, sg),
                        d,
                        a,
                        b,
                        c,
                    },
                    OpClass::IntAlu,
                    false,
                ))
            }
            "prmt" => alu3(self, AluOp::Prmt, ty, 3, OpClass::IntAlu),
            "selp" => {
                self.n(ops, 4)?;
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], ty)?;
                let b = self.src(&ops[2], ty)?;
                let c = self.src(&ops[3], Ty::Pred)?;
                Ok((
                    Inst::Alu {
                        op: AluOp::Selp(w),
                        d,
                        a,
                        b,
                        c,
                    },
                    OpClass::IntAlu,
                    false,
                ))
            }
            "slct" => {
                let dty = Ty::parse(mods[mods.len() - 2]).unwrap();
                self.n(ops, 4)?;
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], dty)?;
                let b = self.src(&ops[2], dty)?;
                let c = self.src(&ops[3], ty)?;
                Ok((
                    Inst::Alu {
                        op: AluOp::Slct {
                            bits: dty.bits(),
                            cf32: ty == Ty::F32,
                            ftz,
                        },
                        d,
                        a,
                        b,
                        c,
                    },
                    OpClass::IntAlu,
                    false,
                ))
            }
            "setp" => self.setp(&mods, ops),
            "mov" => self.mov(ty, ops),
            "cvt" => self.cvt(&mods, ops),
            "cvta" => {
                self.n(ops, 2)?;
                let to = mods[0] == "to";
                let sp = match mods[if to { 1 } else { 0 }] {
                    "global" => Space::Global,
                    "shared" => Space::Shared,
                    _ => Space::Local,
                };
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], Ty::U64)?;
                Ok((
                    Inst::Cvta {
                        to_generic: !to,
                        space: sp,
                        d,
                        a,
                        wide: true,
                    },
                    OpClass::IntAlu,
                    false,
                ))
            }
            "ld" | "st" => self.ldst(base == "ld", &mods, ops),
            "atom" | "red" => self.atom(base == "atom", &mods, ops),
            "bra" => {
                self.n(ops, 1)?;
                let Opnd::Name(l) = &ops[0] else {
                    return Err(self.err("bra needs a label"));
                };
                self.k.fixups.push((self.pc, l.clone(), self.line));
                Ok((
                    Inst::Bra {
                        target: u32::MAX,
                        uni: has("uni"),
                    },
                    OpClass::Control,
                    false,
                ))
            }
            "ret" | "exit" => {
                self.n(ops, 0)?;
                Ok((Inst::Exit, OpClass::Control, false))
            }
            "bar" if has("warp") => {
                self.n(ops, 1)?;
                let mask = self.src(&ops[0], Ty::B32)?;
                Ok((Inst::WarpSync { mask }, OpClass::WarpCollective, false))
            }
            "bar" | "barrier" => {
                if ops.is_empty() || ops.len() > 2 {
                    return Err(self.err("bar.sync takes 1 or 2 operands"));
                }
                let id = self.src(&ops[0], Ty::U32)?;
                let count = if ops.len() == 2 {
                    Some(self.src(&ops[1], Ty::U32)?)
                } else {
                    None
                };
                Ok((Inst::Bar { id, count }, OpClass::Barrier, false))
            }
            "membar" | "fence" => {
                self.n(ops, 0)?;
                Ok((Inst::Fence, OpClass::Fence, false))
            }
            "shfl" => {
                self.n(ops, 5)?;
                let (d, p) = match &ops[0] {
                    Opnd::Pair(a, b) => (
                        self.dst(&Opnd::Name(a.clone()))?,
                        if b == "_" {
                            None
                        } else {
                            Some(self.dst(&Opnd::Name(b.clone()))?)
                        },
                    ),
                    o => (self.dst(o)?, None),
                };
                let mode = match mods[1] {
                    "up" => ShflMode::Up,
                    "down" => ShflMode::Down,
                    "bfly" => ShflMode::Bfly,
                    _ => ShflMode::Idx,
                };
                let a = self.src(&ops[1], Ty::B32)?;
                let b = self.src(&ops[2], Ty::B32)?;
                let c = self.src(&ops[3], Ty::B32)?;
                let mask = self.src(&ops[4], Ty::B32)?;
                Ok((
                    Inst::Shfl {
                        mode,
                        d,
                        p,
                        a,
                        b,
                        c,
                        mask,
                    },
                    OpClass::WarpCollective,
                    false,
                ))
            }
            "vote" => {
                self.n(ops, 3)?;
                let mode = match mods[1] {
                    "all" => VoteMode::All,
                    "any" => VoteMode::Any,
                    "uni" => VoteMode::Uni,
                    _ => VoteMode::Ballot,
                };
                let d = self.dst(&ops[0])?;
                let (a, neg) = match &ops[1] {
                    Opnd::Not(n) => (self.src(&Opnd::Name(n.clone()), Ty::Pred)?, true),
                    o => (self.src(o, Ty::Pred)?, false),
                };
                let mask = self.src(&ops[2], Ty::B32)?;
                Ok((
                    Inst::Vote {
                        mode,
                        d,
                        a,
                        neg,
                        mask,
                    },
                    OpClass::WarpCollective,
                    false,
                ))
            }
            "redux" => {
                self.n(ops, 3)?;
                let op = match mods[1] {
                    "add" => ReduxOp::Add,
                    "min" => ReduxOp::Min(sg),
                    "max" => ReduxOp::Max(sg),
                    "and" => ReduxOp::And,
                    "or" => ReduxOp::Or,
                    _ => ReduxOp::Xor,
                };
                let d = self.dst(&ops[0])?;
                let a = self.src(&ops[1], ty)?;
                let mask = self.src(&ops[2], Ty::B32)?;
                Ok((
                    Inst::Redux { op, d, a, mask },
                    OpClass::WarpCollective,
                    false,
                ))
            }
            "cp" => match mods[1] {
                "commit_group" => {
                    self.n(ops, 0)?;
                    Ok((Inst::CpCommit, OpClass::AsyncCopy, false))
                }
                "wait_all" => {
                    self.n(ops, 0)?;
                    Ok((Inst::CpWait { n: 0, all: true }, OpClass::AsyncCopy, false))
                }
                "wait_group" => {
                    self.n(ops, 1)?;
                    let Src::Imm(n) = self.src(&ops[0], Ty::U32)? else {
                        return Err(self.err("cp.async.wait_group needs an immediate"));
                    };
                    Ok((
                        Inst::CpWait {
                            n: n as u32,
                            all: false,
                        },
                        OpClass::AsyncCopy,
                        false,
                    ))
                }
                _ => {
                    if ops.len() != 3 && ops.len() != 4 {
                        return Err(self.err("cp.async takes 3 or 4 operands"));
                    }
                    let dst = self.addr(&ops[0], Space::Shared)?;
                    let src = self.addr(&ops[1], Space::Global)?;
                    let Src::Imm(size) = self.src(&ops[2], Ty::U32)? else {
                        return Err(self.err("cp.async cp-size must be an immediate"));
                    };
                    if !matches!(size, 4 | 8 | 16) || (mods[1] == "cg" && size != 16) {
                        return Err(
                            self.err(format!("invalid cp-size {size} for cp.async.{}", mods[1]))
                        );
                    }
                    let src_size = if ops.len() == 4 {
                        Some(self.src(&ops[3], Ty::U32)?)
                    } else {
                        None
                    };
                    Ok((
                        Inst::CpAsync {
                            dst,
                            src,
                            size: size as u32,
                            src_size,
                        },
                        OpClass::AsyncCopy,
                        false,
                    ))
                }
            },
            "ldmatrix" => {
                self.n(ops, 2)?;
                let num = match mods[3] {
                    "x1" => 1,
                    "x2" => 2,
                    _ => 4,
                };
                let Opnd::Vec(v) = &ops[0] else {
                    return Err(self.err("ldmatrix needs a vector destination"));
                };
                if v.len() != num {
                    return Err(self.err(format!(
                        "ldmatrix .x{num} needs {num} destination registers"
                    )));
                }
                let ds = v
                    .iter()
                    .map(|o| self.dst(o))
                    .collect::<Result<Vec<_>, _>>()?;
                let addr = self.addr(&ops[1], Space::Shared)?;
                Ok((
                    Inst::Ldmatrix {
                        trans: has("trans"),
                        ds,
                        addr,
                    },
                    OpClass::WarpCollective,
                    false,
                ))
            }
            "wmma" => self.wmma(&mods, ops),
            "mma" => {
                self.n(ops, 4)?;
                let vecs: Vec<&Vec<Opnd>> = ops
                    .iter()
                    .map(|o| match o {
                        Opnd::Vec(v) => Ok(v),
                        _ => Err(self.err("mma operands are vectors")),
                    })
                    .collect::<Result<_, _>>()?;
                if vecs[0].len() != 4
                    || vecs[1].len() != 4
                    || vecs[2].len() != 2
                    || vecs[3].len() != 4
                {
                    return Err(self.err("mma.m16n8k16 needs {4 f32}, {4 b32}, {2 b32}, {4 f32}"));
                }
                let mut d = [0u32; 4];
                let mut a = [Src::Imm(0); 4];
                let mut b = [Src::Imm(0); 2];
                let mut c = [Src::Imm(0); 4];
                for i in 0..4 {
                    d[i] = self.dst(&vecs[0][i])?;
                    a[i] = self.src(&vecs[1][i], Ty::B32)?;
                    c[i] = self.src(&vecs[3][i], Ty::F32)?;
                }
                for i in 0..2 {
                    b[i] = self.src(&vecs[2][i], Ty::B32)?;
                }
                Ok((
                    Inst::Mma {
                        bf16: mods.contains(&"bf16"),
                        d,
                        a,
                        b,
                        c,
                    },
                    OpClass::TensorCore,
                    false,
                ))
            }
            _ => Err(self.err(format!("allowlisted opcode `{opcode}` has no decoder"))),
        }
    }

    fn setp(&mut self, mods: &[&str], ops: &[Opnd]) -> Result<(Inst, OpClass, bool), ParseError> {
        let cmp = match mods[0] {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "lt" => Cmp::Lt,
            "le" => Cmp::Le,
            "gt" => Cmp::Gt,
            "ge" => Cmp::Ge,
            "lo" => Cmp::Lo,
            "ls" => Cmp::Ls,
            "hi" => Cmp::Hi,
            "hs" => Cmp::Hs,
            "equ" => Cmp::Equ,
            "neu" => Cmp::Neu,
            "ltu" => Cmp::Ltu,
            "leu" => Cmp::Leu,
            "gtu" => Cmp::Gtu,
            "geu" => Cmp::Geu,
            "num" => Cmp::Num,
            _ => Cmp::Nan,
        };
        let bop = match mods.get(1) {
            Some(&"and") => Some(BoolOp::And),
            Some(&"or") => Some(BoolOp::Or),
            Some(&"xor") => Some(BoolOp::Xor),
            _ => None,
        };
        let ty = Ty::parse(mods[mods.len() - 1]).unwrap();
        let ftz = mods.contains(&"ftz");
        self.n(ops, if bop.is_some() { 4 } else { 3 })?;
        let (p, q) = match &ops[0] {
            Opnd::Pair(a, b) => (
                self.dst(&Opnd::Name(a.clone()))?,
                Some(self.dst(&Opnd::Name(b.clone()))?),
            ),
            o => (self.dst(o)?, None),
        };
        let a = self.src(&ops[1], ty)?;
        let b = self.src(&ops[2], ty)?;
        let bop = match bop {
            None => None,
            Some(bo) => Some(match &ops[3] {
                Opnd::Not(n) => (bo, self.src(&Opnd::Name(n.clone()), Ty::Pred)?, true),
                o => (bo, self.src(o, Ty::Pred)?, false),
            }),
        };
        let class = if ty.is_float() {
            OpClass::FloatAlu
        } else {
            OpClass::IntAlu
        };
        Ok((
            Inst::Setp {
                cmp,
                ty,
                ftz,
                p,
                q,
                a,
                b,
                bop,
            },
            class,
            false,
        ))
    }

    fn mov(&mut self, ty: Ty, ops: &[Opnd]) -> Result<(Inst, OpClass, bool), ParseError> {
        self.n(ops, 2)?;
        let w = ty.bits();
        match (&ops[0], &ops[1]) {
            (Opnd::Vec(ds), s) => {
                let part_bits = w / ds.len() as u32;
                let ds = ds
                    .iter()
                    .map(|o| match o {
                        Opnd::Name(n) if n == "_" => Ok(None),
                        o => self.dst(o).map(Some),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let a = self.src(s, ty)?;
                Ok((Inst::Unpack { part_bits, ds, a }, OpClass::Move, false))
            }
            (d, Opnd::Vec(parts)) => {
                let part_bits = w / parts.len() as u32;
                let pty = match part_bits {
                    8 => Ty::B8,
                    16 => Ty::B16,
                    _ => Ty::B32,
                };
                let d = self.dst(d)?;
                let parts = parts
                    .iter()
                    .map(|o| self.src(o, pty))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((
                    Inst::Pack {
                        part_bits,
                        d,
                        parts,
                    },
                    OpClass::Move,
                    false,
                ))
            }
            (d, s) => {
                let d = self.dst(d)?;
                let a = self.src(s, ty)?;
                let w = if ty == Ty::Pred { 64 } else { w };
                Ok((
                    Inst::Alu {
                        op: AluOp::Mov(w),
                        d,
                        a,
                        b: Src::Imm(0),
                        c: Src::Imm(0),
                    },
                    OpClass::Move,
                    false,
                ))
            }
        }
    }

    fn wmma(&mut self, mods: &[&str], ops: &[Opnd]) -> Result<(Inst, OpClass, bool), ParseError> {
        let vec_of = |o: &Opnd| -> Result<Vec<Opnd>, ParseError> {
            match o {
                Opnd::Vec(v) => Ok(v.clone()),
                _ => Err(self.err("wmma fragments are vector operands")),
            }
        };
        let space = if mods.contains(&"global") {
            Space::Global
        } else if mods.contains(&"shared") {
            Space::Shared
        } else {
            Space::Generic
        };
        let col = mods.get(4) == Some(&"col") || mods.get(3) == Some(&"col");
        match mods[0] {
            "load" => {
                if ops.len() != 2 && ops.len() != 3 {
                    return Err(
                        self.err("wmma.load takes a fragment, an address and an optional stride")
                    );
                }
                let frag = match mods[1] {
                    "a" => 0,
                    "b" => 1,
                    _ => 2,
                };
                let ety = Ty::parse(mods[mods.len() - 1]).unwrap();
                let want = match (frag, ety) {
                    (2, _) => 8,
                    (_, Ty::Bf16) => 4,
                    _ => 8,
                };
                let v = vec_of(&ops[0])?;
                if v.len() != want {
                    return Err(self.err(format!(
                        "this wmma fragment has {want} registers, found {}",
                        v.len()
                    )));
                }
                let ds = v
                    .iter()
                    .map(|o| self.dst(o))
                    .collect::<Result<Vec<_>, _>>()?;
                let addr = self.addr(&ops[1], space)?;
                let ld = if ops.len() == 3 {
                    Some(self.src(&ops[2], Ty::U32)?)
                } else {
                    None
                };
                let class = if space == Space::Shared {
                    OpClass::LoadShared
                } else {
                    OpClass::LoadGlobal
                };
                Ok((
                    Inst::WmmaLoad {
                        frag,
                        col: mods[4] == "col",
                        space,
                        ety,
                        ds,
                        addr,
                        ld,
                    },
                    class,
                    false,
                ))
            }
            "store" => {
                if ops.len() != 2 && ops.len() != 3 {
                    return Err(
                        self.err("wmma.store takes an address, a fragment and an optional stride")
                    );
                }
                let addr = self.addr(&ops[0], space)?;
                let v = vec_of(&ops[1])?;
                if v.len() != 8 {
                    return Err(self.err("the wmma f32 accumulator has 8 registers"));
                }
                let srcs = v
                    .iter()
                    .map(|o| self.src(o, Ty::F32))
                    .collect::<Result<Vec<_>, _>>()?;
                let ld = if ops.len() == 3 {
                    Some(self.src(&ops[2], Ty::U32)?)
                } else {
                    None
                };
                let class = if space == Space::Shared {
                    OpClass::StoreShared
                } else {
                    OpClass::StoreGlobal
                };
                Ok((
                    Inst::WmmaStore {
                        col: mods[4] == "col",
                        space,
                        srcs,
                        addr,
                        ld,
                    },
                    class,
                    false,
                ))
            }
            _ => {
                let _ = col;
                self.n(ops, 4)?;
                let bf16 = mods.contains(&"bf16");
                let na = if bf16 { 4 } else { 8 };
                let (d, a, b, c) = (
                    vec_of(&ops[0])?,
                    vec_of(&ops[1])?,
                    vec_of(&ops[2])?,
                    vec_of(&ops[3])?,
                );
                if d.len() != 8 || c.len() != 8 || a.len() != na || b.len() != na {
                    return Err(self.err("wmma.mma fragment sizes do not match m16n16k16"));
                }
                let d = d
                    .iter()
                    .map(|o| self.dst(o))
                    .collect::<Result<Vec<_>, _>>()?;
                let a = a
                    .iter()
                    .map(|o| self.src(o, Ty::B32))
                    .collect::<Result<Vec<_>, _>>()?;
                let b = b
                    .iter()
                    .map(|o| self.src(o, Ty::B32))
                    .collect::<Result<Vec<_>, _>>()?;
                let c = c
                    .iter()
                    .map(|o| self.src(o, Ty::F32))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((
                    Inst::WmmaMma {
                        bf16,
                        acol: mods[3] == "col",
                        bcol: mods[4] == "col",
                        d,
                        a,
                        b,
                        c,
                    },
                    OpClass::TensorCore,
                    false,
                ))
            }
        }
    }

    fn cvt(&mut self, mods: &[&str], ops: &[Opnd]) -> Result<(Inst, OpClass, bool), ParseError> {
        if mods.contains(&"bf16x2") || mods.contains(&"f16x2") {
            self.n(ops, 3)?;
            let d = self.dst(&ops[0])?;
            let a = self.src(&ops[1], Ty::F32)?;
            let b = self.src(&ops[2], Ty::F32)?;
            let op = AluOp::CvtPack {
                bf16: mods.contains(&"bf16x2"),
            };
            return Ok((
                Inst::Alu {
                    op,
                    d,
                    a,
                    b,
                    c: Src::Imm(0),
                },
                OpClass::Convert,
                false,
            ));
        }
        self.n(ops, 2)?;
        let n = mods.len();
        let dst = Ty::parse(mods[n - 2]).unwrap();
        let src = Ty::parse(mods[n - 1]).unwrap();
        let mut c = Cvt {
            dst,
            src,
            rnd: None,
            irnd: None,
            ftz: false,
            sat: false,
        };
        for m in &mods[..n - 2] {
            match *m {
                "rn" => c.rnd = Some(FRnd::Rn),
                "rni" => c.irnd = Some(FRnd::Rn),
                "rzi" => c.irnd = Some(FRnd::Rz),
                "rmi" => c.irnd = Some(FRnd::Rm),
                "rpi" => c.irnd = Some(FRnd::Rp),
                "ftz" => c.ftz = true,
                "sat" => c.sat = true,
                x => return Err(self.err(format!("unsupported cvt modifier .{x}"))),
            }
        }
        let d = self.dst(&ops[0])?;
        let a = self.src(&ops[1], src)?;
        Ok((
            Inst::Alu {
                op: AluOp::Cvt(c),
                d,
                a,
                b: Src::Imm(0),
                c: Src::Imm(0),
            },
            OpClass::Convert,
            false,
        ))
    }

    fn ldst(
        &mut self,
        is_ld: bool,
        mods: &[&str],
        ops: &[Opnd],
    ) -> Result<(Inst, OpClass, bool), ParseError> {
        let mut space = Space::Generic;
        let mut qual = MemQual::default();
        let mut vec = 1;
        let ty = Ty::parse(mods[mods.len() - 1]).unwrap();
        for m in &mods[..mods.len() - 1] {
            match *m {
                "global" => space = Space::Global,
                "shared" => space = Space::Shared,
                "local" => space = Space::Local,
                "param" => space = Space::Param,
                "nc" => qual.nc = true,
                "cg" | "cv" | "volatile" | "relaxed" | "acquire" | "release" => qual.strong = true,
                "ca" | "cs" | "lu" | "wb" | "gpu" => {}
                "v2" => vec = 2,
                "v4" => vec = 4,
                x => return Err(self.err(format!("unsupported ld/st modifier .{x}"))),
            }
        }
        self.n(ops, 2)?;
        let (addr_op, val_op) = if is_ld {
            (&ops[1], &ops[0])
        } else {
            (&ops[0], &ops[1])
        };
        let addr = self.addr(addr_op, space)?;
        let vals: Vec<&Opnd> = match val_op {
            Opnd::Vec(v) => v.iter().collect(),
            o => vec![o],
        };
        if vals.len() != vec {
            return Err(self.err(format!(
                "expected {vec} vector elements, found {}",
                vals.len()
            )));
        }
        let class = match (is_ld, space) {
            (true, Space::Shared) => OpClass::LoadShared,
            (false, Space::Shared) => OpClass::StoreShared,
            (true, Space::Local) => OpClass::LoadLocal,
            (false, Space::Local) => OpClass::StoreLocal,
            (true, Space::Param) => OpClass::LoadParam,
            (true, _) => OpClass::LoadGlobal,
            (false, _) => OpClass::StoreGlobal,
        };
        if is_ld {
            let ds = vals
                .iter()
                .map(|o| self.dst(o))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                Inst::Ld {
                    space,
                    ty,
                    ds,
                    addr,
                    qual,
                },
                class,
                false,
            ))
        } else {
            let srcs = vals
                .iter()
                .map(|o| self.src(o, ty))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                Inst::St {
                    space,
                    ty,
                    srcs,
                    addr,
                    qual,
                },
                class,
                false,
            ))
        }
    }

    fn atom(
        &mut self,
        is_atom: bool,
        mods: &[&str],
        ops: &[Opnd],
    ) -> Result<(Inst, OpClass, bool), ParseError> {
        let space = match mods[0] {
            "global" => Space::Global,
            "shared" => Space::Shared,
            _ => Space::Generic,
        };
        let ty = Ty::parse(mods[mods.len() - 1]).unwrap();
        let op = match mods[mods.len() - 2] {
            "add" => AtomOp::Add,
            "min" => AtomOp::Min,
            "max" => AtomOp::Max,
            "and" => AtomOp::And,
            "or" => AtomOp::Or,
            "xor" => AtomOp::Xor,
            "exch" => AtomOp::Exch,
            "cas" => AtomOp::Cas,
            "inc" => AtomOp::Inc,
            _ => AtomOp::Dec,
        };
        let nsrc = if op == AtomOp::Cas { 2 } else { 1 };
        let first = if is_atom { 1 } else { 0 };
        self.n(ops, first + 1 + nsrc)?;
        let d = if is_atom {
            Some(self.dst(&ops[0])?)
        } else {
            None
        };
        let addr = self.addr(&ops[first], space)?;
        let b = self.src(&ops[first + 1], ty)?;
        let c = if nsrc == 2 {
            self.src(&ops[first + 2], ty)?
        } else {
            Src::Imm(0)
        };
        Ok((
            Inst::Atom {
                space,
                op,
                ty,
                d,
                addr,
                b,
                c,
            },
            OpClass::Atomic,
            false,
        ))
    }
}

/// All forms used by a module, as strings.
pub(crate) fn forms_set(forms: &[String]) -> BTreeSet<String> {
    forms.iter().cloned().collect()
}

#[cfg(test)]
mod version_and_globals {
    use super::parse_module;

    fn module(version: &str, body_extra: &str, globals: &str) -> String {
        format!(
            ".version {version}\n.target sm_80\n.address_size 64\n{globals}\n.visible .entry k(.param .u64 k_out)\n{{\n\
             .reg .b32 %r<2>;\n.reg .b64 %rd<2>;\nld.param.u64 %rd1, [k_out];\nmov.u32 %r1, 7;\n{body_extra}\
             st.global.u32 [%rd1], %r1;\nret;\n}}\n"
        )
    }

    #[test]
    fn isa_versions_of_both_toolchains_are_accepted_others_rejected() {
        for v in ["8.0", "8.8", "9.0", "9.5"] {
            assert!(parse_module(&module(v, "", "")).is_ok(), ".version {v}");
        }
        for v in ["6.4", "10.0", "x"] {
            let e = parse_module(&module(v, "", "")).err().unwrap_or_else(|| panic!(".version {v} accepted"));
            assert!(e.reason.contains("PTX ISA"), "{v}: {}", e.reason);
        }
    }

    #[test]
    fn unreferenced_module_globals_are_dropped_referenced_ones_rejected() {
        // What NVRTC 12.9 emits for `static constexpr bool value` members of C++ traits.
        let g = ".global .align 1 .u8 _ZN12gg_same_typeIffE5valueE = 1;\n\
                 .global .align 1 .u8 _ZN12gg_same_typeI6__halffE5valueE;\n\
                 .visible .global .align 4 .b32 tbl[2] = {1, 2};";
        assert!(parse_module(&module("8.8", "", g)).is_ok());
        let uses = "ld.global.u32 %r1, [tbl];\n";
        let e = parse_module(&module("8.8", uses, g)).err().expect("a referenced .global must be rejected");
        assert!(e.reason.contains("tbl"), "{}", e.reason);
    }
}

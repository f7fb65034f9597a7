//! The random models of [`super::model`] on the PTX interpreter: upload every use's factors and
//! view them as device [`LayerUse`]s.
#![allow(dead_code)]

use super::model::{ModelData, SideData, XBuf};
use super::Buf;
use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime};
use ghostgrad::{DType, LayerUse, QuerySide, Segments, UseQuery, UseTrain};
use ptx_interp::Options;
use std::sync::Arc;

/// An interpreter runtime with schedule seed `seed` (shared by every interpreter test binary).
pub fn runtime(seed: u64) -> Arc<InterpRuntime> {
    let rt = InterpRuntime::new().expect("interpreter runtime (kernels must be built)");
    rt.set_options(Options { schedule_seed: seed, ..Options::default() }).unwrap();
    Arc::new(rt)
}

/// A device copy of a factor buffer, in its own dtype.
pub fn up_buf(rt: &InterpRuntime, b: &Buf) -> InterpBuffer {
    match b {
        Buf::F32(v) => rt.upload(v, DType::F32),
        Buf::BF16(v) => rt.upload(v, DType::BF16),
        Buf::F16(v) => rt.upload(v, DType::F16),
    }
    .unwrap()
}

pub fn up_x(rt: &InterpRuntime, x: &XBuf) -> InterpBuffer {
    match x {
        XBuf::Ids(v) => rt.upload(v, DType::I32).unwrap(),
        XBuf::Ids64(v) => rt.upload(v, DType::I64).unwrap(),
        XBuf::Float(b) => up_buf(rt, b),
    }
}

pub struct DevSide {
    pub x: InterpBuffer,
    pub b: InterpBuffer,
    pub mask: Option<InterpBuffer>,
}

pub struct DevUse {
    pub train: DevSide,
    pub query: DevSide,
    pub offsets: InterpBuffer,
}

pub fn up_side(rt: &InterpRuntime, s: &SideData) -> DevSide {
    DevSide { x: up_x(rt, &s.x), b: up_buf(rt, &s.b), mask: s.mask.as_ref().map(|m| rt.upload(m, DType::U8).unwrap()) }
}

pub fn upload_model(rt: &InterpRuntime, m: &ModelData) -> Vec<DevUse> {
    m.uses
        .iter()
        .map(|u| DevUse { train: up_side(rt, &u.train), query: up_side(rt, &u.query), offsets: rt.upload(&u.offsets, DType::I32).unwrap() })
        .collect()
}

pub fn dev_uses<'a>(m: &ModelData, d: &'a [DevUse]) -> Vec<LayerUse<'a>> {
    m.uses
        .iter()
        .zip(d)
        .map(|(u, du)| LayerUse {
            param: u.param,
            kind: u.kind,
            train: UseTrain {
                x: du.train.x.view().into(),
                b: du.train.b.view().into(),
                t: u.t as u64,
                mask: du.train.mask.as_ref().map(|m| m.view().into()),
            },
            query: QuerySide::Factors(UseQuery {
                x: du.query.x.view().into(),
                b: du.query.b.view().into(),
                q: u.query.rows as u64,
                segments: Segments::Offsets(du.offsets.view().into()),
                mask: du.query.mask.as_ref().map(|m| m.view().into()),
            }),
        })
        .collect()
}

//! The one descriptor-reading layer: every C descriptor (`gg_train`, `gg_query`,
//! `gg_layer_use`, `gg_projection`, `gg_ghg_layer`, `gg_token_train`) becomes a `Raw*` value of
//! checked buffers, named as the caller spells them (`Buffers::prefix`), and later a view.

use super::*;

impl Buffers {
    pub(super) fn train(&mut self, t: &gg_train) -> FfiResult<RawTrain> {
        Ok(RawTrain {
            a: self.input("train.a", &t.a)?,
            b: self.input("train.b", &t.b)?,
            n: t.n,
            t: t.t,
            mask: self.optional_input("train.mask", &t.mask)?,
        })
    }

    pub(super) fn query(&mut self, q: &gg_query) -> FfiResult<RawQuery> {
        let segments = match q.segments.kind {
            GG_SEGMENTS_SINGLE => RawSegments::Single,
            GG_SEGMENTS_UNIFORM => RawSegments::Uniform(q.segments.uniform_len),
            GG_SEGMENTS_OFFSETS => RawSegments::Offsets(self.input("query.segments.offsets", &q.segments.offsets)?),
            other => {
                return Err(Failure::invalid(
                    &self.name("query.segments.kind"),
                    format!("{other} is not a gg_segments_kind (SINGLE=0, UNIFORM=1, OFFSETS=2)"),
                ))
            }
        };
        Ok(RawQuery {
            aq: self.input("query.aq", &q.aq)?,
            bq: self.input("query.bq", &q.bq)?,
            q: q.q,
            segments,
            mask: self.optional_input("query.mask", &q.mask)?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RawTrain {
    pub(super) a: RawBuf,
    pub(super) b: RawBuf,
    pub(super) n: u64,
    pub(super) t: u64,
    pub(super) mask: Option<RawBuf>,
}

impl RawTrain {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    pub(super) unsafe fn view<'a>(self, space: Space) -> TrainFactors<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            TrainFactors {
                a: self.a.view(space),
                b: self.b.view(space),
                n: self.n,
                t: self.t,
                mask: self.mask.map(|m| m.view(space)),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum RawSegments {
    Single,
    Uniform(u64),
    Offsets(RawBuf),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RawQuery {
    pub(super) aq: RawBuf,
    pub(super) bq: RawBuf,
    pub(super) q: u64,
    pub(super) segments: RawSegments,
    pub(super) mask: Option<RawBuf>,
}

impl RawQuery {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    pub(super) unsafe fn view<'a>(self, space: Space) -> QueryFactors<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            QueryFactors {
                aq: self.aq.view(space),
                bq: self.bq.view(space),
                q: self.q,
                segments: match self.segments {
                    RawSegments::Single => Segments::Single,
                    RawSegments::Uniform(l) => Segments::Uniform(l),
                    RawSegments::Offsets(o) => Segments::Offsets(o.view(space)),
                },
                mask: self.mask.map(|m| m.view(space)),
            }
        }
    }
}

pub(super) fn layer_shape(s: &gg_layer_shape) -> LayerShape {
    LayerShape { d_in: s.d_in, d_out: s.d_out, has_bias: s.has_bias != 0 }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum RawProjKind {
    Random { seed: u64, layer: u32, dist: Distribution },
    Dense { p_in: RawBuf, p_out: RawBuf },
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RawProj {
    pub(super) k_i: u64,
    pub(super) k_o: u64,
    pub(super) kind: RawProjKind,
}

impl RawProj {
    /// # Safety
    /// As [`RawBuf::view`] for the dense matrices.
    pub(super) unsafe fn view<'a>(self, space: Space) -> ProjectionSpec<'a> {
        let kind = match self.kind {
            RawProjKind::Random { seed, layer, dist } => ProjectionKind::Random { seed, layer, dist },
            // SAFETY: forwarded from this function's contract.
            RawProjKind::Dense { p_in, p_out } => unsafe { ProjectionKind::Dense { p_in: p_in.view(space), p_out: p_out.view(space) } },
        };
        ProjectionSpec { k_i: self.k_i, k_o: self.k_o, kind }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RawGhg {
    pub(super) shape: LayerShape,
    pub(super) train: RawTrain,
    pub(super) a_val: RawBuf,
    pub(super) b_val: RawBuf,
    pub(super) a_dot: RawBuf,
    pub(super) b_dot: RawBuf,
    pub(super) t_v: u64,
    pub(super) val_mask: Option<RawBuf>,
}

impl RawGhg {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    pub(super) unsafe fn view<'a>(self, space: Space) -> GhgLayer<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            GhgLayer {
                shape: self.shape,
                train: self.train.view(space),
                a_val: self.a_val.view(space),
                b_val: self.b_val.view(space),
                a_dot: self.a_dot.view(space),
                b_dot: self.b_dot.view(space),
                t_v: self.t_v,
                val_mask: self.val_mask.map(|m| m.view(space)),
            }
        }
    }
}

impl Buffers {
    pub(super) fn projection(&mut self, p: &gg_projection) -> FfiResult<RawProj> {
        let kind = match p.kind {
            GG_PROJECTION_RANDOM => RawProjKind::Random {
                seed: p.seed,
                layer: p.layer,
                dist: distribution_from_code(p.dist).map_err(|f| f.context(&self.name("proj")))?,
            },
            GG_PROJECTION_DENSE => RawProjKind::Dense { p_in: self.input("proj.p_in", &p.p_in)?, p_out: self.input("proj.p_out", &p.p_out)? },
            other => {
                return Err(Failure::invalid(
                    &self.name("proj.kind"),
                    format!("{other} is not a gg_projection_kind (RANDOM=0, DENSE=1)"),
                ))
            }
        };
        Ok(RawProj { k_i: p.k_i, k_o: p.k_o, kind })
    }

    pub(super) fn ghg_layer(&mut self, l: &gg_ghg_layer) -> FfiResult<RawGhg> {
        Ok(RawGhg {
            shape: layer_shape(&l.shape),
            train: self.train(&l.train)?,
            a_val: self.input("a_val", &l.a_val)?,
            b_val: self.input("b_val", &l.b_val)?,
            a_dot: self.input("a_dot", &l.a_dot)?,
            b_dot: self.input("b_dot", &l.b_dot)?,
            t_v: l.t_v,
            val_mask: self.optional_input("val_mask", &l.val_mask)?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RawUse {
    pub(super) param: u32,
    pub(super) kind: crate::layers::LayerKind,
    pub(super) train: (RawBuf, RawBuf, u64, Option<RawBuf>),
    pub(super) query: Option<(RawBuf, RawBuf, u64, RawSegments, Option<RawBuf>)>,
    pub(super) train_only: bool,
}

pub(super) fn layer_kind_from(u: &gg_layer_use) -> FfiResult<crate::layers::LayerKind> {
    use crate::layers::{LayerKind, WeightLayout};
    let layout = match u.layout {
        GG_WEIGHT_OUT_IN => WeightLayout::OutIn,
        GG_WEIGHT_IN_OUT => WeightLayout::InOut,
        other => return Err(Failure::invalid("layout", format!("{other} is not a gg_weight_layout (OUT_IN=0, IN_OUT=1)"))),
    };
    Ok(match u.kind {
        GG_LAYER_LINEAR => LayerKind::Linear { d_in: u.d_in, d_out: u.d_out, has_bias: u.has_bias != 0, layout },
        GG_LAYER_EMBEDDING => LayerKind::Embedding { vocab: u.vocab, d: u.d },
        GG_LAYER_NORM => LayerKind::Norm { d: u.d, has_bias: u.has_bias != 0 },
        other => {
            return Err(Failure::invalid("kind", format!("{other} is not a gg_layer_kind (LINEAR=0, EMBEDDING=1, NORM=2)")))
        }
    })
}

impl Buffers {
    pub(super) fn layer_use(&mut self, u: &gg_layer_use) -> FfiResult<RawUse> {
        let kind = layer_kind_from(u)?;
        let train = (
            self.input("train.x", &u.train.x)?,
            self.input("train.b", &u.train.b)?,
            u.train.t,
            self.optional_input("train.mask", &u.train.mask)?,
        );
        let absent = |t: &gg_tensor| t.ptr.is_null() && t.len == 0;
        let query = if absent(&u.query.x) && absent(&u.query.b) {
            None
        } else {
            let segments = match u.query.segments.kind {
                GG_SEGMENTS_SINGLE => RawSegments::Single,
                GG_SEGMENTS_UNIFORM => RawSegments::Uniform(u.query.segments.uniform_len),
                GG_SEGMENTS_OFFSETS => RawSegments::Offsets(self.input("query.segments.offsets", &u.query.segments.offsets)?),
                other => {
                    return Err(Failure::invalid(
                        &self.name("query.segments.kind"),
                        format!("{other} is not a gg_segments_kind (SINGLE=0, UNIFORM=1, OFFSETS=2)"),
                    ))
                }
            };
            Some((
                self.input("query.x", &u.query.x)?,
                self.input("query.b", &u.query.b)?,
                u.query.q,
                segments,
                self.optional_input("query.mask", &u.query.mask)?,
            ))
        };
        if u.train_only != 0 && query.is_some() {
            return Err(Failure::invalid(&self.name("train_only"), "a train-only use has no query side: leave `query` absent".to_string()));
        }
        Ok(RawUse { param: u.param, kind, train, query, train_only: u.train_only != 0 })
    }
}

impl RawUse {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    pub(super) unsafe fn view<'a>(self, space: Space) -> crate::layers::LayerUse<'a> {
        use crate::layers::{LayerUse, QuerySide, UseQuery, UseTrain};
        // SAFETY: forwarded from this function's contract.
        unsafe {
            LayerUse {
                param: self.param,
                kind: self.kind,
                train: UseTrain {
                    x: self.train.0.view(space),
                    b: self.train.1.view(space),
                    t: self.train.2,
                    mask: self.train.3.map(|m| m.view(space)),
                },
                query: match self.query {
                    Some((x, b, q, seg, mask)) => QuerySide::Factors(UseQuery {
                        x: x.view(space),
                        b: b.view(space),
                        q,
                        segments: match seg {
                            RawSegments::Single => Segments::Single,
                            RawSegments::Uniform(l) => Segments::Uniform(l),
                            RawSegments::Offsets(o) => Segments::Offsets(o.view(space)),
                        },
                        mask: mask.map(|m| m.view(space)),
                    }),
                    None if self.train_only => QuerySide::TrainOnly,
                    None => QuerySide::Absent,
                },
            }
        }
    }
}

/// Checked uses and `(param, projection)` pairs of a model-level projection call.
pub(super) type RawModelParams = (Vec<RawUse>, Vec<(u32, RawProj)>);

impl Buffers {
    /// Checks the uses and parameter projections of the model-level projection calls; errors
    /// name `uses[i]` / `params[i]`.
    pub(super) fn model_params(&mut self, uses: &[gg_layer_use], params: &[gg_param_projection]) -> FfiResult<RawModelParams> {
        let mut raw = Vec::with_capacity(uses.len());
        for (i, u) in uses.iter().enumerate() {
            self.prefix = format!("uses[{i}].");
            raw.push(self.layer_use(u).map_err(|f| if f.message.contains("uses[") { f } else { f.context(&format!("uses[{i}]")) })?);
        }
        let mut rawp = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            self.prefix = format!("params[{i}].");
            rawp.push((p.param, self.projection(&p.proj)?));
        }
        self.prefix.clear();
        Ok((raw, rawp))
    }
}

/// # Safety
/// As [`RawBuf::view`] for every buffer of `raw` and `rawp`.
pub(super) unsafe fn model_param_views<'a>(
    raw: &[RawUse],
    rawp: &[(u32, RawProj)],
    space: Space,
) -> (Vec<crate::layers::LayerUse<'a>>, Vec<crate::projection::ParamProjection<'a>>) {
    // SAFETY: forwarded from this function's contract.
    let views = raw.iter().map(|r| unsafe { r.view(space) }).collect();
    // SAFETY: as above.
    let specs = rawp.iter().map(|(param, p)| crate::projection::ParamProjection { param: *param, proj: unsafe { p.view(space) } }).collect();
    (views, specs)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RawTokens {
    pub(super) ids: RawBuf,
    pub(super) b: RawBuf,
    pub(super) n: u64,
    pub(super) t: u64,
    pub(super) mask: Option<RawBuf>,
}

impl RawTokens {
    /// # Safety
    /// As [`RawBuf::view`] for every buffer.
    pub(super) unsafe fn view<'a>(self, space: Space) -> crate::projection::TokenFactors<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            crate::projection::TokenFactors {
                ids: self.ids.view(space),
                b: self.b.view(space),
                n: self.n,
                t: self.t,
                mask: self.mask.map(|m| m.view(space)),
            }
        }
    }
}

impl Buffers {
    pub(super) fn tokens(&mut self, t: &gg_token_train) -> FfiResult<RawTokens> {
        Ok(RawTokens {
            ids: self.input("train.ids", &t.ids)?,
            b: self.input("train.b", &t.b)?,
            n: t.n,
            t: t.t,
            mask: self.optional_input("train.mask", &t.mask)?,
        })
    }
}

//! placeholder
use super::{LayerUse, Mode, Term, UseDims};
use crate::error::{GhostError, Result};
use crate::ghost_dot::Accumulate;
use crate::runtime::KernelRuntime;

#[allow(clippy::too_many_arguments)]
pub(crate) fn run(_rt: &dyn KernelRuntime, _n: u64, _nv: u64, _uses: &[LayerUse<'_>], _dims: &[UseDims], _terms: &[Term], _mode: Mode, _out: u64, _acc: Accumulate) -> Result<()> {
    Err(GhostError::Internal("todo".into()))
}

//! Preconditioners of projected gradients (MATH.md §4), dense k×k linear algebra in f64 on the
//! CPU (`faer`). Projected gradients are small (`k = k_o·k_i`, typically 256–16384), so the
//! O(k³) factorization is done once per model and applied to the test side before scoring with
//! [`influence_scores`](crate::Context::influence_scores).
//!
//! * [`RawFisher`]: `F = (1/N) Σ_n ĝ_n ĝ_nᵀ`, `λ = 0.1·trace(F)/k`, `ĝ' = (F + λI)⁻¹ ĝ` by a
//!   Cholesky solve.
//! * [`Kfac`]: `C_A = Σ (P_i a)(P_i a)ᵀ` (k_i×k_i), `C_B = Σ (P_o b)(P_o b)ᵀ` (k_o×k_o) over all
//!   kept tokens, eigendecompositions `C_A = Q_A Λ_A Q_Aᵀ`, `C_B = Q_B Λ_B Q_Bᵀ` in f64, and
//!   `Ĝ' = Q_B[(Q_Bᵀ Ĝ Q_A) ⊘ (Λ_B Λ_Aᵀ + λ)]Q_Aᵀ`, `λ = 0.1·mean(Λ_B Λ_Aᵀ)`; with
//!   [`Kfac::ekfac_correct`] the eigenvalue products are replaced by the EK-FAC estimate
//!   `(1/N) Σ_n (Q_Bᵀ Ĝ_n Q_A)^{⊙2}` (λ then = 0.1·mean of those).

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

use crate::error::{GhostError, Result};

fn check_rows(what: &'static str, len: usize, n: usize, k: usize) -> Result<()> {
    if k == 0 || n == 0 {
        return Err(GhostError::ZeroSize { what });
    }
    if len != n * k {
        return Err(GhostError::LengthMismatch { what, expected: (n * k) as u64, got: len as u64 });
    }
    Ok(())
}

/// `Σ_r x_r x_rᵀ` of the rows of `x [n, k]` in f64.
fn gram_f64(x: &[f32], n: usize, k: usize) -> Mat<f64> {
    let m = Mat::<f64>::from_fn(n, k, |r, c| x[r * k + c] as f64);
    m.transpose() * &m
}

/// Damped raw Fisher `F + λI` in projected space, Cholesky-factored.
pub struct RawFisher {
    k: usize,
    lambda: f64,
    fisher: Mat<f64>,
    llt: faer::linalg::solvers::Llt<f64>,
}

impl RawFisher {
    /// Fits from the projected training gradients `grads [n, k]` (rows `ĝ_n`).
    pub fn fit(grads: &[f32], n: usize, k: usize) -> Result<Self> {
        check_rows("grads", grads.len(), n, k)?;
        let fisher = gram_f64(grads, n, k) * faer::Scale(1.0 / n as f64);
        let trace: f64 = (0..k).map(|i| fisher[(i, i)]).sum();
        if !trace.is_finite() {
            return Err(GhostError::InvalidArgument { what: "grads", reason: "non-finite Fisher trace".into() });
        }
        let lambda = 0.1 * trace / k as f64;
        let damped = Mat::<f64>::from_fn(k, k, |i, j| fisher[(i, j)] + if i == j { lambda } else { 0.0 });
        let llt = damped.llt(Side::Lower).map_err(|e| GhostError::InvalidArgument {
            what: "grads",
            reason: format!("F + λI is not positive definite (λ = {lambda:e}, all-zero gradients?): {e:?}"),
        })?;
        Ok(RawFisher { k, lambda, fisher, llt })
    }

    /// `λ = 0.1·trace(F)/k`.
    pub fn damping(&self) -> f64 {
        self.lambda
    }

    /// `F` (row-major k×k).
    pub fn fisher(&self) -> Vec<f64> {
        (0..self.k * self.k).map(|i| self.fisher[(i / self.k, i % self.k)]).collect()
    }

    /// `(F + λI)⁻¹ ĝ` for every row of `grads [n, k]`, in f64.
    pub fn apply_f64(&self, grads: &[f32], n: usize) -> Result<Vec<f64>> {
        check_rows("grads", grads.len(), n, self.k)?;
        let rhs = Mat::<f64>::from_fn(self.k, n, |c, r| grads[r * self.k + c] as f64);
        let x = self.llt.solve(&rhs);
        Ok((0..n * self.k).map(|i| x[(i % self.k, i / self.k)]).collect())
    }

    /// [`apply_f64`](Self::apply_f64) rounded to f32 (the input of `influence_scores`).
    pub fn apply(&self, grads: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.apply_f64(grads, n)?.into_iter().map(|x| x as f32).collect())
    }
}

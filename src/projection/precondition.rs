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
//!
//! The second moments can also be accumulated by any backend, the GPU included, and handed
//! over: [`RawFisher::from_sum`] (from [`Context::projected_fisher`](crate::Context::projected_fisher)),
//! [`Kfac::from_covariances_f32`] (from [`Context::kfac_covariances`](crate::Context::kfac_covariances)),
//! [`Kfac::set_ekfac_sum`] (from [`Context::ekfac_eigen_correction`](crate::Context::ekfac_eigen_correction)
//! with [`Kfac::eigenvectors_f32`]).

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

use super::cpu::{kfac_cov_reference, CovRows};
use super::{try_materialize_projection, ProjectionKind, ProjectionSpec, Which};
use crate::alloc::{reserve_working_set, try_with_capacity};
use crate::context::{host_f32, host_u8};
use crate::error::{GhostError, Result};
use crate::ghost_dot::validate_ops as vo;
use crate::ghost_dot::{LayerShape, TrainFactors};
use crate::validate::Space;

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
        // grads in f64 [n, k], F, F + λI and its Cholesky factor [k, k].
        let (n64, k64) = (n as u64, k as u64);
        reserve_working_set(&format!("the raw Fisher fit (grads [{n}, {k}] and three [{k}, {k}] f64 matrices)"), n64.saturating_mul(k64).saturating_add(k64.saturating_mul(k64).saturating_mul(3)), 8)?;
        Self::from_fisher(gram_f64(grads, n, k) * faer::Scale(1.0 / n as f64), k, "grads")
    }

    /// Fits from an accumulated `sum = Σ_n ĝ_n ĝ_nᵀ` (row-major `[k, k]` f32, e.g. from
    /// [`Context::projected_fisher`](crate::Context::projected_fisher) with `scale = 1` over
    /// every batch, on any backend) and the number of samples `n` in it: `F = sum / n`. The
    /// matrix is symmetrized as `(S + Sᵀ)/2` (the accumulators write it exactly symmetric).
    pub fn from_sum(sum: &[f32], k: usize, n: usize) -> Result<Self> {
        check_rows("fisher sum", sum.len(), k, k)?;
        if n == 0 {
            return Err(GhostError::ZeroSize { what: "n" });
        }
        reserve_working_set(&format!("the raw Fisher fit (three [{k}, {k}] f64 matrices)"), (k as u64).saturating_mul(k as u64).saturating_mul(3), 8)?;
        let f = Mat::<f64>::from_fn(k, k, |i, j| 0.5 * (sum[i * k + j] as f64 + sum[j * k + i] as f64) / n as f64);
        Self::from_fisher(f, k, "fisher sum")
    }

    fn from_fisher(fisher: Mat<f64>, k: usize, what: &'static str) -> Result<Self> {
        let trace: f64 = (0..k).map(|i| fisher[(i, i)]).sum();
        if !trace.is_finite() {
            return Err(GhostError::InvalidArgument { what, reason: "non-finite Fisher trace".into() });
        }
        let lambda = 0.1 * trace / k as f64;
        let damped = Mat::<f64>::from_fn(k, k, |i, j| fisher[(i, j)] + if i == j { lambda } else { 0.0 });
        let llt = damped.llt(Side::Lower).map_err(|e| GhostError::InvalidArgument {
            what,
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
        let k = self.k;
        reserve_working_set(&format!("the raw Fisher solve (three [{n}, {k}] f64 matrices)"), (n as u64).saturating_mul(k as u64).saturating_mul(3), 8)?;
        let rhs = Mat::<f64>::from_fn(self.k, n, |c, r| grads[r * self.k + c] as f64);
        let x = self.llt.solve(&rhs);
        Ok((0..n * self.k).map(|i| x[(i % self.k, i / self.k)]).collect())
    }

    /// [`apply_f64`](Self::apply_f64) rounded to f32 (the input of `influence_scores`).
    pub fn apply(&self, grads: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.apply_f64(grads, n)?.into_iter().map(|x| x as f32).collect())
    }
}

/// Row-major `k×k` slice → faer matrix.
fn mat_of(x: &[f64], k: usize) -> Mat<f64> {
    Mat::<f64>::from_fn(k, k, |i, j| x[i * k + j])
}

/// K-FAC (and, after [`ekfac_correct`](Self::ekfac_correct), EK-FAC) preconditioner of one
/// layer's projected gradients `Ĝ ∈ R^{k_o×k_i}` (flattened row-major, `ĝ[o·k_i + i]`).
#[derive(Clone)]
pub struct Kfac {
    k_i: usize,
    k_o: usize,
    q_a: Mat<f64>,
    q_b: Mat<f64>,
    eig_a: Vec<f64>,
    eig_b: Vec<f64>,
    /// `[o·k_i + i]`: `Λ_B[o]·Λ_A[i]`, or the EK-FAC second moments.
    scale: Vec<f64>,
    lambda: f64,
}

impl Kfac {
    /// Projected covariances `C_A = Σ (P_i a)(P_i a)ᵀ` `[k_i×k_i]` and `C_B = Σ (P_o b)(P_o b)ᵀ`
    /// `[k_o×k_o]` (row-major, f64) over every kept token of every sample, from host factors
    /// (`a` augmented with 1 when the layer has a bias, as in `kron_project`).
    pub fn covariances(shape: &LayerShape, train: &TrainFactors<'_>, proj: &ProjectionSpec<'_>) -> Result<(Vec<f64>, Vec<f64>)> {
        let d = vo::train("kfac covariances", shape, train, Space::Host)?;
        let (di, d_out) = ((d.d_in + d.has_bias as u64) as usize, d.d_out as usize);
        let (k_i, k_o) = (proj.k_i as usize, proj.k_o as usize);
        if k_i == 0 || k_o == 0 {
            return Err(GhostError::ZeroSize { what: "k_i, k_o" });
        }
        let (pi, po): (Vec<f32>, Vec<f32>) = match &proj.kind {
            ProjectionKind::Random { seed, layer, dist } => (
                try_materialize_projection(*seed, *layer, Which::In, proj.k_i, di as u64, *dist)?,
                try_materialize_projection(*seed, *layer, Which::Out, proj.k_o, d.d_out, *dist)?,
            ),
            ProjectionKind::Dense { p_in, p_out } => {
                let (a, b) = (host_f32("p_in", p_in)?, host_f32("p_out", p_out)?);
                if a.len() != k_i * di {
                    return Err(GhostError::LengthMismatch { what: "p_in", expected: (k_i * di) as u64, got: a.len() as u64 });
                }
                if b.len() != k_o * d_out {
                    return Err(GhostError::LengthMismatch { what: "p_out", expected: (k_o * d_out) as u64, got: b.len() as u64 });
                }
                (a.to_vec(), b.to_vec())
            }
        };
        let mask = host_u8("mask", train.mask.as_ref())?;
        let rows = (d.n * d.t) as usize;
        let x = CovRows::Dense { x: train.a.host("a")?, width: d.d_in as usize, ones: d.has_bias };
        let y = CovRows::Dense { x: train.b.host("b")?, width: d_out, ones: false };
        let c_a = kfac_cov_reference(&x, mask, rows, &pi, k_i, false);
        let c_b = kfac_cov_reference(&y, mask, rows, &po, k_o, false);
        Ok((c_a, c_b))
    }

    /// K-FAC from the covariances (row-major): eigendecompositions in f64,
    /// `λ = 0.1·mean(Λ_B Λ_Aᵀ)`.
    pub fn from_covariances(c_a: &[f64], k_i: usize, c_b: &[f64], k_o: usize) -> Result<Self> {
        check_rows("c_a", c_a.len(), k_i, k_i)?;
        check_rows("c_b", c_b.len(), k_o, k_o)?;
        let sq = |k: usize| (k as u64).saturating_mul(k as u64);
        reserve_working_set(
            &format!("the K-FAC eigendecompositions (four [{k_i}, {k_i}] and four [{k_o}, {k_o}] f64 matrices)"),
            sq(k_i).saturating_add(sq(k_o)).saturating_mul(4),
            8,
        )?;
        let evd = |c: &[f64], k: usize, what: &'static str| -> Result<(Mat<f64>, Vec<f64>)> {
            let e = mat_of(c, k)
                .self_adjoint_eigen(Side::Lower)
                .map_err(|e| GhostError::InvalidArgument { what, reason: format!("eigendecomposition failed: {e:?}") })?;
            let s = e.S().column_vector();
            Ok((e.U().to_owned(), (0..k).map(|i| s[i]).collect()))
        };
        let (q_a, eig_a) = evd(c_a, k_i, "c_a")?;
        let (q_b, eig_b) = evd(c_b, k_o, "c_b")?;
        let scale: Vec<f64> = (0..k_o * k_i).map(|x| eig_b[x / k_i] * eig_a[x % k_i]).collect();
        let mut f = Kfac { k_i, k_o, q_a, q_b, eig_a, eig_b, scale, lambda: 0.0 };
        f.lambda = f.default_damping()?;
        Ok(f)
    }

    /// [`from_covariances`](Self::from_covariances) of f32 covariances as accumulated by
    /// [`Context::kfac_covariances`](crate::Context::kfac_covariances) on any backend (widened
    /// to f64 and symmetrized as `(C + Cᵀ)/2`; the eigendecompositions run here, in f64).
    pub fn from_covariances_f32(c_a: &[f32], k_i: usize, c_b: &[f32], k_o: usize) -> Result<Self> {
        check_rows("c_a", c_a.len(), k_i, k_i)?;
        check_rows("c_b", c_b.len(), k_o, k_o)?;
        let sym = |c: &[f32], k: usize| -> Vec<f64> { (0..k * k).map(|x| 0.5 * (c[x] as f64 + c[(x % k) * k + x / k] as f64)).collect() };
        Self::from_covariances(&sym(c_a, k_i), k_i, &sym(c_b, k_o), k_o)
    }

    /// The eigenvectors `(Q_A [k_i, k_i], Q_B [k_o, k_o])`, row-major f32 with the eigenvectors
    /// as columns (in the order of [`eigenvalues`](Self::eigenvalues)): the `q_a`, `q_b` of
    /// [`Context::ekfac_eigen_correction`](crate::Context::ekfac_eigen_correction).
    pub fn eigenvectors_f32(&self) -> (Vec<f32>, Vec<f32>) {
        let flat = |q: &Mat<f64>, k: usize| -> Vec<f32> { (0..k * k).map(|x| q[(x / k, x % k)] as f32).collect() };
        (flat(&self.q_a, self.k_i), flat(&self.q_b, self.k_o))
    }

    /// EK-FAC from an accumulated `sum = Σ_n (Q_Bᵀ Ĝ_n Q_A)^{⊙2}` (`[k_o, k_i]` f32, e.g. from
    /// [`Context::ekfac_eigen_correction`](crate::Context::ekfac_eigen_correction) with `scale =
    /// 1` and this preconditioner's [`eigenvectors_f32`](Self::eigenvectors_f32)) over `n`
    /// samples: the scale becomes `sum / n` and `λ` 0.1·its mean, exactly as
    /// [`ekfac_correct`](Self::ekfac_correct) does from the gradients themselves.
    pub fn set_ekfac_sum(&mut self, sum: &[f32], n: usize) -> Result<()> {
        check_rows("ekfac sum", sum.len(), self.k_o, self.k_i)?;
        if n == 0 {
            return Err(GhostError::ZeroSize { what: "n" });
        }
        self.scale = sum.iter().map(|&x| x as f64 / n as f64).collect();
        self.lambda = self.default_damping()?;
        Ok(())
    }

    fn default_damping(&self) -> Result<f64> {
        let mean = self.scale.iter().sum::<f64>() / self.scale.len() as f64;
        if !mean.is_finite() || mean <= 0.0 {
            return Err(GhostError::InvalidArgument { what: "covariances", reason: format!("mean eigenvalue product {mean:e} is not positive") });
        }
        Ok(0.1 * mean)
    }

    /// `Q_Bᵀ Ĝ Q_A` of one flattened `ĝ`.
    fn rotate(&self, g: &[f32]) -> Mat<f64> {
        let gm = Mat::<f64>::from_fn(self.k_o, self.k_i, |o, i| g[o * self.k_i + i] as f64);
        self.q_b.transpose() * &gm * &self.q_a
    }

    /// EK-FAC: replaces `Λ_B Λ_Aᵀ` by `(1/N) Σ_n (Q_Bᵀ Ĝ_n Q_A)^{⊙2}` from the projected
    /// training gradients `grads [n, k_o·k_i]`; `λ` becomes 0.1·mean of those.
    pub fn ekfac_correct(&mut self, grads: &[f32], n: usize) -> Result<()> {
        let k = self.k_o * self.k_i;
        check_rows("grads", grads.len(), n, k)?;
        let mut s = vec![0.0f64; k];
        for g in grads.chunks_exact(k) {
            let r = self.rotate(g);
            for (x, v) in s.iter_mut().enumerate() {
                *v += r[(x / self.k_i, x % self.k_i)].powi(2) / n as f64;
            }
        }
        self.scale = s;
        self.lambda = self.default_damping()?;
        Ok(())
    }

    /// `λ`.
    pub fn damping(&self) -> f64 {
        self.lambda
    }

    /// Eigenvalues `(Λ_A, Λ_B)`, nondecreasing.
    pub fn eigenvalues(&self) -> (&[f64], &[f64]) {
        (&self.eig_a, &self.eig_b)
    }

    /// The diagonal in the Kronecker eigenbasis, `[o·k_i + i]` (without λ).
    pub fn eigenbasis_scale(&self) -> &[f64] {
        &self.scale
    }

    /// `vec(Q_Bᵀ Ĝ Q_A)`: a flattened `ĝ` expressed in the Kronecker eigenbasis (exposed for
    /// checks and for callers that score in that basis).
    pub fn to_eigenbasis(&self, g: &[f32]) -> Vec<f64> {
        let r = self.rotate(g);
        (0..self.k_o * self.k_i).map(|x| r[(x / self.k_i, x % self.k_i)]).collect()
    }

    /// `Ĝ' = Q_B[(Q_Bᵀ Ĝ Q_A) ⊘ (scale + λ)]Q_Aᵀ` for every row of `grads [n, k_o·k_i]`, f64.
    pub fn apply_f64(&self, grads: &[f32], n: usize) -> Result<Vec<f64>> {
        let k = self.k_o * self.k_i;
        check_rows("grads", grads.len(), n, k)?;
        let mut out = try_with_capacity(&format!("the preconditioned gradients ([{n}, {k}] f64)"), n * k)?;
        for g in grads.chunks_exact(k) {
            let r = self.rotate(g);
            let d = Mat::<f64>::from_fn(self.k_o, self.k_i, |o, i| r[(o, i)] / (self.scale[o * self.k_i + i] + self.lambda));
            let back = &self.q_b * &d * self.q_a.transpose();
            out.extend((0..k).map(|x| back[(x / self.k_i, x % self.k_i)]));
        }
        Ok(out)
    }

    /// [`apply_f64`](Self::apply_f64) rounded to f32.
    pub fn apply(&self, grads: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.apply_f64(grads, n)?.into_iter().map(|x| x as f32).collect())
    }
}

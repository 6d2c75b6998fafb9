//! Multinomial logistic regression solved towards its optimum: the mean cross-entropy of
//! softmax(X·Wᵀ + b) plus l2/2·‖W‖² is strictly convex in W, so it has one minimum (b is fixed
//! up to a common shift that the fit never moves: its gradient sums to zero), approached here by
//! L-BFGS with a backtracking line search until the gradient's norm is below a
//! tolerance (or an iteration cap). A fixed number of constant-rate Adam steps, the usual probe
//! fit, stops wherever its oscillation happens to be, and that point moves with the rounding of
//! floating-point sums (thread count, row order): probe accuracies then moved by whole facts.
//! Near the optimum they depend on the data, not on the arithmetic's order.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};

/// Settings of the fit.
#[derive(Clone, Copy, Debug)]
pub struct FitOpts {
    /// L2 penalty on the weights (on standardized features).
    pub l2: f64,
    /// Stop when the gradient's Euclidean norm is at most this.
    pub tol: f64,
    /// At most this many L-BFGS iterations.
    pub max_iters: usize,
}

impl Default for FitOpts {
    fn default() -> Self {
        FitOpts {
            l2: 1e-2,
            tol: 1e-6,
            max_iters: 400,
        }
    }
}

/// L-BFGS history length.
const MEMORY: usize = 10;

/// The objective over θ = (W row-major `classes × dim`, then b).
struct Objective {
    x: Tensor,
    onehot: Tensor,
    n: usize,
    d: usize,
    classes: usize,
    l2: f64,
}

impl Objective {
    fn new(xs: &[Vec<f64>], y: &[usize], classes: usize, l2: f64) -> Result<Objective> {
        let (n, d) = (xs.len(), xs[0].len());
        let dev = Device::Cpu;
        let mut onehot = vec![0f64; n * classes];
        for (i, &c) in y.iter().enumerate() {
            onehot[i * classes + c] = 1.0;
        }
        Ok(Objective {
            x: Tensor::from_vec(xs.concat(), (n, d), &dev)?,
            onehot: Tensor::from_vec(onehot, (n, classes), &dev)?,
            n,
            d,
            classes,
            l2,
        })
    }

    /// The loss and its gradient at θ.
    fn eval(&self, theta: &[f64]) -> Result<(f64, Vec<f64>)> {
        let cd = self.classes * self.d;
        let dev = Device::Cpu;
        let w = Tensor::from_slice(&theta[..cd], (self.classes, self.d), &dev)?;
        let b = Tensor::from_slice(&theta[cd..], self.classes, &dev)?;
        let z = self.x.matmul(&w.t()?)?.broadcast_add(&b)?;
        let z = z.broadcast_sub(&z.max_keepdim(D::Minus1)?)?;
        let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let logp = z.broadcast_sub(&lse)?;
        let ce = -((&logp * &self.onehot)?.sum_all()?.to_scalar::<f64>()?) / self.n as f64;
        let loss = ce + 0.5 * self.l2 * theta[..cd].iter().map(|v| v * v).sum::<f64>();
        let e = ((logp.exp()? - &self.onehot)? / self.n as f64)?;
        let gw = (e.t()?.matmul(&self.x)? + (w * self.l2)?)?;
        let mut g: Vec<f64> = gw.flatten_all()?.to_vec1()?;
        g.extend(e.sum(0)?.to_vec1::<f64>()?);
        Ok((loss, g))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A fitted regression.
pub struct Fitted {
    /// `classes × dim`, row-major.
    pub w: Vec<f64>,
    pub b: Vec<f64>,
    /// The gradient's norm where the fit stopped (at most the tolerance when it converged).
    pub grad_norm: f64,
}

/// The minimum of the regularized cross-entropy on standardized rows `xs` with labels `y`.
pub fn fit(xs: &[Vec<f64>], y: &[usize], classes: usize, o: FitOpts) -> Result<Fitted> {
    let obj = Objective::new(xs, y, classes, o.l2)?;
    let cd = classes * obj.d;
    let (theta, grad_norm) = minimize(|t| obj.eval(t), vec![0.0; cd + classes], o)?;
    Ok(Fitted {
        w: theta[..cd].to_vec(),
        b: theta[cd..].to_vec(),
        grad_norm,
    })
}

/// L-BFGS from `theta` until ‖∇‖ ≤ `o.tol`, the line search finds no decrease (rounding), or
/// `o.max_iters` iterations; returns the point and its gradient's norm.
fn minimize(
    f: impl Fn(&[f64]) -> Result<(f64, Vec<f64>)>,
    mut theta: Vec<f64>,
    o: FitOpts,
) -> Result<(Vec<f64>, f64)> {
    let (mut loss, mut g) = f(&theta)?;
    if !loss.is_finite() || g.iter().any(|v| !v.is_finite()) {
        bail!(
            "probe fit: the loss or its gradient is not finite at the start (non-finite features?)"
        );
    }
    let mut hist: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    for _ in 0..o.max_iters {
        let gnorm = dot(&g, &g).sqrt();
        if gnorm <= o.tol {
            return Ok((theta, gnorm));
        }
        // Two-loop recursion: dir = −H·g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, yv, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = hist
            .back()
            .map_or(1.0 / gnorm, |(s, yv, _)| dot(s, yv) / dot(yv, yv));
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, yv, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut dir: Vec<f64> = q.into_iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (rounding): restart from steepest descent.
            hist.clear();
            dir = g.iter().map(|v| -v / gnorm).collect();
            slope = -gnorm;
        }
        // Backtracking (Armijo) line search from the unit step.
        let mut step = 1.0;
        let (next, nloss, ng) = loop {
            let cand: Vec<f64> = theta.iter().zip(&dir).map(|(t, d)| t + step * d).collect();
            let (l, gr) = f(&cand)?;
            if l <= loss + 1e-4 * step * slope {
                break (cand, l, gr);
            }
            step *= 0.5;
            if step < 1e-20 {
                return Ok((theta, gnorm));
            }
        };
        let s: Vec<f64> = next.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = ng.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-12 * dot(&yv, &yv).sqrt() * dot(&s, &s).sqrt() {
            if hist.len() == MEMORY {
                hist.pop_front();
            }
            hist.push_back((s, yv, 1.0 / sy));
        }
        (theta, loss, g) = (next, nloss, ng);
    }
    let gnorm = dot(&g, &g).sqrt();
    Ok((theta, gnorm))
}

/// The loss and its gradient at θ (for tests).
#[cfg(test)]
fn loss_at(
    xs: &[Vec<f64>],
    y: &[usize],
    classes: usize,
    l2: f64,
    theta: &[f64],
) -> (f64, Vec<f64>) {
    Objective::new(xs, y, classes, l2)
        .unwrap()
        .eval(theta)
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn data(n: usize, d: usize, classes: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<usize>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let xs = (0..n)
            .map(|_| (0..d).map(|_| rng.random_range(-2.0..2.0)).collect())
            .collect();
        let y = (0..n).map(|i| (i * 7) % classes).collect();
        (xs, y)
    }

    /// The gradient is the loss's: central differences on every coordinate.
    #[test]
    fn gradient_matches_finite_differences() {
        let (xs, y) = data(9, 4, 3, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let theta: Vec<f64> = (0..15).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (_, g) = loss_at(&xs, &y, 3, 0.3, &theta);
        for k in 0..theta.len() {
            let h = 1e-6;
            let mut p = theta.clone();
            p[k] += h;
            let mut m = theta.clone();
            m[k] -= h;
            let fd = (loss_at(&xs, &y, 3, 0.3, &p).0 - loss_at(&xs, &y, 3, 0.3, &m).0) / (2.0 * h);
            assert!((fd - g[k]).abs() < 1e-7, "coordinate {k}: {fd} vs {}", g[k]);
        }
    }

    /// More dimensions than rows (separable, as probes on a residual stream are): the fit
    /// reaches the optimum, and the same rows in another order (other rounding) give the same
    /// weights — the optimum is unique, so the probe does not depend on summation order.
    #[test]
    fn fit_reaches_the_unique_optimum_whatever_the_row_order() {
        let (xs, y) = data(60, 80, 6, 3);
        let o = FitOpts::default();
        let Fitted { w, b, grad_norm } = fit(&xs, &y, 6, o).unwrap();
        assert!(grad_norm <= o.tol);
        let theta: Vec<f64> = w.iter().chain(&b).cloned().collect();
        let (_, g) = loss_at(&xs, &y, 6, o.l2, &theta);
        assert!(dot(&g, &g).sqrt() <= o.tol);
        let order: Vec<usize> = (0..60).rev().collect();
        let xr: Vec<Vec<f64>> = order.iter().map(|&i| xs[i].clone()).collect();
        let yr: Vec<usize> = order.iter().map(|&i| y[i]).collect();
        let Fitted { w: w2, b: b2, .. } = fit(&xr, &yr, 6, o).unwrap();
        let diff = w
            .iter()
            .chain(&b)
            .zip(w2.iter().chain(&b2))
            .map(|(a, c)| (a - c).abs())
            .fold(0.0, f64::max);
        let size = w.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(size > 0.05, "the fit moved the weights ({size})");
        assert!(diff < 1e-6, "two row orders give weights {diff} apart");
        // Every training row is classified correctly: separable data, a small penalty.
        let hits = xs
            .iter()
            .zip(&y)
            .filter(|(r, &c)| {
                let z: Vec<f64> = (0..6)
                    .map(|k| b[k] + dot(&w[k * 80..(k + 1) * 80], r))
                    .collect();
                (0..6).max_by(|&a, &b| z[a].total_cmp(&z[b])) == Some(c)
            })
            .count();
        assert_eq!(hits, 60);
    }

    #[test]
    fn non_finite_features_are_an_error() {
        let (mut xs, y) = data(10, 3, 2, 5);
        xs[4][1] = f64::NAN;
        let e = fit(&xs, &y, 2, FitOpts::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not finite"), "{e}");
    }
}

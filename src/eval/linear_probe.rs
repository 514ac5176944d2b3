//! Linear probe: multinomial logistic regression on frozen image features, as in the CLIP paper
//! (Radford et al. 2021, section 3.2 and appendix A.3, which used scikit-learn's L-BFGS logistic
//! regression).
//!
//! The model and objective are scikit-learn's `LogisticRegression(C=C, solver="lbfgs")`
//! (`sklearn/linear_model/_logistic.py` with `_loss/loss.py`): for `K > 2` classes a softmax over
//! `K` affine scores `z_c = w_c·x + b_c`; for `K = 2` a single score for the second class
//! (binary logistic, as sklearn does). It minimises
//!
//! `f(W, b) = (1/n) sum_i [ logsumexp(z_i) - z_{i,y_i} ] + ||W||^2 / (2 C n)`,
//!
//! which is sklearn's `C sum_i loss_i + ||W||^2 / 2` divided by `C n` (same minimiser); the
//! intercepts are not penalised. Solved by L-BFGS (Nocedal & Wright, *Numerical Optimization*,
//! algorithm 7.4, memory 10) with a backtracking Armijo line search, stopping like scipy's
//! L-BFGS-B as sklearn calls it: `max_j |grad_j| <= tol` or a relative decrease of `f` below
//! `64 eps`.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{check_count, rows_of, EvalError, Result};

/// Settings of the linear probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeConfig {
    /// Inverse L2 regularisation strength (sklearn's `C`); must be > 0.
    pub c: f64,
    /// Maximum L-BFGS iterations (sklearn's `max_iter`).
    pub max_iter: usize,
    /// Gradient tolerance on the scaled objective (sklearn's `tol`).
    pub tol: f64,
}

impl Default for LinearProbeConfig {
    /// sklearn's defaults as the CLIP paper's probe used them: `C = 1`, `max_iter = 1000`,
    /// `tol = 1e-4`.
    fn default() -> Self {
        LinearProbeConfig {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-4,
        }
    }
}

/// A fitted logistic regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticRegression {
    /// The distinct training labels, ascending (sklearn's `classes_`).
    pub classes: Vec<usize>,
    /// Feature dimension.
    pub dim: usize,
    /// Weights, `rows x dim` row-major, `rows = 1` for two classes else `classes.len()`
    /// (sklearn's `coef_`).
    pub coef: Vec<f64>,
    /// One intercept per weight row (sklearn's `intercept_`).
    pub intercept: Vec<f64>,
    /// L-BFGS iterations run.
    pub iterations: usize,
    /// Whether the stopping test was met before `max_iter`.
    pub converged: bool,
}

/// Linear-probe results on a test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeReport {
    /// Fraction of test samples whose predicted class is their label.
    pub accuracy: f64,
    /// The `C` used.
    pub c: f64,
    /// L-BFGS iterations.
    pub iterations: usize,
    /// Whether L-BFGS converged.
    pub converged: bool,
    /// Training samples.
    pub train: usize,
    /// Test samples.
    pub test: usize,
}

/// Training problem in f64 with the class of each sample as an index into `classes`.
struct Problem {
    x: Vec<f64>,
    y: Vec<usize>,
    n: usize,
    d: usize,
    /// Number of classes.
    k: usize,
    /// Weight rows: 1 for binary, `k` otherwise.
    rows: usize,
    c: f64,
}

impl Problem {
    /// Scores `z` (length `k`) of sample features `x` under parameters `theta`.
    fn scores(&self, theta: &[f64], x: &[f64], z: &mut [f64]) {
        let (d, rows) = (self.d, self.rows);
        let (w, b) = theta.split_at(rows * d);
        let off = self.k - rows; // binary: class 0 has the fixed score 0
        z[..off].fill(0.0);
        for r in 0..rows {
            z[off + r] = dot64(&w[r * d..(r + 1) * d], x) + b[r];
        }
    }

    /// Objective value and gradient.
    fn eval(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (d, rows, k) = (self.d, self.rows, self.k);
        let off = k - rows;
        let chunk = 256;
        let partial: Vec<(f64, Vec<f64>)> = (0..self.n.div_ceil(chunk))
            .into_par_iter()
            .map(|ci| {
                let mut g = vec![0f64; rows * (d + 1)];
                let mut loss = 0.0;
                let mut z = vec![0f64; k];
                for i in ci * chunk..((ci + 1) * chunk).min(self.n) {
                    let x = &self.x[i * d..(i + 1) * d];
                    self.scores(theta, x, &mut z);
                    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
                    let lse = m + sum.ln();
                    loss += lse - z[self.y[i]];
                    for r in 0..rows {
                        let cls = off + r;
                        let p = (z[cls] - lse).exp() - f64::from(u8::from(cls == self.y[i]));
                        let gw = &mut g[r * d..(r + 1) * d];
                        for (gj, xj) in gw.iter_mut().zip(x) {
                            *gj += p * xj;
                        }
                        g[rows * d + r] += p;
                    }
                }
                (loss, g)
            })
            .collect();
        grad.fill(0.0);
        let mut loss = 0.0;
        for (l, g) in partial {
            loss += l;
            for (a, b) in grad.iter_mut().zip(&g) {
                *a += b;
            }
        }
        let n = self.n as f64;
        let reg = 1.0 / (self.c * n);
        let w = &theta[..rows * d];
        for v in grad.iter_mut() {
            *v /= n;
        }
        for (gj, wj) in grad[..rows * d].iter_mut().zip(w) {
            *gj += reg * wj;
        }
        loss / n + 0.5 * reg * w.iter().map(|v| v * v).sum::<f64>()
    }
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = a.len() / 4;
    for c in 0..chunks {
        for l in 0..4 {
            acc[l] += a[c * 4 + l] * b[c * 4 + l];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for i in chunks * 4..a.len() {
        s += a[i] * b[i];
    }
    s
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `f` by L-BFGS from `theta`; returns (iterations, converged).
fn lbfgs(p: &Problem, theta: &mut [f64], max_iter: usize, tol: f64) -> (usize, bool) {
    const MEMORY: usize = 10;
    let dim = theta.len();
    let mut g = vec![0f64; dim];
    let mut f = p.eval(theta, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut new_theta = vec![0f64; dim];
    let mut new_g = vec![0f64; dim];
    let max_abs = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs()));
    for iter in 0..max_iter {
        if max_abs(&g) <= tol {
            return (iter, true);
        }
        // Two-loop recursion: direction = -H g.
        let mut q = g.clone();
        let mut alpha = vec![0f64; s_hist.len()];
        for t in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[t], &s_hist[t]);
            alpha[t] = rho * dot(&s_hist[t], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[t]) {
                *qj -= alpha[t] * yj;
            }
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y),
            _ => 1.0 / max_abs(&g).max(1e-12).max(dot(&g, &g).sqrt()),
        };
        for v in q.iter_mut() {
            *v *= gamma;
        }
        for t in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[t], &s_hist[t]);
            let beta = rho * dot(&y_hist[t], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[t]) {
                *qj += (alpha[t] - beta) * sj;
            }
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (should not happen for a convex objective): restart.
            s_hist.clear();
            y_hist.clear();
            dir = g.iter().map(|v| -v).collect();
            slope = dot(&g, &dir);
        }
        // Backtracking line search with the Armijo condition.
        let mut step = 1.0;
        let mut new_f = f;
        let mut accepted = false;
        for _ in 0..50 {
            for j in 0..dim {
                new_theta[j] = theta[j] + step * dir[j];
            }
            new_f = p.eval(&new_theta, &mut new_g);
            // `new_f < f` as well: near the rounding floor `f + 1e-4 step slope` rounds to `f`.
            if new_f.is_finite() && new_f <= f + 1e-4 * step * slope && new_f < f {
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            return (iter, max_abs(&g) <= tol);
        }
        let s: Vec<f64> = (0..dim).map(|j| new_theta[j] - theta[j]).collect();
        let y: Vec<f64> = (0..dim).map(|j| new_g[j] - g[j]).collect();
        if dot(&s, &y) > 1e-12 * dot(&y, &y).max(1e-300) {
            if s_hist.len() == MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
        }
        theta.copy_from_slice(&new_theta);
        g.copy_from_slice(&new_g);
        f = new_f;
    }
    (max_iter, max_abs(&g) <= tol)
}

impl LogisticRegression {
    /// Fits on `x` (`n x dim`, row-major) with labels `y` (any `usize` values; at least two
    /// distinct ones).
    pub fn fit(x: &[f32], dim: usize, y: &[usize], config: &LinearProbeConfig) -> Result<Self> {
        let n = rows_of("training features", x, dim)?;
        check_count("training labels", y.len(), n)?;
        if !(config.c > 0.0 && config.c.is_finite()) {
            return Err(EvalError::BadParameter {
                what: "C",
                must: "a finite number > 0",
                got: config.c,
            });
        }
        let mut classes = y.to_vec();
        classes.sort_unstable();
        classes.dedup();
        if classes.len() < 2 {
            return Err(EvalError::TooFewClasses {
                classes: classes.len(),
            });
        }
        let k = classes.len();
        let rows = if k == 2 { 1 } else { k };
        let yi = y
            .iter()
            .map(|l| {
                classes
                    .binary_search(l)
                    .expect("label is among the classes")
            })
            .collect();
        let problem = Problem {
            x: x.iter().map(|&v| v as f64).collect(),
            y: yi,
            n,
            d: dim,
            k,
            rows,
            c: config.c,
        };
        let mut theta = vec![0f64; rows * (dim + 1)];
        let (iterations, converged) = lbfgs(&problem, &mut theta, config.max_iter, config.tol);
        let intercept = theta.split_off(rows * dim);
        Ok(LogisticRegression {
            classes,
            dim,
            coef: theta,
            intercept,
            iterations,
            converged,
        })
    }

    /// Class probabilities, `n x classes.len()` row-major (sklearn's `predict_proba`).
    pub fn predict_proba(&self, x: &[f32]) -> Result<Vec<f64>> {
        let n = rows_of("features", x, self.dim)?;
        let k = self.classes.len();
        let mut out = vec![0f64; n * k];
        let mut z = vec![0f64; k];
        let mut xf = vec![0f64; self.dim];
        for i in 0..n {
            for (a, &b) in xf.iter_mut().zip(&x[i * self.dim..(i + 1) * self.dim]) {
                *a = b as f64;
            }
            self.scores(&xf, &mut z);
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
            for c in 0..k {
                out[i * k + c] = (z[c] - m).exp() / sum;
            }
        }
        Ok(out)
    }

    fn scores(&self, x: &[f64], z: &mut [f64]) {
        let rows = self.intercept.len();
        let off = self.classes.len() - rows;
        z[..off].fill(0.0);
        for r in 0..rows {
            z[off + r] = dot64(&self.coef[r * self.dim..(r + 1) * self.dim], x) + self.intercept[r];
        }
    }

    /// Predicted labels (highest score; ties go to the lower class, as `np.argmax`).
    pub fn predict(&self, x: &[f32]) -> Result<Vec<usize>> {
        let n = rows_of("features", x, self.dim)?;
        let k = self.classes.len();
        let mut z = vec![0f64; k];
        let mut xf = vec![0f64; self.dim];
        Ok((0..n)
            .map(|i| {
                for (a, &b) in xf.iter_mut().zip(&x[i * self.dim..(i + 1) * self.dim]) {
                    *a = b as f64;
                }
                self.scores(&xf, &mut z);
                let best = (1..k).fold(0, |b, c| if z[c] > z[b] { c } else { b });
                self.classes[best]
            })
            .collect())
    }
}

/// Fits on the train split and reports accuracy on the test split.
pub fn linear_probe(
    train_x: &[f32],
    train_y: &[usize],
    test_x: &[f32],
    test_y: &[usize],
    dim: usize,
    config: &LinearProbeConfig,
) -> Result<LinearProbeReport> {
    let model = LogisticRegression::fit(train_x, dim, train_y, config)?;
    let pred = model.predict(test_x)?;
    check_count("test labels", test_y.len(), pred.len())?;
    let correct = pred.iter().zip(test_y).filter(|(p, y)| p == y).count();
    Ok(LinearProbeReport {
        accuracy: correct as f64 / pred.len() as f64,
        c: config.c,
        iterations: model.iterations,
        converged: model.converged,
        train: train_y.len(),
        test: test_y.len(),
    })
}

/// The CLIP paper's hyper-parameter search: fits one probe per `C` in `cs` on `train`, scores it
/// on `validation`, and returns `(best C, [(C, validation accuracy)])`. The best is the highest
/// accuracy, the smaller `C` (stronger regularisation) among equals. The caller then fits with
/// the best `C` (typically on train + validation) and scores on the test split.
///
/// [`log_space`] gives the paper's grid (`log_space(1e-6, 1e6, 96)`), which is costly; a coarse
/// grid such as `log_space(1e-3, 1e3, 7)` is a reasonable first pass.
pub fn sweep_c(
    train: (&[f32], &[usize]),
    validation: (&[f32], &[usize]),
    dim: usize,
    cs: &[f64],
    base: &LinearProbeConfig,
) -> Result<(f64, Vec<(f64, f64)>)> {
    if cs.is_empty() {
        return Err(EvalError::Empty { what: "the C grid" });
    }
    let mut results = Vec::with_capacity(cs.len());
    for &c in cs {
        let config = LinearProbeConfig { c, ..*base };
        let r = linear_probe(train.0, train.1, validation.0, validation.1, dim, &config)?;
        results.push((c, r.accuracy));
    }
    let best = results
        .iter()
        .fold(None::<(f64, f64)>, |best, &(c, a)| match best {
            Some((bc, ba)) if ba > a || (ba == a && bc <= c) => Some((bc, ba)),
            _ => Some((c, a)),
        })
        .map(|(c, _)| c)
        .expect("non-empty grid");
    Ok((best, results))
}

/// `count` values spaced evenly in log scale from `lo` to `hi` inclusive (`np.logspace`).
pub fn log_space(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let (a, b) = (lo.log10(), hi.log10());
    match count {
        0 => Vec::new(),
        1 => vec![lo],
        _ => (0..count)
            .map(|i| 10f64.powf(a + (b - a) * i as f64 / (count - 1) as f64))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        for k in [2usize, 3] {
            let x: Vec<f64> = (0..12).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3).collect();
            let y: Vec<usize> = (0..6).map(|i| i % k).collect();
            let rows = if k == 2 { 1 } else { k };
            let p = Problem {
                x,
                y,
                n: 6,
                d: 2,
                k,
                rows,
                c: 0.7,
            };
            let theta: Vec<f64> = (0..rows * 3).map(|i| (i as f64 - 2.0) * 0.1).collect();
            let mut g = vec![0.0; theta.len()];
            p.eval(&theta, &mut g);
            for j in 0..theta.len() {
                let (mut a, mut b) = (theta.clone(), theta.clone());
                a[j] += 1e-6;
                b[j] -= 1e-6;
                let mut tmp = vec![0.0; theta.len()];
                let fd = (p.eval(&a, &mut tmp) - p.eval(&b, &mut tmp)) / 2e-6;
                assert!((fd - g[j]).abs() < 1e-7, "k={k} j={j}: {fd} vs {}", g[j]);
            }
        }
    }

    #[test]
    fn separable_classes_are_learned() {
        // Three clusters on the axes of the plane and the diagonal.
        let pts = [
            (1.0, 0.1, 0),
            (0.9, -0.1, 0),
            (0.1, 1.0, 1),
            (-0.1, 0.9, 1),
            (-1.0, -1.0, 7),
            (-0.8, -1.1, 7),
        ];
        let x: Vec<f32> = pts.iter().flat_map(|p| [p.0, p.1]).collect();
        let y: Vec<usize> = pts.iter().map(|p| p.2).collect();
        let m = LogisticRegression::fit(&x, 2, &y, &LinearProbeConfig::default()).unwrap();
        assert!(m.converged);
        assert_eq!(m.classes, vec![0, 1, 7]);
        assert_eq!(m.predict(&x).unwrap(), y);
        let p = m.predict_proba(&x).unwrap();
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert!(matches!(
            LogisticRegression::fit(&x, 2, &[3; 6], &LinearProbeConfig::default()),
            Err(EvalError::TooFewClasses { classes: 1 })
        ));
    }

    #[test]
    fn log_space_matches_numpy() {
        let v = log_space(1e-2, 1e2, 5);
        for (a, b) in v.iter().zip([1e-2, 1e-1, 1.0, 1e1, 1e2]) {
            assert!((a / b - 1.0).abs() < 1e-12);
        }
    }
}

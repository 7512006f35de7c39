//! A minimal dense tensor (row-major, shape + flat buffer) generic over `f32`/`f64`.
//!
//! Folding and the reference executor are written once over [`Real`] so the same code
//! runs in fp32 (what ships) and fp64 (to show the folds are exact, not merely close).

use std::fmt::{Debug, Display};

/// Floating-point element type of tensors: `f32` or `f64`.
pub trait Real:
    num_traits::Float + Default + Debug + Display + Send + Sync + std::iter::Sum + 'static
{
    /// `c = a (m×k) · b (k×n) + beta·c`, all row-major.
    fn gemm(m: usize, k: usize, n: usize, a: &[Self], b: &[Self], beta: Self, c: &mut [Self]);
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    fn gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        // SAFETY: the slices hold at least m·k, k·n and m·n elements (checked above) and
        // the strides describe dense row-major matrices inside them.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn gemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], beta: f64, c: &mut [f64]) {
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        // SAFETY: as for f32 above.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<F = f32> {
    pub shape: Vec<usize>,
    pub data: Vec<F>,
}

impl<F: Real> Tensor<F> {
    pub fn new(shape: Vec<usize>, data: Vec<F>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not match {} elements",
            data.len()
        );
        Self { shape, data }
    }
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, F::zero())
    }
    pub fn full(shape: &[usize], v: F) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![v; shape.iter().product()],
        }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn cast<G: Real>(&self) -> Tensor<G> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| G::from_f64(v.to_f64())).collect(),
        }
    }
    pub fn max_abs(&self) -> F {
        self.data.iter().fold(F::zero(), |m, v| m.max(v.abs()))
    }
    /// Largest element-wise |a − b|; shapes must match.
    pub fn max_abs_diff(&self, other: &Self) -> F {
        assert_eq!(self.shape, other.shape);
        self.data
            .iter()
            .zip(&other.data)
            .fold(F::zero(), |m, (a, b)| m.max((*a - *b).abs()))
    }
    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}

pub use overparam_base::Rng;

/// Random tensors from the shared [`Rng`] (an extension trait: the Rng lives in
/// `overparam-base`, which knows nothing of tensors).
pub trait RandomTensor {
    fn normal_tensor<F: Real>(&mut self, shape: &[usize], std: f64) -> Tensor<F>;
    fn uniform_tensor<F: Real>(&mut self, shape: &[usize], lo: f64, hi: f64) -> Tensor<F>;
}

impl RandomTensor for Rng {
    fn normal_tensor<F: Real>(&mut self, shape: &[usize], std: f64) -> Tensor<F> {
        let n = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|_| F::from_f64(self.normal() * std)).collect(),
        )
    }
    fn uniform_tensor<F: Real>(&mut self, shape: &[usize], lo: f64, hi: f64) -> Tensor<F> {
        let n = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n)
                .map(|_| F::from_f64(self.uniform_in(lo, hi)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        let mut r = Rng::new(1);
        let (m, k, n) = (3, 5, 4);
        let a: Tensor<f64> = r.normal_tensor(&[m, k], 1.0);
        let b: Tensor<f64> = r.normal_tensor(&[k, n], 1.0);
        let mut c = vec![0.0; m * n];
        f64::gemm(m, k, n, &a.data, &b.data, 0.0, &mut c);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a.data[i * k + p] * b.data[p * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn rng_is_deterministic_and_label_dependent() {
        let a: Vec<u64> = (0..4).map(|_| Rng::derive(3, "x").next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::derive(3, "x").next_u64(),
            Rng::derive(3, "y").next_u64()
        );
        let mut r = Rng::new(9);
        let xs: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}

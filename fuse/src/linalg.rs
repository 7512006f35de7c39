//! Small dense f64 matrices and the thin SVD used by spectral initialisation and R3 expansion.

/// Row-major f64 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(rows * cols, data.len());
        Self { rows, cols, data }
    }
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self::new(rows, cols, vec![0.0; rows * cols])
    }
    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }
    pub fn set(&mut self, r: usize, c: usize, v: f64) {
        self.data[r * self.cols + c] = v;
    }
    pub fn matmul(&self, b: &Mat) -> Mat {
        assert_eq!(self.cols, b.rows, "matmul inner dimensions");
        Mat::new(
            self.rows,
            b.cols,
            crate::fold::matmul(self.rows, self.cols, b.cols, &self.data, &b.data),
        )
    }
    pub fn t(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.set(c, r, self.at(r, c));
            }
        }
        out
    }
    /// Multiplies column j by `s[j]`.
    pub fn scale_cols(&self, s: &[f64]) -> Mat {
        let mut out = self.clone();
        for row in out.data.chunks_mut(self.cols) {
            row.iter_mut().zip(s).for_each(|(v, f)| *v *= f);
        }
        out
    }
    /// Overwrites the top-left block with `src`.
    pub fn put(&mut self, src: &Mat) {
        assert!(
            src.rows <= self.rows && src.cols <= self.cols,
            "block does not fit"
        );
        for r in 0..src.rows {
            self.data[r * self.cols..r * self.cols + src.cols]
                .copy_from_slice(&src.data[r * src.cols..(r + 1) * src.cols]);
        }
    }
    /// Multiplies row i by `s[i]`.
    pub fn scale_rows(&self, s: &[f64]) -> Mat {
        let mut out = self.clone();
        for (r, row) in out.data.chunks_mut(self.cols).enumerate() {
            row.iter_mut().for_each(|v| *v *= s[r]);
        }
        out
    }
    pub fn scaled(&self, a: f64) -> Mat {
        Mat::new(
            self.rows,
            self.cols,
            self.data.iter().map(|v| v * a).collect(),
        )
    }
    pub fn diag(s: &[f64]) -> Mat {
        let mut out = Mat::zeros(s.len(), s.len());
        for (i, v) in s.iter().enumerate() {
            out.set(i, i, *v);
        }
        out
    }
    /// Vertical concatenation.
    pub fn vstack(ms: &[&Mat]) -> Mat {
        let cols = ms[0].cols;
        assert!(ms.iter().all(|m| m.cols == cols));
        let data = ms.iter().flat_map(|m| m.data.iter().copied()).collect();
        Mat::new(ms.iter().map(|m| m.rows).sum(), cols, data)
    }
    /// Horizontal concatenation.
    pub fn hstack(ms: &[&Mat]) -> Mat {
        Mat::vstack(
            &ms.iter()
                .map(|m| m.t())
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>(),
        )
        .t()
    }
    pub fn rms(&self) -> f64 {
        (self.data.iter().map(|v| v * v).sum::<f64>() / self.data.len().max(1) as f64).sqrt()
    }
    pub fn frobenius(&self) -> f64 {
        self.data.iter().map(|v| v * v).sum::<f64>().sqrt()
    }
}

/// Thin SVD `A = P·diag(s)·Qt`: P is rows×r, Qt is r×cols, r = min(rows, cols),
/// singular values in descending order.
///
/// Fast path: the symmetric eigendecomposition of the smaller Gram matrix (O(r²·n) with a
/// GEMM, instead of a bidiagonal SVD of the whole matrix, which took ~50 s for a ResNet-50
/// here). The other side follows as `Qt = Σ⁻¹·Pᵀ·A`, so `P·Σ·Qt = P·Pᵀ·A = A` to rounding
/// whatever the conditioning. Ill-conditioned inputs (σ_min < 1e-6·σ_max), where the
/// derived side would lose orthogonality, fall back to nalgebra's SVD.
pub fn svd(a: &Mat) -> (Mat, Vec<f64>, Mat) {
    if a.rows > a.cols {
        let (p, s, qt) = svd(&a.t());
        return (qt.t(), s, p.t());
    }
    let gram = a.matmul(&a.t());
    let eig = nalgebra::DMatrix::from_row_slice(gram.rows, gram.cols, &gram.data).symmetric_eigen();
    let r = a.rows;
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&i, &j| eig.eigenvalues[j].total_cmp(&eig.eigenvalues[i]));
    let s: Vec<f64> = order
        .iter()
        .map(|&i| eig.eigenvalues[i].max(0.0).sqrt())
        .collect();
    if r == 0 || s[r - 1] < 1e-6 * s[0] {
        return svd_exact(a);
    }
    let mut p = Mat::zeros(r, r);
    for (k, &i) in order.iter().enumerate() {
        for row in 0..r {
            p.set(row, k, eig.eigenvectors[(row, i)]);
        }
    }
    let inv: Vec<f64> = s.iter().map(|x| 1.0 / x).collect();
    let qt = p.t().matmul(a).scale_rows(&inv);
    (p, s, qt)
}

/// nalgebra's one-sided SVD (slow, robust to rank deficiency).
pub fn svd_exact(a: &Mat) -> (Mat, Vec<f64>, Mat) {
    let m = nalgebra::DMatrix::from_row_slice(a.rows, a.cols, &a.data);
    let res = m.svd(true, true);
    let u = res.u.expect("u requested");
    let vt = res.v_t.expect("v_t requested");
    let r = res.singular_values.len();
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&i, &j| res.singular_values[j].total_cmp(&res.singular_values[i]));
    let mut p = Mat::zeros(a.rows, r);
    let mut qt = Mat::zeros(r, a.cols);
    let mut s = Vec::with_capacity(r);
    for (k, &i) in order.iter().enumerate() {
        s.push(res.singular_values[i]);
        for row in 0..a.rows {
            p.set(row, k, u[(row, i)]);
        }
        for col in 0..a.cols {
            qt.set(k, col, vt[(i, col)]);
        }
    }
    (p, s, qt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    #[test]
    fn svd_reconstructs_wide_and_tall() {
        let mut rng = Rng::new(4);
        for (r, c) in [(3, 7), (7, 3), (5, 5)] {
            let a = Mat::new(r, c, (0..r * c).map(|_| rng.normal()).collect());
            let (p, s, qt) = svd(&a);
            let back = p.scale_cols(&s).matmul(&qt);
            let err = back
                .data
                .iter()
                .zip(&a.data)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "{r}x{c}: {err}");
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
            let orth = qt.matmul(&qt.t());
            for i in 0..orth.rows {
                for j in 0..orth.cols {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((orth.at(i, j) - want).abs() < 1e-9, "Q not orthonormal");
                }
            }
        }
    }

    #[test]
    fn rank_deficient_input_falls_back_and_reconstructs() {
        let mut rng = Rng::new(5);
        let b = Mat::new(4, 2, (0..8).map(|_| rng.normal()).collect());
        let c = Mat::new(2, 6, (0..12).map(|_| rng.normal()).collect());
        let a = b.matmul(&c); // rank 2
        let (p, s, qt) = svd(&a);
        assert!(s[2] < 1e-10 * s[0]);
        let back = p.scale_cols(&s).matmul(&qt);
        let err = back
            .data
            .iter()
            .zip(&a.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "{err}");
    }
}

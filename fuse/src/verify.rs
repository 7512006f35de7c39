//! Fold verification.
//!
//! **The verdict** ("the fold is exact") is decided in f64 on the CPU by the reference executor:
//! the trained weights are widened to f64, folded in f64, and the folded network is compared
//! with the unfolded one in eval mode, per conv block (same input into both) and end to end,
//! against [`EXACT_TOLERANCE`]. Nothing in it depends on the machine's SIMD kernels, on
//! libtorch, or on the device that trained the model, so the same checkpoint gets the same
//! verdict everywhere (DESIGN.md §8).
//!
//! **Reduced precisions are measurements.** The deploy model's outputs in fp32 on this CPU, in
//! simulated TF32 / BF16 / FP16 (weights and every activation rounded to that mantissa between
//! layers, see [`Precision::round`]), and on a training device (see `overparam-train`) are
//! compared with the same f64 reference and reported next to a first-order bound
//! ([`Measured::bound`]); a correct fold never fails because of them.
//!
//! The shipped fp32 weights are the f64 fold rounded once to f32, i.e. the correctly rounded
//! exact fold, not an fp32 re-computation with its own rounding.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::exec::{ConvEval, outputs_of, run_all, run_all_with};
use crate::fold::{Weights, fold};
use crate::spec::{ConvLike, DeploySpec, Graph, INPUT, Op, TrainSpec};
use crate::tensor::{RandomTensor, Real, Rng, Tensor};

/// The exactness tolerance, relative to the largest |y| of a block or output. f64 rounding of a
/// few hundred layers of dot products stays below ~1e-12 on the networks here (the folds'
/// own arithmetic, one SVD-free product chain per conv, adds a few ulps); 1e-9 leaves three
/// orders of margin and is still ~10⁵× below fp32's unit roundoff, so a real fold error
/// (a wrong pad, a missed BN, a transposed factor) cannot hide under it.
pub const EXACT_TOLERANCE: f64 = 1e-9;

/// Error of one block or output: `rel = max|Δ| / max|y|`, in f64. A non-finite value in
/// either tensor makes every field NaN, so a NaN can never pass a `rel <= tol` check.
#[derive(Clone, Debug, Serialize)]
pub struct Deviation {
    pub name: String,
    pub max_abs: f64,
    pub max_ref: f64,
    pub rel: f64,
}

impl Deviation {
    pub fn between<F: Real, G: Real>(name: &str, reference: &Tensor<F>, got: &Tensor<G>) -> Self {
        let nan = Self {
            name: name.to_string(),
            max_abs: f64::NAN,
            max_ref: f64::NAN,
            rel: f64::NAN,
        };
        if reference.shape != got.shape {
            return nan;
        }
        let (mut max_abs, mut max_ref) = (0f64, 0f64);
        for (r, g) in reference.data.iter().zip(&got.data) {
            let (r, g) = (Real::to_f64(*r), Real::to_f64(*g));
            if !r.is_finite() || !g.is_finite() {
                return nan;
            }
            max_abs = max_abs.max((r - g).abs());
            max_ref = max_ref.max(r.abs());
        }
        Self {
            name: name.to_string(),
            max_abs,
            max_ref,
            rel: if max_ref > 0.0 {
                max_abs / max_ref
            } else {
                max_abs
            },
        }
    }
    fn passes(&self, tol: f64) -> bool {
        self.rel <= tol
    }
}

fn worst(d: &[Deviation]) -> Option<&Deviation> {
    // NaN ranks worst.
    d.iter().max_by(|a, b| {
        let key = |x: &Deviation| if x.rel.is_nan() { f64::INFINITY } else { x.rel };
        key(a).total_cmp(&key(b))
    })
}

/// Per-block and end-to-end deviations of a deploy model from its train model.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub precision: &'static str,
    pub batch: usize,
    pub blocks: Vec<Deviation>,
    pub outputs: Vec<Deviation>,
    pub block_tolerance: f64,
    pub output_tolerance: f64,
}

impl Verification {
    pub fn worst_block(&self) -> Option<&Deviation> {
        worst(&self.blocks)
    }
    pub fn worst_output(&self) -> Option<&Deviation> {
        worst(&self.outputs)
    }
    pub fn passed(&self) -> bool {
        self.passed_for(&|_| true)
    }
    /// Every block within tolerance, and the outputs that `checked` names (a single-task
    /// baseline's untrained heads say nothing about the fold).
    pub fn passed_for(&self, checked: &dyn Fn(&str) -> bool) -> bool {
        self.blocks.iter().all(|d| d.passes(self.block_tolerance))
            && self
                .outputs
                .iter()
                .filter(|d| checked(&d.name))
                .all(|d| d.passes(self.output_tolerance))
    }
}

/// Tolerances by element type, for [`verify_fold`] on synthetic weights in tests: f64 uses
/// [`EXACT_TOLERANCE`]; fp32 (per block 1e-5·max|y|, end to end 1e-4) is a property test of
/// random inits, never the gate of a trained model (that is [`fold_verified`]).
pub fn tolerances<F: Real>() -> (f64, f64, &'static str) {
    if std::mem::size_of::<F>() == 4 {
        (1e-5, 1e-4, "fp32")
    } else {
        (EXACT_TOLERANCE, EXACT_TOLERANCE, "fp64")
    }
}

/// The seeded random verification batch for a spec, N(0, 1) per element (inputs are
/// normalised images, so that is their scale).
pub fn verification_input<C>(g: &Graph<C>, batch: usize, seed: u64) -> Tensor<f64> {
    let i = &g.input;
    Rng::derive(seed, "verify.input").normal_tensor(&[batch, i.channels, i.height, i.width], 1.0)
}

/// Compares a deploy model with its train model in eval mode on a seeded random batch, in the
/// element type of the weights given.
pub fn verify_fold<F: Real>(
    train: &TrainSpec,
    train_w: &Weights<F>,
    deploy: &DeploySpec,
    deploy_w: &Weights<F>,
    batch: usize,
    seed: u64,
) -> Result<Verification> {
    let x: Tensor<F> = verification_input(train, batch.max(1), seed).cast();
    let acts = run_all(train, train_w, &x)?;
    let (blocks, outputs) = compare(train, &acts, deploy, deploy_w, &x)?;
    let (block_tolerance, output_tolerance, precision) = tolerances::<F>();
    Ok(Verification {
        precision,
        batch: batch.max(1),
        blocks,
        outputs,
        block_tolerance,
        output_tolerance,
    })
}

/// Compares an expanded train model (eval mode) with the plain model it was expanded from, in
/// f64 on a seeded random batch, per conv block (the plain model's block input into both) and
/// end to end, against [`EXACT_TOLERANCE`]: the verdict of `init --from`.
pub fn verify_expansion(
    plain: &DeploySpec,
    plain_w: &Weights<f32>,
    expanded: &TrainSpec,
    expanded_w: &Weights<f32>,
    batch: usize,
    seed: u64,
) -> Result<Verification> {
    let widen = |w: &Weights<f32>| -> Weights<f64> {
        w.iter().map(|(k, v)| (k.clone(), v.cast())).collect()
    };
    let (pw, ew) = (widen(plain_w), widen(expanded_w));
    let x = verification_input(plain, batch.max(1), seed);
    let acts = run_all(plain, &pw, &x)?;
    let mut blocks = Vec::new();
    for (pn, en) in plain.nodes.iter().zip(&expanded.nodes) {
        if let Op::Conv(tc) = &en.op {
            let input = &acts[&pn.inputs[0]];
            let got = ConvEval::<f64>::eval(tc, en.prefix(), input, &ew)?;
            blocks.push(Deviation::between(&pn.name, &acts[&pn.name], &got));
        }
    }
    let expanded_out = crate::exec::run(expanded, &ew, &x)?;
    let outputs = plain
        .outputs
        .iter()
        .zip(&expanded_out)
        .map(|(o, (_, got))| Deviation::between(&o.name, &acts[&o.node], got))
        .collect();
    Ok(Verification {
        precision: "fp64",
        batch: batch.max(1),
        blocks,
        outputs,
        block_tolerance: EXACT_TOLERANCE,
        output_tolerance: EXACT_TOLERANCE,
    })
}

fn compare<F: Real>(
    train: &TrainSpec,
    acts: &crate::exec::Activations<F>,
    deploy: &DeploySpec,
    deploy_w: &Weights<F>,
    x: &Tensor<F>,
) -> Result<(Vec<Deviation>, Vec<Deviation>)> {
    let mut blocks = Vec::new();
    for (tn, dn) in train.nodes.iter().zip(&deploy.nodes) {
        if let Op::Conv(dc) = &dn.op {
            let input = &acts[&tn.inputs[0]];
            let want = &acts[&tn.name];
            let got = ConvEval::<F>::eval(dc, dn.prefix(), input, deploy_w)?;
            blocks.push(Deviation::between(&tn.name, want, &got));
        }
    }
    let deployed = crate::exec::run(deploy, deploy_w, x)?;
    let outputs = train
        .outputs
        .iter()
        .zip(&deployed)
        .map(|(o, (_, got))| Deviation::between(&o.name, &acts[&o.node], got))
        .collect();
    Ok((blocks, outputs))
}

/// A reduced floating-point format the deploy model may run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Precision {
    /// IEEE binary32: 23 explicit mantissa bits.
    Fp32,
    /// NVIDIA TF32 (Ampere+ tensor cores, cuDNN's default for fp32 convolutions): fp32's
    /// range, 10 mantissa bits, fp32 accumulation.
    Tf32,
    /// bfloat16: fp32's range, 7 mantissa bits.
    Bf16,
    /// IEEE binary16: 10 mantissa bits, max 65504, subnormals below 2^-14.
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 4] = [Self::Fp32, Self::Tf32, Self::Bf16, Self::Fp16];

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Tf32 => "tf32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        }
    }
    pub fn mantissa_bits(self) -> u32 {
        match self {
            Self::Fp32 => 23,
            Self::Tf32 | Self::Fp16 => 10,
            Self::Bf16 => 7,
        }
    }
    /// Unit roundoff u = 2^-(p+1) for p explicit mantissa bits (round to nearest).
    pub fn unit_roundoff(self) -> f64 {
        (-(self.mantissa_bits() as f64 + 1.0)).exp2()
    }
    /// Rounds an f64 to the nearest value of this format (ties to even), with FP16's overflow
    /// to ±inf above 65504 and its fixed subnormal spacing 2^-24; the other formats have fp32's
    /// exponent range, which activations here never leave.
    pub fn round(self, v: f64) -> f64 {
        if !v.is_finite() || v == 0.0 {
            return v;
        }
        if self == Self::Fp32 {
            return v as f32 as f64;
        }
        let p = self.mantissa_bits() as i32;
        // The binade of |v| from its exponent bits (exact, unlike log2); f64 subnormals are
        // far below anything an activation holds and round to zero in every format here.
        let e = ((v.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023;
        let quantum = if self == Self::Fp16 {
            if v.abs() >= 65520.0 {
                // Half an ulp above 65504 rounds to infinity.
                return v.signum() * f64::INFINITY;
            }
            // FP16 subnormals below 2^-14 keep the spacing 2^-24.
            e.max(-14) - p
        } else {
            e - p
        };
        let q = (quantum as f64).exp2();
        // f64 has 52 mantissa bits, so v/q is exact and round_ties_even is the format's rounding.
        (v / q).round_ties_even() * q
    }
    /// Parses `fp32|tf32|bf16|fp16`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The depth and widest dot product of a graph, which the precision bounds are written in.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Depth {
    /// Nodes on the longest input→output path (each may round its output once).
    pub nodes: usize,
    /// Conv and linear layers on that path (each also rounds its weights once).
    pub layers: usize,
    /// The largest fan-in of any conv or linear layer (terms of one dot product).
    pub max_fan_in: usize,
}

/// Longest path in nodes and in weighted layers, and the widest dot product.
pub fn depth<C: ConvLike>(g: &Graph<C>) -> Depth {
    use std::collections::HashMap;
    let mut best: HashMap<&str, (usize, usize)> = HashMap::from([(INPUT, (0, 0))]);
    let mut max_fan_in = 0;
    for n in &g.nodes {
        let (nodes, layers) = n
            .inputs
            .iter()
            .filter_map(|i| best.get(i.as_str()))
            .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
        let weighted = match &n.op {
            Op::Conv(c) => {
                max_fan_in = max_fan_in.max(c.conv_shape().fan_in());
                1
            }
            Op::Linear(l) => {
                max_fan_in = max_fan_in.max(l.in_features);
                1
            }
            Op::ConvTranspose(t) => {
                max_fan_in = max_fan_in.max(t.in_channels / t.groups * t.kernel[0] * t.kernel[1]);
                1
            }
            _ => 0,
        };
        best.insert(&n.name, (nodes + 1, layers + weighted));
    }
    let (nodes, layers) = g
        .outputs
        .iter()
        .filter_map(|o| best.get(o.node.as_str()))
        .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
    Depth {
        nodes,
        layers,
        max_fan_in,
    }
}

/// Which model a measurement ran: the train-time one or the folded deploy one (on a device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasuredModel {
    Train,
    Deploy,
}

/// The deploy model's outputs in one precision against the f64 train reference.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// The model measured, where it is not the deploy model run by the reference executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<MeasuredModel>,
    /// The precision's name, e.g. `fp32`, `tf32 (simulated)`, `cuda fp32, TF32 on`.
    pub precision: String,
    /// How it was run.
    pub how: String,
    pub outputs: Vec<Deviation>,
    /// First-order relative bound (see [`bound`]); exceeding it is worth a look, never a failure.
    pub bound: f64,
}

impl Measured {
    pub fn worst(&self) -> Option<&Deviation> {
        worst(&self.outputs)
    }
    pub fn within_bound(&self) -> bool {
        self.outputs.iter().all(|d| d.rel <= self.bound)
    }
}

/// First-order bound on the relative output error of a network run in a reduced precision,
/// from its unit roundoff `u` and depth: every node rounds its output once and every layer its
/// weights once (`(nodes + layers)·u`), and every dot product of `K` terms accumulated in a
/// format with unit roundoff `u_acc` adds `√K·u_acc` per layer (the probabilistic rounding
/// bound of Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, in place of the worst case K·u).
/// It assumes layers do not amplify relative error; trained BatchNorm scales can, so a
/// measurement above it says "look", not "wrong".
pub fn bound(d: &Depth, u: f64, u_acc: f64) -> f64 {
    (d.nodes + d.layers) as f64 * u + d.layers as f64 * (d.max_fan_in as f64).sqrt() * u_acc
}

/// How the fold was checked: the exact verdict in f64, and the precisions measured.
#[derive(Clone, Debug, Serialize)]
pub struct FoldReport {
    /// The gate: f64, [`EXACT_TOLERANCE`].
    pub exact: Verification,
    pub seed: u64,
    pub depth: Depth,
    /// Wall-clock seconds of the f64 check (fold, both networks, the comparison).
    pub exact_seconds: f64,
    pub measured: Vec<Measured>,
}

impl FoldReport {
    pub fn passed(&self) -> bool {
        self.exact.passed()
    }
    /// One line for logs: the verdict with its worst errors.
    pub fn summary(&self) -> String {
        let wb = self.exact.worst_block().map_or(0.0, |d| d.rel);
        let wo = self.exact.worst_output().map_or(0.0, |d| d.rel);
        let mut s = format!(
            "fold {} in f64 ({} conv blocks, worst block rel {wb:.2e}, worst output rel {wo:.2e}, tolerance {:.0e}, {:.2} s)",
            if self.passed() { "exact" } else { "NOT exact" },
            self.exact.blocks.len(),
            self.exact.output_tolerance,
            self.exact_seconds,
        );
        for m in &self.measured {
            match m.worst() {
                Some(d) if d.rel.is_nan() => s += &format!("; {} non-finite", m.precision),
                Some(d) => {
                    s += &format!(
                        "; {} rel {:.2e} (bound {:.1e})",
                        m.precision, d.rel, m.bound
                    )
                }
                None => {}
            }
        }
        s
    }
}

/// A folded model with its fp32 weights (as shipped) and how the fold was checked.
#[derive(Clone, Debug)]
pub struct Folded {
    pub spec: DeploySpec,
    pub weights: Weights<f32>,
    /// The deploy weights in f64 (before the one rounding to f32).
    pub weights_f64: Weights<f64>,
    /// The verification input and the train model's f64 outputs on it, so a device can be
    /// measured against the same reference ([`Folded::measure`]).
    pub input: Tensor<f64>,
    pub reference: Vec<(String, Tensor<f64>)>,
    pub report: FoldReport,
}

impl Folded {
    /// Deviations of outputs computed elsewhere (a device, another runtime) on [`Folded::input`]
    /// from the f64 reference, in output order.
    pub fn measure<F: Real>(
        &self,
        precision: &str,
        how: &str,
        got: &[Tensor<F>],
        bound: f64,
    ) -> Measured {
        Measured {
            model: None,
            precision: precision.to_string(),
            how: how.to_string(),
            outputs: self
                .reference
                .iter()
                .zip(got)
                .map(|((n, r), g)| Deviation::between(n, r, g))
                .collect(),
            bound,
        }
    }
}

/// Options of [`fold_verified`].
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Random inputs in the verification batch (at least 1).
    pub batch: usize,
    pub seed: u64,
    /// Precisions to measure the deploy model in (never a gate).
    pub measure: Vec<Precision>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            seed: 0,
            measure: vec![Precision::Fp32],
        }
    }
}

/// Folds a trained model in f64, decides exactness in f64 (the gate), rounds the folded
/// weights once to f32 (what ships), and measures the requested precisions. The caller gates on
/// [`FoldReport::passed`]; the report is returned either way so a failure can be shown.
pub fn fold_verified(train: &TrainSpec, w: &Weights<f32>, o: &VerifyOptions) -> Result<Folded> {
    if o.batch == 0 {
        return Err(Error::Spec("verification batch must be at least 1".into()));
    }
    let t0 = std::time::Instant::now();
    let w64: Weights<f64> = w.iter().map(|(k, v)| (k.clone(), v.cast())).collect();
    let (spec, dw64) = fold(train, &w64)?;
    let x = verification_input(train, o.batch, o.seed);
    let acts = run_all(train, &w64, &x)?;
    let (blocks, outputs) = compare(train, &acts, &spec, &dw64, &x)?;
    let exact = Verification {
        precision: "fp64",
        batch: o.batch,
        blocks,
        outputs,
        block_tolerance: EXACT_TOLERANCE,
        output_tolerance: EXACT_TOLERANCE,
    };
    let exact_seconds = t0.elapsed().as_secs_f64();
    let reference = outputs_of(train, &acts)?;
    drop(acts);

    let mut weights = Weights::new();
    for (k, v) in &dw64 {
        let v32: Tensor<f32> = v.cast();
        if !v32.is_finite() && v.is_finite() {
            return Err(Error::Weights {
                tensor: k.clone(),
                message: format!(
                    "the folded weight leaves fp32's range (max |w| {:.3e})",
                    v.max_abs()
                ),
            });
        }
        weights.insert(k.clone(), v32);
    }
    let d = depth(&spec);
    let mut folded = Folded {
        spec,
        weights,
        weights_f64: dw64,
        input: x,
        reference,
        report: FoldReport {
            exact,
            seed: o.seed,
            depth: d,
            exact_seconds,
            measured: Vec::new(),
        },
    };
    for p in &o.measure {
        let m = measure_precision(&folded, *p)?;
        folded.report.measured.push(m);
    }
    Ok(folded)
}

/// The deploy model in one precision against the f64 reference: fp32 runs the executor in
/// f32 on this CPU with the shipped weights; the others are simulated in f64 with weights and
/// every activation (the input included) rounded to the format between layers, accumulation
/// exact, which is how TF32/BF16/FP16 tensor cores behave up to their fp32 accumulator.
pub fn measure_precision(f: &Folded, p: Precision) -> Result<Measured> {
    let u = p.unit_roundoff();
    Ok(if p == Precision::Fp32 {
        let x: Tensor<f32> = f.input.cast();
        let acts = run_all(&f.spec, &f.weights, &x)?;
        let got: Vec<Tensor<f32>> = outputs_of(&f.spec, &acts)?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        f.measure(
            "fp32",
            "reference executor in f32 on this CPU, shipped weights",
            &got,
            bound(&f.report.depth, u, u),
        )
    } else {
        let rounded: Weights<f64> = f
            .weights_f64
            .iter()
            .map(|(k, v)| {
                let mut t = v.clone();
                t.data.iter_mut().for_each(|e| *e = p.round(*e));
                (k.clone(), t)
            })
            .collect();
        let acts = run_all_with(&f.spec, &rounded, &f.input, &mut |t| {
            t.data.iter_mut().for_each(|e| *e = p.round(*e))
        })?;
        let got: Vec<Tensor<f64>> = outputs_of(&f.spec, &acts)?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        f.measure(
            &format!("{} (simulated)", p.name()),
            "f64 executor, weights and activations rounded to the format between layers",
            &got,
            bound(&f.report.depth, u, 0.0),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_the_formats() {
        // TF32/FP16 keep 10 bits: 1 + 2^-11 is a tie and rounds to even (1), 1 + 3·2^-11 up.
        let t = Precision::Tf32;
        assert_eq!(t.round(1.0 + (-11f64).exp2()), 1.0);
        assert_eq!(
            t.round(1.0 + 3.0 * (-11f64).exp2()),
            1.0 + 2.0 * (-10f64).exp2()
        );
        assert_eq!(
            Precision::Bf16.round(1.0 + (-8f64).exp2() * 1.5),
            1.0 + (-7f64).exp2()
        );
        // fp32 is a cast.
        assert_eq!(Precision::Fp32.round(0.1), 0.1f32 as f64);
        // FP16: range and subnormals.
        let h = Precision::Fp16;
        assert_eq!(h.round(65504.0), 65504.0);
        assert_eq!(h.round(65519.0), 65504.0);
        assert_eq!(h.round(70000.0), f64::INFINITY);
        assert_eq!(h.round(-70000.0), f64::NEG_INFINITY);
        assert_eq!(h.round(3.0 * (-25f64).exp2()), 2.0 * (-24f64).exp2());
        assert_eq!(h.round((-26f64).exp2()), 0.0);
        // Every format's rounding error stays within its unit roundoff.
        let mut rng = Rng::new(7);
        for p in Precision::ALL {
            for _ in 0..1000 {
                let v = rng.normal() * 10f64.powi(rng.below(6) as i32 - 3);
                if p == Precision::Fp16 && v.abs() < (-14f64).exp2() {
                    continue; // subnormal: fixed absolute spacing, no relative bound
                }
                let r = p.round(v);
                assert!((r - v).abs() <= p.unit_roundoff() * v.abs(), "{p} {v} {r}");
            }
        }
    }

    #[test]
    fn deviations_are_nan_when_anything_is_not_finite() {
        let a = Tensor::new(vec![3], vec![1.0f64, 2.0, 3.0]);
        let b = Tensor::new(vec![3], vec![1.0f64, f64::NAN, 3.0]);
        assert!(Deviation::between("x", &a, &b).rel.is_nan());
        assert!(!Deviation::between("x", &a, &b).passes(1.0));
        let c = Tensor::new(vec![3], vec![1.0f64, 2.0, 3.0 + 3e-9]);
        let d = Deviation::between("x", &a, &c);
        assert!((d.rel - 1e-9).abs() < 1e-15, "{}", d.rel);
        // A shape mismatch is never a pass either.
        let e = Tensor::new(vec![1, 3], vec![1.0f64, 2.0, 3.0]);
        assert!(Deviation::between("x", &a, &e).rel.is_nan());
    }
}

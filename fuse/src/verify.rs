//! Built-in fold verification: on random inputs, the deploy model must reproduce the train
//! model in eval mode, per conv block (same input into both) and end to end.

use serde::Serialize;

use crate::error::Result;
use crate::exec::{ConvEval, run, run_all};
use crate::fold::Weights;
use crate::spec::{DeploySpec, Op, TrainSpec};
use crate::tensor::{Real, Rng, Tensor};

/// Error of one block or output: `rel = max|Δ| / max|y|`.
#[derive(Clone, Debug, Serialize)]
pub struct Deviation {
    pub name: String,
    pub max_abs: f64,
    pub max_ref: f64,
    pub rel: f64,
}

impl Deviation {
    fn new<F: Real>(name: &str, reference: &Tensor<F>, got: &Tensor<F>) -> Self {
        let max_abs = reference.max_abs_diff(got).to_f64();
        let max_ref = reference.max_abs().to_f64();
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
}

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
        self.blocks.iter().max_by(|a, b| a.rel.total_cmp(&b.rel))
    }
    pub fn worst_output(&self) -> Option<&Deviation> {
        self.outputs.iter().max_by(|a, b| a.rel.total_cmp(&b.rel))
    }
    pub fn passed(&self) -> bool {
        self.blocks.iter().all(|d| d.rel <= self.block_tolerance)
            && self.outputs.iter().all(|d| d.rel <= self.output_tolerance)
    }
}

/// Tolerances of DESIGN.md §8 / methods.md §6: fp32 per block 1e-5·max|y|, end to end 1e-4;
/// fp64 1e-10 for both.
pub fn tolerances<F: Real>() -> (f64, f64, &'static str) {
    if std::mem::size_of::<F>() == 4 {
        (1e-5, 1e-4, "fp32")
    } else {
        (1e-10, 1e-10, "fp64")
    }
}

/// Compares the folded model with the train model in eval mode on a seeded random batch.
pub fn verify_fold<F: Real>(
    train: &TrainSpec,
    train_w: &Weights<F>,
    deploy: &DeploySpec,
    deploy_w: &Weights<F>,
    batch: usize,
    seed: u64,
) -> Result<Verification> {
    let i = &train.input;
    let x: Tensor<F> = Rng::derive(seed, "verify.input")
        .normal_tensor(&[batch, i.channels, i.height, i.width], 1.0);
    let acts = run_all(train, train_w, &x)?;
    let mut blocks = Vec::new();
    for (tn, dn) in train.nodes.iter().zip(&deploy.nodes) {
        if let (Op::Conv(tc), Op::Conv(dc)) = (&tn.op, &dn.op) {
            let input = &acts[&tn.inputs[0]];
            let want = &acts[&tn.name];
            let got = ConvEval::<F>::eval(dc, &dn.name, input, deploy_w)?;
            let _ = tc;
            blocks.push(Deviation::new(&tn.name, want, &got));
        }
    }
    let deployed = run(deploy, deploy_w, &x)?;
    let outputs = train
        .outputs
        .iter()
        .zip(&deployed)
        .map(|(o, (_, got))| Deviation::new(&o.name, &acts[&o.node], got))
        .collect();
    let (block_tolerance, output_tolerance, precision) = tolerances::<F>();
    Ok(Verification {
        precision,
        batch,
        blocks,
        outputs,
        block_tolerance,
        output_tolerance,
    })
}

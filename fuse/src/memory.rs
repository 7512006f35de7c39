//! What a training step of a spec holds in memory, estimated from the spec alone, before any
//! tensor exists: so a run that cannot fit is refused in a second instead of after it has
//! grown to most of the machine (issue #25 §5).
//!
//! The model (all f32):
//! - **parameters**, twice: the initialised `Weights` and the training model's copy;
//! - **gradients**, once per trainable parameter;
//! - **optimiser state**: `slots` tensors per trainable parameter (SGD momentum 1, Adam 2);
//! - **activations** that autograd keeps for the backward pass, per image and node: the
//!   node's output and each conv output inside it that a BatchNorm takes (a plain or
//!   factorised conv with BN: 2; a RepVGG block: 3; QARepVGG: 4), times the batch, times 1.75
//!   for the backward's gradients and the transients the allocator still holds (measured);
//! - **workspace**: the backward's transient gradients, three of the largest activation.
//!
//! [`check`] compares the estimate with the memory available. `benches/memory.rs` measures the peak RSS of training steps against this estimate.

use crate::error::{Error, Result};
use crate::method::Method;
use crate::ops::Op;
use crate::spec::TrainSpec;

/// Bytes, by what holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainMemory {
    pub parameters: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub workspace: u64,
}

impl TrainMemory {
    pub fn total(&self) -> u64 {
        self.parameters + self.gradients + self.optimizer + self.activations + self.workspace
    }

    /// The part that grows with the batch (activations and workspace).
    pub fn per_batch(&self) -> u64 {
        self.activations + self.workspace
    }
}

/// Tensors of its output's size that autograd keeps for a node: its output, and inside a
/// conv each conv's output that a BatchNorm or a sum takes (BatchNorm's backward needs its
/// input; a sum's needs nothing, so branch sums and BN outputs feeding them are transient).
fn tensors_kept(op: &Op<crate::spec::TrainConv>) -> u64 {
    let Op::Conv(c) = op else { return 1 };
    let bn = u64::from(c.bn.is_some());
    let k1 = u64::from(!c.shape.is_1x1());
    match c.method {
        Method::Plain | Method::Fnl { .. } | Method::Sfo { .. } => 1 + bn,
        // The dense conv's output and the 1×1 conv's; the identity BN's input is the block's.
        Method::Repvgg => 2 + k1,
        // The same, and the sum that the final BN takes.
        Method::Qarepvgg => 3 + k1,
    }
}

/// Measured over kept tensors (`benches/memory.rs`): the backward's gradients and the
/// transients the allocator has not returned yet add three quarters again.
const TRANSIENTS: f64 = 1.75;

/// The estimate of one training step of `spec` at `batch` images with `slots` optimiser
/// tensors per trainable parameter.
pub fn train_memory(spec: &TrainSpec, batch: usize, slots: usize) -> Result<TrainMemory> {
    const F32: u64 = 4;
    let layout = crate::layout::train_layout(spec)?;
    let all: u64 = layout.iter().map(|p| p.numel() as u64).sum();
    let trainable: u64 = layout
        .iter()
        .filter(|p| !p.kind.is_buffer())
        .map(|p| p.numel() as u64)
        .sum();
    let shapes = spec.infer_shapes()?;
    let (mut kept, mut largest) = (0u64, 0u64);
    for n in &spec.nodes {
        let size: u64 = shapes
            .get(&n.name)
            .map_or(0, |s| s.iter().map(|&d| d as u64).product());
        kept += size * tensors_kept(&n.op);
        largest = largest.max(size);
    }
    let batch = batch as u64;
    Ok(TrainMemory {
        parameters: 2 * all * F32,
        gradients: trainable * F32,
        optimizer: slots as u64 * trainable * F32,
        activations: (TRANSIENTS * (kept * batch * F32) as f64) as u64,
        workspace: 3 * largest * batch * F32,
    })
}

/// Set to skip the check (a machine with swap, or an estimate known to be pessimistic).
pub const SKIP_ENV: &str = "OVERPARAM_NO_MEMORY_CHECK";

/// An allowance for what libtorch adds once it runs (thread pools, allocator caches); the
/// bench measures growth above that baseline, so this is a margin, not a measurement.
const RUNTIME: u64 = 256 << 20;

/// Refuses to train the largest of `specs` at `batch` (0: only create its weights, as
/// `init` does) when its estimate exceeds the memory available now, naming the estimate's
/// parts and what to change. `knobs` says how this
/// command sets the width and the batch (config keys or flags).
pub fn check(specs: &[&TrainSpec], batch: usize, slots: usize, knobs: &str) -> Result<()> {
    if std::env::var_os(SKIP_ENV).is_some() {
        return Ok(());
    }
    let Some(available) = overparam_base::available_memory() else {
        return Ok(());
    };
    let (mut worst, mut model) = (TrainMemory::default(), "");
    for s in specs {
        let mut m = train_memory(s, batch, slots)?;
        if batch == 0 {
            m = TrainMemory {
                parameters: m.parameters,
                ..Default::default()
            };
        }
        if m.total() > worst.total() {
            (worst, model) = (m, s.model.as_str());
        }
    }
    let need = worst.total() + if batch == 0 { 0 } else { RUNTIME };
    if need <= available {
        return Ok(());
    }
    let m = worst;
    let change = if m.per_batch() > m.total() / 2 {
        "The activations dominate: lower the batch size or the input size"
    } else {
        "The parameters dominate: lower the width (they grow with its square)"
    };
    let parts = if batch == 0 {
        format!("initialising `{model}` needs about {}", human(need))
    } else {
        format!(
            "training `{model}` needs about {} (parameters {} for the model and its init, \
             gradients {}, optimiser {}, activations {} and backward workspace {} at batch \
             {batch}, libtorch {})",
            human(need),
            human(m.parameters),
            human(m.gradients),
            human(m.optimizer),
            human(m.activations),
            human(m.workspace),
            human(RUNTIME)
        )
    };
    Err(Error::TooLarge(format!(
        "{parts}, more than the {} this machine has available; nothing was allocated. \
         {change} ({knobs}); {SKIP_ENV}=1 skips this check",
        human(available)
    )))
}

/// `bytes` for people: "1.5 GiB", "320 MiB".
pub fn human(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MethodConfig;
    use crate::MethodKind;
    use crate::models::{ClassifierOptions, ModelKind, build};

    fn spec(width: f64, method: MethodKind) -> TrainSpec {
        build(
            ModelKind::Resnet18Cifar,
            &ClassifierOptions {
                width,
                image_size: 16,
                ..ClassifierOptions::new(MethodConfig::new(method))
            },
        )
        .unwrap()
    }

    /// Parameters grow with the square of the width, activations linearly with it and with
    /// the batch; RepVGG's branches keep more activations than plain; the parameter terms
    /// are the layout's own counts.
    #[test]
    fn the_estimate_follows_the_spec() {
        let a = train_memory(&spec(0.25, MethodKind::Plain), 8, 1).unwrap();
        let b = train_memory(&spec(0.5, MethodKind::Plain), 8, 1).unwrap();
        let r = b.gradients as f64 / a.gradients as f64;
        assert!((3.5..4.5).contains(&r), "{r}");
        let r = b.activations as f64 / a.activations as f64;
        assert!((1.8..2.2).contains(&r), "{r}");
        let a16 = train_memory(&spec(0.25, MethodKind::Plain), 16, 1).unwrap();
        assert!(a16.activations.abs_diff(2 * a.activations) <= 1);
        assert_eq!(a16.parameters, a.parameters);
        let adam = train_memory(&spec(0.25, MethodKind::Plain), 8, 2).unwrap();
        assert_eq!(adam.optimizer, 2 * a.optimizer);
        assert_eq!(a.optimizer, a.gradients);
        let s = spec(0.25, MethodKind::Plain);
        let n = crate::layout::param_count(&crate::layout::train_layout(&s).unwrap()) as u64;
        assert!(a.parameters >= 2 * 4 * n - 2 * 4 * 1000 && a.parameters <= 2 * 4 * n * 2);
        let rep = train_memory(&spec(0.25, MethodKind::Repvgg), 8, 1).unwrap();
        assert!(rep.activations > a.activations + a.activations / 5);
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(320 << 20), "320 MiB");
    }
}

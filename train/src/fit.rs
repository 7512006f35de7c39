//! The one training loop. A [`Task`] says what differs between classification and multi-task
//! training (its batches, losses, optimiser groups, evaluation and `metrics.csv` row); the loop
//! here owns everything else, once: the phases of a routine (R3's SVD expansion and collapse),
//! the learning-rate schedule, the Frobenius decay, R2's alternating optimiser groups, the
//! progress bar, the per-epoch save sequence (state, model, metrics) and the resume.

use overparam_base::Progress;
use overparam_config::files::MODEL_FILE;
use overparam_fuse::layout::ParamKind;
use overparam_fuse::{AnySpec, TrainSpec};
use tch::{Tensor, nn};

use crate::error::{Error, Result};
use crate::model::OpModel;
use crate::optim::{Optimizer, Param, learning_rate};
use crate::state::{
    Extra, RunDir, fresh_weights, load_state, restore_optimisers, save_state, write_metrics,
};
use overparam_config::{Routine, TrainConfig};

/// Epochs `start..end` of a routine, trained with one spec: R1 and R2 have one phase, R3
/// three (plain, overparameterised, plain fine-tuning).
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub kind: PhaseKind,
    pub start: usize,
    pub end: usize,
    pub spec: TrainSpec,
}

/// Which phase of a routine: R1/R2's one `train` phase, or R3's `plain`, `op` (overparameterised)
/// and `finetune`. Its name is the `phase` column of `metrics.csv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    Train,
    Plain,
    Op,
    Finetune,
}

impl PhaseKind {
    pub const fn name(self) -> &'static str {
        match self {
            PhaseKind::Train => "train",
            PhaseKind::Plain => "plain",
            PhaseKind::Op => "op",
            PhaseKind::Finetune => "finetune",
        }
    }
}

impl std::fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a kind of training brings to the loop.
pub(crate) trait Task {
    /// One batch, on the device.
    type Batch;
    /// What a step's forward pass gives the task to record (losses, logits).
    type Step;
    /// An evaluation: an epoch's result, and the run's final metrics.
    type Eval;

    /// Batches per epoch.
    fn steps(&self) -> usize;
    /// The header of `metrics.csv`.
    fn header(&self) -> &'static str;
    /// The optimisers over `model` (R2 splits it into two groups, which differ by task).
    fn optimisers(&self, cfg: &TrainConfig, model: &OpModel) -> Vec<Optimizer>;
    /// The batches of `epoch`, in order (`steps()` of them). The iterator owns what it reads,
    /// so the task stays free to record while it runs.
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Self::Batch>>>;
    /// Called once with the model before the first epoch of a run that does not resume.
    fn start(&mut self, _model: &OpModel) -> Result<()> {
        Ok(())
    }
    /// Starts an epoch's running sums.
    fn begin_epoch(&mut self);
    /// Forward in train mode: the objective without weight decay, the Frobenius term of the
    /// composed kernels, and what to record after the step.
    fn forward(
        &mut self,
        model: &OpModel,
        batch: &Self::Batch,
    ) -> Result<(Tensor, Option<Tensor>, Self::Step)>;
    /// Records a step taken on `batch` (batch `index` of `epoch`); a non-finite loss is an
    /// error. Returns the bar's message.
    fn record(
        &mut self,
        step: Self::Step,
        batch: &Self::Batch,
        epoch: usize,
        index: usize,
    ) -> Result<String>;
    /// Ends epoch `epoch` (0-based) of `phase`: its evaluation, `metrics.csv` row and log line.
    fn end_epoch(
        &mut self,
        model: &OpModel,
        epoch: usize,
        phase: PhaseKind,
        lr: f64,
    ) -> Result<(Self::Eval, String, String)>;
    /// The evaluation of a resumed run whose epochs had all finished (killed while folding).
    fn evaluate(&self, model: &OpModel) -> Result<Self::Eval>;
    /// Relative change of the outputs between two models (an R3 transition must keep them).
    fn function_change(&self, a: &OpModel, b: &OpModel) -> Result<f64>;
    /// State beyond the model and the optimisers, saved every epoch.
    fn extra_state(&self) -> Result<Extra> {
        Ok(Default::default())
    }
    /// Restores what [`Task::extra_state`] saved.
    fn restore(&mut self, _extra: &Extra) -> Result<()> {
        Ok(())
    }
}

/// The trained model, its last evaluation and the `metrics.csv` rows so far.
pub(crate) struct Fitted<E> {
    pub model: OpModel,
    pub last: E,
    pub rows: Vec<String>,
}

/// One optimisation step: the objective plus Frobenius decay λ/2·‖W‖² on composed kernels
/// (which replaces per-factor decay), backward, and a step of the active optimiser (R2
/// alternates groups every `period` steps; the other group is not touched).
pub(crate) fn step(
    cfg: &TrainConfig,
    opts: &mut [Optimizer],
    objective: &Tensor,
    frobenius: Option<Tensor>,
    lr: f64,
    step: usize,
) -> Result<()> {
    let loss = match frobenius {
        Some(f) if cfg.optim.weight_decay > 0.0 => {
            objective.f_add(&f.f_mul_scalar(cfg.optim.weight_decay / 2.0)?)?
        }
        _ => objective.shallow_clone(),
    };
    let active = match cfg.routine {
        Routine::R2 { period } => (step / period) % opts.len(),
        _ => 0,
    };
    for o in opts.iter_mut() {
        o.zero_grad()?;
    }
    loss.f_backward()?;
    opts[active].step(lr)?;
    Ok(())
}

/// Trains `task` through `phases` (which cover `0..optim.epochs`) from `init` (or a fresh
/// initialisation), resuming from the state file when `run.resume`. Every epoch saves the state first, then the train checkpoint and
/// `metrics.csv` (resume reads only the state). `stop_after` ends the invocation after that
/// many epochs, as a kill at an epoch boundary would: `None` comes back.
pub(crate) fn fit<T: Task>(
    cfg: &TrainConfig,
    task: &mut T,
    phases: &[Phase],
    init: Option<overparam_fuse::Weights<f32>>,
    run: &RunDir,
    progress: &dyn Progress,
    stop_after: Option<usize>,
) -> Result<Option<Fitted<T::Eval>>> {
    let device = run.device;
    // Before any weights exist: a run that cannot fit is refused now, not at 80% of the machine.
    let specs: Vec<_> = phases.iter().map(|p| &p.spec).collect();
    overparam_fuse::memory::check(
        &specs,
        cfg.optim.batch_size,
        crate::memory::optimizer_slots(cfg),
        "model.width, optim.batch_size",
    )?;
    let total = cfg.optim.epochs;
    let steps = task.steps();
    let (mut epoch, mut step_no, mut rows, mut spec, weights, restored) = if run.resume {
        let s = load_state(&run.state, 2)?;
        let restored = (s.buffers, s.steps, s.extra);
        (
            s.epoch,
            s.step,
            s.metrics,
            s.spec,
            s.weights,
            Some(restored),
        )
    } else {
        let spec = phases[0].spec.clone();
        // A fine-tuning run starts from its expansion, any other from a fresh initialisation.
        let w = match init {
            Some(w) => w,
            None => fresh_weights(cfg, &spec)?,
        };
        (0, 0, vec![], spec, w, None)
    };
    if run.resume && !phases.iter().any(|p| p.spec == spec) {
        return Err(Error::Run {
            dir: run.dir.clone(),
            message: "cannot resume: the saved state's model is not one this config's routine \
                      trains (did the model builder change?); nothing was changed"
                .into(),
        });
    }
    let mut model = OpModel::new(&nn::VarStore::new(device).root(), &spec, &weights)?;
    let mut opts = task.optimisers(cfg, &model);
    match restored {
        Some((buffers, counts, extra)) => {
            restore_optimisers(&mut opts, buffers, counts, device)?;
            task.restore(&extra)?;
        }
        None => task.start(&model)?,
    }
    let mut last = None;
    let first = epoch;
    while epoch < total {
        if stop_after.is_some_and(|n| epoch - first >= n) {
            return Ok(None);
        }
        let phase = phases
            .iter()
            .find(|p| epoch >= p.start && epoch < p.end)
            .expect("phases cover all epochs");
        if phase.spec != spec {
            model = transition(cfg, task, &model, phase, epoch, run, progress)?;
            spec = phase.spec.clone();
            opts = task.optimisers(cfg, &model); // fresh optimiser state for the new parameters
        }
        progress.start(
            &format!("epoch {}/{total} {}", epoch + 1, phase.kind),
            steps as u64,
        );
        task.begin_epoch();
        let mut lr = 0.0;
        for (index, b) in task.batches(epoch).enumerate() {
            let b = b?;
            lr = learning_rate(
                &cfg.optim,
                epoch as f64 + index as f64 / steps as f64,
                total,
            );
            let (objective, frobenius, out) = task.forward(&model, &b)?;
            step(cfg, &mut opts, &objective, frobenius, lr, step_no)?;
            let message = task.record(out, &b, epoch, index)?;
            step_no += 1;
            progress.inc(1);
            progress.message(&message);
        }
        progress.finish();
        let (eval, row, line) = task.end_epoch(&model, epoch, phase.kind, lr)?;
        progress.event(&line);
        rows.push(row);
        epoch += 1;
        // State first, then the user-facing artefacts: resume reads only the state file.
        save_state(
            &run.state,
            &model,
            &opts,
            epoch,
            step_no,
            &rows,
            &task.extra_state()?,
        )?;
        overparam_fuse::checkpoint::save(
            &run.dir.join(MODEL_FILE),
            &AnySpec::Train(spec.clone()),
            &model.weights()?,
        )?;
        write_metrics(&run.dir, task.header(), &rows)?;
        last = Some(eval);
    }
    let last = match last {
        Some(e) => e,
        None => task.evaluate(&model)?,
    };
    Ok(Some(Fitted { model, last, rows }))
}

/// R3's change of spec at the start of `phase`: expand by SVD into the overparameterised
/// spec, or collapse back to plain. The function must not change beyond fp32 rounding.
fn transition<T: Task>(
    cfg: &TrainConfig,
    task: &T,
    model: &OpModel,
    phase: &Phase,
    epoch: usize,
    run: &RunDir,
    progress: &dyn Progress,
) -> Result<OpModel> {
    use overparam_fuse::spec::Op;
    let spec = model.spec();
    let weights = model.weights()?;
    let target = &phase.spec;
    let expands = target
        .nodes
        .iter()
        .any(|n| matches!(&n.op, Op::Conv(c) if c.method != overparam_fuse::Method::Plain));
    let new_w = if expands {
        overparam_fuse::reparam::expand(spec, &weights, target, cfg.run.seed)?
    } else {
        overparam_fuse::reparam::collapse(spec, &weights)?.1
    };
    let new_model = OpModel::new(&nn::VarStore::new(run.device).root(), target, &new_w)?;
    let change = task.function_change(model, &new_model)?;
    if change > 1e-4 {
        return Err(Error::Run {
            dir: run.dir.clone(),
            message: format!(
                "phase `{}` at epoch {}: re-parameterisation changed the outputs by {change:e}",
                phase.kind, phase.start
            ),
        });
    }
    progress.event(&format!(
        "phase `{}`: re-parameterised at epoch {epoch} (outputs changed by {change:.2e}, fp32 rounding)",
        phase.kind
    ));
    Ok(new_model)
}

/// Optimisers over a model's trainable tensors (weight decay only where the kind takes it):
/// one, or for R2 two groups, the second holding the tensors `in_second_group` picks. `extra`
/// tensors (e.g. loss-weighting parameters) join the first group without weight decay.
pub(crate) fn grouped_optimisers(
    cfg: &TrainConfig,
    model: &OpModel,
    in_second_group: impl Fn(&str, ParamKind) -> bool,
    extra: &[(&str, &Tensor)],
) -> Vec<Optimizer> {
    let mut names: Vec<&str> = model.names().collect();
    names.sort_unstable();
    let r2 = matches!(cfg.routine, Routine::R2 { .. });
    let mut groups: Vec<Vec<Param>> = vec![vec![], vec![]];
    for name in names {
        let kind = model.kind(name).expect("known tensor");
        if kind.is_buffer() {
            continue;
        }
        let p = Param {
            name: name.to_string(),
            tensor: model.var(name).expect("known tensor").shallow_clone(),
            weight_decay: if kind.takes_weight_decay() {
                cfg.optim.weight_decay
            } else {
                0.0
            },
        };
        groups[(r2 && in_second_group(name, kind)) as usize].push(p);
    }
    for (name, t) in extra {
        groups[0].push(Param {
            name: name.to_string(),
            tensor: t.shallow_clone(),
            weight_decay: 0.0,
        });
    }
    groups
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(|g| Optimizer::new(&cfg.optim, g))
        .collect()
}

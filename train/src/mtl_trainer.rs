//! Multi-task training on NYUv2-layout data (real or synthetic scenes): three losses combined
//! by a weighting (equal, uncertainty, DWA), routines R1 and R2 (shared vs task-specific
//! groups), MTAN metrics per epoch, bit-identical resume, and the final fold checked on the
//! validation set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use overparam_base::{Progress, Silent};
use overparam_data::metrics::{Confusion, GeometryErrors, delta_m_nash, delta_p_libmtl};
use overparam_data::nyuv2::{CLASSES, NyuSample, NyuSplit, augment};
use overparam_fuse::checkpoint;
use overparam_fuse::fold::as_train_spec;
use overparam_fuse::models::{MtlOptions, mtl_net};
use overparam_fuse::{AnySpec, Rng, Weights};
use tch::{Device, Tensor, nn};

use crate::error::{Error, Result};
use crate::fit::{Fitted, Phase, PhaseKind, Task, fit, grouped_optimisers};
use crate::model::OpModel;
use crate::mtl::{Weighter, depth_loss, normal_loss, segmentation_loss};
use crate::optim::Optimizer;
use crate::state::{Extra, from_f, prepare_run, to_f, write_metrics};
use crate::trainer::DEPLOY_FILE;
use overparam_config::{Routine, TrainConfig};

/// The header of a multi-task `metrics.csv`: epoch, lr, the three task losses, the nine
/// metrics (columns named in `overparam_base::NYU_METRICS`), Δm (Nash-MTL) and Δp (LibMTL).
pub static HEADER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let losses = overparam_base::Task::ALL.map(|t| t.loss_column());
    ["epoch", "lr"]
        .into_iter()
        .chain(losses)
        .chain(overparam_base::task::NYU_METRIC_COLUMNS)
        .chain(["delta_m_nash", "delta_p_libmtl"])
        .collect::<Vec<_>>()
        .join(",")
});

/// NYUv2 train and val splits: `data.dir`, or synthetic scenes generated once under
/// `<run.dir>/_data/`.
pub fn load_splits(cfg: &TrainConfig) -> Result<(NyuSplit, NyuSplit)> {
    load_splits_with(cfg, &Silent)
}

/// [`load_splits`], reporting the generation of synthetic scenes to `progress`.
pub fn load_splits_with(
    cfg: &TrainConfig,
    progress: &dyn Progress,
) -> Result<(NyuSplit, NyuSplit)> {
    let d = &cfg.data;
    let root = match &d.dir {
        Some(dir) => dir.clone(),
        None => {
            let root = cfg.run.dir.join("_data").join(format!(
                "synth-nyuv2-{}-{}-{}x{}-seed{}",
                d.synthetic_train,
                d.synthetic_test,
                d.synthetic_height,
                d.synthetic_width,
                d.synthetic_seed
            ));
            if !root.join("val/normal").exists() {
                progress.event(&format!(
                    "data: generating synthetic NYUv2 scenes into {}",
                    root.display()
                ));
                overparam_data::scenes::write_synthetic_nyuv2(
                    &root,
                    d.synthetic_train,
                    d.synthetic_test,
                    d.synthetic_height,
                    d.synthetic_width,
                    d.synthetic_seed,
                )?;
            }
            root
        }
    };
    Ok((
        NyuSplit::open(&root, "train")?,
        NyuSplit::open(&root, "val")?,
    ))
}

/// The losses of the tasks a run trains (all three unless `mtl.tasks` names a subset, as a
/// single-task baseline does); the others are multiplied by zero so the graph stays the same.
fn active_losses(
    tasks: &Option<Vec<overparam_base::Task>>,
    losses: [Tensor; 3],
) -> Result<[Tensor; 3]> {
    let Some(keep) = tasks else { return Ok(losses) };
    let mut out = losses;
    for (l, t) in out.iter_mut().zip(overparam_base::Task::ALL) {
        if !keep.contains(&t) {
            *l = l.f_mul_scalar(0.0)?;
        }
    }
    Ok(out)
}

/// One batch as tensors: image [N,3,H,W], label [N,H,W], depth [N,1,H,W], normal [N,3,H,W].
struct Batch {
    image: Tensor,
    label: Tensor,
    depth: Tensor,
    normal: Tensor,
}

fn hwc_to_nchw(
    data: Vec<f32>,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    device: Device,
) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&data)?
        .f_reshape([n as i64, h as i64, w as i64, c as i64])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?
        .f_to_device(device)?)
}

fn make_batch(samples: &[NyuSample], device: Device) -> Result<Batch> {
    let (n, h, w) = (samples.len(), samples[0].height, samples[0].width);
    let cat = |f: &dyn Fn(&NyuSample) -> &Vec<f32>| {
        samples
            .iter()
            .flat_map(|s| f(s).iter().copied())
            .collect::<Vec<f32>>()
    };
    Ok(Batch {
        image: hwc_to_nchw(cat(&|s| &s.image), n, h, w, 3, device)?,
        label: Tensor::f_from_slice(&cat(&|s| &s.label))?
            .f_reshape([n as i64, h as i64, w as i64])?
            .f_to_device(device)?,
        depth: hwc_to_nchw(cat(&|s| &s.depth), n, h, w, 1, device)?,
        normal: hwc_to_nchw(cat(&|s| &s.normal), n, h, w, 3, device)?,
    })
}

/// Parameter groups for R2: shared (trunk and shared head factors) vs task-specific (each
/// task's own head tensors, `heads.<task>.*`). Uncertainty log-variances go with the shared.
fn optimisers(cfg: &TrainConfig, model: &OpModel, log_vars: Option<&Tensor>) -> Vec<Optimizer> {
    let tasks = overparam_fuse::models::mtl_tasks(CLASSES).map(|t| format!("heads.{}.", t.0));
    let extra: Vec<(&str, &Tensor)> = log_vars
        .map(|t| ("weighting.log_vars", t))
        .into_iter()
        .collect();
    grouped_optimisers(
        cfg,
        model,
        |name, _| tasks.iter().any(|t| name.starts_with(t.as_str())),
        &extra,
    )
}

/// Which output carries each task (segmentation, depth, normals), by role; `None` where the
/// network has no such output (an imported two-head decoder).
pub fn heads(spec: &overparam_fuse::TrainSpec) -> [Option<usize>; 3] {
    overparam_base::Task::ALL.map(|t| spec.outputs.iter().position(|o| o.role == t.role()))
}

/// The nine MTAN metrics of a model on a split (eval mode, no augmentation); the metrics of a
/// task the network has no output for are NaN.
pub fn evaluate(
    model: &OpModel,
    split: &NyuSplit,
    batch: usize,
    device: Device,
) -> Result<[f64; 9]> {
    let mut conf = Confusion::new(CLASSES);
    let mut geo = GeometryErrors::default();
    let h = heads(model.spec());
    for start in (0..split.len()).step_by(batch.max(1)) {
        let samples: Vec<NyuSample> = (start..(start + batch).min(split.len()))
            .map(|i| split.get(i))
            .collect::<Result<_, _>>()?;
        let b = make_batch(&samples, device)?;
        let (seg, depth_pred, normal_pred) = predict_with(model, &b.image, &h)?;
        if h[0].is_some() {
            let pred: Vec<usize> = seg.iter().map(|&v| v as usize).collect();
            let label: Vec<f32> = samples
                .iter()
                .flat_map(|s| s.label.iter().copied())
                .collect();
            conf.add(&pred, &label);
        }
        let gt = |f: &dyn Fn(&NyuSample) -> &Vec<f32>, on: bool| -> Vec<f32> {
            if !on {
                return vec![];
            }
            samples.iter().flat_map(|s| f(s).iter().copied()).collect()
        };
        geo.add_batch(
            &depth_pred,
            &gt(&|s| &s.depth, h[1].is_some()),
            &normal_pred,
            &gt(&|s| &s.normal, h[2].is_some()),
        );
    }
    let mut m = overparam_data::metrics::nyu_metrics(&conf, &geo);
    for (t, head) in overparam_base::Task::ALL.iter().zip(h) {
        if head.is_none() {
            m[t.metrics()].iter_mut().for_each(|v| *v = f64::NAN);
        }
    }
    Ok(m)
}

#[derive(Clone, Debug)]
pub struct MtlSummary {
    pub metrics: [f64; 9],
    /// The deploy model's validation metrics (on the training device).
    pub deploy_metrics: [f64; 9],
    pub untrained: Option<[f64; 9]>,
    /// Largest relative deviation of the deploy model's checked outputs on the training device
    /// from the f64 reference: a measurement, never a gate (see `fold.json`).
    pub max_output_rel_diff: f64,
}

/// Multi-task training as a [`Task`]: scenes with their own augmentation, three losses
/// combined by the weighting, the MTAN metrics on the validation split.
struct MultiTask<'a> {
    cfg: &'a TrainConfig,
    dir: PathBuf,
    device: Device,
    train: Arc<NyuSplit>,
    val: NyuSplit,
    steps: usize,
    weighter: Weighter,
    /// Single-task baseline for Δm in `metrics.csv`.
    baseline: Option<[f64; 9]>,
    /// The validation metrics before the first step (a new run only).
    untrained: Option<[f64; 9]>,
    /// The epoch's running sums of the three task losses.
    sums: [f64; 3],
    /// The network fine-tuning starts from, checked against the expansion before the first step.
    pretrained: Option<crate::pretrained::Pretrained>,
    progress: &'a dyn Progress,
}

impl Task for MultiTask<'_> {
    type Batch = Batch;
    /// The three task losses (before weighting).
    type Step = [Tensor; 3];
    type Eval = [f64; 9];

    fn steps(&self) -> usize {
        self.steps
    }

    fn header(&self) -> &'static str {
        HEADER.as_str()
    }

    fn optimisers(&self, cfg: &TrainConfig, model: &OpModel) -> Vec<Optimizer> {
        optimisers(cfg, model, self.weighter.log_vars.as_ref())
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>>> {
        let (train, device) = (self.train.clone(), self.device);
        let (bs, seed, aug) = (
            self.cfg.optim.batch_size,
            self.cfg.run.seed,
            self.cfg.data.augment,
        );
        let order = overparam_data::loader::epoch_order(train.len(), seed, epoch, true);
        Box::new((0..self.steps).map(move |b| {
            let samples: Vec<NyuSample> = order[b * bs..(b + 1) * bs]
                .iter()
                .map(|&i| {
                    let s = train.get(i)?;
                    Ok(if aug {
                        augment(
                            &s,
                            &mut Rng::derive(seed, &format!("nyu.augment.epoch{epoch}.{i}")),
                        )
                    } else {
                        s
                    })
                })
                .collect::<Result<_>>()?;
            make_batch(&samples, device)
        }))
    }

    fn start(&mut self, model: &OpModel) -> Result<()> {
        let bs = self.cfg.optim.batch_size;
        let expanded = evaluate(model, &self.val, bs, self.device)?;
        self.untrained = Some(expanded);
        let Some(p) = &self.pretrained else {
            return Ok(());
        };
        // Fine-tuning: the imported network on the same split, and how far the outputs moved.
        let imported = OpModel::new(
            &nn::VarStore::new(self.device).root(),
            &overparam_fuse::fold::as_train_spec(&p.spec)?,
            &p.weights,
        )?;
        let before = evaluate(&imported, &self.val, bs, self.device)?;
        let n = self.val.len().min(bs.max(1)).max(1);
        let samples: Vec<NyuSample> = (0..n).map(|i| self.val.get(i)).collect::<Result<_, _>>()?;
        let b = make_batch(&samples, self.device)?;
        let ya = tch::no_grad(|| imported.forward(&b.image, false))?;
        let yb = tch::no_grad(|| model.forward(&b.image, false))?;
        let mut rel = 0f64;
        for (a, c) in ya.iter().zip(&yb) {
            let (a, c) = (to_f(a)?, to_f(c)?);
            rel = rel.max((a.max_abs_diff(&c) / a.max_abs().max(1e-12)) as f64);
        }
        let (sa, _, _) = predict(&imported, &b.image)?;
        let (sb, _, _) = predict(model, &b.image)?;
        let mismatches = sa.iter().zip(&sb).filter(|(x, y)| x != y).count();
        let line = crate::pretrained::record_start(
            &self.dir,
            &crate::pretrained::Start {
                from: p.path.clone(),
                metric: "the nine NYUv2 metrics".into(),
                imported: before.to_vec(),
                expanded: expanded.to_vec(),
                prediction_mismatches: mismatches,
                max_output_rel_diff: rel,
            },
        )?;
        self.progress.event(&line);
        Ok(())
    }

    fn begin_epoch(&mut self) {
        self.sums = [0.0; 3];
    }

    fn forward(
        &mut self,
        model: &OpModel,
        x: &Batch,
    ) -> Result<(Tensor, Option<Tensor>, [Tensor; 3])> {
        let (ys, frob) = model.forward_with_frobenius(&x.image)?;
        let h = heads(model.spec());
        // A task the network has no output for adds nothing.
        let zero = || Tensor::from(0f32).f_to_device(x.image.device());
        let losses = [
            match h[0] {
                Some(i) => segmentation_loss(&ys[i], &x.label)?,
                None => zero()?,
            },
            match h[1] {
                Some(i) => depth_loss(&ys[i], &x.depth)?,
                None => zero()?,
            },
            match h[2] {
                Some(i) => normal_loss(&ys[i], &x.normal)?,
                None => zero()?,
            },
        ];
        let objective = self.weighter.combine(&active_losses(
            &self.cfg.mtl.tasks,
            losses.each_ref().map(|l| l.shallow_clone()),
        )?)?;
        Ok((objective, frob, losses))
    }

    fn record(
        &mut self,
        losses: [Tensor; 3],
        _batch: &Batch,
        epoch: usize,
        index: usize,
    ) -> Result<String> {
        for (s, l) in self.sums.iter_mut().zip(&losses) {
            let v = l.f_double_value(&[])?;
            if !v.is_finite() {
                return Err(Error::Run {
                    dir: self.dir.clone(),
                    message: format!("a task loss became {v} at epoch {}", epoch + 1),
                });
            }
            *s += v;
        }
        let n = (index + 1) as f64;
        Ok(format!(
            "loss seg {:.3} depth {:.3} normal {:.3}",
            self.sums[0] / n,
            self.sums[1] / n,
            self.sums[2] / n
        ))
    }

    fn end_epoch(
        &mut self,
        model: &OpModel,
        epoch: usize,
        _phase: PhaseKind,
        lr: f64,
    ) -> Result<([f64; 9], String, String)> {
        let means: Vec<f64> = self.sums.iter().map(|s| s / self.steps as f64).collect();
        self.weighter.end_epoch(means.clone());
        let m = self.evaluate(model)?;
        let (dm, dp) = self.baseline.map_or((f64::NAN, f64::NAN), |b| {
            (delta_m_nash(&m, &b), delta_p_libmtl(&m, &b))
        });
        let line = format!(
            "epoch {}/{} loss seg {:.3} depth {:.3} normal {:.3} · mIoU {:.2}% pixacc {:.2}% · depth abs {:.3} rel {:.3} · normals mean {:.1}° median {:.1}°",
            epoch + 1,
            self.cfg.optim.epochs,
            means[0],
            means[1],
            means[2],
            100.0 * m[0],
            100.0 * m[1],
            m[2],
            m[3],
            m[4],
            m[5]
        );
        let row = std::iter::once(format!("{}", epoch + 1))
            .chain(std::iter::once(format!("{lr:.6e}")))
            .chain(means.iter().map(|v| format!("{v:.6}")))
            .chain(m.iter().map(|v| format!("{v:.6}")))
            .chain([dm, dp].iter().map(|v| format!("{v:.4}")))
            .collect::<Vec<_>>()
            .join(",");
        Ok((m, row, line))
    }

    fn evaluate(&self, model: &OpModel) -> Result<[f64; 9]> {
        evaluate(model, &self.val, self.cfg.optim.batch_size, self.device)
    }

    /// The multi-task routines have one phase: no transition to check.
    fn function_change(&self, _: &OpModel, _: &OpModel) -> Result<f64> {
        Err(Error::Config(
            "routine r3 is not available for the multi-task network yet".into(),
        ))
    }

    fn extra_state(&self) -> Result<Extra> {
        let mut extra: Extra = (Weights::new(), BTreeMap::new());
        if let Some(lv) = &self.weighter.log_vars {
            extra.0.insert("weighting.log_vars".into(), to_f(lv)?);
        }
        extra.1.insert(
            "dwa_history".into(),
            serde_json::to_string(&self.weighter.epoch_means).expect("json"),
        );
        Ok(extra)
    }

    fn restore(&mut self, (tensors, meta): &Extra) -> Result<()> {
        if let (Some(lv), Some(t)) = (&self.weighter.log_vars, tensors.get("weighting.log_vars")) {
            let mut lv = lv.shallow_clone();
            tch::no_grad(|| lv.f_copy_(&from_f(t, self.device)?).map_err(Error::from))?;
        }
        if let Some(h) = meta.get("dwa_history") {
            self.weighter.epoch_means =
                serde_json::from_str(h).map_err(|e| Error::Config(format!("dwa_history: {e}")))?;
        }
        Ok(())
    }
}

/// Trains (or resumes) a multi-task run; `stop_after` as in [`crate::trainer::train`].
pub fn train_mtl(
    cfg: &TrainConfig,
    resume: bool,
    progress: &dyn Progress,
    stop_after: Option<usize>,
) -> Result<Option<MtlSummary>> {
    if matches!(cfg.routine, Routine::R3 { .. }) {
        return Err(Error::Config(
            "routine r3 is not available for the multi-task network yet".into(),
        ));
    }
    let run = prepare_run(cfg, resume, progress)?;
    let (device, dir) = (run.device, run.dir.clone());
    let (train, val) = load_splits_with(cfg, progress)?;
    let first = train.get(0)?;
    let (spec, init) = match crate::pretrained::Pretrained::of(cfg)? {
        Some(p) => {
            from_pretrained(cfg, &p, first.height, first.width)?;
            let (s, w) = p.expand(&cfg.model.method, cfg.run.seed)?;
            (s, Some((p, w)))
        }
        None => (
            mtl_net(&MtlOptions {
                width: cfg.model.width,
                height: first.height,
                width_px: first.width,
                classes: CLASSES,
                method: cfg.model.method.clone(),
            })?,
            None,
        ),
    };
    let (pretrained, init) = match init {
        Some((p, w)) => (Some(p), Some(w)),
        None => (None, None),
    };
    let bs = cfg.optim.batch_size;
    let steps = train.len() / bs;
    if steps == 0 {
        return Err(Error::Config(format!(
            "optim.batch_size {bs} exceeds the {} training scenes",
            train.len()
        )));
    }
    let baseline: Option<[f64; 9]> = match &cfg.mtl.baseline {
        Some(b) if b.len() == 9 => Some(std::array::from_fn(|i| b[i])),
        Some(b) => {
            return Err(Error::Config(format!(
                "mtl.baseline needs 9 values, got {}",
                b.len()
            )));
        }
        None => None,
    };
    // The weighting's parameters (uncertainty's log-variances) live as long as the run.
    let weighter_vs = nn::VarStore::new(device);
    let mut task = MultiTask {
        cfg,
        dir: dir.clone(),
        device,
        train: Arc::new(train),
        val,
        steps,
        weighter: Weighter::new(cfg.mtl.weighting, 3, &weighter_vs.root())?,
        baseline,
        untrained: None,
        sums: [0.0; 3],
        pretrained,
        progress,
    };
    let heads = heads(&spec);
    let output_names: Vec<String> = spec.outputs.iter().map(|o| o.name.clone()).collect();
    let phases = [Phase {
        kind: PhaseKind::Train,
        start: 0,
        end: cfg.optim.epochs,
        spec,
    }];
    let Some(fitted) = fit(cfg, &mut task, &phases, init, &run, progress, stop_after)? else {
        return Ok(None);
    };
    // Single-task baselines check only the output they train: an untrained head (its logits
    // grow unchecked, normals of near-zero vectors) says nothing about the fold.
    let checked: Vec<String> = overparam_base::Task::ALL
        .iter()
        .zip(heads)
        .filter(|(t, _)| cfg.mtl.tasks.as_ref().is_none_or(|k| k.contains(t)))
        .filter_map(|(_, h)| h.map(|i| output_names[i].clone()))
        .collect();
    let (deploy_metrics, rel) = finish(
        &run.dir,
        &fitted,
        (&task.val, bs),
        device,
        &checked,
        progress,
    )?;
    Ok(Some(MtlSummary {
        metrics: fitted.last,
        deploy_metrics,
        untrained: task.untrained,
        max_output_rel_diff: rel,
    }))
}

/// Checks that an imported dense network fits the data: its input is the data's size, and it
/// records no normalisation (NYUv2-layout images are fed as the files store them, here as in
/// `engine accuracy` and the bridge).
fn from_pretrained(
    cfg: &TrainConfig,
    p: &crate::pretrained::Pretrained,
    h: usize,
    w: usize,
) -> Result<()> {
    let i = &p.spec.input;
    if [i.channels, i.height, i.width] != [3, h, w] {
        return Err(Error::Config(format!(
            "model.from = {} takes {}×{}×{} images; the NYUv2-layout data's are 3×{h}×{w}",
            p.path.display(),
            i.channels,
            i.height,
            i.width
        )));
    }
    if i.normalize.is_some() {
        return Err(Error::Config(format!(
            "model.from = {} records an input normalisation; dense data is fed as the NYUv2 files store it, so import the network without --mean/--std (fold the normalisation into the network before export)",
            p.path.display()
        )));
    }
    let h = heads(&overparam_fuse::fold::as_train_spec(&p.spec)?);
    for o in &p.spec.outputs {
        if let Some(t) = o.role.task() {
            let want = match t {
                overparam_base::Task::Segmentation => CLASSES,
                overparam_base::Task::Depth => 1,
                overparam_base::Task::Normals => 3,
            };
            let got = p.spec.infer_shapes()?[&o.node].clone();
            if got != [want, i.height, i.width] {
                return Err(Error::Config(format!(
                    "model.from = {}: output `{}` ({}) is {got:?}; NYUv2 training needs {want}×{}×{}",
                    p.path.display(),
                    o.name,
                    o.role.name(),
                    i.height,
                    i.width
                )));
            }
        }
    }
    if let Some(tasks) = &cfg.mtl.tasks {
        for &t in tasks {
            if h[t as usize].is_none() {
                return Err(Error::Config(format!(
                    "mtl.tasks names {}, which model.from = {} has no output for",
                    t.name(),
                    p.path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Folds the model, gates on exactness in f64 ([`crate::fold_gate`]) for the outputs in
/// `checked`, evaluates the deploy model on the validation split next to the train model,
/// writes the deploy checkpoint, the panels and a `deploy` row of `metrics.csv`. Returns the
/// deploy model's metrics and the largest output deviation of the training device (measured
/// against the f64 reference, never a gate).
/// `val` is the validation split and the batch size it is evaluated in.
fn finish<E>(
    dir: &Path,
    fitted: &Fitted<E>,
    val: (&NyuSplit, usize),
    device: Device,
    checked: &[String],
    progress: &dyn Progress,
) -> Result<([f64; 9], f64)> {
    let (model, metrics) = (&fitted.model, &fitted.rows);
    let (val, bs) = val;
    let is_checked = |name: &str| checked.iter().any(|n| n == name);
    let (f, dmodel) = crate::fold_gate::fold_and_gate(dir, model, device, &is_checked)?;
    let worst = f
        .report
        .measured
        .iter()
        .filter(|m| m.model == Some(overparam_fuse::verify::MeasuredModel::Deploy))
        .flat_map(|m| &m.outputs)
        .filter(|d| is_checked(&d.name))
        .fold(0f64, |w, d| w.max(d.rel));
    let deployed = evaluate(&dmodel, val, bs, device)?;
    checkpoint::save(&dir.join(DEPLOY_FILE), &AnySpec::Deploy(f.spec), &f.weights)?;
    let row = std::iter::once("deploy".to_string())
        .chain(std::iter::repeat_n(String::new(), 4))
        .chain(deployed.iter().map(|v| format!("{v:.6}")))
        .chain(std::iter::repeat_n(String::new(), 2))
        .collect::<Vec<_>>()
        .join(",");
    let mut rows = metrics.to_vec();
    rows.push(row);
    write_metrics(dir, &HEADER, &rows)?;
    let panels = dir.join("panels");
    std::fs::create_dir_all(&panels).map_err(|e| Error::Io {
        path: panels.clone(),
        source: e,
    })?;
    let samples: Vec<NyuSample> = (0..val.len().min(3))
        .map(|i| val.get(i))
        .collect::<Result<_, _>>()?;
    for (k, s) in samples.iter().enumerate() {
        let one = make_batch(std::slice::from_ref(s), device)?;
        let (seg, depth, normals) = predict(model, &one.image)?;
        write_panel(
            &panels.join(format!("val_{}.png", val.indices[k])),
            s,
            &seg,
            &depth,
            &normals,
        )?;
    }
    progress.event(&format!(
        "{}\nfold: deploy model ({}) on validation: {}; wrote {}",
        f.report.summary(),
        crate::fold_gate::device_precision(device),
        format_metrics(&deployed),
        dir.join(DEPLOY_FILE).display()
    ));
    Ok((deployed, worst))
}

/// Predictions of the three heads for one batch, channel-last: (class map, depth, normals).
fn predict(model: &OpModel, image: &Tensor) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    predict_with(model, image, &heads(model.spec()))
}

/// [`predict`] with the heads known; a missing head predicts nothing (an empty vector).
fn predict_with(
    model: &OpModel,
    image: &Tensor,
    h: &[Option<usize>; 3],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let ys = tch::no_grad(|| model.forward(image, false))?;
    let seg = match h[0] {
        Some(i) => Vec::<i64>::try_from(
            &ys[i]
                .f_argmax(1, false)?
                .f_flatten(0, -1)?
                .f_to_device(Device::Cpu)?,
        )?
        .into_iter()
        .map(|v| v as f32)
        .collect(),
        None => vec![],
    };
    let depth = match h[1] {
        Some(i) => to_f(&ys[i])?.data,
        None => vec![],
    };
    // Normals channel-last, as the ground truth.
    let normals = match h[2] {
        Some(i) => to_f(&ys[i].f_permute([0, 2, 3, 1])?.f_contiguous()?)?.data,
        None => vec![],
    };
    Ok((seg, depth, normals))
}

/// One PNG row per sample: input | segmentation truth | prediction | depth truth | prediction |
/// normals truth | prediction (invalid pixels black, and the predictions of a task the network
/// has no output for).
pub fn write_panel(
    path: &Path,
    s: &NyuSample,
    seg: &[f32],
    depth: &[f32],
    normals: &[f32],
) -> Result<()> {
    let (h, w) = (s.height, s.width);
    let cols = 7;
    let mut rgb = vec![0u8; h * w * cols * 3];
    let dmax = s.depth.iter().chain(depth).fold(1e-6f32, |m, v| m.max(*v));
    let px = |col: usize, y: usize, x: usize| ((y * w * cols) + col * w + x) * 3;
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let put = |rgb: &mut Vec<u8>, col: usize, c: [u8; 3]| {
                rgb[px(col, y, x)..px(col, y, x) + 3].copy_from_slice(&c)
            };
            put(
                &mut rgb,
                0,
                std::array::from_fn(|c| (s.image[i * 3 + c].clamp(0.0, 1.0) * 255.0) as u8),
            );
            let class = overparam_data::png::class_colour;
            put(&mut rgb, 1, class(s.label[i]));
            // A task the network has no output for stays black.
            if let Some(&c) = seg.get(i) {
                put(&mut rgb, 2, class(c));
            }
            let grey = |d: f32| overparam_data::png::depth_grey(d, dmax);
            put(&mut rgb, 3, grey(s.depth[i]));
            if let Some(&d) = depth.get(i) {
                put(&mut rgb, 4, grey(d));
            }
            let rgb_n = overparam_data::png::normal_colour;
            put(&mut rgb, 5, rgb_n(&s.normal[i * 3..i * 3 + 3]));
            if let Some(n) = normals.get(i * 3..i * 3 + 3) {
                put(&mut rgb, 6, rgb_n(n));
            }
        }
    }
    overparam_data::png::write_rgb(path, w * cols, h, &rgb)?;
    Ok(())
}

/// Metrics of any checkpoint (train or deploy) of the multi-task network on `root/val`,
/// optionally writing per-image predictions as `.npy` (`segmentation/<i>.npy` H×W class
/// indices, `depth/<i>.npy` H×W×1, `normal/<i>.npy` H×W×3) so any tool can recompute metrics.
pub fn evaluate_checkpoint(
    path: &Path,
    root: &Path,
    device: Device,
    dump: Option<&Path>,
) -> Result<[f64; 9]> {
    let ck = checkpoint::load(path)?;
    let spec = match &ck.spec {
        AnySpec::Train(s) => s.clone(),
        AnySpec::Deploy(d) => as_train_spec(d)?,
    };
    let val = NyuSplit::open(root, "val")?;
    let model = OpModel::new(&nn::VarStore::new(device).root(), &spec, &ck.weights)?;
    if let Some(out) = dump {
        for i in 0..val.len() {
            let s = val.get(i)?;
            let b = make_batch(std::slice::from_ref(&s), device)?;
            let (seg, depth, normals) = predict(&model, &b.image)?;
            let (h, w) = (s.height, s.width);
            let idx = val.indices[i];
            for (kind, shape, data) in [
                ("segmentation", vec![h, w], seg),
                ("depth", vec![h, w, 1], depth),
                ("normal", vec![h, w, 3], normals),
            ] {
                if data.is_empty() {
                    continue; // a task the network has no output for
                }
                let d = out.join(kind);
                std::fs::create_dir_all(&d).map_err(|e| Error::Io {
                    path: d.clone(),
                    source: e,
                })?;
                overparam_data::npy::write(&d.join(format!("{idx}.npy")), &shape, &data)?;
            }
        }
    }
    evaluate(&model, &val, 2, device)
}

/// The nine metrics in one line, as the CLI prints them.
pub fn format_metrics(m: &[f64; 9]) -> String {
    format!(
        "mIoU {:.2}%, pixel acc {:.2}%, depth abs {:.4} rel {:.4}, normals mean {:.2}° median {:.2}°, within 11.25/22.5/30°: {:.1}/{:.1}/{:.1}%",
        100.0 * m[0],
        100.0 * m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        100.0 * m[6],
        100.0 * m[7],
        100.0 * m[8]
    )
}

/// Whether a config trains dense tasks: the multi-task builder, or a `model.from` network
/// whose outputs have dense roles (class logits go to the classification trainer).
pub fn is_mtl(cfg: &TrainConfig) -> Result<bool> {
    match crate::pretrained::Pretrained::of(cfg)? {
        Some(p) => p.is_dense(),
        None => Ok(cfg.model.is_mtl_builder()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns every written multi-task metrics.csv has (readers find them by name).
    #[test]
    fn the_header_is_the_one_runs_have_always_written() {
        assert_eq!(
            *HEADER,
            "epoch,lr,loss_seg,loss_depth,loss_normal,miou,pix_acc,abs_err,rel_err,mean_deg,median_deg,within_11_25,within_22_5,within_30,delta_m_nash,delta_p_libmtl"
        );
    }

    #[test]
    fn single_task_runs_train_only_their_task() {
        let l = || {
            [
                Tensor::from(1.0f32),
                Tensor::from(2.0f32),
                Tensor::from(3.0f32),
            ]
        };
        let all = active_losses(&None, l()).unwrap();
        assert_eq!(
            all.iter().map(|t| t.double_value(&[])).collect::<Vec<_>>(),
            [1.0, 2.0, 3.0]
        );
        let depth = active_losses(&Some(vec![overparam_base::Task::Depth]), l()).unwrap();
        assert_eq!(
            depth
                .iter()
                .map(|t| t.double_value(&[]))
                .collect::<Vec<_>>(),
            [0.0, 2.0, 0.0]
        );
    }
}

//! Classification training runs: routines R1/R2/R3, per-epoch metrics and atomic checkpoints,
//! bit-identical resume, and the final fold with a test-set prediction check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use overparam_base::{Progress, Silent};
use overparam_data::cifar::{ImageSet, ImageShape, Split};
use overparam_data::loader::{Augment, Loader, LoaderConfig, Normalize, batches_per_epoch};
use overparam_data::metrics::TopK;
use overparam_fuse::checkpoint;
use overparam_fuse::fold::as_train_spec;
use overparam_fuse::layout::ParamKind;
use overparam_fuse::models::{ClassifierOptions, build};
use overparam_fuse::spec::Normalization;
use overparam_fuse::{AnySpec, MethodConfig, MethodKind, TrainSpec};
use tch::{Device, Tensor, nn};

use crate::error::{Error, Result};
use crate::fit::{Fitted, Phase, PhaseKind, Task, fit, grouped_optimisers};
use crate::model::OpModel;
use crate::optim::Optimizer;
use crate::pretrained::Pretrained;
use crate::state::{prepare_run, to_f, write_metrics};
use overparam_config::{DataKindChoice, Dataset, Routine, TrainConfig};
use overparam_fuse::Weights;

/// Where the device choice is made; kept under its old path.
pub use crate::state::device;

pub use overparam_config::files::{CONFIG_FILE, DEPLOY_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE};

/// One row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub phase: RowKind,
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1_err: f64,
    pub test_loss: f64,
    pub test_top1_err: f64,
    pub test_top5_err: f64,
    pub images_per_s: f64,
}

/// What a `metrics.csv` row is: an epoch of a phase, the evaluation of a run resumed after its
/// last epoch, or the deploy model after the fold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    Epoch(PhaseKind),
    Resumed,
    Deploy,
}

impl std::fmt::Display for RowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RowKind::Epoch(p) => p.name(),
            RowKind::Resumed => "resumed",
            RowKind::Deploy => "deploy",
        })
    }
}

impl EpochMetrics {
    pub const HEADER: &'static str = "epoch,phase,lr,train_loss,train_top1_err,test_loss,test_top1_err,test_top5_err,images_per_s";
    /// One CSV row; the `deploy` row (the deploy model's test metrics after the fold) has
    /// `deploy` in the epoch column and leaves the training columns empty.
    fn csv(&self) -> String {
        if self.phase == RowKind::Deploy {
            return format!(
                "deploy,deploy,,,,{:.6},{:.3},{:.3},",
                self.test_loss, self.test_top1_err, self.test_top5_err
            );
        }
        format!(
            "{},{},{:.6e},{:.6},{:.3},{:.6},{:.3},{:.3},{:.1}",
            self.epoch,
            self.phase,
            self.lr,
            self.train_loss,
            self.train_top1_err,
            self.test_loss,
            self.test_top1_err,
            self.test_top5_err,
            self.images_per_s
        )
    }
}

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub last: EpochMetrics,
    pub deploy_test_top1_err: f64,
    pub deploy_test_top5_err: f64,
    /// Test images whose predicted class differs between the deploy and the train model on
    /// the training device (a measurement of its rounding; the gate is the f64 verdict).
    pub prediction_mismatches: usize,
    pub max_logit_rel_diff: f64,
    /// The f64 verdict and the precisions measured (also in `fold.json`).
    pub fold: overparam_fuse::verify::FoldReport,
}

/// Training and test sets: from `data.dir` (CIFAR binary or IDX, by `data.kind`, the dataset,
/// or the files present), from a named dataset's system directory (Fashion-MNIST: where
/// Debian's `dataset-fashion-mnist` installs it), or synthetic CIFAR-100 generated once (in the
/// real binary format) under `<run.dir>/_data/`.
pub fn load_data(cfg: &TrainConfig) -> Result<(ImageSet, ImageSet)> {
    load_data_with(cfg, &Silent)
}

/// [`load_data`], reporting the generation of synthetic data to `progress`.
pub fn load_data_with(cfg: &TrainConfig, progress: &dyn Progress) -> Result<(ImageSet, ImageSet)> {
    let d = &cfg.data;
    let kind = d.kind.or(d.dataset.map(|x| x.kind()));
    let dir = match (&d.dir, d.dataset) {
        (Some(dir), _) => dir.clone(),
        (None, Some(ds)) => ds.system_dir().0.to_path_buf(),
        (None, None) => {
            let d = cfg.run.dir.join("_data").join(format!(
                "synth-cifar100-{}-{}-seed{}",
                cfg.data.synthetic_train, cfg.data.synthetic_test, cfg.data.synthetic_seed
            ));
            if !(d.join("train.bin").exists() && d.join("test.bin").exists()) {
                progress.event(&format!(
                    "data: generating synthetic CIFAR-100 into {}",
                    d.display()
                ));
                overparam_data::synth::write_synthetic_cifar100(
                    &d,
                    cfg.data.synthetic_train,
                    cfg.data.synthetic_test,
                    cfg.data.synthetic_seed,
                )?;
            }
            d
        }
    };
    if kind == Some(DataKindChoice::Idx) {
        for split in [Split::Train, Split::Test] {
            if overparam_data::idx::split_files(&dir, split).is_none() {
                return Err(missing_idx(cfg, &dir, split));
            }
        }
    }
    let load =
        |split| overparam_data::dataset::load(&dir, split, kind.map(|k| k.to_data()), d.classes);
    Ok((load(Split::Train)?, load(Split::Test)?))
}

/// What to do when a split's IDX files are not in `dir`: the files expected and, for a known
/// dataset, the package that installs them.
fn missing_idx(cfg: &TrainConfig, dir: &Path, split: Split) -> Error {
    let (i, l) = overparam_data::idx::file_names(split);
    let ds = cfg.data.dataset.unwrap_or(Dataset::FashionMnist);
    let (sys, pkg) = ds.system_dir();
    let hint = if cfg.data.dataset.is_some() {
        format!(
            "install Debian's package `{pkg}` (`apt-get install {pkg}` puts it in {}) or set data.dir",
            sys.display()
        )
    } else {
        format!(
            "for Fashion-MNIST, Debian's package `{pkg}` installs them in {} (data.dataset = \"{}\" uses that directory)",
            sys.display(),
            ds.as_str()
        )
    };
    Error::Config(format!(
        "{}: no {i}[.gz] and {l}[.gz] here{}: {hint}",
        dir.display(),
        cfg.data
            .dataset
            .map(|d| format!(" (data.dataset = {})", d.as_str()))
            .unwrap_or_default()
    ))
}

/// The phases of a classification routine (one for R1 and R2, three for R3), and the weights
/// of the first phase when they are not a fresh initialisation (a fine-tuned network's exact
/// expansion).
fn phases(
    cfg: &TrainConfig,
    classes: usize,
    shape: ImageShape,
    norm: &Normalize,
    pre: Option<&Pretrained>,
) -> Result<(Vec<Phase>, Option<Weights<f32>>)> {
    if let Some(p) = pre {
        let i = &p.spec.input;
        if [i.channels, i.height, i.width] != [shape.channels, shape.height, shape.width] {
            return Err(Error::Config(format!(
                "model.from = {} takes {}×{}×{} images; the data's are {}×{}×{}",
                p.path.display(),
                i.channels,
                i.height,
                i.width,
                shape.channels,
                shape.height,
                shape.width
            )));
        }
        let model_classes = p.spec.classifier_classes();
        if model_classes != Some(classes) {
            return Err(Error::Config(format!(
                "model.from = {} has {} classes (its class_logits output); the data has {classes}",
                p.path.display(),
                model_classes.map_or("no".into(), |c| c.to_string())
            )));
        }
    } else if shape.height != shape.width {
        return Err(Error::Config(format!(
            "the classifiers take square images; the data's are {}×{}",
            shape.height, shape.width
        )));
    }
    let spec = |method: MethodConfig| -> Result<(TrainSpec, Option<Weights<f32>>)> {
        if let Some(p) = pre {
            let (s, w) = p.expand(&method, cfg.run.seed)?;
            return Ok((s, Some(w)));
        }
        let kind = cfg
            .model
            .kind
            .ok_or_else(|| Error::Config("model.kind or model.from is required".into()))?;
        let mut s = build(
            kind,
            &ClassifierOptions {
                width: cfg.model.width,
                num_classes: classes,
                image_size: shape.height,
                in_channels: shape.channels,
                method,
            },
        )?;
        s.input.normalize = Some(Normalization {
            mean: norm.mean.to_vec(),
            std: norm.std.to_vec(),
        });
        Ok((s, None))
    };
    let m = &cfg.model.method;
    let phase = |kind, start, end, spec| Phase {
        kind,
        start,
        end,
        spec,
    };
    Ok(match &cfg.routine {
        Routine::R1 | Routine::R2 { .. } => {
            let (s, w) = spec(m.clone())?;
            (vec![phase(PhaseKind::Train, 0, cfg.optim.epochs, s)], w)
        }
        Routine::R3 {
            plain_epochs,
            op_epochs,
            finetune_epochs,
        } => {
            if !matches!(m.kind, MethodKind::Fnl | MethodKind::Sfo) {
                return Err(Error::Config(format!(
                    "routine r3 expands by SVD: it needs method fnl or sfo, not {}",
                    m.kind.as_str()
                )));
            }
            let (plain, w) = spec(MethodConfig::new(MethodKind::Plain))?;
            let a = *plain_epochs;
            let b = a + op_epochs;
            (
                vec![
                    phase(PhaseKind::Plain, 0, a, plain.clone()),
                    phase(PhaseKind::Op, a, b, spec(m.clone())?.0),
                    phase(PhaseKind::Finetune, b, b + finetune_epochs, plain),
                ],
                w,
            )
        }
    })
}

/// Optimisers over the model's trainable tensors: one (R1, R3), or two alternating groups
/// (R2: {U, V and all non-factor tensors} and {M}).
pub(crate) fn optimisers(cfg: &TrainConfig, model: &OpModel) -> Vec<Optimizer> {
    grouped_optimisers(cfg, model, |_, kind| kind == ParamKind::FactorM, &[])
}

pub(crate) fn batch_tensor(
    images: &[f32],
    n: usize,
    shape: ImageShape,
    device: Device,
) -> Result<Tensor> {
    let ImageShape {
        channels: c,
        height: h,
        width: w,
    } = shape;
    Ok(Tensor::f_from_slice(images)?
        .f_reshape([n as i64, c as i64, h as i64, w as i64])?
        .f_to_device(device)?)
}

/// Logits of a whole set in eval mode (no augmentation), with loss and top-k.
pub fn evaluate(
    model: &OpModel,
    set: &Arc<ImageSet>,
    norm: &Normalize,
    device: Device,
) -> Result<(f64, TopK, Vec<f32>)> {
    let cfg = LoaderConfig {
        batch_size: 250,
        shuffle: false,
        drop_last: false,
        augment: None,
        normalize: norm.clone(),
        seed: 0,
    };
    let classes = set.num_classes;
    let mut topk = TopK::default();
    let mut loss_sum = 0.0;
    let mut logits_all = Vec::with_capacity(set.len() * classes);
    for b in Loader::spawn(set.clone(), cfg, 0, 0) {
        let x = batch_tensor(&b.images, b.size, set.shape, device)?;
        let y = tch::no_grad(|| model.forward(&x, false))?.remove(0);
        let t = Tensor::f_from_slice(&b.labels)?.f_to_device(device)?;
        let loss = y.f_cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::Sum, -100, 0.0)?;
        loss_sum += loss.f_double_value(&[])?;
        let logits = Vec::<f32>::try_from(&y.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        topk.add(&logits, classes, &b.labels);
        logits_all.extend(logits);
    }
    Ok((loss_sum / set.len().max(1) as f64, topk, logits_all))
}

/// Relative difference of two models' outputs on the first test images (used to check that a
/// phase transition kept the function).
fn function_change(
    a: &OpModel,
    b: &OpModel,
    set: &ImageSet,
    norm: &Normalize,
    device: Device,
) -> Result<f64> {
    let n = set.len().min(32);
    let px = set.shape.pixels();
    let mut img = vec![0f32; n * px];
    for i in 0..n {
        overparam_data::loader::prepare(
            set.image(i),
            set.shape,
            norm,
            None,
            &mut img[i * px..(i + 1) * px],
        );
    }
    let x = batch_tensor(&img, n, set.shape, device)?;
    let ya = to_f(&tch::no_grad(|| a.forward(&x, false))?[0])?;
    let yb = to_f(&tch::no_grad(|| b.forward(&x, false))?[0])?;
    Ok((ya.max_abs_diff(&yb) / ya.max_abs().max(1e-12)) as f64)
}

/// Forward in train mode and the cross-entropy (with label smoothing): (loss, logits, the
/// Frobenius term of the composed kernels).
fn forward_ce(
    cfg: &TrainConfig,
    model: &OpModel,
    x: &Tensor,
    target: &Tensor,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let (mut ys, frob) = model.forward_with_frobenius(x)?;
    let y = ys.remove(0);
    let ce = y.f_cross_entropy_loss::<Tensor>(
        target,
        None,
        tch::Reduction::Mean,
        -100,
        cfg.optim.label_smoothing,
    )?;
    Ok((ce, y, frob))
}

/// One optimisation step on a batch ([`crate::fit::step`] after the cross-entropy forward).
/// Returns the cross-entropy and the logits.
pub fn train_step(
    cfg: &TrainConfig,
    model: &OpModel,
    opts: &mut [Optimizer],
    x: &Tensor,
    target: &Tensor,
    lr: f64,
    step: usize,
) -> Result<(Tensor, Tensor)> {
    let (ce, y, frob) = forward_ce(cfg, model, x, target)?;
    crate::fit::step(cfg, opts, &ce, frob, lr, step)?;
    Ok((ce, y))
}

/// Classification as a [`Task`]: batches from the loader, cross-entropy, top-k error on the
/// training batches and the test set.
struct Classification<'a> {
    cfg: &'a TrainConfig,
    dir: PathBuf,
    device: Device,
    train: Arc<ImageSet>,
    test: Arc<ImageSet>,
    norm: Normalize,
    loader: LoaderConfig,
    steps: usize,
    // The epoch's running sums.
    t0: Instant,
    loss_sum: f64,
    seen: usize,
    top: TopK,
    /// The network fine-tuning starts from, checked against the expansion before the first step.
    pretrained: Option<Pretrained>,
    progress: &'a dyn Progress,
}

/// A batch as the loader made it, and its images and labels on the device.
struct ClassBatch {
    b: overparam_data::loader::Batch,
    x: Tensor,
    t: Tensor,
}

impl Task for Classification<'_> {
    type Batch = ClassBatch;
    /// The cross-entropy and the logits.
    type Step = (Tensor, Tensor);
    type Eval = EpochMetrics;

    fn steps(&self) -> usize {
        self.steps
    }

    fn header(&self) -> &'static str {
        EpochMetrics::HEADER
    }

    fn optimisers(&self, cfg: &TrainConfig, model: &OpModel) -> Vec<Optimizer> {
        optimisers(cfg, model)
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<ClassBatch>>> {
        let (shape, device) = (self.train.shape, self.device);
        let loader = Loader::spawn(self.train.clone(), self.loader.clone(), epoch, 0);
        Box::new(loader.map(move |b| {
            Ok(ClassBatch {
                x: batch_tensor(&b.images, b.size, shape, device)?,
                t: Tensor::f_from_slice(&b.labels)?.f_to_device(device)?,
                b,
            })
        }))
    }

    /// A fine-tuning run: the expanded model and the imported one on the test split.
    fn start(&mut self, model: &OpModel) -> Result<()> {
        let Some(p) = &self.pretrained else {
            return Ok(());
        };
        let imported = OpModel::new(
            &nn::VarStore::new(self.device).root(),
            &as_train_spec(&p.spec)?,
            &p.weights,
        )?;
        let (_, ta, a) = evaluate(&imported, &self.test, &self.norm, self.device)?;
        let (_, tb, b) = evaluate(model, &self.test, &self.norm, self.device)?;
        let (mismatches, rel) = compare_logits(&a, &b, self.test.num_classes);
        let line = crate::pretrained::record_start(
            &self.dir,
            &crate::pretrained::Start {
                from: p.path.clone(),
                metric: "test top-1 error %".into(),
                imported: vec![ta.top1_error()],
                expanded: vec![tb.top1_error()],
                prediction_mismatches: mismatches,
                max_output_rel_diff: rel,
            },
        )?;
        self.progress.event(&line);
        Ok(())
    }

    fn begin_epoch(&mut self) {
        self.t0 = Instant::now();
        (self.loss_sum, self.seen) = (0.0, 0);
        self.top = TopK::default();
    }

    fn forward(
        &mut self,
        model: &OpModel,
        batch: &ClassBatch,
    ) -> Result<(Tensor, Option<Tensor>, (Tensor, Tensor))> {
        let (ce, y, frob) = forward_ce(self.cfg, model, &batch.x, &batch.t)?;
        Ok((ce.shallow_clone(), frob, (ce, y)))
    }

    fn record(
        &mut self,
        (ce, y): (Tensor, Tensor),
        batch: &ClassBatch,
        epoch: usize,
        _index: usize,
    ) -> Result<String> {
        let b = &batch.b;
        let l = ce.f_double_value(&[])?;
        if !l.is_finite() {
            return Err(Error::Run {
                dir: self.dir.clone(),
                message: format!("loss became {l} at epoch {} step {}", epoch + 1, b.index),
            });
        }
        self.loss_sum += l * b.size as f64;
        self.seen += b.size;
        let logits =
            Vec::<f32>::try_from(&y.f_detach()?.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        self.top.add(&logits, self.train.num_classes, &b.labels);
        Ok(format!(
            "loss {:.3} · {:.0} img/s",
            self.loss_sum / self.seen as f64,
            self.seen as f64 / self.t0.elapsed().as_secs_f64()
        ))
    }

    fn end_epoch(
        &mut self,
        model: &OpModel,
        epoch: usize,
        phase: PhaseKind,
        lr: f64,
    ) -> Result<(EpochMetrics, String, String)> {
        let ips = self.seen as f64 / self.t0.elapsed().as_secs_f64();
        let (test_loss, test_top, _) = evaluate(model, &self.test, &self.norm, self.device)?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            phase: RowKind::Epoch(phase),
            lr,
            train_loss: self.loss_sum / self.seen.max(1) as f64,
            train_top1_err: self.top.top1_error(),
            test_loss,
            test_top1_err: test_top.top1_error(),
            test_top5_err: test_top.top5_error(),
            images_per_s: ips,
        };
        let line = format!(
            "epoch {}/{} [{phase}] loss {:.4} train err {:.2}% · test loss {:.4} top-1 err {:.2}% top-5 err {:.2}% · {:.0} img/s",
            m.epoch,
            self.cfg.optim.epochs,
            m.train_loss,
            m.train_top1_err,
            m.test_loss,
            m.test_top1_err,
            m.test_top5_err,
            ips
        );
        let row = m.csv();
        Ok((m, row, line))
    }

    fn evaluate(&self, model: &OpModel) -> Result<EpochMetrics> {
        let (test_loss, top, _) = evaluate(model, &self.test, &self.norm, self.device)?;
        Ok(EpochMetrics {
            epoch: self.cfg.optim.epochs,
            phase: RowKind::Resumed,
            lr: 0.0,
            train_loss: f64::NAN,
            train_top1_err: f64::NAN,
            test_loss,
            test_top1_err: top.top1_error(),
            test_top5_err: top.top5_error(),
            images_per_s: f64::NAN,
        })
    }

    fn function_change(&self, a: &OpModel, b: &OpModel) -> Result<f64> {
        function_change(a, b, &self.test, &self.norm, self.device)
    }
}

/// Trains (or resumes) a run and returns its summary. `progress` gets a bar per epoch and a
/// line per epoch, phase change and fold;
/// `stop_after` ends the invocation after that many epochs, as a kill at an epoch boundary
/// would (for tests and time-sliced jobs); the summary then has no deploy model.
pub fn train(
    cfg: &TrainConfig,
    resume: bool,
    progress: &dyn Progress,
    stop_after: Option<usize>,
) -> Result<Option<RunSummary>> {
    let run = prepare_run(cfg, resume, progress)?;
    let (device, dir) = (run.device, run.dir.clone());
    let (train_set, test_set) = load_data_with(cfg, progress)?;
    let pretrained = Pretrained::of(cfg)?;
    if let Some(p) = &pretrained
        && p.is_dense()?
    {
        return Err(Error::Config(format!(
            "model.from = {} has dense outputs; it trains on NYUv2-layout data (the multi-task trainer), not on classification data",
            p.path.display()
        )));
    }
    // A fine-tuned network is fed as it was trained; a new one with the train split's statistics.
    let norm = match &pretrained {
        Some(p) => {
            let n = p.normalization()?;
            if n.mean.len() != train_set.shape.channels {
                return Err(Error::Config(format!(
                    "model.from = {}: its normalisation has {} channels, the data {}",
                    p.path.display(),
                    n.mean.len(),
                    train_set.shape.channels
                )));
            }
            Normalize {
                mean: n.mean.clone(),
                std: n.std.clone(),
            }
        }
        None => {
            let (mean, std) = train_set.channel_stats();
            Normalize { mean, std }
        }
    };
    let (phases, init) = phases(
        cfg,
        train_set.num_classes,
        train_set.shape,
        &norm,
        pretrained.as_ref(),
    )?;
    let (loader, steps) = train_loader(cfg, &norm, train_set.len())?;
    let mut task = Classification {
        cfg,
        dir: dir.clone(),
        device,
        train: Arc::new(train_set),
        test: Arc::new(test_set),
        norm,
        loader,
        steps,
        t0: Instant::now(),
        loss_sum: 0.0,
        seen: 0,
        top: TopK::default(),
        pretrained,
        progress,
    };
    let Some(fitted) = fit(cfg, &mut task, &phases, init, &run, progress, stop_after)? else {
        return Ok(None);
    };
    finish(&run.dir, &fitted, &task.test, &task.norm, device, progress).map(Some)
}

/// The training loader of `cfg` (shuffled, whole batches, the config's augmentation) and its
/// batches per epoch; a batch larger than the set is refused.
pub(crate) fn train_loader(
    cfg: &TrainConfig,
    norm: &Normalize,
    len: usize,
) -> Result<(LoaderConfig, usize)> {
    let loader = LoaderConfig {
        batch_size: cfg.optim.batch_size,
        shuffle: true,
        drop_last: true,
        augment: cfg.data.augment.then_some(Augment {
            crop_pad: cfg.data.crop_pad,
            hflip: cfg.data.hflip,
        }),
        normalize: norm.clone(),
        seed: cfg.run.seed,
    };
    let steps = batches_per_epoch(len, &loader);
    if steps == 0 {
        return Err(Error::Config(format!(
            "optim.batch_size {} exceeds the training set ({len} images)",
            cfg.optim.batch_size
        )));
    }
    Ok((loader, steps))
}

/// Folds the final model, gates on exactness in f64 ([`crate::fold_gate`]), evaluates the
/// deploy model on the test set next to the train model (a measurement: how many predictions
/// the device's rounding moves), writes the deploy checkpoint and adds a `deploy` row to
/// `metrics.csv`.
fn finish(
    dir: &Path,
    fitted: &Fitted<EpochMetrics>,
    test: &Arc<ImageSet>,
    norm: &Normalize,
    device: Device,
    progress: &dyn Progress,
) -> Result<RunSummary> {
    let Fitted {
        model,
        last,
        rows: metrics,
    } = fitted;
    let last = last.clone();
    let (f, dmodel) = crate::fold_gate::fold_and_gate(dir, model, device, &|_| true)?;
    let (_, _, a) = evaluate(model, test, norm, device)?;
    let (dloss, dtop, b) = evaluate(&dmodel, test, norm, device)?;
    let (mismatches, max_rel) = compare_logits(&a, &b, test.num_classes);
    checkpoint::save(&dir.join(DEPLOY_FILE), &AnySpec::Deploy(f.spec), &f.weights)?;
    let deploy_row = EpochMetrics {
        epoch: last.epoch,
        phase: RowKind::Deploy,
        lr: f64::NAN,
        train_loss: f64::NAN,
        train_top1_err: f64::NAN,
        test_loss: dloss,
        test_top1_err: dtop.top1_error(),
        test_top5_err: dtop.top5_error(),
        images_per_s: f64::NAN,
    };
    let mut rows = metrics.to_vec();
    rows.push(deploy_row.csv());
    write_metrics(dir, EpochMetrics::HEADER, &rows)?;
    progress.event(&format!(
        "{}
fold: on the {} test images the deploy model ({}) gives top-1 error {:.2}% against the train model's {:.2}%; {mismatches} predictions differ (max logit rel diff {max_rel:.2e}); wrote {}",
        f.report.summary(),
        test.len(),
        crate::fold_gate::device_precision(device),
        dtop.top1_error(),
        last.test_top1_err,
        dir.join(DEPLOY_FILE).display()
    ));
    Ok(RunSummary {
        run_dir: dir.into(),
        last,
        deploy_test_top1_err: dtop.top1_error(),
        deploy_test_top5_err: dtop.top5_error(),
        prediction_mismatches: mismatches,
        max_logit_rel_diff: max_rel,
        fold: f.report,
    })
}

/// Predictions that differ between two models' logits (rows of `classes`), and the largest
/// relative difference of a row.
fn compare_logits(a: &[f32], b: &[f32], classes: usize) -> (usize, f64) {
    let (mut mismatches, mut max_rel) = (0, 0f64);
    for (ra, rb) in a.chunks(classes).zip(b.chunks(classes)) {
        let arg = |r: &[f32]| {
            r.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map(|(i, _)| i)
        };
        let scale = ra.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = ra
            .iter()
            .zip(rb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        max_rel = max_rel.max((diff / scale) as f64);
        mismatches += usize::from(arg(ra) != arg(rb));
    }
    (mismatches, max_rel)
}

/// Evaluates any checkpoint (train or deploy) on the test split of a CIFAR directory.
pub fn evaluate_checkpoint(
    path: &Path,
    data: &Path,
    device: Device,
) -> Result<(String, f64, TopK)> {
    let ck = checkpoint::load(path)?;
    let (spec, stage) = match &ck.spec {
        AnySpec::Train(s) => (s.clone(), "train"),
        AnySpec::Deploy(d) => (as_train_spec(d)?, "deploy"),
    };
    let n = spec.input.normalize.clone().ok_or_else(|| Error::Run {
        dir: path.into(),
        message: "checkpoint records no input normalisation (made by `init`, not by training)"
            .into(),
    })?;
    let norm = Normalize {
        mean: n.mean.clone(),
        std: n.std.clone(),
    };
    // An IDX set does not record its class count: the model's, else the MNIST family's 10.
    let test = Arc::new(overparam_data::dataset::load(
        data,
        Split::Test,
        None,
        spec.classifier_classes().unwrap_or(10),
    )?);
    let i = &spec.input;
    let s = test.shape;
    if (s.channels, s.height, s.width) != (i.channels, i.height, i.width)
        || n.mean.len() != s.channels
    {
        return Err(Error::Run {
            dir: path.into(),
            message: format!(
                "model takes {}×{}×{} images ({} normalisation channels), {} holds {}×{}×{}",
                i.channels,
                i.height,
                i.width,
                n.mean.len(),
                data.display(),
                s.channels,
                s.height,
                s.width
            ),
        });
    }
    let vs = nn::VarStore::new(device);
    let model = OpModel::new(&vs.root(), &spec, &ck.weights)?;
    let classes = spec.classifier_classes().unwrap_or(test.num_classes);
    if classes != test.num_classes {
        return Err(Error::Run {
            dir: path.into(),
            message: format!("model has {classes} classes, the data {}", test.num_classes),
        });
    }
    let (loss, top, _) = evaluate(&model, &test, &norm, device)?;
    Ok((stage.to_string(), loss, top))
}

#[cfg(test)]
mod tests {
    use super::*;
    use overparam_config::{
        DataConfig, DeviceChoice, ModelConfig, OptimConfig, RunConfig, Schedule,
    };
    use tch::Kind;

    /// R2: during group A's phase, every tensor of group B stays bit-identical, and vice versa.
    #[test]
    fn r2_leaves_the_frozen_group_bit_identical() {
        let cfg = TrainConfig {
            run: RunConfig {
                name: "r2".into(),
                dir: "unused".into(),
                seed: 0,
                threads: None,
                device: DeviceChoice::Cpu,
                tf32: true,
            },
            model: ModelConfig {
                kind: Some(overparam_fuse::models::ModelKind::VggSmall),
                from: None,
                width: 0.125,
                method: MethodConfig::new(MethodKind::Sfo),
            },
            data: DataConfig::default(),
            optim: OptimConfig {
                epochs: 1,
                batch_size: 4,
                lr: 0.1,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 5e-4,
                label_smoothing: 0.1,
                schedule: Schedule::Constant,
                warmup_epochs: 0,
                optimizer: Default::default(),
            },
            routine: Routine::R2 { period: 2 },
            mtl: Default::default(),
            quant: Default::default(),
        };
        let spec = phases(
            &cfg,
            10,
            ImageShape::CIFAR,
            &Normalize {
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
            None,
        )
        .unwrap()
        .0
        .remove(0)
        .spec;
        let w = overparam_fuse::init::init_train_weights(&spec, &Default::default()).unwrap();
        let model = OpModel::new(&nn::VarStore::new(Device::Cpu).root(), &spec, &w).unwrap();
        let mut opts = optimisers(&cfg, &model);
        assert_eq!(opts.len(), 2);
        let group_b: Vec<String> = opts[1].params.iter().map(|p| p.name.clone()).collect();
        assert!(!group_b.is_empty() && group_b.iter().all(|n| n.ends_with(".M")));
        tch::manual_seed(0);
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[1i64, 2, 3, 4]);
        let snap = |names: &[String]| -> Vec<Vec<f32>> {
            names
                .iter()
                .map(|n| to_f(model.var(n).unwrap()).unwrap().data)
                .collect()
        };
        let group_a: Vec<String> = opts[0].params.iter().map(|p| p.name.clone()).collect();
        for step in 0..8 {
            let (active, frozen) = if (step / 2) % 2 == 0 {
                (&group_a, &group_b)
            } else {
                (&group_b, &group_a)
            };
            let (fa, aa) = (snap(frozen), snap(active));
            let _ = train_step(&cfg, &model, &mut opts, &x, &t, 0.1, step).unwrap();
            assert!(snap(frozen) == fa, "step {step}: the frozen group changed");
            assert!(
                snap(active) != aa,
                "step {step}: the active group did not move"
            );
        }
    }
}

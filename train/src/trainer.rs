//! Classification training runs: routines R1/R2/R3, per-epoch metrics and atomic checkpoints,
//! bit-identical resume, and the final fold with a test-set prediction check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use overparam_base::{Progress, Silent};
use overparam_data::cifar::{ImageSet, ImageShape, Split};
use overparam_data::loader::{Augment, Loader, LoaderConfig, Normalize, batches_per_epoch};
use overparam_data::metrics::TopK;
use overparam_fuse::checkpoint::{self, load_tensors, save_tensors};
use overparam_fuse::fold::as_train_spec;
use overparam_fuse::layout::ParamKind;
use overparam_fuse::models::{ClassifierOptions, build};
use overparam_fuse::spec::Normalization;
use overparam_fuse::{AnySpec, MethodConfig, MethodKind, Tensor as FTensor, TrainSpec, Weights};
use tch::{Device, Kind, Tensor, nn};

use crate::config::{DataKindChoice, Dataset, DeviceChoice, Routine, TrainConfig};
use crate::error::{Error, Result};
use crate::model::OpModel;
use crate::optim::{Param, Sgd, learning_rate};

pub use overparam_config::files::{CONFIG_FILE, DEPLOY_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE};

/// One row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub phase: String,
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1_err: f64,
    pub test_loss: f64,
    pub test_top1_err: f64,
    pub test_top5_err: f64,
    pub images_per_s: f64,
}

impl EpochMetrics {
    pub const HEADER: &'static str = "epoch,phase,lr,train_loss,train_top1_err,test_loss,test_top1_err,test_top5_err,images_per_s";
    /// One CSV row; the `deploy` row (the deploy model's test metrics after the fold) has
    /// `deploy` in the epoch column and leaves the training columns empty.
    fn csv(&self) -> String {
        if self.phase == "deploy" {
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

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

pub fn device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::Config(
            "device = cuda, but libtorch sees no GPU (tch::Cuda::is_available() is false): check the \
             NVIDIA driver and that the torch wheel in .venv is a CUDA build"
                .into(),
        )),
    }
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

/// The phases of a routine: (name, first epoch, end epoch, spec).
fn phases(
    cfg: &TrainConfig,
    classes: usize,
    shape: ImageShape,
    norm: &Normalize,
) -> Result<Vec<(String, usize, usize, TrainSpec)>> {
    if shape.height != shape.width {
        return Err(Error::Config(format!(
            "the classifiers take square images; the data's are {}×{}",
            shape.height, shape.width
        )));
    }
    let spec = |method: MethodConfig| -> Result<TrainSpec> {
        let mut s = build(
            cfg.model.kind,
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
        Ok(s)
    };
    let m = &cfg.model.method;
    Ok(match &cfg.routine {
        Routine::R1 | Routine::R2 { .. } => {
            vec![("train".into(), 0, cfg.optim.epochs, spec(m.clone())?)]
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
            let plain = spec(MethodConfig::new(MethodKind::Plain))?;
            let a = *plain_epochs;
            let b = a + op_epochs;
            vec![
                ("plain".into(), 0, a, plain.clone()),
                ("op".into(), a, b, spec(m.clone())?),
                ("finetune".into(), b, b + finetune_epochs, plain),
            ]
        }
    })
}

/// Optimisers over the model's trainable tensors: one (R1, R3), or two alternating groups
/// (R2: {U, V and all non-factor tensors} and {M}).
pub(crate) fn optimisers(cfg: &TrainConfig, model: &OpModel) -> Vec<Sgd> {
    grouped_optimisers(cfg, model, |_, kind| kind == ParamKind::FactorM, &[])
}

/// Optimisers over a model's trainable tensors (weight decay only where the kind takes it):
/// one, or for R2 two groups, the second holding the tensors `in_second_group` picks. `extra`
/// tensors (e.g. loss-weighting parameters) join the first group without weight decay.
pub(crate) fn grouped_optimisers(
    cfg: &TrainConfig,
    model: &OpModel,
    in_second_group: impl Fn(&str, ParamKind) -> bool,
    extra: &[(&str, &Tensor)],
) -> Vec<Sgd> {
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
        .map(|g| Sgd::new(&cfg.optim, g))
        .collect()
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

pub(crate) struct State {
    pub(crate) steps: Vec<usize>,
    pub(crate) extra: Extra,
    pub(crate) epoch: usize,
    pub(crate) step: usize,
    pub(crate) spec: TrainSpec,
    pub(crate) weights: Weights<f32>,
    pub(crate) buffers: Vec<BTreeMap<String, FTensor<f32>>>,
    pub(crate) metrics: Vec<String>,
}

pub(crate) fn to_f(t: &Tensor) -> Result<FTensor<f32>> {
    let t = t
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?;
    Ok(FTensor::new(
        t.size().iter().map(|&d| d as usize).collect(),
        Vec::<f32>::try_from(&t.f_flatten(0, -1)?)?,
    ))
}

pub(crate) fn from_f(t: &FTensor<f32>, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&t.data)?
        .f_reshape(t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>())?
        .f_to_device(device)?)
}

/// Everything needed to continue a run, in one atomically written file: model tensors, the
/// spec, optimiser buffers, epoch and step counters, and the metrics so far. (Data order and
/// augmentation are functions of (seed, epoch), so they need no state.)
/// Extra tensors and metadata a trainer keeps in its state (e.g. loss-weighting state).
pub(crate) type Extra = (Weights<f32>, BTreeMap<String, String>);

#[allow(clippy::too_many_arguments)]
pub(crate) fn save_state(
    path: &Path,
    model: &OpModel,
    opts: &[Sgd],
    epoch: usize,
    step: usize,
    metrics: &[String],
    extra: &Extra,
) -> Result<()> {
    let mut tensors = extra.0.clone();
    for (k, v) in model.weights()? {
        tensors.insert(format!("model.{k}"), v);
    }
    for (g, o) in opts.iter().enumerate() {
        for (k, v) in &o.buffers {
            tensors.insert(format!("opt{g}.{k}"), to_f(v)?);
        }
    }
    let meta = BTreeMap::from([
        ("overparam.train_state".to_string(), "1".to_string()),
        ("epoch".to_string(), epoch.to_string()),
        ("step".to_string(), step.to_string()),
        (
            "spec".to_string(),
            serde_json::to_string(model.spec()).expect("spec json"),
        ),
        ("metrics".to_string(), metrics.join("\n")),
    ]);
    let mut meta = meta;
    for (g, o) in opts.iter().enumerate() {
        meta.insert(format!("opt{g}.steps"), o.steps.to_string());
    }
    meta.extend(
        extra
            .1
            .iter()
            .map(|(k, v)| (format!("extra.{k}"), v.clone())),
    );
    save_tensors(path, &tensors, &meta)?;
    Ok(())
}

pub(crate) fn load_state(path: &Path, groups: usize) -> Result<State> {
    let (tensors, meta) = load_tensors(path)?;
    let bad = |m: &str| Error::Run {
        dir: path.to_path_buf(),
        message: format!("not a valid training state: {m}"),
    };
    let get = |k: &str| meta.get(k).ok_or_else(|| bad(&format!("missing `{k}`")));
    let num = |k: &str| -> Result<usize> {
        get(k)?
            .parse()
            .map_err(|_| bad(&format!("`{k}` is not a number")))
    };
    let spec: TrainSpec = serde_json::from_str(get("spec")?).map_err(|e| bad(&e.to_string()))?;
    let mut weights = Weights::new();
    let mut buffers = vec![BTreeMap::new(); groups.max(2)];
    let mut extra_tensors = Weights::new();
    for (k, v) in tensors {
        if let Some(n) = k.strip_prefix("model.") {
            weights.insert(n.to_string(), v);
        } else if let Some((g, n)) = k.strip_prefix("opt").and_then(|r| r.split_once('.')) {
            let g: usize = g.parse().map_err(|_| bad(&k))?;
            buffers
                .get_mut(g)
                .ok_or_else(|| bad(&k))?
                .insert(n.to_string(), v);
        } else {
            extra_tensors.insert(k, v);
        }
    }
    let steps = (0..groups.max(2))
        .map(|g| {
            meta.get(&format!("opt{g}.steps"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let extra_meta = meta
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("extra.")?.to_string(), v.clone())))
        .collect();
    let metrics = get("metrics")?
        .lines()
        .map(String::from)
        .filter(|l| !l.is_empty())
        .collect();
    Ok(State {
        steps,
        extra: (extra_tensors, extra_meta),
        epoch: num("epoch")?,
        step: num("step")?,
        spec,
        weights,
        buffers,
        metrics,
    })
}

pub(crate) fn write_metrics(dir: &Path, header: &str, rows: &[String]) -> Result<()> {
    let mut text = String::from(header);
    text.push('\n');
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    let path = dir.join(METRICS_FILE);
    checkpoint::write_file_atomic(&path, text.as_bytes()).map_err(io(&path))
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

/// Validates the config, sets threads, picks the device, and prepares the run directory: a
/// new run refuses an existing one; a resumed run needs the same config and a state file.
/// A directory with nothing but its `config.toml` is a run that never finished an epoch (it
/// failed at start or was killed in its first epoch): nothing in it is worth keeping, so a
/// fresh start (with or without `--resume`) replaces it. Returns the device, the run
/// directory, the state path, and whether the run resumes.
pub(crate) fn prepare_run(
    cfg: &TrainConfig,
    resume: bool,
    progress: &dyn Progress,
) -> Result<(Device, PathBuf, PathBuf, bool)> {
    cfg.validate()?;
    if let Some(t) = cfg.run.threads {
        tch::set_num_threads(t as i32);
    }
    let device = device(cfg.run.device)?;
    crate::model::set_allow_tf32(cfg.run.tf32);
    if device.is_cuda() {
        progress.event(&format!(
            "train: {} (run.tf32 = {}); the fold is verified in f64 either way",
            crate::fold_gate::device_precision(device),
            cfg.run.tf32
        ));
    }
    let dir = cfg.run_dir();
    let run_err = |m: String| Error::Run {
        dir: dir.clone(),
        message: m,
    };
    let cfg_path = dir.join(CONFIG_FILE);
    let state_path = dir.join(STATE_FILE);
    let never_started = !state_path.exists() && holds_only_config(&dir).map_err(io(&dir))?;
    if resume && !never_started {
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| run_err(format!("cannot resume: {CONFIG_FILE}: {e}")))?;
        let old: TrainConfig = toml::from_str(&text)
            .map_err(|e| run_err(format!("cannot resume: {CONFIG_FILE}: {e}")))?;
        if &old != cfg {
            return Err(run_err(format!(
                "cannot resume: this run was made from a different config (see its {CONFIG_FILE}); \
                 nothing was changed"
            )));
        }
        if !state_path.exists() {
            return Err(run_err(format!(
                "cannot resume: no {STATE_FILE} (the run never finished an epoch)"
            )));
        }
        return Ok((device, dir, state_path, true));
    }
    if !never_started && (cfg_path.exists() || state_path.exists()) {
        return Err(run_err(
            "already exists: pass --resume to continue it, or choose another run.name".into(),
        ));
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    checkpoint::write_file_atomic(&cfg_path, cfg.to_toml().as_bytes()).map_err(io(&cfg_path))?;
    Ok((device, dir, state_path, false))
}

/// Whether `dir` exists and holds a `config.toml` and nothing else (no epoch ever finished).
fn holds_only_config(dir: &Path) -> std::io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut config = false;
    for e in entries {
        if e?.file_name() == CONFIG_FILE {
            config = true;
        } else {
            return Ok(false);
        }
    }
    Ok(config)
}

/// Initial weights of a new run (seeded by `run.seed`, fresh BatchNorm).
pub(crate) fn fresh_weights(cfg: &TrainConfig, spec: &TrainSpec) -> Result<Weights<f32>> {
    let opts = overparam_fuse::init::InitOptions {
        seed: cfg.run.seed,
        random_bn: false,
    };
    Ok(overparam_fuse::init::init_train_weights(spec, &opts)?)
}

/// Restores optimiser buffers and step counts saved by [`save_state`].
pub(crate) fn restore_optimisers(
    opts: &mut [Sgd],
    buffers: Vec<BTreeMap<String, FTensor<f32>>>,
    steps: Vec<usize>,
    device: Device,
) -> Result<()> {
    for ((o, b), n) in opts.iter_mut().zip(buffers).zip(steps) {
        o.steps = n;
        for (k, v) in b {
            o.buffers.insert(k, from_f(&v, device)?);
        }
    }
    Ok(())
}

/// One optimisation step: forward in train mode, cross-entropy (with label smoothing) plus
/// Frobenius decay on composed kernels, backward, and a step of the active optimiser (R2
/// alternates groups every `period` steps; the other group is not touched). Returns the
/// cross-entropy and the logits.
pub fn train_step(
    cfg: &TrainConfig,
    model: &OpModel,
    opts: &mut [Sgd],
    x: &Tensor,
    target: &Tensor,
    lr: f64,
    step: usize,
) -> Result<(Tensor, Tensor)> {
    let (mut ys, frob) = model.forward_with_frobenius(x)?;
    let y = ys.remove(0);
    let ce = y.f_cross_entropy_loss::<Tensor>(
        target,
        None,
        tch::Reduction::Mean,
        -100,
        cfg.optim.label_smoothing,
    )?;
    let loss = match frob {
        // Frobenius decay λ/2·‖W‖² on composed kernels replaces per-factor decay.
        Some(f) if cfg.optim.weight_decay > 0.0 => {
            ce.f_add(&f.f_mul_scalar(cfg.optim.weight_decay / 2.0)?)?
        }
        _ => ce.shallow_clone(),
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
    Ok((ce, y))
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
    let (device, dir, state_path, resume) = prepare_run(cfg, resume, progress)?;
    let run_err = |m: String| Error::Run {
        dir: dir.clone(),
        message: m,
    };
    let (train_set, test_set) = load_data_with(cfg, progress)?;
    let test_set = Arc::new(test_set);
    let (mean, std) = train_set.channel_stats();
    let norm = Normalize { mean, std };
    let phases = phases(cfg, train_set.num_classes, train_set.shape, &norm)?;
    let total = cfg.optim.epochs;
    let loader_cfg = LoaderConfig {
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
    let steps = batches_per_epoch(train_set.len(), &loader_cfg);
    if steps == 0 {
        return Err(Error::Config(format!(
            "optim.batch_size {} exceeds the training set ({} images)",
            cfg.optim.batch_size,
            train_set.len()
        )));
    }

    let (mut epoch, mut step, mut metrics, mut spec, mut weights, buffers) = if resume {
        let s = load_state(&state_path, 2)?;
        (
            s.epoch,
            s.step,
            s.metrics,
            s.spec,
            s.weights,
            Some((s.buffers, s.steps)),
        )
    } else {
        let spec = phases[0].3.clone();
        let w = fresh_weights(cfg, &spec)?;
        (0, 0, vec![], spec, w, None)
    };

    let mut model = OpModel::new(&nn::VarStore::new(device).root(), &spec, &weights)?;
    let mut opts = optimisers(cfg, &model);
    if let Some((bufs, counts)) = buffers {
        restore_optimisers(&mut opts, bufs, counts, device)?;
    }

    let train_arc = Arc::new(train_set);
    let mut last = None;
    let first = epoch;
    while epoch < total {
        if stop_after.is_some_and(|n| epoch - first >= n) {
            return Ok(None);
        }
        let (phase, start, _, target) = phases
            .iter()
            .find(|p| epoch >= p.1 && epoch < p.2)
            .expect("phases cover all epochs");
        if *target != spec {
            // R3 transition: expand by SVD or collapse; the function must not change.
            weights = model.weights()?;
            let new_w = if target.nodes.iter().any(|n| matches!(&n.op, overparam_fuse::spec::Op::Conv(c) if c.method != overparam_fuse::Method::Plain)) {
                overparam_fuse::reparam::expand(&spec, &weights, target, cfg.run.seed)?
            } else {
                overparam_fuse::reparam::collapse(&spec, &weights)?.1
            };
            let new_model = OpModel::new(&nn::VarStore::new(device).root(), target, &new_w)?;
            let change = function_change(&model, &new_model, &test_set, &norm, device)?;
            if change > 1e-4 {
                return Err(run_err(format!(
                    "phase `{phase}` at epoch {start}: re-parameterisation changed the outputs by {change:e}"
                )));
            }
            progress.event(&format!(
                "phase `{phase}`: re-parameterised at epoch {epoch} (outputs changed by {change:.2e}, fp32 rounding)"
            ));
            model = new_model;
            spec = target.clone();
            opts = optimisers(cfg, &model); // fresh optimiser state for the new parameters
        }

        let t0 = Instant::now();
        progress.start(
            &format!("epoch {}/{total} {phase}", epoch + 1),
            steps as u64,
        );
        let (mut loss_sum, mut seen) = (0.0, 0usize);
        let mut top = TopK::default();
        let mut lr = 0.0;
        for b in Loader::spawn(train_arc.clone(), loader_cfg.clone(), epoch, 0) {
            lr = learning_rate(
                &cfg.optim,
                epoch as f64 + b.index as f64 / steps as f64,
                total,
            );
            let x = batch_tensor(&b.images, b.size, train_arc.shape, device)?;
            let t = Tensor::f_from_slice(&b.labels)?.f_to_device(device)?;
            let (ce, y) = train_step(cfg, &model, &mut opts, &x, &t, lr, step)?;
            let l = ce.f_double_value(&[])?;
            if !l.is_finite() {
                return Err(run_err(format!(
                    "loss became {l} at epoch {} step {}",
                    epoch + 1,
                    b.index
                )));
            }
            loss_sum += l * b.size as f64;
            seen += b.size;
            let logits =
                Vec::<f32>::try_from(&y.f_detach()?.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
            top.add(&logits, train_arc.num_classes, &b.labels);
            step += 1;
            progress.inc(1);
            progress.message(&format!(
                "loss {:.3} · {:.0} img/s",
                loss_sum / seen as f64,
                seen as f64 / t0.elapsed().as_secs_f64()
            ));
        }
        progress.finish();
        let ips = seen as f64 / t0.elapsed().as_secs_f64();
        let (test_loss, test_top, _) = evaluate(&model, &test_set, &norm, device)?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            phase: phase.clone(),
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1_err: top.top1_error(),
            test_loss,
            test_top1_err: test_top.top1_error(),
            test_top5_err: test_top.top5_error(),
            images_per_s: ips,
        };
        progress.event(&format!(
            "epoch {}/{total} [{phase}] loss {:.4} train err {:.2}% · test loss {:.4} top-1 err {:.2}% top-5 err {:.2}% · {:.0} img/s",
            m.epoch,
            m.train_loss,
            m.train_top1_err,
            m.test_loss,
            m.test_top1_err,
            m.test_top5_err,
            ips
        ));
        metrics.push(m.csv());
        epoch += 1;
        // State first, then the user-facing artefacts: resume reads only the state file.
        save_state(
            &state_path,
            &model,
            &opts,
            epoch,
            step,
            &metrics,
            &Default::default(),
        )?;
        checkpoint::save(
            &dir.join(MODEL_FILE),
            &AnySpec::Train(spec.clone()),
            &model.weights()?,
        )?;
        write_metrics(&dir, EpochMetrics::HEADER, &metrics)?;
        last = Some(m);
    }
    // Resuming a run whose epochs had all finished (killed while folding): evaluate again.
    let last = match last {
        Some(m) => m,
        None => {
            let (test_loss, top, _) = evaluate(&model, &test_set, &norm, device)?;
            EpochMetrics {
                epoch: total,
                phase: "resumed".into(),
                lr: 0.0,
                train_loss: f64::NAN,
                train_top1_err: f64::NAN,
                test_loss,
                test_top1_err: top.top1_error(),
                test_top5_err: top.top5_error(),
                images_per_s: f64::NAN,
            }
        }
    };
    finish(
        &dir, &model, &test_set, &norm, device, last, &metrics, progress,
    )
    .map(Some)
}

/// Folds the final model, gates on exactness in f64 ([`crate::fold_gate`]), evaluates the
/// deploy model on the test set next to the train model (a measurement: how many predictions
/// the device's rounding moves), writes the deploy checkpoint and adds a `deploy` row to
/// `metrics.csv`.
#[allow(clippy::too_many_arguments)]
fn finish(
    dir: &Path,
    model: &OpModel,
    test: &Arc<ImageSet>,
    norm: &Normalize,
    device: Device,
    last: EpochMetrics,
    metrics: &[String],
    progress: &dyn Progress,
) -> Result<RunSummary> {
    let (f, dmodel) = crate::fold_gate::fold_and_gate(dir, model, device, &|_| true)?;
    let (_, _, a) = evaluate(model, test, norm, device)?;
    let (dloss, dtop, b) = evaluate(&dmodel, test, norm, device)?;
    let classes = test.num_classes;
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
    checkpoint::save(&dir.join(DEPLOY_FILE), &AnySpec::Deploy(f.spec), &f.weights)?;
    let deploy_row = EpochMetrics {
        epoch: last.epoch,
        phase: "deploy".into(),
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
    let idx_classes = match spec.node(&spec.outputs[0].node).map(|n| &n.op) {
        Some(overparam_fuse::spec::Op::Linear { out_features, .. }) => *out_features,
        _ => 10,
    };
    let test = Arc::new(overparam_data::dataset::load(
        data,
        Split::Test,
        None,
        idx_classes,
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
    let classes = match spec.node(&spec.outputs[0].node).map(|n| &n.op) {
        Some(overparam_fuse::spec::Op::Linear { out_features, .. }) => *out_features,
        _ => test.num_classes,
    };
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
    use crate::config::{DataConfig, ModelConfig, OptimConfig, RunConfig, Schedule};

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
                kind: overparam_fuse::models::ModelKind::VggSmall,
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
        };
        let spec = phases(
            &cfg,
            10,
            ImageShape::CIFAR,
            &Normalize {
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
        )
        .unwrap()
        .remove(0)
        .3;
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

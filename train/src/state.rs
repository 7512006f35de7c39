//! What every training run shares, whatever its task: the device, the run directory
//! (`prepare_run`: new, resumed, or never started), the training state for a bit-identical
//! resume, `metrics.csv`, and conversions between tch and fuse tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use overparam_base::Progress;
use overparam_config::files::{CONFIG_FILE, METRICS_FILE, STATE_FILE};
use overparam_fuse::checkpoint::{load_tensors, save_tensors};
use overparam_fuse::{Tensor as FTensor, TrainSpec, Weights};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::OpModel;
use crate::optim::Optimizer;
use overparam_config::{DeviceChoice, TrainConfig};

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

/// A training state as [`load_state`] reads it.
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

/// Extra tensors and metadata a task keeps in its state (e.g. loss-weighting state).
pub(crate) type Extra = (Weights<f32>, BTreeMap<String, String>);

/// Everything needed to continue a run, in one atomically written file: model tensors, the
/// spec, optimiser buffers, epoch and step counters, and the metrics so far. (Data order and
/// augmentation are functions of (seed, epoch), so they need no state.)
pub(crate) fn save_state(
    path: &Path,
    model: &OpModel,
    opts: &[Optimizer],
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
    overparam_base::write_file_atomic(&path, text.as_bytes()).map_err(io(&path))
}

/// Validates the config, sets threads, picks the device, and prepares the run directory: a
/// new run refuses an existing one; a resumed run needs the same config and a state file.
/// A directory with nothing but its `config.toml` is a run that never finished an epoch (it
/// failed at start or was killed in its first epoch): nothing in it is worth keeping, so a
/// fresh start (with or without `--resume`) replaces it.
pub(crate) fn prepare_run(
    cfg: &TrainConfig,
    resume: bool,
    progress: &dyn Progress,
) -> Result<RunDir> {
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
    // The lock comes first, so two processes starting the same run cannot both pass the
    // checks below: the second is refused naming the first.
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let lock = overparam_base::lock_dir(&dir).map_err(|e| match e {
        overparam_base::LockError::Io(e) => io(&dir)(e),
        busy => run_err(format!(
            "{busy} (another overparam is training it); wait for it to finish, or choose another run.name"
        )),
    })?;
    if let Some(pid) = lock.stale {
        progress.event(&format!(
            "train: {} was locked by PID {pid}, which is no longer running; taking it over",
            dir.display()
        ));
    }
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
        return Ok(RunDir {
            device,
            dir,
            state: state_path,
            resume: true,
            _lock: lock,
        });
    }
    if !never_started && (cfg_path.exists() || state_path.exists()) {
        return Err(run_err(
            "already exists: pass --resume to continue it, or choose another run.name".into(),
        ));
    }
    overparam_base::write_file_atomic(&cfg_path, cfg.to_toml().as_bytes())
        .map_err(io(&cfg_path))?;
    Ok(RunDir {
        device,
        dir,
        state: state_path,
        resume: false,
        _lock: lock,
    })
}

/// Where a run lives and whether it resumes, from [`prepare_run`].
pub(crate) struct RunDir {
    pub device: Device,
    pub dir: PathBuf,
    /// The training state file.
    pub state: PathBuf,
    pub resume: bool,
    /// Held for the whole run (`<dir>/.lock`): a second trainer of this directory is refused.
    pub _lock: overparam_base::DirLock,
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
        let name = e?.file_name();
        if name == CONFIG_FILE {
            config = true;
        } else if name != overparam_base::LOCK_FILE {
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
    opts: &mut [Optimizer],
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

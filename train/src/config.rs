//! Run configuration (TOML). Unknown keys are errors; the resolved config is written into the
//! run directory, and `--resume` refuses a run directory made from a different config.

use std::path::{Path, PathBuf};

use overparam_fuse::MethodConfig;
use overparam_fuse::models::ModelKind;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub data: DataConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub routine: Routine,
    /// Multi-task settings (model.kind = "mtl").
    #[serde(default)]
    pub mtl: MtlConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlConfig {
    #[serde(default = "equal")]
    pub weighting: crate::mtl::Weighting,
    /// Single-task baseline of the nine NYUv2 metrics (mIoU, pixel acc, abs err, rel err, mean°,
    /// median°, and the three threshold fractions) for Δm; absent = no Δm column.
    #[serde(default)]
    pub baseline: Option<Vec<f64>>,
    /// Train only these tasks (`segmentation`, `depth`, `normals`): single-task baselines.
    #[serde(default)]
    pub tasks: Option<Vec<String>>,
}

fn equal() -> crate::mtl::Weighting {
    crate::mtl::Weighting::Equal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    #[serde(default = "default_runs_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub device: DeviceChoice,
    /// On CUDA, let fp32 convolutions run in TF32 on Ampere and newer GPUs (PyTorch's default
    /// for cuDNN, ~10 bits of mantissa, much faster). The fold verdict is decided in f64 either
    /// way; the device's deviation is measured and reported. Ignored on the CPU.
    #[serde(default = "yes")]
    pub tf32: bool,
}

fn default_runs_dir() -> PathBuf {
    PathBuf::from("runs")
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    #[serde(default = "one")]
    pub width: f64,
    pub method: MethodConfig,
}

fn one() -> f64 {
    1.0
}

/// Where the data comes from: a directory of CIFAR binaries, or (default) synthetic CIFAR-100
/// generated once into `<run.dir>/_data/` in the same binary format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "synth_train")]
    pub synthetic_train: usize,
    #[serde(default = "synth_test")]
    pub synthetic_test: usize,
    #[serde(default)]
    pub synthetic_seed: u64,
    /// Synthetic NYUv2 scene size (multi-task runs).
    #[serde(default = "scene_h")]
    pub synthetic_height: usize,
    #[serde(default = "scene_w")]
    pub synthetic_width: usize,
    /// Random crop (padding 4) and horizontal flip on the training set.
    #[serde(default = "yes")]
    pub augment: bool,
}

fn synth_train() -> usize {
    5000
}
fn synth_test() -> usize {
    1000
}
fn yes() -> bool {
    true
}
fn scene_h() -> usize {
    288
}
fn scene_w() -> usize {
    384
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: None,
            synthetic_train: synth_train(),
            synthetic_test: synth_test(),
            synthetic_seed: 0,
            synthetic_height: scene_h(),
            synthetic_width: scene_w(),
            augment: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default = "momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Weight decay on conv and linear weights; factorised convs get it as Frobenius decay on
    /// the composed kernel instead. Never on BatchNorm or biases.
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warm-up from lr/10 over this many epochs.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// `sgd` (default) or `adam` (the NYUv2 recipe).
    #[serde(default)]
    pub optimizer: OptimizerKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    #[default]
    Sgd,
    Adam,
}

fn momentum() -> f64 {
    0.9
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// lr × gamma at each milestone epoch.
    Multistep { milestones: Vec<usize>, gamma: f64 },
    /// Cosine decay to zero over the run.
    Cosine,
    #[default]
    Constant,
}

/// The training routine (methods.md §5.3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Routine {
    /// Everything from the start with one optimiser.
    #[default]
    R1,
    /// Two parameter groups take turns every `period` steps, each with its own optimiser state:
    /// single task, {U, V and everything else} and {M}.
    R2 { period: usize },
    /// Plain for `plain_epochs`, exact SVD expansion, overparameterised for `op_epochs`,
    /// collapse, plain fine-tuning for `finetune_epochs`. `optim.epochs` must be their sum.
    R3 {
        plain_epochs: usize,
        op_epochs: usize,
        finetune_epochs: usize,
    },
}

impl TrainConfig {
    pub fn run_dir(&self) -> PathBuf {
        self.run.dir.join(&self.run.name)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.model.method.validate()?;
        let o = &self.optim;
        if o.epochs == 0 || o.batch_size == 0 || !o.lr.is_finite() || o.lr <= 0.0 {
            return bad("optim.epochs, optim.batch_size and optim.lr must be positive".into());
        }
        if !(0.0..1.0).contains(&o.momentum)
            || !(0.0..1.0).contains(&o.label_smoothing)
            || o.weight_decay < 0.0
        {
            return bad(
                "optim.momentum and optim.label_smoothing must be in [0, 1), weight_decay ≥ 0"
                    .into(),
            );
        }
        if self.run.name.is_empty() || self.run.name.contains(['/', '\\']) {
            return bad(format!(
                "run.name `{}` must be a plain directory name",
                self.run.name
            ));
        }
        if let Some(t) = &self.mtl.tasks
            && (t.is_empty()
                || t.iter()
                    .any(|x| !["segmentation", "depth", "normals"].contains(&x.as_str())))
        {
            return bad(format!(
                "mtl.tasks {t:?}: choose from segmentation, depth, normals"
            ));
        }
        match &self.routine {
            Routine::R1 => {}
            Routine::R2 { period } if *period == 0 => {
                return bad("routine.period must be ≥ 1".into());
            }
            Routine::R2 { .. } => {}
            Routine::R3 {
                plain_epochs,
                op_epochs,
                finetune_epochs,
            } => {
                if plain_epochs + op_epochs + finetune_epochs != o.epochs {
                    return bad(format!(
                        "routine r3: plain_epochs + op_epochs + finetune_epochs = {} but optim.epochs = {}",
                        plain_epochs + op_epochs + finetune_epochs,
                        o.epochs
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses a config file and applies `key.path=value` overrides (values are TOML; a bare
    /// word is taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text, path, overrides)
    }

    /// [`TrainConfig::load`] on text already read (`path` names it in errors).
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: TrainConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    Error::Config(format!("{}: {}", path.display(), e.message()))
                })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("override `{spec}` is not key=value")))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Config(format!("empty key in `{spec}`")))?;
    let mut t = table;
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| Error::Config(format!("override `{spec}`: `{p}` is not a table")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[run]
name = "t"
[model]
kind = "resnet18_cifar"
width = 0.125
method = { kind = "sfo" }
[optim]
epochs = 2
batch_size = 8
lr = 0.1
"#;

    fn load(text: &str, ov: &[&str]) -> Result<TrainConfig> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        TrainConfig::load(&p, &ov.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_with_defaults_and_overrides() {
        let c = load(
            BASE,
            &[
                "optim.lr=0.05",
                "run.name=other",
                "routine.kind=r2",
                "routine.period=3",
            ],
        )
        .unwrap();
        assert_eq!(c.optim.lr, 0.05);
        assert_eq!(c.run.name, "other");
        assert_eq!(c.routine, Routine::R2 { period: 3 });
        assert_eq!(c.data.synthetic_train, 5000);
        // The resolved config round-trips.
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_and_methods_are_errors() {
        let e = load(&format!("{BASE}\nbogus = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = load(&BASE.replace("\"sfo\"", "\"magic\""), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
        let e = load(BASE, &["optim.lrr=1"]).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = load(
            BASE,
            &[
                "routine.kind=r3",
                "routine.plain_epochs=1",
                "routine.op_epochs=1",
                "routine.finetune_epochs=1",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("optim.epochs = 2"), "{e}");
    }
}

//! overparam-config: the run configuration (TOML) and its validation. Unknown keys are errors;
//! the resolved config is written into the run directory, and `--resume` refuses a run
//! directory made from a different config.
//!
//! It lives outside the libtorch crate (`overparam-train`) so that a deploy-only build checks
//! configs and experiment grids, and the fuzzer fuzzes config TOML, without linking libtorch.

use std::path::{Path, PathBuf};

use overparam_fuse::MethodConfig;
use overparam_fuse::models::ModelKind;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A config that does not parse or validate; the message names the file and line, or the
/// `--set` override, and the key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Fuse(#[from] overparam_fuse::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The files of a run directory (`<run.dir>/<run.name>/`), named once for every crate that
/// writes or reads them.
pub mod files {
    /// The resolved config the run was made from (`--resume` compares against it).
    pub const CONFIG_FILE: &str = "config.toml";
    /// The train-time (overparameterised) checkpoint.
    pub const MODEL_FILE: &str = "model.op.safetensors";
    /// Model, optimiser state, epoch and step counters for a bit-identical resume (data order
    /// and augmentation follow from the seed and the epoch).
    pub const STATE_FILE: &str = "train_state.safetensors";
    /// One row per epoch, then a `deploy` row for the folded model.
    pub const METRICS_FILE: &str = "metrics.csv";
    /// The folded plain checkpoint.
    pub const DEPLOY_FILE: &str = "model.deploy.safetensors";
    /// The fold verdict and the training device's deviation.
    pub const FOLD_FILE: &str = "fold.json";
}

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
    /// Quantisation-aware fine-tuning after training (`overparam qat`'s, on this run).
    #[serde(default)]
    pub quant: QuantConfig,
}

/// `[quant]`: QAT through the fold after the run's epochs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// Epochs of QAT fine-tuning after training (0: none). Writes `model.qat.int8.onnx`, its
    /// `.calib.json` and the fine-tuned deploy checkpoint into the run directory.
    #[serde(default)]
    pub qat_epochs: usize,
    /// Peak learning rate of the QAT fine-tune (cosine to zero) [default: 1% of optim.lr].
    #[serde(default)]
    pub qat_lr: Option<f64>,
    /// The INT8 encoding QAT trains for: TensorRT's or the CPU one.
    #[serde(default)]
    pub encoding: QuantEncoding,
}

/// `quant.encoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantEncoding {
    #[default]
    Trt,
    Cpu,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlConfig {
    #[serde(default = "equal")]
    pub weighting: Weighting,
    /// Single-task baseline of the nine NYUv2 metrics (mIoU, pixel acc, abs err, rel err, mean°,
    /// median°, and the three threshold fractions) for Δm; absent = no Δm column.
    #[serde(default)]
    pub baseline: Option<Vec<f64>>,
    /// Train only these tasks (`segmentation`, `depth`, `normals`): single-task baselines.
    #[serde(default, with = "task_serde::list")]
    pub tasks: Option<Vec<overparam_base::Task>>,
}

/// Tasks in files by their names (`"depth"`, `["segmentation", "depth"]`); an unknown name is
/// an error naming the choices. For the config's `mtl.tasks` and the grids' `baseline_for`.
pub mod task_serde {
    use overparam_base::Task;
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    fn parse<E: Error>(n: &str) -> Result<Task, E> {
        Task::from_name(n).ok_or_else(|| {
            E::custom(format!(
                "unknown task `{n}`: choose from segmentation, depth, normals"
            ))
        })
    }

    /// `Option<Vec<Task>>` as a list of names.
    pub mod list {
        use super::*;
        pub fn serialize<S: Serializer>(t: &Option<Vec<Task>>, s: S) -> Result<S::Ok, S::Error> {
            t.as_ref()
                .map(|v| v.iter().map(|t| t.name()).collect::<Vec<_>>())
                .serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Task>>, D::Error> {
            Option::<Vec<String>>::deserialize(d)?
                .map(|names| names.iter().map(|n| parse(n)).collect())
                .transpose()
        }
    }

    /// `Option<Task>` as a name.
    pub mod one {
        use super::*;
        pub fn serialize<S: Serializer>(t: &Option<Task>, s: S) -> Result<S::Ok, S::Error> {
            t.map(|t| t.name()).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Task>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|n| parse(&n))
                .transpose()
        }
    }
}

fn equal() -> Weighting {
    Weighting::Equal
}

/// How the task losses of a multi-task run are combined (`mtl.weighting`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// Σ L_t.
    #[default]
    Equal,
    /// Kendall et al.: Σ ½e^{−s_t}·L_t + ½s_t with learned s_t = log σ_t², initialised −0.5 (MTAN).
    Uncertainty,
    /// Dynamic weight average (Liu et al.): λ_t = T·softmax(r/τ), r_t = L̄_t(e−1)/L̄_t(e−2),
    /// λ = 1 for the first two epochs; τ = 2.
    Dwa,
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
    /// A model builder, or (with `from`) none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModelKind>,
    /// A trained deploy checkpoint (from `overparam import` or a finished run) to fine-tune:
    /// it is expanded exactly with `method` before the first step. Takes the place of `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    #[serde(default = "one")]
    pub width: f64,
    pub method: MethodConfig,
}

impl ModelConfig {
    /// Whether this trains the multi-task builder network (an imported network's task comes
    /// from its output roles instead).
    pub fn is_mtl_builder(&self) -> bool {
        self.kind == Some(ModelKind::Mtl)
    }
    /// The builder's name, or `from <file>`.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.from) {
            (Some(k), _) => k.as_str().to_string(),
            (None, Some(f)) => format!("from {}", f.display()),
            (None, None) => "no model".into(),
        }
    }
}

fn one() -> f64 {
    1.0
}

/// Where the data comes from: a directory of CIFAR binaries or IDX files (`kind`, or detected
/// from the files), a named data set (`dataset`, e.g. Fashion-MNIST from its Debian package),
/// or (default) synthetic CIFAR-100 generated once into `<run.dir>/_data/` in the binary format.
///
/// The keys added for IDX data are left out of the written config at their defaults, so a
/// CIFAR or NYUv2 run's `config.toml` is what it was before them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A known data set: gives the layout, the class count, the default directory and what to
    /// install when its files are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Dataset>,
    /// The layout of `dir` (default: the dataset's, else detected from the files present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<DataKindChoice>,
    /// Classes of an IDX set (its files do not record them; the MNIST family has 10).
    #[serde(default = "ten", skip_serializing_if = "is_ten")]
    pub classes: usize,
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
    /// Training augmentation on or off: a random crop with `crop_pad` zero padding and, if
    /// `hflip`, a horizontal flip.
    #[serde(default = "yes")]
    pub augment: bool,
    /// Zero padding of the random crop (0: no crop). 4 is the CIFAR recipe.
    #[serde(default = "four", skip_serializing_if = "is_four")]
    pub crop_pad: usize,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub hflip: bool,
}

/// A data set known by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// Zalando's Fashion-MNIST (IDX, 10 classes, 1×28×28; 60,000 train, 10,000 test).
    FashionMnist,
}

impl Dataset {
    pub fn as_str(self) -> &'static str {
        match self {
            Dataset::FashionMnist => "fashion_mnist",
        }
    }
    pub fn kind(self) -> DataKindChoice {
        match self {
            Dataset::FashionMnist => DataKindChoice::Idx,
        }
    }
    /// Where a system package installs it, and the package.
    pub fn system_dir(self) -> (&'static Path, &'static str) {
        use overparam_data::idx::{FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_PACKAGE};
        match self {
            Dataset::FashionMnist => (Path::new(FASHION_MNIST_DEBIAN_DIR), FASHION_MNIST_PACKAGE),
        }
    }
}

/// `data.kind`: the file layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKindChoice {
    Cifar,
    Idx,
}

impl DataKindChoice {
    pub fn to_data(self) -> overparam_data::dataset::DataKind {
        match self {
            DataKindChoice::Cifar => overparam_data::dataset::DataKind::Cifar,
            DataKindChoice::Idx => overparam_data::dataset::DataKind::Idx,
        }
    }
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
fn is_true(b: &bool) -> bool {
    *b
}
fn ten() -> usize {
    10
}
fn is_ten(n: &usize) -> bool {
    *n == 10
}
fn four() -> usize {
    4
}
fn is_four(n: &usize) -> bool {
    *n == 4
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
            dataset: None,
            kind: None,
            classes: ten(),
            synthetic_train: synth_train(),
            synthetic_test: synth_test(),
            synthetic_seed: 0,
            synthetic_height: scene_h(),
            synthetic_width: scene_w(),
            augment: true,
            crop_pad: four(),
            hflip: true,
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
        // The same rules as the flags (base::number), under the keys' names.
        let d = &self.data;
        use overparam_base::number::{COUNT, FRACTION, NON_NEGATIVE, POSITIVE};
        let counts = [
            ("optim.epochs", o.epochs),
            ("optim.batch_size", o.batch_size),
            ("data.synthetic_train", d.synthetic_train),
            ("data.synthetic_test", d.synthetic_test),
            ("data.synthetic_height", d.synthetic_height),
            ("data.synthetic_width", d.synthetic_width),
        ];
        for (key, v) in counts
            .into_iter()
            .chain(self.run.threads.map(|t| ("run.threads", t)))
        {
            COUNT.check(key, v).map_err(number)?;
        }
        let numbers = [
            (POSITIVE, "optim.lr", o.lr),
            (POSITIVE, "model.width", self.model.width),
            (FRACTION, "optim.momentum", o.momentum),
            (FRACTION, "optim.label_smoothing", o.label_smoothing),
            (NON_NEGATIVE, "optim.weight_decay", o.weight_decay),
        ];
        for (rule, key, v) in numbers {
            rule.check(key, v).map_err(number)?;
        }
        if let Routine::R2 { period } = self.routine {
            COUNT.check("routine.period", period).map_err(number)?;
        }
        match (&self.model.kind, &self.model.from) {
            (None, None) => {
                return bad(
                    "model: give model.kind (a builder) or model.from (a deploy checkpoint to fine-tune)".into(),
                );
            }
            (Some(k), Some(f)) => {
                return bad(format!(
                    "model.kind = {} and model.from = {}: give one (model.from brings its own network)",
                    k.as_str(),
                    f.display()
                ));
            }
            (None, Some(_)) if self.model.width != 1.0 => {
                return bad(format!(
                    "model.width = {} has no meaning with model.from (the imported network has its own widths)",
                    self.model.width
                ));
            }
            _ => {}
        }
        if !overparam_base::is_plain_name(&self.run.name) {
            return bad(format!(
                "run.name `{}` must be a plain directory name",
                self.run.name
            ));
        }
        if self.data.classes == 0 || self.data.classes > 256 {
            return bad(format!(
                "data.classes must be in 1..=256 (IDX labels are bytes; got {})",
                self.data.classes
            ));
        }
        if let (Some(d), Some(k)) = (self.data.dataset, self.data.kind)
            && d.kind() != k
        {
            return bad(format!(
                "data.kind = {:?} contradicts data.dataset = {} (its files are {:?})",
                k,
                d.as_str(),
                d.kind()
            )
            .to_lowercase());
        }
        if let Some(lr) = self.quant.qat_lr {
            POSITIVE.check("quant.qat_lr", lr).map_err(number)?;
        }
        if self.quant.qat_epochs > 0 && self.model.kind.is_some_and(|k| k.as_str() == "mtl") {
            return bad(
                "quant.qat_epochs: QAT fine-tunes classifiers; the multi-task net is not one yet"
                    .into(),
            );
        }
        if self.mtl.tasks.as_ref().is_some_and(|t| t.is_empty()) {
            return bad(
                "mtl.tasks is empty: name at least one of segmentation, depth, normals".into(),
            );
        }
        match &self.routine {
            Routine::R1 => {}
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

    /// [`TrainConfig::load`] on text already read (`path` names it in errors). Errors name the
    /// key and its line in the file, or the `--set` override they come from; an unknown key
    /// is reported before any missing one (a misspelt `[optimm]` is named as such, not as a
    /// missing `optim.batch_size`).
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self> {
        let doc = Doc {
            text,
            path,
            overrides,
        };
        let mut root = DeTable::parse(text).map_err(|e| doc.error(&e, None))?;
        for (i, spec) in overrides.iter().enumerate() {
            let (key, raw) = spec
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--set `{spec}`: not key=value")))?;
            apply_override(root.get_mut(), spec, key, raw, doc.marker(i))?;
        }
        check_unknown_keys(&doc, root.get_ref())?;
        let cfg = TrainConfig::deserialize(toml::de::Deserializer::from(root.clone()))
            .map_err(|e| doc.error(&e, Some(root.get_ref())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

fn number(e: overparam_base::NumberError) -> Error {
    Error::Config(e.to_string())
}

/// The config text and its overrides, for messages. An override's values carry the span
/// `marker(i)`, past the end of the text, so an error's span tells where it came from.
struct Doc<'a> {
    text: &'a str,
    path: &'a Path,
    overrides: &'a [String],
}

impl Doc<'_> {
    fn marker(&self, i: usize) -> Range<usize> {
        let at = self.text.len() + 1 + i;
        at..at + 1
    }

    /// Where a span points: `--set …` for an override, `FILE, line N` in the file.
    fn place(&self, span: &Range<usize>, whole_file: bool) -> String {
        if span.start > self.text.len() {
            let i = span.start - self.text.len() - 1;
            if let Some(o) = self.overrides.get(i) {
                return format!("--set `{o}`");
            }
        }
        if whole_file || span.start > self.text.len() {
            return self.path.display().to_string();
        }
        // Bytes, not a str slice: a span need not fall on a character boundary.
        let line = self.text.as_bytes()[..span.start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("{}, line {line}", self.path.display())
    }

    fn error(&self, e: &toml::de::Error, root: Option<&DeTable<'_>>) -> Error {
        let msg = e.message().trim_end();
        let Some(span) = e.span() else {
            return Error::Config(format!("{}: {msg}", self.path.display()));
        };
        let key = root.and_then(|r| key_at(r, &span, &mut vec![]));
        // Errors about the root table (a missing top-level table) have no useful line.
        let whole = key.is_none() && span.start == 0 && span.end >= self.text.len();
        let place = self.place(&span, whole);
        Error::Config(match key {
            Some(k) => format!("{place}: key `{k}`: {msg}"),
            None => format!("{place}: {msg}"),
        })
    }
}

/// The dotted key whose value (or key) has exactly this span.
fn key_at(t: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> Option<String> {
    for (k, v) in t.iter() {
        path.push(k.get_ref().to_string());
        if v.span() == *span || k.span() == *span {
            return Some(path.join("."));
        }
        if let DeValue::Table(inner) = v.get_ref()
            && let Some(found) = key_at(inner, span, path)
        {
            return Some(found);
        }
        path.pop();
    }
    None
}

/// Gives a value, and everything in it, the span `span`.
fn respan(v: &mut Spanned<DeValue<'_>>, span: &Range<usize>) {
    match v.get_mut() {
        DeValue::Array(a) => a.iter_mut().for_each(|e| respan(e, span)),
        DeValue::Table(t) => {
            for (k, mut e) in std::mem::take(t) {
                respan(&mut e, span);
                t.insert(Spanned::new(span.clone(), k.into_inner()), e);
            }
        }
        _ => {}
    }
    let inner = std::mem::replace(v.get_mut(), DeValue::Boolean(false));
    *v = Spanned::new(span.clone(), inner);
}

fn apply_override<'i>(
    table: &mut DeTable<'i>,
    spec: &str,
    key: &'i str,
    raw: &'i str,
    marker: Range<usize>,
) -> Result<()> {
    let bad = |m: String| Error::Config(format!("--set `{spec}`: {m}"));
    let mut value = match DeValue::parse(raw) {
        Ok(v) => v,
        // A bare word is a string.
        Err(_) => Spanned::new(0..0, DeValue::String(raw.into())),
    };
    respan(&mut value, &marker);
    let mut parts: Vec<&'i str> = key.trim().split('.').map(str::trim).collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("empty key".into()))?;
    let mut t = table;
    for p in parts {
        if p.is_empty() {
            return Err(bad("empty key".into()));
        }
        if !t.contains_key(p) {
            t.insert(
                Spanned::new(marker.clone(), p.into()),
                Spanned::new(marker.clone(), DeValue::Table(DeTable::new())),
            );
        }
        t = match t.get_mut(p).map(Spanned::get_mut) {
            Some(DeValue::Table(inner)) => inner,
            _ => return Err(bad(format!("`{p}` is not a table"))),
        };
    }
    t.remove(last);
    t.insert(Spanned::new(marker, last.into()), value);
    Ok(())
}

/// Reports the first unknown key of every table before anything else: serde checks keys in
/// sorted order and stops at the first problem, so a table that only an override made (say
/// `optim`, next to a misspelt `[optimm]`) would otherwise report a missing field. Each
/// table's known keys come from the error serde gives for a key no config has.
fn check_unknown_keys(doc: &Doc<'_>, root: &DeTable<'_>) -> Result<()> {
    let mut unknown: Vec<(Range<usize>, String, String)> = vec![];
    probe_tables(root, &mut vec![], &mut |path, table| {
        let Some(known) = known_keys(path, table) else {
            return;
        };
        for (k, _) in table.iter() {
            // `kind` is the tag of the config's tagged enums, never one of a variant's fields.
            if k.get_ref() != "kind" && !known.iter().any(|x| x == k.get_ref()) {
                let mut full: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                full.push(k.get_ref().to_string());
                let expected = if known.is_empty() {
                    "this table takes no keys".to_string()
                } else {
                    let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                    format!("expected one of {}", known.join(", "))
                };
                unknown.push((k.span(), full.join("."), expected));
            }
        }
    });
    // The first in the file, then overrides in order.
    match unknown.into_iter().min_by_key(|u| u.0.start) {
        Some((span, key, expected)) => Err(Error::Config(format!(
            "{}: unknown key `{key}` ({expected})",
            doc.place(&span, false)
        ))),
        None => Ok(()),
    }
}

fn probe_tables<'a>(
    t: &'a DeTable<'_>,
    path: &mut Vec<&'a str>,
    f: &mut impl FnMut(&[&'a str], &'a DeTable<'_>),
) {
    f(path, t);
    for (k, v) in t.iter() {
        if let DeValue::Table(inner) = v.get_ref() {
            path.push(k.get_ref());
            probe_tables(inner, path, f);
            path.pop();
        }
    }
}

/// The keys serde accepts in the table at `path`, or None where it does not say (maps, enums
/// with a bad tag, tables that are not structs).
fn known_keys(path: &[&str], table: &DeTable<'_>) -> Option<Vec<String>> {
    const PROBE: &str = "\u{1}";
    let mut t = table.clone();
    t.insert(
        Spanned::new(0..0, PROBE.into()),
        Spanned::new(0..0, DeValue::Boolean(true)),
    );
    for p in path.iter().rev() {
        let mut outer = DeTable::new();
        outer.insert(
            Spanned::new(0..0, (*p).into()),
            Spanned::new(0..0, DeValue::Table(t)),
        );
        t = outer;
    }
    let e = TrainConfig::deserialize(toml::de::Deserializer::from(Spanned::new(0..0, t))).err()?;
    let rest = e
        .message()
        .strip_prefix(&format!("unknown field `{PROBE}`, "))?;
    if rest.starts_with("there are no fields") {
        return Some(vec![]);
    }
    let rest = rest.strip_prefix("expected ")?;
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
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

    /// The IDX-era data keys: parsed, checked against each other, and left out of the written
    /// config at their defaults (a CIFAR run's config.toml is what it was before them).
    #[test]
    fn data_kind_dataset_and_augmentation_keys() {
        let c = load(BASE, &[]).unwrap();
        let text = c.to_toml();
        let data = text
            .split("[data]")
            .nth(1)
            .unwrap()
            .split("\n[")
            .next()
            .unwrap();
        for k in ["dataset", "kind", "classes", "crop_pad", "hflip"] {
            assert!(!data.contains(&format!("{k} =")), "{k} in\n{text}");
        }
        let c = load(
            BASE,
            &[
                "data.dataset=fashion_mnist",
                "data.crop_pad=2",
                "data.hflip=false",
            ],
        )
        .unwrap();
        assert_eq!(c.data.dataset, Some(Dataset::FashionMnist));
        assert_eq!(
            (c.data.crop_pad, c.data.hflip, c.data.classes),
            (2, false, 10)
        );
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let c = load(BASE, &["data.kind=idx", "data.classes=26"]).unwrap();
        assert_eq!(
            (c.data.kind, c.data.classes),
            (Some(DataKindChoice::Idx), 26)
        );
        let e = load(BASE, &["data.dataset=fashion_mnist", "data.kind=cifar"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("contradicts"), "{e}");
        let e = load(BASE, &["data.kind=png"]).unwrap_err().to_string();
        assert!(e.contains("data.kind") || e.contains("png"), "{e}");
        let e = load(BASE, &["data.classes=0"]).unwrap_err().to_string();
        assert!(e.contains("data.classes"), "{e}");
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

    #[test]
    fn errors_name_the_key_and_its_line_or_the_override() {
        // BASE starts with a blank line: [optim] is on line 8, lr on line 11.
        let e = load(&BASE.replace("[optim]", "[optimm]"), &["optim.epochs=3"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 8") && e.contains("unknown key `optimm`") && e.contains("`optim`"),
            "{e}"
        );
        let e = load(&BASE.replace("lr = 0.1", "lr = \"fast\""), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml, line 11: key `optim.lr`: invalid type"),
            "{e}"
        );
        let e = load(BASE, &["optim.lr=abc"]).unwrap_err().to_string();
        assert!(
            e.contains("--set `optim.lr=abc`") && e.contains("optim.lr") && !e.contains("line"),
            "{e}"
        );
        let e = load(BASE, &["optim.lrr=1"]).unwrap_err().to_string();
        assert!(
            e.contains("--set `optim.lrr=1`: unknown key `optim.lrr`"),
            "{e}"
        );
        let e = load(BASE, &["optim=3"]).unwrap_err().to_string();
        assert!(e.contains("--set `optim=3`"), "{e}");
        // A syntax error names its line.
        let e = load(&BASE.replace("lr = 0.1", "lr = = 0.1"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml, line 11"), "{e}");
        // A missing table is named.
        let e = load(&BASE.replace("[optim]", "[x]"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `x`"), "{e}");
        let no_optim = &BASE[..BASE.find("[optim]").unwrap()];
        let e = load(no_optim, &[]).unwrap_err().to_string();
        assert!(e.contains("missing field `optim`"), "{e}");
    }

    #[test]
    fn non_positive_settings_are_named() {
        for (ov, key) in [
            ("optim.epochs=0", "optim.epochs"),
            ("optim.batch_size=0", "optim.batch_size"),
            ("optim.lr=0", "optim.lr"),
            ("optim.lr=-1.0", "optim.lr"),
            ("run.threads=0", "run.threads"),
            ("model.width=0.0", "model.width"),
            ("model.width=nan", "model.width"),
            ("optim.lr=inf", "optim.lr"),
            ("optim.weight_decay=nan", "optim.weight_decay"),
            ("optim.weight_decay=-1e-4", "optim.weight_decay"),
            ("optim.momentum=1.0", "optim.momentum"),
            ("optim.label_smoothing=-0.1", "optim.label_smoothing"),
            ("data.synthetic_train=0", "data.synthetic_train"),
            ("data.synthetic_width=0", "data.synthetic_width"),
        ] {
            let e = load(BASE, &[ov]).unwrap_err().to_string();
            assert!(e.contains(key), "{ov}: {e}");
            // The message names the value given, as the flags' do (the same base rules).
            let given = ov.split_once('=').unwrap().1;
            let given = given
                .parse::<f64>()
                .map_or(given.to_string(), |v| v.to_string());
            assert!(e.contains(&format!("(got {given})")), "{ov}: {e}");
            for other in ["optim.epochs", "optim.batch_size", "optim.lr"] {
                assert!(other == key || !e.contains(other), "{ov}: {e}");
            }
        }
        load(BASE, &["run.threads=1"]).unwrap();
    }
}

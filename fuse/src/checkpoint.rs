//! Checkpoints: safetensors files whose metadata holds the spec (`overparam.spec`, JSON), so a
//! checkpoint describes itself. Loading validates everything against the spec's layout and
//! names the file and the tensor at fault; saving is atomic (temp file, fsync, rename), so an
//! existing artefact is never destroyed by a failed write.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::fold::Weights;
use crate::layout::{ParamKind, ParamSpec, deploy_layout, train_layout};
use crate::spec::{AnySpec, DeploySpec, TrainSpec};
use crate::tensor::Tensor;

/// Metadata key of the spec JSON.
pub const SPEC_KEY: &str = "overparam.spec";
/// Metadata key of the format version.
pub const VERSION_KEY: &str = "overparam.version";
pub const FORMAT_VERSION: &str = "1";

/// A loaded, validated checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub spec: AnySpec,
    pub weights: Weights<f32>,
}

impl AnySpec {
    /// The layout the weights must match.
    pub fn layout(&self) -> Result<Vec<ParamSpec>> {
        match self {
            AnySpec::Train(s) => {
                s.validate()?;
                train_layout(s)
            }
            AnySpec::Deploy(s) => {
                s.validate()?;
                Ok(deploy_layout(s))
            }
        }
    }
}

/// Checks names, shapes and finiteness of `w` against a layout (strict: no extras).
pub fn check_against_layout<F: crate::tensor::Real>(
    layout: &[ParamSpec],
    w: &Weights<F>,
) -> Result<()> {
    for p in layout {
        let t = w
            .get(&p.name)
            .ok_or_else(|| Error::weights(&p.name, "missing (the spec's layout declares it)"))?;
        if t.shape != p.shape {
            return Err(Error::weights(
                &p.name,
                format!(
                    "shape {:?}, the spec's layout declares {:?}",
                    t.shape, p.shape
                ),
            ));
        }
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::weights(
                &p.name,
                format!("non-finite value {} at flat index {i}", t.data[i]),
            ));
        }
        if p.kind == ParamKind::BnVar && t.data.iter().any(|v| *v < F::zero()) {
            return Err(Error::weights(&p.name, "negative running variance"));
        }
    }
    if w.len() != layout.len() {
        let known: std::collections::HashSet<&str> =
            layout.iter().map(|p| p.name.as_str()).collect();
        if let Some(extra) = w.keys().find(|k| !known.contains(k.as_str())) {
            return Err(Error::weights(extra, "not part of the spec's layout"));
        }
    }
    Ok(())
}

fn at_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Weights { tensor, message } => Error::Tensor {
            path: path.to_path_buf(),
            tensor,
            message,
        },
        Error::Spec(m) => Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("embedded spec is invalid: {m}"),
        },
        e => e,
    }
}

/// Serialises a checkpoint to bytes (validated against the layout first).
pub fn to_bytes(spec: &AnySpec, w: &Weights<f32>) -> Result<Vec<u8>> {
    let (entries, meta) = entries(spec, w)?;
    let mut out = vec![];
    write_sorted(&entries, &meta, &mut out).expect("writing to memory");
    Ok(out)
}

/// The tensors in name order and the metadata of a checkpoint, checked against the layout.
fn entries<'a>(
    spec: &AnySpec,
    w: &'a Weights<f32>,
) -> Result<(Vec<Entry<'a>>, BTreeMap<String, String>)> {
    let layout = spec.layout()?;
    check_against_layout(&layout, w)?;
    let kinds: HashMap<&str, ParamKind> =
        layout.iter().map(|p| (p.name.as_str(), p.kind)).collect();
    let entries: Vec<Entry> = w
        .iter()
        .map(|(name, t)| Entry {
            name,
            shape: &t.shape,
            data: &t.data,
            // PyTorch stores num_batches_tracked as an int64 scalar.
            as_i64: kinds[name.as_str()] == ParamKind::BnCount,
        })
        .collect();
    let json = serde_json::to_string(spec).map_err(|e| Error::Spec(e.to_string()))?;
    let meta = BTreeMap::from([
        (SPEC_KEY.to_string(), json),
        (VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
        ("format".to_string(), "pt".to_string()),
    ]);
    Ok((entries, meta))
}

/// One tensor to serialise: f32 values, written as F32 or (a counter) as I64.
struct Entry<'a> {
    name: &'a str,
    shape: &'a [usize],
    data: &'a [f32],
    as_i64: bool,
}

impl Entry<'_> {
    fn len(&self) -> usize {
        self.data.len() * if self.as_i64 { 8 } else { 4 }
    }
}

/// safetensors bytes with every map in sorted order, so the same checkpoint always
/// serialises to the same bytes (the crate's writer takes a `HashMap` of metadata, whose
/// order changes from run to run). Layout per the safetensors spec: u64 LE header length,
/// JSON header padded with spaces to 8 bytes, then the tensors back to back. The tensors are
/// encoded straight into the output, so a checkpoint is held once more, not twice, while it is
/// written.
fn write_sorted(
    tensors: &[Entry],
    meta: &BTreeMap<String, String>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(meta).expect("string map"),
    );
    let mut offset = 0usize;
    for e in tensors {
        let dt = if e.as_i64 { "I64" } else { "F32" };
        header.insert(
            e.name.to_string(),
            serde_json::json!({"dtype": dt, "shape": e.shape, "data_offsets": [offset, offset + e.len()]}),
        );
        offset += e.len();
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    out.write_all(&(h.len() as u64).to_le_bytes())?;
    out.write_all(&h)?;
    for e in tensors {
        if e.as_i64 {
            for v in e.data {
                out.write_all(&(*v as i64).to_le_bytes())?;
            }
        } else {
            for v in e.data {
                out.write_all(&v.to_le_bytes())?;
            }
        }
    }
    Ok(())
}

use overparam_base::write_file_atomic;

/// [`write_file_atomic`] with this crate's error naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_atomic(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes a checkpoint atomically, streamed: a large model is not held twice in memory.
pub fn save(path: &Path, spec: &AnySpec, w: &Weights<f32>) -> Result<()> {
    let (entries, meta) = entries(spec, w).map_err(|e| at_path(path, e))?;
    write_entries(path, &entries, &meta)
}

/// [`write_sorted`] into `path`, atomically and streamed.
fn write_entries(path: &Path, entries: &[Entry], meta: &BTreeMap<String, String>) -> Result<()> {
    overparam_base::fs::write_file_atomic_with(path, |f| write_sorted(entries, meta, f))
        .map_err(|e| Error::io(path, e))
}

/// What a file that is not a checkpoint is instead, when it is one of the other files this
/// project handles (so the message names the command that takes it).
fn other_kind(path: &Path, buf: &[u8]) -> Option<&'static str> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    // An ONNX ModelProto starts with field 1 (ir_version, a small varint), then another field.
    let onnx = buf.len() > 3 && buf[0] == 0x08 && buf[1] < 0x80 && buf[2] & 0x07 <= 2;
    if ext == "onnx" || onnx {
        return Some(
            "this is an ONNX model, not an overparam checkpoint: `overparam import` makes a deploy checkpoint of it (bench and bridge run take the ONNX itself)",
        );
    }
    if ext == "plan" || ext == "engine" {
        return Some(
            "this is a TensorRT engine, not an overparam checkpoint: bench --runtime trt runs it",
        );
    }
    if ext == "toml" || ext == "json" || buf.first() == Some(&b'[') || buf.first() == Some(&b'{') {
        return Some("this is a text file (a config or report?), not an overparam checkpoint");
    }
    None
}

/// Parses and validates checkpoint bytes; `path` is only used in messages.
pub fn from_bytes(path: &Path, buf: &[u8]) -> Result<Checkpoint> {
    let ck = |m: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message: m,
    };
    let (_, meta) = SafeTensors::read_metadata(buf).map_err(|e| match other_kind(path, buf) {
        Some(kind) => ck(kind.into()),
        None => ck(format!("not a valid safetensors file: {e}")),
    })?;
    // A file from a newer (or unknown) writer may mean something else by the same keys.
    // Files without the key predate it and are version 1.
    if let Some(v) = meta.metadata().as_ref().and_then(|m| m.get(VERSION_KEY))
        && v != FORMAT_VERSION
    {
        return Err(ck(format!(
            "checkpoint format version `{}` (`{VERSION_KEY}`) is not supported: this build reads version {FORMAT_VERSION}",
            v.escape_debug()
        )));
    }
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(SPEC_KEY))
        .ok_or_else(|| {
            ck(format!(
                "no `{SPEC_KEY}` metadata: not an overparam checkpoint"
            ))
        })?;
    let spec: AnySpec = serde_json::from_str(json).map_err(|e| {
        ck(format!(
            "`{SPEC_KEY}` metadata is not an overparam spec: {e}"
        ))
    })?;
    let layout = spec.layout().map_err(|e| at_path(path, e))?;
    let st = SafeTensors::deserialize(buf)
        .map_err(|e| ck(format!("not a valid safetensors file: {e}")))?;
    let mut weights = Weights::new();
    for (name, view) in st.iter() {
        let tensor_err = |m: String| Error::Tensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            message: m,
        };
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            d => {
                return Err(tensor_err(format!(
                    "dtype {d:?}; expected F32 (or I64 for num_batches_tracked)"
                )));
            }
        };
        weights.insert(name.to_string(), Tensor::new(view.shape().to_vec(), data));
    }
    check_against_layout(&layout, &weights).map_err(|e| at_path(path, e))?;
    Ok(Checkpoint { spec, weights })
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(path, &buf)
}

pub fn load_train(path: &Path) -> Result<(TrainSpec, Weights<f32>)> {
    match load(path)? {
        Checkpoint {
            spec: AnySpec::Train(s),
            weights,
        } => Ok((s, weights)),
        Checkpoint { spec, .. } => Err(Error::WrongStage {
            path: path.to_path_buf(),
            expected: "train",
            found: spec.stage(),
        }),
    }
}

pub fn load_deploy(path: &Path) -> Result<(DeploySpec, Weights<f32>)> {
    match load(path)? {
        Checkpoint {
            spec: AnySpec::Deploy(s),
            weights,
        } => Ok((s, weights)),
        Checkpoint { spec, .. } => Err(Error::WrongStage {
            path: path.to_path_buf(),
            expected: "deploy",
            found: spec.stage(),
        }),
    }
}

/// Writes arbitrary f32 tensors with string metadata (e.g. optimiser state) atomically, in the
/// same deterministic safetensors layout as checkpoints.
pub fn save_tensors(
    path: &Path,
    tensors: &Weights<f32>,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(n, t)| Entry {
            name: n,
            shape: &t.shape,
            data: &t.data,
            as_i64: false,
        })
        .collect();
    write_entries(path, &entries, meta)
}

/// Reads a file written by [`save_tensors`]: f32 tensors and the metadata map.
pub fn load_tensors(path: &Path) -> Result<(Weights<f32>, BTreeMap<String, String>)> {
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let ck = |m: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message: m,
    };
    let (_, meta) = SafeTensors::read_metadata(&buf)
        .map_err(|e| ck(format!("not a valid safetensors file: {e}")))?;
    let meta: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let st = SafeTensors::deserialize(&buf)
        .map_err(|e| ck(format!("not a valid safetensors file: {e}")))?;
    let mut out = Weights::new();
    for (name, view) in st.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                message: format!("dtype {:?}, expected F32", view.dtype()),
            });
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(name.to_string(), Tensor::new(view.shape().to_vec(), data));
    }
    Ok((out, meta))
}

//! Reading ONNX models from files, wherever the weights are: inline, or as external data
//! (`torch.onnx.export(..., dynamo=True)` writes `X.onnx.data` beside `X.onnx` by default).
//! External data is resolved against the directory of the model file, never the working
//! directory, and every command that opens an ONNX (import, bench, bridge run, engine build)
//! reads through here. ONNX Runtime gets the model as bytes with the external data inlined, so
//! it never looks for the data file itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use overparam_fuse::import::{Attr, OnnxGraph, OnnxNode, OnnxTensor, ValueInfo};
use prost::Message;

use crate::error::{Error, Result};
use crate::pb::tensor_proto::{DataLocation, DataType};
use crate::pb::{ModelProto, TensorProto, attribute_proto::AttributeType};

fn file_err(path: &Path, message: String) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message,
    }
}

/// Whether the bytes look like a safetensors checkpoint (8-byte little-endian header length,
/// then a JSON object), so a checkpoint given where an ONNX is expected is named as such.
fn looks_like_safetensors(b: &[u8]) -> bool {
    b.len() > 9
        && b[8] == b'{'
        && u64::from_le_bytes(b[..8].try_into().expect("8")) < b.len() as u64
}

/// Decodes an ONNX model from `bytes` (read from `path`, which messages name).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<ModelProto> {
    if looks_like_safetensors(bytes) {
        return Err(file_err(
            path,
            "this is a safetensors checkpoint, not an ONNX model (commands that take an ONNX take `overparam export CHECKPOINT -o MODEL.onnx`'s output; `bench` and `bridge run` take the checkpoint directly)".into(),
        ));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "plan" || ext == "engine" || crate::trt::manifest_path(path).exists() {
        return Err(file_err(
            path,
            "this is a TensorRT engine, not an ONNX model: ONNX Runtime and `engine build` take the ONNX it was built from (`overparam export`'s output); `bench --runtime trt` runs the engine itself".into(),
        ));
    }
    let m = ModelProto::decode(bytes).map_err(|e| {
        file_err(
            path,
            format!("not an ONNX model ({e}); truncated or another format?"),
        )
    })?;
    if m.graph.is_none() {
        return Err(file_err(path, "an ONNX model without a graph".into()));
    }
    Ok(m)
}

/// Reads an ONNX model and loads its external data into the tensors (checked: the data file
/// exists, stays inside the model's directory, and holds every byte the model names).
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut m = decode(path, &bytes)?;
    inline_external_data(path, &mut m)?;
    Ok(m)
}

/// The model's bytes as ONNX Runtime and TensorRT's parser should get them: the file itself
/// when its weights are inline, else re-encoded with the external data inlined.
pub fn model_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut m = decode(path, &bytes)?;
    if inline_external_data(path, &mut m)? == 0 {
        return Ok(bytes);
    }
    Ok(m.encode_to_vec())
}

/// Every tensor of a graph (initializers, Constant nodes' values), mutably.
fn tensors_mut(m: &mut ModelProto) -> Vec<&mut TensorProto> {
    let g = m.graph.as_mut().expect("checked");
    let mut out: Vec<&mut TensorProto> = g.initializer.iter_mut().collect();
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                out.push(t);
            }
        }
    }
    out
}

/// Replaces external data by `raw_data`; returns how many tensors had some.
fn inline_external_data(path: &Path, m: &mut ModelProto) -> Result<usize> {
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let mut n = 0;
    for t in tensors_mut(m) {
        if t.data_location != Some(DataLocation::External as i32) {
            continue;
        }
        let name = t.name.clone().unwrap_or_default();
        let entry = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let location = entry("location").ok_or_else(|| {
            file_err(
                path,
                format!("tensor `{name}` is stored externally but names no location"),
            )
        })?;
        let rel = Path::new(&location);
        // The ONNX spec's location is relative to the model's directory; refuse escapes.
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(file_err(
                path,
                format!(
                    "tensor `{name}`: external data location `{location}` leaves the model's directory"
                ),
            ));
        }
        let file = dir.join(rel);
        if !files.contains_key(&file) {
            let data = std::fs::read(&file).map_err(|e| {
                file_err(
                    path,
                    format!(
                        "tensor `{name}`: its external data file {} cannot be read ({e}); it must sit beside the model, as torch.onnx.export wrote it",
                        file.display()
                    ),
                )
            })?;
            files.insert(file.clone(), data);
        }
        let data = &files[&file];
        let parse = |k: &str| -> Result<Option<usize>> {
            entry(k)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| {
                        file_err(
                            path,
                            format!("tensor `{name}`: external data {k} `{v}` is not a number"),
                        )
                    })
                })
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = match parse("length")? {
            Some(l) => l,
            None => data.len().saturating_sub(offset),
        };
        let end = offset.checked_add(length).filter(|&e| e <= data.len()).ok_or_else(|| {
            file_err(
                path,
                format!(
                    "tensor `{name}`: external data {} holds {} bytes, the model reads bytes {offset}..{} (truncated?)",
                    file.display(),
                    data.len(),
                    offset.saturating_add(length)
                ),
            )
        })?;
        t.raw_data = Some(data[offset..end].to_vec());
        t.external_data.clear();
        t.data_location = Some(DataLocation::Default as i32);
        n += 1;
    }
    Ok(n)
}

/// A tensor's values, widened or narrowed to what the importer reads.
fn tensor(t: &TensorProto) -> Result<OnnxTensor> {
    let name = t.name.clone().unwrap_or_default();
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::Export(format!("tensor `{name}` has dimension {d}")))
        })
        .collect::<Result<_>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Export(format!("tensor `{name}`: dimensions {dims:?} overflow")))?;
    let raw = t.raw_data.as_deref();
    let dt = t.data_type.unwrap_or(0);
    let bad_len = |got: usize| {
        Error::Export(format!(
            "tensor `{name}` declares {n} values ({dims:?}) but holds {got} (truncated?)"
        ))
    };
    let fixed = |width: usize| -> Result<&[u8]> {
        let r = raw.unwrap_or(&[]);
        if r.len() != n * width {
            return Err(bad_len(r.len() / width.max(1)));
        }
        Ok(r)
    };
    let floats = |v: Vec<f32>| -> Result<OnnxTensor> {
        if v.len() != n {
            return Err(bad_len(v.len()));
        }
        Ok(OnnxTensor::f32(dims.clone(), v))
    };
    let ints = |v: Vec<i64>| -> Result<OnnxTensor> {
        if v.len() != n {
            return Err(bad_len(v.len()));
        }
        Ok(OnnxTensor::i64(dims.clone(), v))
    };
    match DataType::try_from(dt).unwrap_or(DataType::Undefined) {
        DataType::Float => match raw {
            Some(_) => floats(
                fixed(4)?
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                    .collect(),
            ),
            None => floats(t.float_data.clone()),
        },
        DataType::Double => match raw {
            Some(_) => floats(
                fixed(8)?
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32)
                    .collect(),
            ),
            None => floats(t.double_data.iter().map(|&v| v as f32).collect()),
        },
        DataType::Float16 | DataType::Bfloat16 => {
            let bf = dt == DataType::Bfloat16 as i32;
            let conv = |bits: u16| {
                if bf {
                    half::bf16::from_bits(bits).to_f32()
                } else {
                    half::f16::from_bits(bits).to_f32()
                }
            };
            match raw {
                Some(_) => floats(
                    fixed(2)?
                        .chunks_exact(2)
                        .map(|b| conv(u16::from_le_bytes([b[0], b[1]])))
                        .collect(),
                ),
                None => floats(t.int32_data.iter().map(|&v| conv(v as u16)).collect()),
            }
        }
        DataType::Int64 => match raw {
            Some(_) => ints(
                fixed(8)?
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8")))
                    .collect(),
            ),
            None => ints(t.int64_data.clone()),
        },
        DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint8 | DataType::Bool => {
            let (width, signed) = match DataType::try_from(dt).expect("matched") {
                DataType::Int32 => (4, true),
                DataType::Int16 => (2, true),
                DataType::Int8 => (1, true),
                _ => (1, false),
            };
            match raw {
                Some(_) => ints(
                    fixed(width)?
                        .chunks_exact(width)
                        .map(|b| match (width, signed) {
                            (4, _) => i32::from_le_bytes(b.try_into().expect("4")) as i64,
                            (2, _) => i16::from_le_bytes([b[0], b[1]]) as i64,
                            (1, true) => b[0] as i8 as i64,
                            _ => b[0] as i64,
                        })
                        .collect(),
                ),
                None => ints(t.int32_data.iter().map(|&v| v as i64).collect()),
            }
        }
        other => Err(Error::Export(format!(
            "tensor `{name}` has element type {other:?}, which import does not read"
        ))),
    }
}

fn attr(a: &crate::pb::AttributeProto) -> Result<Attr> {
    let kind = a
        .r#type
        .and_then(|t| AttributeType::try_from(t).ok())
        .unwrap_or(AttributeType::Undefined);
    Ok(match kind {
        AttributeType::Int => Attr::Int(a.i.unwrap_or(0)),
        AttributeType::Float => Attr::Float(a.f.unwrap_or(0.0)),
        AttributeType::Ints => Attr::Ints(a.ints.clone()),
        AttributeType::Floats => Attr::Floats(a.floats.clone()),
        AttributeType::String => {
            Attr::Str(String::from_utf8_lossy(a.s.as_deref().unwrap_or(&[])).into_owned())
        }
        AttributeType::Tensor => Attr::Tensor(tensor(a.t.as_ref().ok_or_else(|| {
            Error::Export(format!(
                "attribute `{}` is a tensor with no value",
                a.name.as_deref().unwrap_or("")
            ))
        })?)?),
        AttributeType::Graph | AttributeType::Graphs => Attr::Other("graph"),
        AttributeType::SparseTensor | AttributeType::SparseTensors => Attr::Other("sparse tensor"),
        AttributeType::TypeProto | AttributeType::TypeProtos => Attr::Other("type"),
        AttributeType::Tensors => Attr::Other("tensors"),
        AttributeType::Strings => Attr::Other("strings"),
        AttributeType::Undefined => Attr::Other("undefined"),
    })
}

fn value_info(v: &crate::pb::ValueInfoProto) -> ValueInfo {
    use crate::pb::{tensor_shape_proto::dimension::Value, type_proto};
    let (dims, float) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let et = t.elem_type.unwrap_or(0);
            let float = [
                DataType::Float,
                DataType::Float16,
                DataType::Double,
                DataType::Bfloat16,
            ]
            .iter()
            .any(|d| *d as i32 == et);
            (dims, float)
        }
        _ => (vec![], false),
    };
    ValueInfo {
        name: v.name.clone().unwrap_or_default(),
        dims,
        float,
    }
}

/// Reads an ONNX model (external data included) as the neutral graph the importer reads.
pub fn read_graph(path: &Path) -> Result<OnnxGraph> {
    to_graph(path, read_model(path)?)
}

/// The neutral graph the importer reads (`path` names the file in messages). The model is
/// consumed: each initializer's bytes are released as it is converted, so a large model's
/// weights are held about once more, not twice more, on the way.
pub fn to_graph(path: &Path, mut m: ModelProto) -> Result<OnnxGraph> {
    let at = |e: Error| file_err(path, e.to_string());
    let inits = std::mem::take(&mut m.graph.as_mut().expect("checked").initializer);
    let mut initializers = HashMap::with_capacity(inits.len());
    for t in inits {
        let v = tensor(&t).map_err(at)?;
        initializers.insert(t.name.unwrap_or_default(), v);
    }
    let g = m.graph.as_ref().expect("checked");
    let opset = m
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
        .ok_or_else(|| file_err(path, "the model imports no default-domain opset".into()))?;
    let nodes = g
        .node
        .iter()
        .map(|n| {
            let attrs = n
                .attribute
                .iter()
                .map(|a| Ok((a.name.clone().unwrap_or_default(), attr(a)?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            Ok(OnnxNode {
                name: n.name.clone().unwrap_or_default(),
                op_type: n.op_type.clone().unwrap_or_default(),
                domain: n.domain.clone().unwrap_or_default(),
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                attrs,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map_err(at)?;
    Ok(OnnxGraph {
        name: g.name.clone().unwrap_or_default(),
        opset,
        producer: format!(
            "{} {}",
            m.producer_name.as_deref().unwrap_or("unknown"),
            m.producer_version.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
        inputs: g.input.iter().map(value_info).collect(),
        outputs: g.output.iter().map(value_info).collect(),
        initializers,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::tensor_f32;
    use crate::pb::{GraphProto, StringStringEntryProto};

    fn external(name: &str, location: &str, offset: usize, length: usize) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: vec![2],
            data_type: Some(DataType::Float as i32),
            data_location: Some(DataLocation::External as i32),
            external_data: [
                ("location", location.to_string()),
                ("offset", offset.to_string()),
                ("length", length.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            })
            .collect(),
            ..Default::default()
        }
    }

    fn model(t: TensorProto) -> ModelProto {
        ModelProto {
            opset_import: vec![crate::pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                initializer: vec![t, tensor_f32("inline", &[1], &[3.0])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn external_data_is_read_beside_the_model_from_any_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("m");
        std::fs::create_dir(&sub).unwrap();
        let mut data = vec![0u8; 8];
        data.extend(1.5f32.to_le_bytes());
        data.extend((-2.0f32).to_le_bytes());
        std::fs::write(sub.join("x.onnx.data"), &data).unwrap();
        let path = sub.join("x.onnx");
        std::fs::write(
            &path,
            model(external("w", "x.onnx.data", 8, 8)).encode_to_vec(),
        )
        .unwrap();
        let g = read_graph(&path).unwrap();
        assert_eq!(g.initializers["w"].floats(), vec![1.5, -2.0]);
        assert_eq!(g.initializers["inline"].floats(), vec![3.0]);
        // The bytes ORT gets carry the data inline.
        let bytes = model_bytes(&path).unwrap();
        let again = decode(&path, &bytes).unwrap();
        assert!(again.graph.unwrap().initializer[0].external_data.is_empty());

        // Truncated data, a missing file and an escaping location are refused by name.
        std::fs::write(sub.join("x.onnx.data"), &data[..12]).unwrap();
        let e = read_model(&path).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("`w`"), "{e}");
        std::fs::remove_file(sub.join("x.onnx.data")).unwrap();
        let e = read_model(&path).unwrap_err().to_string();
        assert!(
            e.contains("x.onnx.data") && e.contains("beside the model"),
            "{e}"
        );
        std::fs::write(
            &path,
            model(external("w", "../y.data", 0, 8)).encode_to_vec(),
        )
        .unwrap();
        let e = read_model(&path).unwrap_err().to_string();
        assert!(e.contains("leaves the model's directory"), "{e}");
    }

    #[test]
    fn a_checkpoint_or_garbage_is_named_as_such() {
        let p = Path::new("model.deploy.safetensors");
        let mut st = 20u64.to_le_bytes().to_vec();
        st.extend(b"{\"a\":1}             ");
        let e = decode(p, &st).unwrap_err().to_string();
        assert!(e.contains("safetensors checkpoint"), "{e}");
        let e = decode(Path::new("x.onnx"), &[0xff, 0xff, 0x03])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an ONNX model"), "{e}");
    }
}

//! A neutral, already-decoded ONNX graph: what the importer reads. The engine crate decodes
//! the protobuf (and external data) into it, so this crate stays free of protobuf code.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

/// Tensor data as the importer needs it: floats (any float type, widened or narrowed to f32)
/// or integers (any integer or bool type, as i64).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct OnnxTensor {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl OnnxTensor {
    pub fn f32(dims: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            dims,
            data: Data::F32(data),
        }
    }
    pub fn i64(dims: Vec<usize>, data: Vec<i64>) -> Self {
        Self {
            dims,
            data: Data::I64(data),
        }
    }
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as floats.
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// The values as integers (floats truncated, as ONNX's Cast).
    pub fn ints(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
        }
    }
    pub fn is_float(&self) -> bool {
        matches!(self.data, Data::F32(_))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Tensor(OnnxTensor),
    /// A kind the importer never reads (graphs, sparse tensors, type protos).
    Other(&'static str),
}

impl Attr {
    fn kind(&self) -> &'static str {
        match self {
            Attr::Int(_) => "int",
            Attr::Float(_) => "float",
            Attr::Ints(_) => "ints",
            Attr::Floats(_) => "floats",
            Attr::Str(_) => "string",
            Attr::Tensor(_) => "tensor",
            Attr::Other(k) => k,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OnnxNode {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    /// Input tensor names; an empty name is an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: BTreeMap<String, Attr>,
}

impl OnnxNode {
    fn err(&self, message: String) -> Error {
        Error::Import {
            node: self.name.clone(),
            op_type: self.op_type.clone(),
            message,
        }
    }
    fn wrong(&self, name: &str, want: &str, a: &Attr) -> Error {
        self.err(format!(
            "attribute `{name}` is a {}, expected {want}",
            a.kind()
        ))
    }
    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(a) => Err(self.wrong(name, "an int", a)),
        }
    }
    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(a) => Err(self.wrong(name, "a float", a)),
        }
    }
    pub fn str(&self, name: &str, default: &str) -> Result<String> {
        match self.attrs.get(name) {
            None => Ok(default.to_string()),
            Some(Attr::Str(v)) => Ok(v.clone()),
            Some(a) => Err(self.wrong(name, "a string", a)),
        }
    }
    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.attrs.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(a) => Err(self.wrong(name, "a list of ints", a)),
        }
    }
    /// Non-negative ints of a fixed count (a window attribute), each at most `MAX_WINDOW`.
    fn counts<const N: usize>(&self, name: &str, default: [usize; N]) -> Result<[usize; N]> {
        let Some(v) = self.ints(name)? else {
            return Ok(default);
        };
        if v.len() != N {
            return Err(self.err(format!(
                "attribute `{name}` has {} values, expected {N} (only 2-D is supported)",
                v.len()
            )));
        }
        let mut out = [0usize; N];
        for (o, x) in out.iter_mut().zip(&v) {
            if *x < 0 || *x > crate::spec::MAX_WINDOW as i64 {
                return Err(self.err(format!("attribute `{name}` = {v:?} is out of range")));
            }
            *o = *x as usize;
        }
        Ok(out)
    }
    pub fn pair(&self, name: &str, default: [usize; 2]) -> Result<[usize; 2]> {
        self.counts(name, default)
    }
    pub fn quad(&self, name: &str, default: [usize; 4]) -> Result<[usize; 4]> {
        self.counts(name, default)
    }
}

/// A graph input or output: its name and dimensions (`None` for a symbolic or unknown one).
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub dims: Vec<Option<usize>>,
    /// Whether its element type is a float type.
    pub float: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnnxGraph {
    pub name: String,
    /// The default domain's opset.
    pub opset: i64,
    /// Who wrote it (`pytorch 2.11.0`), for messages.
    pub producer: String,
    /// Declared inputs (initializers may be listed here too, as older exporters do).
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub initializers: HashMap<String, OnnxTensor>,
    pub nodes: Vec<OnnxNode>,
}

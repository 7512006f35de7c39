use std::path::PathBuf;

/// Errors of the engine crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fuse(#[from] overparam_fuse::Error),
    #[error(transparent)]
    Data(#[from] overparam_data::Error),
    #[error("export: {0}")]
    Export(String),
    /// Weights an FP16 export would turn into infinities: (tensor, largest |w|), in graph order.
    #[error("{}", fp16_range_message(.0))]
    Fp16Range(Vec<(String, f32)>),
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// No usable ONNX Runtime library; the message names where it looked and how to get one.
    #[error("ONNX Runtime library: {0}")]
    RuntimeMissing(String),
    /// A latency measurement that cannot be made as asked (input shape, budget).
    #[error("latency: {0}")]
    Latency(String),
    #[error("TensorRT: {0}")]
    TensorRt(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The I/O error is the `source`, not part of the message: error reporters (anyhow's
    /// `{:#}`) print the chain, and a cause in both would be printed twice.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn fp16_range_message(tensors: &[(String, f32)]) -> String {
    let max = tensors.iter().fold(0f32, |m, t| m.max(t.1));
    let list: Vec<String> = tensors
        .iter()
        .map(|(n, a)| format!("{n} (max |w| {a:.6e})"))
        .collect();
    format!(
        "export: FP16 holds |w| ≤ 65504, and {} tensor{} exceed{} it (largest |w| {max:.6e}): {}; they would become infinite. Export at fp32 (or int8), or keep these layers out of FP16",
        tensors.len(),
        if tensors.len() == 1 { "" } else { "s" },
        if tensors.len() == 1 { "s" } else { "" },
        list.join(", ")
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// ONNX Runtime's message, with what it logged meanwhile (never printed raw).
impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        let log = crate::runtime::take_log();
        if log.is_empty() {
            Error::Runtime(e.to_string())
        } else {
            Error::Runtime(format!("{e} (ONNX Runtime logged: {})", log.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message with its causes, as anyhow's `{:#}` prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s += &format!(": {c}");
            cur = c.source();
        }
        s
    }

    #[test]
    fn io_errors_print_their_cause_once() {
        let e = Error::Io {
            path: "model.plan".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let s = chain(&e);
        assert_eq!(s.matches("disk on fire").count(), 1, "{s}");
        assert!(s.starts_with("model.plan"), "{s}");
    }
}

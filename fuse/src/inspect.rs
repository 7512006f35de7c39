//! Per-layer summary of a spec: op, method (and why a conv stayed plain), shapes, parameters
//! and MACs, and the outputs with their roles.

use std::collections::HashSet;

use serde::Serialize;

use crate::error::Result;
use crate::layout::{deploy_node_params, train_node_params};
use crate::spec::{AnySpec, ConvLike, Graph, Op};

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub op: String,
    /// Geometry or parameters of the op (`3×3 s2 p1`, `α=0.1`).
    pub detail: String,
    pub method: String,
    /// Why a conv a method was asked for stayed plain.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub params: usize,
    pub macs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutputRow {
    pub name: String,
    pub node: String,
    pub role: &'static str,
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub stage: &'static str,
    pub layers: Vec<LayerRow>,
    pub outputs: Vec<OutputRow>,
    pub total_params: usize,
    pub total_macs: usize,
}

fn rows<C: ConvLike>(
    g: &Graph<C>,
    conv_info: impl Fn(&C) -> (String, String),
    params_of: impl Fn(&crate::spec::Node<C>) -> usize,
) -> Result<(Vec<LayerRow>, Vec<OutputRow>)> {
    let shapes = g.infer_shapes()?;
    let macs = g.node_macs()?;
    let layers = g
        .nodes
        .iter()
        .map(|n| {
            let (method, note) = match &n.op {
                Op::Conv(c) => conv_info(c),
                _ => (String::new(), String::new()),
            };
            LayerRow {
                name: n.name.clone(),
                op: n.op.kind().to_string(),
                detail: match &n.op {
                    Op::Conv(c) => c.conv_shape().describe(),
                    o => o.shape_rules().map(|r| r.detail()).unwrap_or_default(),
                },
                method,
                note,
                input: shapes[&n.inputs[0]].clone(),
                output: shapes[&n.name].clone(),
                params: params_of(n),
                macs: macs[&n.name],
            }
        })
        .collect();
    let outputs = g
        .outputs
        .iter()
        .map(|o| OutputRow {
            name: o.name.clone(),
            node: o.node.clone(),
            role: o.role.name(),
            shape: shapes[&o.node].clone(),
        })
        .collect();
    Ok((layers, outputs))
}

pub fn summarize(spec: &AnySpec) -> Result<Summary> {
    let (model, (layers, outputs)) = match spec {
        AnySpec::Train(g) => {
            g.validate()?;
            let shapes = g.infer_shapes()?;
            // Shared factors are counted at their first user.
            let seen = std::cell::RefCell::new(HashSet::new());
            let rows = rows(
                g,
                |c| {
                    (
                        c.method.name().to_string(),
                        c.kept_plain.clone().unwrap_or_default(),
                    )
                },
                |n| {
                    train_node_params(n, &shapes)
                        .into_iter()
                        .filter(|p| !p.kind.is_buffer() && seen.borrow_mut().insert(p.name.clone()))
                        .map(|p| p.numel())
                        .sum()
                },
            )?;
            (g.model.clone(), rows)
        }
        AnySpec::Deploy(g) => {
            g.validate()?;
            let shapes = g.infer_shapes()?;
            let rows = rows(
                g,
                |_| ("deploy".to_string(), String::new()),
                |n| {
                    deploy_node_params(n, &shapes)
                        .iter()
                        .map(|p| p.numel())
                        .sum()
                },
            )?;
            (g.model.clone(), rows)
        }
    };
    Ok(Summary {
        model,
        stage: spec.stage(),
        total_params: layers.iter().map(|l| l.params).sum(),
        total_macs: layers.iter().map(|l| l.macs).sum(),
        layers,
        outputs,
    })
}

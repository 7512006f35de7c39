//! Per-layer summary of a spec: op, method, shapes, parameters and MACs.

use std::collections::HashSet;

use serde::Serialize;

use crate::error::Result;
use crate::layout::{conv_params, deploy_layout};
use crate::spec::{AnySpec, ConvLike, Graph, Op};

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub op: String,
    pub method: String,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub params: usize,
    pub macs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub stage: &'static str,
    pub layers: Vec<LayerRow>,
    pub total_params: usize,
    pub total_macs: usize,
}

fn rows<C: ConvLike>(
    g: &Graph<C>,
    method_of: impl Fn(&C) -> String,
    params_of: impl Fn(&str, &Op<C>) -> usize,
) -> Result<Vec<LayerRow>> {
    let shapes = g.infer_shapes()?;
    let macs = g.node_macs()?;
    Ok(g.nodes
        .iter()
        .map(|n| LayerRow {
            name: n.name.clone(),
            op: n.op.kind().to_string(),
            method: match &n.op {
                Op::Conv(c) => method_of(c),
                _ => String::new(),
            },
            input: shapes[&n.inputs[0]].clone(),
            output: shapes[&n.name].clone(),
            params: params_of(&n.name, &n.op),
            macs: macs[&n.name],
        })
        .collect())
}

pub fn summarize(spec: &AnySpec) -> Result<Summary> {
    let (model, layers) = match spec {
        AnySpec::Train(g) => {
            g.validate()?;
            // Shared factors are counted at their first user.
            let seen = std::cell::RefCell::new(HashSet::new());
            let layers = rows(
                g,
                |c| c.method.name().to_string(),
                |name, op| match op {
                    Op::Conv(c) => conv_params(name, c)
                        .into_iter()
                        .filter(|p| !p.kind.is_buffer() && seen.borrow_mut().insert(p.name.clone()))
                        .map(|p| p.numel())
                        .sum(),
                    Op::Linear {
                        in_features,
                        out_features,
                    } => in_features * out_features + out_features,
                    _ => 0,
                },
            )?;
            (g.model.clone(), layers)
        }
        AnySpec::Deploy(g) => {
            g.validate()?;
            let layout = deploy_layout(g);
            let layers = rows(
                g,
                |_| "deploy".to_string(),
                |name, _| {
                    layout
                        .iter()
                        .filter(|p| p.name.rsplit_once('.').is_some_and(|(n, _)| n == name))
                        .map(|p| p.numel())
                        .sum()
                },
            )?;
            (g.model.clone(), layers)
        }
    };
    Ok(Summary {
        model,
        stage: spec.stage(),
        total_params: layers.iter().map(|l| l.params).sum(),
        total_macs: layers.iter().map(|l| l.macs).sum(),
        layers,
    })
}

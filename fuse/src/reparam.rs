//! Routine R3's two re-parameterisations (methods.md §5.3): *expand* a trained plain network
//! into an overparameterised one computing the same function (exact SVD factorisation), and
//! *collapse* it back to a plain network (factors multiplied out) that keeps its BatchNorms, so
//! it can be fine-tuned before the final fold.

use crate::error::{Error, Result};
use crate::fold::{Weights, compose_kernel, get};
use crate::init::factorise_all;
use crate::layout::train_layout;
use crate::method::Method;
use crate::spec::{Op, TrainConv, TrainSpec};

fn same_graph(a: &TrainSpec, b: &TrainSpec) -> Result<()> {
    let same = a.input == b.input
        && a.outputs == b.outputs
        && a.nodes.len() == b.nodes.len()
        && a.nodes.iter().zip(&b.nodes).all(|(x, y)| {
            x.name == y.name
                && x.inputs == y.inputs
                && x.params == y.params
                && match (&x.op, &y.op) {
                    (Op::Conv(p), Op::Conv(q)) => p.shape == q.shape && p.bn == q.bn,
                    (p, q) => p == q,
                }
        });
    if same {
        Ok(())
    } else {
        Err(Error::Spec(
            "expand/collapse need the same graph with different methods".into(),
        ))
    }
}

/// Weights for `target` (same graph as the plain `spec`, FNL/SFO where wanted) that compute
/// exactly what the plain weights compute.
pub fn expand(
    plain: &TrainSpec,
    w: &Weights<f32>,
    target: &TrainSpec,
    seed: u64,
) -> Result<Weights<f32>> {
    same_graph(plain, target)?;
    for n in &plain.nodes {
        if let Op::Conv(c) = &n.op
            && c.method != Method::Plain
        {
            return Err(Error::Spec(format!(
                "expand starts from a plain network; `{}` is {}",
                n.name,
                c.method.name()
            )));
        }
    }
    for n in &target.nodes {
        if let Op::Conv(c) = &n.op
            && matches!(c.method, Method::Repvgg | Method::Qarepvgg)
        {
            return Err(Error::Method {
                node: n.name.clone(),
                method: c.method.name().into(),
                reason: "R3 expands by SVD, which applies to factorised methods (fnl, sfo) only"
                    .into(),
            });
        }
    }
    let kernel = |node: &str, _: &TrainConv| Ok(get(w, &format!("{node}.weight"))?.cast::<f64>());
    let mut factors = factorise_all(target, kernel, seed)?;
    let mut out = Weights::new();
    for p in train_layout(target)? {
        let t = match factors.remove(&p.name) {
            Some(t) => t.cast(),
            // Plain convs, BN, biases and linear layers keep their names and values.
            None => get(w, &p.name)?.clone(),
        };
        out.insert(p.name, t);
    }
    Ok(out)
}

/// The plain network (with its BNs) of a factorised one, and its weights: every FNL/SFO
/// kernel multiplied out. RepVGG-style branches have their own BNs and do not collapse this way.
pub fn collapse(spec: &TrainSpec, w: &Weights<f32>) -> Result<(TrainSpec, Weights<f32>)> {
    let mut plain = spec.clone();
    let mut out = Weights::new();
    let w64: Weights<f64> = w.iter().map(|(k, v)| (k.clone(), v.cast())).collect();
    for n in &mut plain.nodes {
        if let Op::Conv(c) = &mut n.op {
            match &c.method {
                Method::Plain => {}
                Method::Fnl { .. } | Method::Sfo { .. } => {
                    let p = n.params.clone().unwrap_or_else(|| n.name.clone());
                    let k = compose_kernel(&p, c, &w64)?;
                    out.insert(format!("{p}.weight"), k.cast());
                    c.method = Method::Plain;
                }
                m => {
                    return Err(Error::Method {
                        node: n.name.clone(),
                        method: m.name().into(),
                        reason: "collapse keeps BatchNorm, which RepVGG branches cannot share"
                            .into(),
                    });
                }
            }
        }
    }
    for p in train_layout(&plain)? {
        if !out.contains_key(&p.name) {
            out.insert(p.name.clone(), get(w, &p.name)?.clone());
        }
    }
    Ok((plain, out))
}

//! Exact expansion of a trained plain network (a deploy spec: imported, or folded) into a
//! train-time network with a method, computing the same function (`init --from`). The
//! verdict is the f64 one of [`crate::verify`] (1e-9 relative), between the expanded model in
//! eval mode and the plain one, so the factors must reproduce the trained kernel exactly *as
//! stored*, in f32.
//!
//! - **FNL, SFO.** The balanced SVD factors R3 uses (methods.md §5.3) are irrational: rounded
//!   to f32 they change the function by about 1e-7 relative, which the verdict rightly
//!   rejects. So the kernel goes into one factor and scaled identities into the others, with a
//!   power of two `c ≈ σ₁^{1/3}` (σ₁ the largest singular value of the kernel's matrix view),
//!   which every factor then shares in scale, as the balanced SVD's would:
//!   SFO `U = c·[I | 0]`, `M = c·I ⊕ εN`, `V = [W/c² ; εN]` (or `W/c²` in U when O > I·kh·kw);
//!   FNL `U = c·[I | 0]`, `M = c·I`, `Vᵀ = [Ŵ/c² ; εN]`. Multiplying by identities and powers
//!   of two is exact in floating point, so `U·M·V = W` bit for bit. The extra directions get
//!   noise εN (methods.md §5.1: zero-padded directions would get zero gradient forever) except
//!   in U, whose extra columns are exactly zero so the noise contributes nothing. First
//!   gradients: U's extra columns get `G·(M·V)ᵀ` ≈ ε·G·Nᵀ, not zero, so they move on the
//!   first step and M's and V's extra blocks follow from the second; the kernel itself moves
//!   at once (its factors' gradients are those of a plain conv times powers of two).
//! - **RepVGG** (Ding et al. 2021). The dense branch takes the kernel, its BN the identity with
//!   the conv's bias as β; the 1×1 and identity branches start at γ = 0 (their BNs output β = 0
//!   exactly), with a random 1×1 kernel. First gradients: the branches' γ get
//!   `Σ (normalised branch output)·G`, their 1×1 kernel gets zero (it is multiplied by γ = 0),
//!   so each branch opens through its γ on the first step and its kernel trains from the
//!   second, as zero-initialised residual branches do (Goyal et al. 2017).
//! - **QARepVGG** (Chu et al. 2022). Its identity branch has no parameter to zero, so the 1×1
//!   branch starts at −identity and the two cancel exactly; dense branch and post-sum BN are
//!   identities with the bias in the dense BN's β. Without an identity branch the 1×1 starts at
//!   zero. Every parameter gets a gradient from the first step.
//!
//! The identity BatchNorm: γ = 1, β = bias, μ = 0, σ² = 1 − 2⁻¹⁷, ε = 2⁻¹⁷, so √(σ²+ε) = 1
//! exactly (both are f32 values and sum to 1 in f64). The BatchNorms an expansion inserts run
//! *frozen*: on their running statistics in training too, with γ and β trained. A trained
//! network's pre-activations are not standardised, so batch statistics would renormalise every
//! channel on the first step and throw away what was imported; frozen statistics keep the
//! first training forward equal to the imported model (detectron2's FrozenBatchNorm2d practice
//! for fine-tuning, with the affine left trainable).
//!
//! Convs a method cannot take stay plain, with the reason (`inspect` shows it): FNL/SFO on a
//! depthwise conv, RepVGG-style branches on a conv that is not centred.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::fold::{Weights, get};
use crate::init::{SFO_EXTRA_NOISE, fnl_view, noise, plain_kernel, sfo_view};
use crate::layout::{factor_names, fnl_shapes, sfo_shapes, train_node_params};
use crate::linalg::Mat;
use crate::method::{Method, MethodConfig, has_identity};
use crate::spec::{BatchNorm, ConvShape, DeploySpec, Node, Op, TrainConv, TrainSpec};
use crate::tensor::{Rng, Tensor};

/// ε of the BatchNorms an expansion inserts: 2⁻¹⁷ (≈ 7.6e-6, near PyTorch's 1e-5).
pub const INSERTED_BN_EPS: f64 = 1.0 / 131072.0;
/// Their running variance, 1 − 2⁻¹⁷, so that σ² + ε = 1 exactly.
pub const INSERTED_BN_VAR: f32 = 1.0 - 1.0 / 131072.0;

/// An expanded network.
#[derive(Clone, Debug)]
pub struct Expanded {
    pub spec: TrainSpec,
    pub weights: Weights<f32>,
    /// Convs left plain although the method was asked for, with why.
    pub kept_plain: Vec<(String, String)>,
}

/// The largest singular value of `m`, by power iteration on mᵀm (a scale, not a verdict).
fn sigma_max(m: &Mat) -> f64 {
    let n = m.cols;
    let mut v = vec![1.0 / (n as f64).sqrt(); n];
    let mut s = 0.0;
    for _ in 0..50 {
        let mv: Vec<f64> = (0..m.rows)
            .map(|r| (0..n).map(|c| m.at(r, c) * v[c]).sum())
            .collect();
        let mut w: Vec<f64> = (0..n)
            .map(|c| (0..m.rows).map(|r| m.at(r, c) * mv[r]).sum())
            .collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        w.iter_mut().for_each(|x| *x /= norm);
        s = norm.sqrt();
        v = w;
    }
    s
}

/// The power of two nearest σ₁^{1/3} (1 for a zero kernel).
fn scale_of(m: &Mat) -> f64 {
    let s = sigma_max(m);
    if !(s > 0.0 && s.is_finite()) {
        return 1.0;
    }
    (s.cbrt().log2().round()).exp2()
}

fn eye(rows: usize, cols: usize, c: f64) -> Mat {
    let mut m = Mat::zeros(rows, cols);
    for i in 0..rows.min(cols) {
        m.set(i, i, c);
    }
    m
}

/// The exact SFO factors of one group's view `w` (o × n) at inner dimension `d`.
fn sfo_group(w: &Mat, d: usize, rng: &mut Rng) -> (Mat, Mat, Mat) {
    let (o, n) = (w.rows, w.cols);
    let c = scale_of(w);
    let eps = SFO_EXTRA_NOISE * w.rms().max(f64::MIN_POSITIVE);
    // M = c·I_k ⊕ εN: the identity on the kernel's k directions, noise on the extra ones.
    let core = |k: usize, rng: &mut Rng| {
        let mut m = Mat::zeros(d, d);
        m.put(&eye(k, k, c));
        let extra = noise(rng, d - k, d - k, eps);
        for i in 0..d - k {
            for j in 0..d - k {
                m.set(k + i, k + j, extra.at(i, j));
            }
        }
        m
    };
    if o <= d {
        // U = c·[I | 0], M = c·I ⊕ εN, V = [W/c² ; εN].
        let u = eye(o, d, c);
        let m = core(o, rng);
        let mut v = noise(rng, d, n, eps);
        v.put(&w.scaled(1.0 / (c * c)));
        (u, m, v)
    } else {
        // d ≥ n here (d = e·min(o, n)): U = [W/c² | 0], M = c·I ⊕ εN, V = [c·I ; εN].
        let mut u = Mat::zeros(o, d);
        u.put(&w.scaled(1.0 / (c * c)));
        let m = core(n, rng);
        let mut v = noise(rng, d, n, eps);
        v.put(&eye(n, n, c));
        (u, m, v)
    }
}

/// The exact FNL factors of one group's view `ŵ` ((o·kh) × (i·kw)) at rank `r` ≥ o·kh.
fn fnl_group(w: &Mat, r: usize, rng: &mut Rng) -> (Mat, Mat, Mat) {
    let (rows, cols) = (w.rows, w.cols);
    let c = scale_of(w);
    let eps = SFO_EXTRA_NOISE * w.rms().max(f64::MIN_POSITIVE);
    let u = eye(rows, r, c);
    let m = eye(r, r, c);
    // Vᵀ = [Ŵ/c² ; εN]: V is (i·kw) × r.
    let mut vt = noise(rng, r, cols, eps);
    vt.put(&w.scaled(1.0 / (c * c)));
    (u, m, vt.t())
}

fn to_f32(m: &Mat) -> impl Iterator<Item = f32> + '_ {
    m.data.iter().map(|&v| v as f32)
}

/// The factors of one deploy conv for an FNL or SFO method, exact in f32.
fn factorise(
    p: &str,
    s: &ConvShape,
    method: &Method,
    w: &Tensor<f32>,
    seed: u64,
) -> Result<Weights<f32>> {
    let w64: Tensor<f64> = w.cast();
    let mut rng = Rng::derive(seed, &format!("{p}.expand"));
    let (mut ud, mut md, mut vd) = (vec![], vec![], vec![]);
    let (su, sm, sv) = match method {
        Method::Sfo { rank, .. } => {
            for g in 0..s.groups {
                let (u, m, v) = sfo_group(&sfo_view(&w64, s, g), *rank, &mut rng);
                ud.extend(to_f32(&u));
                md.extend(to_f32(&m));
                vd.extend(to_f32(&v));
            }
            sfo_shapes(s, *rank)
        }
        Method::Fnl { rank } => {
            if *rank < s.out_channels / s.groups * s.kernel[0] {
                return Err(Error::Method {
                    node: p.into(),
                    method: "fnl".into(),
                    reason: format!(
                        "rank {rank} is below O·kh; an exact expansion needs fnl_rank_scale ≥ 1"
                    ),
                });
            }
            for g in 0..s.groups {
                let (u, m, v) = fnl_group(&fnl_view(&w64, s, g), *rank, &mut rng);
                ud.extend(to_f32(&u));
                md.extend(to_f32(&m));
                vd.extend(to_f32(&v));
            }
            fnl_shapes(s, *rank)
        }
        _ => unreachable!("factorise on a branch method"),
    };
    let (un, mn, vn) = factor_names(p, method);
    Ok(Weights::from([
        (un, Tensor::new(su, ud)),
        (mn, Tensor::new(sm, md)),
        (vn, Tensor::new(sv, vd)),
    ]))
}

/// The five tensors of an identity BatchNorm with shift `beta` (or a zero one, γ = 0).
fn bn_tensors(prefix: &str, beta: &[f32], gamma: f32) -> Weights<f32> {
    let c = beta.len();
    Weights::from([
        (format!("{prefix}.weight"), Tensor::full(&[c], gamma)),
        (
            format!("{prefix}.bias"),
            Tensor::new(vec![c], beta.to_vec()),
        ),
        (format!("{prefix}.running_mean"), Tensor::zeros(&[c])),
        (
            format!("{prefix}.running_var"),
            Tensor::full(&[c], INSERTED_BN_VAR),
        ),
        (format!("{prefix}.num_batches_tracked"), Tensor::zeros(&[])),
    ])
}

/// The train-time conv and tensors for one deploy conv under `method`.
fn expand_conv(
    p: &str,
    s: &ConvShape,
    method: Method,
    w: &Weights<f32>,
    seed: u64,
) -> Result<(TrainConv, Weights<f32>)> {
    let (kernel, bias) = (
        get(w, &format!("{p}.weight"))?,
        get(w, &format!("{p}.bias"))?,
    );
    let o = s.out_channels;
    let frozen_bn = || {
        Some(BatchNorm {
            name: format!("{p}.bn"),
            eps: INSERTED_BN_EPS,
            frozen: true,
        })
    };
    let branch_shape = ConvShape {
        bias: false,
        ..s.clone()
    };
    let mut out = Weights::new();
    let conv = match &method {
        Method::Plain => {
            out.insert(format!("{p}.weight"), kernel.clone());
            out.insert(format!("{p}.bias"), bias.clone());
            TrainConv::new(s.clone(), None, Method::Plain)
        }
        Method::Fnl { .. } | Method::Sfo { .. } => {
            out.extend(factorise(p, s, &method, kernel, seed)?);
            out.insert(format!("{p}.bias"), bias.clone());
            TrainConv::new(s.clone(), None, method)
        }
        Method::Repvgg => {
            out.insert(format!("{p}.rbr_dense.conv.weight"), kernel.clone());
            out.extend(bn_tensors(&format!("{p}.rbr_dense.bn"), &bias.data, 1.0));
            if !s.is_1x1() {
                let s1 = crate::exec::one_by_one(s);
                let k1 = plain_kernel(&format!("{p}.rbr_1x1"), &s1, seed).cast();
                out.insert(format!("{p}.rbr_1x1.conv.weight"), k1);
                out.extend(bn_tensors(&format!("{p}.rbr_1x1.bn"), &vec![0.0; o], 0.0));
            }
            if has_identity(s) {
                out.extend(bn_tensors(&format!("{p}.rbr_identity"), &vec![0.0; o], 0.0));
            }
            TrainConv::new(branch_shape, frozen_bn(), method)
        }
        Method::Qarepvgg => {
            out.insert(format!("{p}.rbr_dense.conv.weight"), kernel.clone());
            out.extend(bn_tensors(&format!("{p}.rbr_dense.bn"), &bias.data, 1.0));
            if !s.is_1x1() {
                // −identity cancels the identity branch exactly; without one, zero.
                let one = crate::exec::one_by_one(s);
                let w1 = if has_identity(s) {
                    let mut id: Tensor<f32> = crate::fold::identity_kernel(&one);
                    id.data.iter_mut().for_each(|v| *v = -*v);
                    id
                } else {
                    Tensor::zeros(&one.weight_shape())
                };
                out.insert(format!("{p}.rbr_1x1.weight"), w1);
            } else if has_identity(s) {
                return Err(Error::Method {
                    node: p.into(),
                    method: "qarepvgg".into(),
                    reason: "a 1×1 conv with an identity branch has no 1×1 branch to cancel it"
                        .into(),
                });
            }
            out.extend(bn_tensors(&format!("{p}.bn"), &vec![0.0; o], 1.0));
            TrainConv::new(branch_shape, frozen_bn(), method)
        }
    };
    Ok((conv, out))
}

/// Expands a plain network exactly (see the module doc). Every tensor of the result is
/// declared by the train layout, and the function is unchanged; [`crate::verify::verify_expansion`]
/// checks it in f64.
pub fn expand(
    deploy: &DeploySpec,
    w: &Weights<f32>,
    method: &MethodConfig,
    seed: u64,
) -> Result<Expanded> {
    deploy.validate()?;
    method.validate()?;
    crate::checkpoint::check_against_layout(&crate::layout::deploy_layout(deploy), w)?;
    let mut nodes = vec![];
    let mut weights = Weights::new();
    let mut kept_plain = vec![];
    for n in &deploy.nodes {
        let p = n.prefix().to_string();
        let op = match &n.op {
            Op::Conv(c) => {
                let (m, why) = method.for_conv_why(&c.shape);
                // QARepVGG on a 1×1 conv that keeps an identity has nothing to cancel it with.
                let (m, why) = if matches!(m, Method::Qarepvgg)
                    && c.shape.is_1x1()
                    && has_identity(&c.shape)
                {
                    (
                        Method::Plain,
                        Some("qarepvgg on a 1×1 conv with an identity branch: no 1×1 branch could cancel the identity, so the expansion would not be exact".into()),
                    )
                } else {
                    (m, why)
                };
                let (mut conv, tensors) = expand_conv(&p, &c.shape, m, w, seed)?;
                if let Some(why) = why {
                    kept_plain.push((n.name.clone(), why.clone()));
                    conv.kept_plain = Some(why);
                }
                weights.extend(tensors);
                Op::Conv(conv)
            }
            other => other.try_map_conv(|_| unreachable!("not a conv"))?,
        };
        nodes.push(Node {
            name: n.name.clone(),
            inputs: n.inputs.clone(),
            op,
            params: n.params.clone(),
        });
    }
    let spec = TrainSpec {
        model: deploy.model.clone(),
        input: deploy.input.clone(),
        nodes,
        outputs: deploy.outputs.clone(),
    };
    let shapes: HashMap<_, _> = spec.infer_shapes()?;
    for n in &spec.nodes {
        if matches!(n.op, Op::Conv(_)) {
            continue;
        }
        for t in train_node_params(n, &shapes) {
            weights.insert(t.name.clone(), get(w, &t.name)?.clone());
        }
    }
    spec.validate()?;
    crate::checkpoint::check_against_layout(&crate::layout::train_layout(&spec)?, &weights)?;
    Ok(Expanded {
        spec,
        weights,
        kept_plain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inserted_bn_is_the_identity_exactly() {
        assert_eq!((INSERTED_BN_VAR as f64 + INSERTED_BN_EPS).sqrt(), 1.0);
        assert_eq!(INSERTED_BN_EPS as f32 as f64, INSERTED_BN_EPS);
    }

    #[test]
    fn factors_multiply_back_to_the_kernel_bit_for_bit() {
        let mut rng = Rng::new(4);
        for (o, n, d) in [(3, 7, 3), (3, 7, 6), (9, 4, 4), (9, 4, 8)] {
            let w = Mat::new(
                o,
                n,
                (0..o * n)
                    .map(|_| (rng.normal() * 0.3) as f32 as f64)
                    .collect(),
            );
            let (u, m, v) = sfo_group(&w, d, &mut rng);
            let r = |x: &Mat| {
                Mat::new(
                    x.rows,
                    x.cols,
                    x.data.iter().map(|&v| v as f32 as f64).collect(),
                )
            };
            let back = r(&u).matmul(&r(&m)).matmul(&r(&v));
            assert_eq!(back.data, w.data, "sfo {o}×{n} d {d}");
        }
        let w = Mat::new(
            6,
            4,
            (0..24)
                .map(|_| (rng.normal() * 2.0) as f32 as f64)
                .collect(),
        );
        let (u, m, v) = fnl_group(&w, 8, &mut rng);
        assert_eq!(u.matmul(&m).matmul(&v.t()).data, w.data);
        assert_eq!(scale_of(&Mat::zeros(2, 2)), 1.0);
    }
}

//! Exact folding: pure functions on plain tensors (one per transform, after DiverseBranchBlock's
//! `dbb_transforms.py` split), and the graph fold `(TrainSpec, weights) → (DeploySpec, weights)`.
//! Formulas and sources: `shared/reference/methods.md` §1.1–1.3, 1.9, 1.10, 5.1.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::layout::{factor_names, train_layout};
use crate::method::{Method, has_identity};
use crate::spec::{ConvShape, DeployConv, DeploySpec, Op, TrainConv, TrainSpec};
use crate::tensor::{Real, Tensor};

/// Named tensors, as in a checkpoint.
pub type Weights<F = f32> = BTreeMap<String, Tensor<F>>;

/// Eval-mode BatchNorm parameters of one BN.
#[derive(Clone, Debug)]
pub struct Bn<'a, F> {
    pub gamma: &'a [F],
    pub beta: &'a [F],
    pub mean: &'a [F],
    pub var: &'a [F],
    pub eps: F,
}

impl<'a, F: Real> Bn<'a, F> {
    pub fn from_weights(w: &'a Weights<F>, prefix: &str, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: &get(w, &format!("{prefix}.weight"))?.data,
            beta: &get(w, &format!("{prefix}.bias"))?.data,
            mean: &get(w, &format!("{prefix}.running_mean"))?.data,
            var: &get(w, &format!("{prefix}.running_var"))?.data,
            eps: F::from_f64(eps),
        })
    }
    /// Per-channel scale t = γ/√(σ²+ε).
    pub fn scale(&self) -> Vec<F> {
        self.gamma
            .iter()
            .zip(self.var)
            .map(|(&g, &v)| g / (v + self.eps).sqrt())
            .collect()
    }
}

pub(crate) fn get<'a, F>(w: &'a Weights<F>, name: &str) -> Result<&'a Tensor<F>> {
    w.get(name)
        .ok_or_else(|| Error::weights(name, "missing (the method's layout declares it)"))
}

/// transI: BN after a conv. `W* = t·W`, `b* = β + t·(b − μ)` (methods.md §1.1).
pub fn fold_bn<F: Real>(w: &Tensor<F>, b: Option<&[F]>, bn: &Bn<F>) -> (Tensor<F>, Vec<F>) {
    let t = bn.scale();
    let o = w.shape[0];
    let per = w.numel() / o;
    let mut out = w.clone();
    for (c, chunk) in out.data.chunks_mut(per).enumerate() {
        chunk.iter_mut().for_each(|v| *v = *v * t[c]);
    }
    let bias = (0..o)
        .map(|c| {
            let b0 = b.map_or(F::zero(), |b| b[c]);
            bn.beta[c] + t[c] * (b0 - bn.mean[c])
        })
        .collect();
    (out, bias)
}

/// transVI: zero-pad a centred 1×1 kernel `[O, I, 1, 1]` to `[O, I, kh, kw]` (its tap at the
/// centre `(kh/2, kw/2)`, which a centred conv's dilation does not move).
pub fn pad_1x1<F: Real>(w: &Tensor<F>, kernel: [usize; 2]) -> Tensor<F> {
    let (o, i) = (w.shape[0], w.shape[1]);
    let [kh, kw] = kernel;
    let mut out = Tensor::zeros(&[o, i, kh, kw]);
    let centre = (kh / 2) * kw + kw / 2;
    for oi in 0..o * i {
        out.data[oi * kh * kw + centre] = w.data[oi];
    }
    out
}

/// The identity as a grouped kh×kw kernel: `Id[o, o mod (I/g), kh/2, kw/2] = 1`
/// (methods.md §1.3).
pub fn identity_kernel<F: Real>(s: &ConvShape) -> Tensor<F> {
    let [o, ig, kh, kw] = s.weight_shape();
    let mut out = Tensor::zeros(&[o, ig, kh, kw]);
    let centre = (kh / 2) * kw + kw / 2;
    for oc in 0..o {
        out.data[(oc * ig + oc % ig) * kh * kw + centre] = F::one();
    }
    out
}

fn add_into<F: Real>(acc: &mut Tensor<F>, x: &Tensor<F>) {
    assert_eq!(acc.shape, x.shape);
    acc.data
        .iter_mut()
        .zip(&x.data)
        .for_each(|(a, b)| *a = *a + *b);
}

/// Row-major `a (m×k) · b (k×n)`.
pub(crate) fn matmul<F: Real>(m: usize, k: usize, n: usize, a: &[F], b: &[F]) -> Vec<F> {
    let mut c = vec![F::zero(); m * n];
    F::gemm(m, k, n, a, b, F::zero(), &mut c);
    c
}

fn transpose<F: Real>(rows: usize, cols: usize, a: &[F]) -> Vec<F> {
    let mut t = vec![F::zero(); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

fn check_factor<F>(t: &Tensor<F>, name: &str, want: &[usize]) -> Result<()> {
    if t.shape != want {
        return Err(Error::weights(
            name,
            format!("shape {:?}, the layout declares {:?}", t.shape, want),
        ));
    }
    Ok(())
}

/// SFO: `W = reshape((U·M)·V)` on the O×(I·kh·kw) view, per group (methods.md §5.1).
pub fn compose_sfo<F: Real>(
    s: &ConvShape,
    rank: usize,
    u: &Tensor<F>,
    m: &Tensor<F>,
    v: &Tensor<F>,
) -> Result<Tensor<F>> {
    let (su, sm, sv) = crate::layout::sfo_shapes(s, rank);
    check_factor(u, "U", &su)?;
    check_factor(m, "M", &sm)?;
    check_factor(v, "V", &sv)?;
    let g = s.groups;
    let (o, ikk, d) = (s.out_channels / g, s.fan_in(), rank);
    let mut data = Vec::with_capacity(g * o * ikk);
    for gi in 0..g {
        let ug = &u.data[gi * o * d..(gi + 1) * o * d];
        let mg = &m.data[gi * d * d..(gi + 1) * d * d];
        let vg = &v.data[gi * d * ikk..(gi + 1) * d * ikk];
        let um = matmul(o, d, d, ug, mg);
        data.extend(matmul(o, d, ikk, &um, vg));
    }
    Ok(Tensor::new(s.weight_shape().to_vec(), data))
}

/// FNL: `Ŵ = (U·M)·Vᵀ` on the (O·kh)×(I·kw) view with rows (o,u) and columns (i,v), the
/// index order the forward pass uses (methods.md §1.9; the reference SI's raw reshape differs).
pub fn compose_fnl<F: Real>(
    s: &ConvShape,
    rank: usize,
    u: &Tensor<F>,
    m: &Tensor<F>,
    v: &Tensor<F>,
) -> Result<Tensor<F>> {
    let (su, sm, sv) = crate::layout::fnl_shapes(s, rank);
    check_factor(u, "U", &su)?;
    check_factor(m, "M", &sm)?;
    check_factor(v, "V", &sv)?;
    let g = s.groups;
    let (o, i, r) = (s.out_channels / g, s.in_channels / g, rank);
    let [kh, kw] = s.kernel;
    let mut out = Tensor::zeros(&s.weight_shape());
    for gi in 0..g {
        let ug = &u.data[gi * o * kh * r..(gi + 1) * o * kh * r];
        let mg = &m.data[gi * r * r..(gi + 1) * r * r];
        let vg = &v.data[gi * i * kw * r..(gi + 1) * i * kw * r];
        let um = matmul(o * kh, r, r, ug, mg);
        let what = matmul(o * kh, r, i * kw, &um, &transpose(i * kw, r, vg));
        for oo in 0..o {
            for uu in 0..kh {
                for ii in 0..i {
                    for vv in 0..kw {
                        out.data[(((gi * o + oo) * i + ii) * kh + uu) * kw + vv] =
                            what[(oo * kh + uu) * (i * kw) + ii * kw + vv];
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The plain kernel a factorised conv computes (before bias and BN).
pub fn compose_kernel<F: Real>(node: &str, c: &TrainConv, w: &Weights<F>) -> Result<Tensor<F>> {
    let (un, mn, vn) = factor_names(node, &c.method);
    let (u, m, v) = (get(w, &un)?, get(w, &mn)?, get(w, &vn)?);
    let res = match &c.method {
        Method::Fnl { rank } => compose_fnl(&c.shape, *rank, u, m, v),
        Method::Sfo { rank, .. } => compose_sfo(&c.shape, *rank, u, m, v),
        _ => unreachable!("compose_kernel on a non-factorised conv"),
    };
    res.map_err(|e| match e {
        Error::Weights { tensor, message } => {
            Error::weights(format!("{node}.{tensor} ({}/{}/{})", un, mn, vn), message)
        }
        e => e,
    })
}

/// Folds one train-time conv to `(weight, bias)` of a plain conv with bias.
pub fn fold_conv<F: Real>(
    node: &str,
    c: &TrainConv,
    w: &Weights<F>,
) -> Result<(Tensor<F>, Vec<F>)> {
    let s = &c.shape;
    let eps = c.bn.as_ref().map_or(1e-5, |b| b.eps);
    let with_bn = |kernel: Tensor<F>| -> Result<(Tensor<F>, Vec<F>)> {
        let bias = if s.bias {
            Some(get(w, &format!("{node}.bias"))?.data.as_slice())
        } else {
            None
        };
        Ok(match &c.bn {
            Some(bn) => fold_bn(&kernel, bias, &Bn::from_weights(w, &bn.name, bn.eps)?),
            None => {
                let b = bias.map_or_else(|| vec![F::zero(); s.out_channels], <[F]>::to_vec);
                (kernel, b)
            }
        })
    };
    match &c.method {
        Method::Plain => with_bn(get(w, &format!("{node}.weight"))?.clone()),
        Method::Fnl { .. } | Method::Sfo { .. } => with_bn(compose_kernel(node, c, w)?),
        Method::Repvgg => {
            let dense = get(w, &format!("{node}.rbr_dense.conv.weight"))?;
            let (mut k, mut b) = fold_bn(
                dense,
                None,
                &Bn::from_weights(w, &format!("{node}.rbr_dense.bn"), eps)?,
            );
            if !s.is_1x1() {
                let w1 = get(w, &format!("{node}.rbr_1x1.conv.weight"))?;
                let (k1, b1) = fold_bn(
                    w1,
                    None,
                    &Bn::from_weights(w, &format!("{node}.rbr_1x1.bn"), eps)?,
                );
                add_into(&mut k, &pad_1x1(&k1, s.kernel));
                b.iter_mut().zip(b1).for_each(|(a, x)| *a = *a + x);
            }
            if has_identity(s) {
                let (k0, b0) = fold_bn(
                    &identity_kernel(s),
                    None,
                    &Bn::from_weights(w, &format!("{node}.rbr_identity"), eps)?,
                );
                add_into(&mut k, &k0);
                b.iter_mut().zip(b0).for_each(|(a, x)| *a = *a + x);
            }
            Ok((k, b))
        }
        Method::Qarepvgg => {
            let dense = get(w, &format!("{node}.rbr_dense.conv.weight"))?;
            let (mut k, b) = fold_bn(
                dense,
                None,
                &Bn::from_weights(w, &format!("{node}.rbr_dense.bn"), eps)?,
            );
            // The 1×1 and identity branches are summed first: an expansion that starts the
            // 1×1 at −identity (`crate::expand`) then cancels to exactly zero.
            let mut branches = if !s.is_1x1() {
                Some(pad_1x1(
                    get(w, &format!("{node}.rbr_1x1.weight"))?,
                    s.kernel,
                ))
            } else {
                None
            };
            if has_identity(s) {
                match &mut branches {
                    Some(b) => add_into(b, &identity_kernel(s)),
                    None => branches = Some(identity_kernel(s)),
                }
            }
            if let Some(b) = branches {
                add_into(&mut k, &b);
            }
            Ok(fold_bn(
                &k,
                Some(&b),
                &Bn::from_weights(w, &format!("{node}.bn"), eps)?,
            ))
        }
    }
}

/// The deploy graph of a train graph: the same nodes, every conv plain with bias.
pub fn deploy_spec(spec: &TrainSpec) -> Result<DeploySpec> {
    spec.validate()?;
    let deploy = spec.try_map_convs(|c| {
        Ok(DeployConv {
            shape: ConvShape {
                bias: true,
                ..c.shape.clone()
            },
        })
    })?;
    deploy.validate()?;
    Ok(deploy)
}

/// Folds a train-time graph into the plain deploy graph. Weights are checked against the
/// layout first, so a missing or misshapen tensor is reported by name.
pub fn fold<F: Real>(spec: &TrainSpec, w: &Weights<F>) -> Result<(DeploySpec, Weights<F>)> {
    let deploy = deploy_spec(spec)?;
    crate::checkpoint::check_against_layout(&train_layout(spec)?, w)?;
    let shapes = spec.infer_shapes()?;
    let mut out_w = Weights::new();
    for n in &spec.nodes {
        match &n.op {
            Op::Conv(c) => {
                let p = n.prefix();
                let (k, b) = fold_conv(p, c, w)?;
                out_w.insert(format!("{p}.weight"), k);
                out_w.insert(format!("{p}.bias"), Tensor::new(vec![b.len()], b));
            }
            // Every other op's tensors are the same at both stages.
            _ => {
                for p in crate::layout::train_node_params(n, &shapes) {
                    out_w.insert(p.name.clone(), get(w, &p.name)?.clone());
                }
            }
        }
    }
    Ok((deploy, out_w))
}

/// A deploy graph as a train graph of plain convs with bias and no BN: the same function, so
/// a deploy checkpoint runs wherever a train spec does (the tch model, the executor).
pub fn as_train_spec(deploy: &DeploySpec) -> Result<TrainSpec> {
    deploy.try_map_convs(|c| Ok(TrainConv::new(c.shape.clone(), None, Method::Plain)))
}

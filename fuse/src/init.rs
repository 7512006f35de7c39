//! Initialisation of train-time weights, including the exact spectral inits of FNL and SFO.
//!
//! Every conv first draws its *plain* kernel `W0` from a stream derived from the seed and the
//! node name, so the same seed gives the same `W0` whatever the method; FNL and SFO then
//! factorise `W0` exactly, so at step 0 every method computes the plain network's function
//! (RepVGG-style methods draw their branches independently, as the reference code does).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::fold::Weights;
use crate::layout::{ParamKind, factor_names, train_layout};
use crate::linalg::{Mat, svd};
use crate::method::Method;
use crate::spec::{ConvShape, Op, TrainConv, TrainSpec};
use crate::tensor::{RandomTensor, Rng, Tensor};

/// Relative size of the noise in the extra SFO directions (d > rank). Small, but never zero:
/// zero-padded extra rows/columns receive exactly zero gradient forever (methods.md §5.1).
pub const SFO_EXTRA_NOISE: f64 = 1e-3;
/// FNL keeps M = I, so its extra term is the product of two noisy factors: ε² ≈ 1e-8.
pub const FNL_EXTRA_NOISE: f64 = 1e-4;

#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub seed: u64,
    /// Draw random BN statistics and affine parameters instead of (γ=1, β=0, μ=0, σ²=1).
    /// Fresh networks hide BN-folding bugs; this exposes them (RepVGG `tools/verify.py`).
    pub random_bn: bool,
}

/// torchvision's ResNet conv init: kaiming normal, fan_out, ReLU gain: std = √(2 / (O·k²)).
pub fn plain_kernel(node: &str, s: &ConvShape, seed: u64) -> Tensor<f64> {
    let std = (2.0 / (s.out_channels * s.taps()) as f64).sqrt();
    Rng::derive(seed, &format!("{node}.kernel")).normal_tensor(&s.weight_shape(), std)
}

/// Weights of a train spec: `W0` per conv, factorised where the method asks.
pub fn init_train_weights(spec: &TrainSpec, opts: &InitOptions) -> Result<Weights<f32>> {
    spec.validate()?;
    let layout = train_layout(spec)?;
    let mut w64 = factorise_all(
        spec,
        |node, c| Ok(plain_kernel(node, &c.shape, opts.seed)),
        opts.seed,
    )?;
    for n in &spec.nodes {
        let Op::Conv(c) = &n.op else { continue };
        let (s, p) = (&c.shape, n.prefix());
        match &c.method {
            Method::Plain => {
                w64.insert(format!("{p}.weight"), plain_kernel(p, s, opts.seed));
            }
            Method::Repvgg | Method::Qarepvgg => {
                let one = if matches!(c.method, Method::Repvgg) {
                    format!("{p}.rbr_1x1.conv.weight")
                } else {
                    format!("{p}.rbr_1x1.weight")
                };
                let s1 = crate::exec::one_by_one(s);
                w64.insert(one, plain_kernel(&format!("{p}.rbr_1x1"), &s1, opts.seed));
                w64.insert(
                    format!("{p}.rbr_dense.conv.weight"),
                    plain_kernel(p, s, opts.seed),
                );
            }
            Method::Fnl { .. } | Method::Sfo { .. } => {}
        }
    }
    let mut out = Weights::new();
    for p in &layout {
        let t = match w64.remove(&p.name) {
            Some(t) => t.cast::<f32>(),
            None => default_param(&p.name, &p.shape, p.kind, spec, opts)?,
        };
        debug_assert_eq!(t.shape, p.shape, "{}", p.name);
        out.insert(p.name.clone(), t);
    }
    Ok(out)
}

fn default_param(
    name: &str,
    shape: &[usize],
    kind: ParamKind,
    spec: &TrainSpec,
    opts: &InitOptions,
) -> Result<Tensor<f32>> {
    let mut rng = Rng::derive(opts.seed, name);
    let rb = opts.random_bn;
    Ok(match kind {
        ParamKind::BnWeight if rb => rng.uniform_tensor(shape, 0.5, 1.5),
        ParamKind::BnBias | ParamKind::BnMean if rb => rng.normal_tensor(shape, 0.1),
        ParamKind::BnVar if rb => rng.uniform_tensor(shape, 0.5, 2.0),
        ParamKind::BnWeight | ParamKind::BnVar => Tensor::full(shape, 1.0),
        ParamKind::BnBias | ParamKind::BnMean | ParamKind::BnCount => Tensor::zeros(shape),
        // PyTorch's default for Linear and for conv biases: U(±1/√fan_in).
        ParamKind::LinearWeight | ParamKind::Bias | ParamKind::TransposedWeight => {
            let fan_in = fan_in_of(name, spec).unwrap_or(shape.get(1).copied().unwrap_or(1));
            let b = 1.0 / (fan_in.max(1) as f64).sqrt();
            rng.uniform_tensor(shape, -b, b)
        }
        ParamKind::ConvWeight
        | ParamKind::FactorU
        | ParamKind::FactorM
        | ParamKind::FactorV
        | ParamKind::Constant => {
            return Err(Error::weights(name, "no initialiser produced this tensor"));
        }
    })
}

/// Fan-in of the layer that owns a bias or linear weight.
fn fan_in_of(tensor: &str, spec: &TrainSpec) -> Option<usize> {
    let prefix = tensor.rsplit_once('.')?.0;
    match &spec.nodes.iter().find(|n| n.prefix() == prefix)?.op {
        Op::Conv(c) => Some(c.shape.fan_in()),
        Op::Linear(l) => Some(l.in_features),
        Op::ConvTranspose(t) => Some(t.in_channels / t.groups * t.kernel[0] * t.kernel[1]),
        _ => None,
    }
}

pub(crate) fn noise(rng: &mut Rng, rows: usize, cols: usize, std: f64) -> Mat {
    Mat::new(
        rows,
        cols,
        (0..rows * cols).map(|_| rng.normal() * std).collect(),
    )
}

/// Embeds core factors `P (m×a)`, `A (a×b)`, `Q (b×n)` into `U (m×d)`, `M (d×d)`, `V (d×n)`
/// with `U = [P | εN]`, `M = [[A, 0], [0, εN]]`, `V = [Q ; εN]`, so `U·M·V = P·A·Q + O(ε³)`.
/// The noise of U and V comes from the given streams, so shared factors match across tasks.
fn embed3(p: &Mat, a: &Mat, q: &Mat, d: usize, rngs: [&mut Rng; 3]) -> (Mat, Mat, Mat) {
    let [ru, rm, rv] = rngs;
    let (m, n) = (p.rows, q.cols);
    assert!(p.cols <= d && q.rows <= d, "core rank exceeds d");
    let mut u = noise(ru, m, d, SFO_EXTRA_NOISE * p.rms());
    let mut mm = noise(rm, d, d, SFO_EXTRA_NOISE * a.rms());
    let mut v = noise(rv, d, n, SFO_EXTRA_NOISE * q.rms());
    u.put(p);
    v.put(q);
    // M = [[A, 0], [0, εN]]: zero the off-diagonal blocks, keep noise in the extra block.
    mm.put(&Mat::zeros(d, a.cols));
    mm.put(&Mat::zeros(a.rows, d));
    mm.put(a);
    (u, mm, v)
}

/// A kernel group's matrix view `[O/g, I/g·kh·kw]` (SFO) as a Mat.
pub(crate) fn sfo_view(w: &Tensor<f64>, s: &ConvShape, g: usize) -> Mat {
    let o = s.out_channels / s.groups;
    let n = w.numel() / s.out_channels;
    Mat::new(o, n, w.data[g * o * n..(g + 1) * o * n].to_vec())
}

/// The FNL view Ŵ[(o,u),(i,v)] = W[o,i,u,v] of one group.
pub(crate) fn fnl_view(w: &Tensor<f64>, s: &ConvShape, g: usize) -> Mat {
    let (o, i) = (s.out_channels / s.groups, s.in_channels / s.groups);
    let [kh, kw] = s.kernel;
    let mut m = Mat::zeros(o * kh, i * kw);
    for oo in 0..o {
        for ii in 0..i {
            for u in 0..kh {
                for v in 0..kw {
                    let src = (((g * o + oo) * i + ii) * kh + u) * kw + v;
                    m.set(oo * kh + u, ii * kw + v, w.data[src]);
                }
            }
        }
    }
    m
}

fn push_group(dst: &mut Vec<f64>, m: &Mat) {
    dst.extend_from_slice(&m.data);
}

/// Factors of every FNL/SFO conv of a spec, from each conv's plain kernel `kernel_of(node,
/// conv)`: unshared convs one by one, SFO share groups together.
pub fn factorise_all(
    spec: &TrainSpec,
    kernel_of: impl Fn(&str, &TrainConv) -> Result<Tensor<f64>>,
    seed: u64,
) -> Result<Weights<f64>> {
    let mut out = Weights::new();
    type Member<'a> = (&'a str, &'a TrainConv, Tensor<f64>);
    let mut groups: BTreeMap<&str, Vec<Member>> = BTreeMap::new();
    for n in &spec.nodes {
        let Op::Conv(c) = &n.op else { continue };
        let p = n.prefix();
        match &c.method {
            Method::Fnl { .. } | Method::Sfo { share: None, .. } => {
                let k = kernel_of(p, c)?;
                out.extend(factorise(&[(p, c, &k)], seed)?);
            }
            Method::Sfo {
                share: Some(sh), ..
            } => {
                groups
                    .entry(&sh.group)
                    .or_default()
                    .push((p, c, kernel_of(p, c)?));
            }
            _ => {}
        }
    }
    for members in groups.values() {
        let args: Vec<(&str, &TrainConv, &Tensor<f64>)> =
            members.iter().map(|(n, c, k)| (*n, *c, k)).collect();
        out.extend(factorise(&args, seed)?);
    }
    Ok(out)
}

/// Exact factorisation of plain kernels into a conv's FNL or SFO factors: the spectral init
/// (from `W0`) and the R3 warm-start expansion (from trained kernels) are this one function.
/// `convs` is one unshared conv, or every member of one SFO share group.
pub fn factorise(convs: &[(&str, &TrainConv, &Tensor<f64>)], seed: u64) -> Result<Weights<f64>> {
    let mut out = Weights::new();
    let (node, c, w0) = convs[0];
    let s = &c.shape;
    match &c.method {
        Method::Fnl { rank } => {
            let (mut ud, mut md, mut vd) = (vec![], vec![], vec![]);
            let mut rng = Rng::derive(seed, &format!("{node}.fnl_extra"));
            for g in 0..s.groups {
                // SI (Khodak et al.): U = P Σ^½, Vᵀ = Σ^½ Qᵀ, M = I; extras get small noise.
                let (p, sv, qt) = svd(&fnl_view(w0, s, g));
                let half: Vec<f64> = sv.iter().map(|x| x.sqrt()).collect();
                let (pu, qv) = (p.scale_cols(&half), qt.t().scale_cols(&half));
                let mut u = noise(&mut rng, pu.rows, *rank, FNL_EXTRA_NOISE * pu.rms());
                let mut v = noise(&mut rng, qv.rows, *rank, FNL_EXTRA_NOISE * qv.rms());
                u.put(&pu);
                v.put(&qv);
                push_group(&mut ud, &u);
                push_group(&mut md, &Mat::diag(&vec![1.0; *rank]));
                push_group(&mut vd, &v);
            }
            let (su, sm, sv) = crate::layout::fnl_shapes(s, *rank);
            out.insert(format!("{node}.U"), Tensor::new(su, ud));
            out.insert(format!("{node}.M"), Tensor::new(sm, md));
            out.insert(format!("{node}.V"), Tensor::new(sv, vd));
        }
        Method::Sfo { rank, share: None } => {
            let (mut ud, mut md, mut vd) = (vec![], vec![], vec![]);
            let mut ru = Rng::derive(seed, &format!("{node}.U.extra"));
            let mut rm = Rng::derive(seed, &format!("{node}.M.extra"));
            let mut rv = Rng::derive(seed, &format!("{node}.V.extra"));
            for g in 0..s.groups {
                // Balanced depth-3 init: U = PΣ^⅓, M = Σ^⅓, V = Σ^⅓Qᵀ (methods.md §5.1).
                let (p, sv, qt) = svd(&sfo_view(w0, s, g));
                let third: Vec<f64> = sv.iter().map(|x| x.cbrt()).collect();
                let (u, m, v) = embed3(
                    &p.scale_cols(&third),
                    &Mat::diag(&third),
                    &qt.scale_rows(&third),
                    *rank,
                    [&mut ru, &mut rm, &mut rv],
                );
                push_group(&mut ud, &u);
                push_group(&mut md, &m);
                push_group(&mut vd, &v);
            }
            let (su, sm, sv) = crate::layout::sfo_shapes(s, *rank);
            out.insert(format!("{node}.U"), Tensor::new(su, ud));
            out.insert(format!("{node}.M"), Tensor::new(sm, md));
            out.insert(format!("{node}.V"), Tensor::new(sv, vd));
        }
        Method::Sfo {
            rank,
            share: Some(sh),
        } => factorise_shared(convs, *rank, sh.share_u, &sh.group, seed, &mut out)?,
        _ => {
            return Err(Error::weights(
                node,
                format!("method {} has no factors", c.method.name()),
            ));
        }
    }
    Ok(out)
}

/// Shared heads (methods.md §5.3 R3(b)): `V_h` = right singular vectors of `[W₁;…;W_T]`;
/// with `share_u`, `U_h` = left singular vectors of `[W₁|…|W_T]` and `M_t = U_hᵀ W_t V_hᵀ`;
/// otherwise each task splits `W_t V_hᵀ = U_t M_t` by its own SVD. Exact when d spans both.
fn factorise_shared(
    convs: &[(&str, &TrainConv, &Tensor<f64>)],
    d: usize,
    share_u: bool,
    group: &str,
    seed: u64,
    out: &mut Weights<f64>,
) -> Result<()> {
    let mats: Vec<Mat> = convs
        .iter()
        .map(|(_, c, w)| sfo_view(w, &c.shape, 0))
        .collect();
    let refs: Vec<&Mat> = mats.iter().collect();
    let (_, sv_all, qt) = svd(&Mat::vstack(&refs));
    let rho_v = sv_all.iter().filter(|&&x| x > 1e-12 * sv_all[0]).count();
    if rho_v > d {
        return Err(Error::weights(
            format!("{group}.V"),
            format!("shared rank {d} < {rho_v}, the rank of the stacked head kernels"),
        ));
    }
    let q = Mat::new(rho_v, qt.cols, qt.data[..rho_v * qt.cols].to_vec());
    // Balance the scale across the three factors: α ≈ (typical singular value)^⅓.
    let alpha = (sv_all[..rho_v].iter().sum::<f64>() / rho_v as f64).cbrt();
    let rv = Rng::derive(seed, &format!("{group}.V.extra"));
    let ru_shared = Rng::derive(seed, &format!("{group}.U.extra"));
    let p_shared = if share_u {
        let (p, _, _) = svd(&Mat::hstack(&refs));
        Some(p)
    } else {
        None
    };
    for ((node, c, _), wm) in convs.iter().zip(&mats) {
        let (un, mn, vn) = factor_names(node, &c.method);
        let mut rm = Rng::derive(seed, &format!("{mn}.extra"));
        let wq = wm.matmul(&q.t()); // W_t V_hᵀ (before scaling), O_t × ρ_v
        let (pcore, acore) = if let Some(p) = &p_shared {
            (
                p.scaled(alpha),
                p.t().matmul(&wq).scaled(1.0 / (alpha * alpha)),
            )
        } else {
            let (p, s, rt) = svd(&wq);
            let h: Vec<f64> = s.iter().map(|x| (x / alpha).sqrt()).collect();
            (p.scale_cols(&h), rt.scale_rows(&h))
        };
        if pcore.cols > d {
            return Err(Error::weights(
                un,
                format!(
                    "shared rank {d} < {}, the output rank of the head",
                    pcore.cols
                ),
            ));
        }
        let mut ru_own = Rng::derive(seed, &format!("{un}.extra"));
        let ru = if share_u {
            &mut ru_shared.clone()
        } else {
            &mut ru_own
        };
        let (u, m, v) = embed3(
            &pcore,
            &acore,
            &q.scaled(alpha),
            d,
            [ru, &mut rm, &mut rv.clone()],
        );
        let o = c.shape.out_channels;
        let n = wm.cols;
        out.insert(un, Tensor::new(vec![o, d], u.data));
        out.insert(mn, Tensor::new(vec![d, d], m.data));
        out.insert(vn, Tensor::new(vec![d, n], v.data));
    }
    Ok(())
}

/// Every tensor of a layout drawn at random (BN variances positive, counters zero): a stand-in
/// for a trained network, used to check folds far from the init's special structure.
pub fn random_weights<F: crate::tensor::Real>(
    layout: &[crate::layout::ParamSpec],
    seed: u64,
) -> Weights<F> {
    layout
        .iter()
        .map(|p| {
            let mut rng = Rng::derive(seed, &p.name);
            let t = match p.kind {
                ParamKind::BnVar => rng.uniform_tensor(&p.shape, 0.1, 2.0),
                ParamKind::BnWeight => rng.uniform_tensor(&p.shape, 0.3, 2.0),
                ParamKind::BnCount => Tensor::zeros(&p.shape),
                ParamKind::FactorU | ParamKind::FactorM | ParamKind::FactorV => {
                    // Keep the composed kernel O(1) whatever the inner dimension.
                    let inner = *p.shape.last().unwrap_or(&1) as f64;
                    rng.normal_tensor(&p.shape, 1.0 / inner.sqrt().max(1.0))
                }
                _ => rng.normal_tensor(&p.shape, 0.5),
            };
            (p.name.clone(), t)
        })
        .collect()
}

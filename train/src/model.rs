//! A tch model built from a [`TrainSpec`]: tensors created exactly from the fuse layout.

use std::collections::HashMap;

use overparam_fuse::layout::{ParamKind, train_layout};
use overparam_fuse::method::{Method, has_identity};
use overparam_fuse::ops::{
    AvgPool, Backend, BinaryKind, ConvBackend, ConvTranspose, NodeCx, Resize, ResizeMode, Unary,
    Window,
};
use overparam_fuse::spec::{ActShape, ConvShape, TrainConv, TrainSpec};
use overparam_fuse::{Tensor as FTensor, Weights};
use tch::{Kind, Tensor, nn};

use crate::error::{Error, Result};

/// Whether fp32 convolutions on CUDA may run in TF32 (`run.tf32`, default on, as PyTorch's
/// `torch.backends.cudnn.allow_tf32`). Process-wide like libtorch's own switch; set by the
/// trainers from the config before the first forward. Linear layers (cuBLAS) stay in fp32,
/// libtorch's default. No effect on the CPU.
static ALLOW_TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_allow_tf32(on: bool) {
    ALLOW_TF32.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn allow_tf32() -> bool {
    ALLOW_TF32.load(std::sync::atomic::Ordering::Relaxed)
}

/// PyTorch's BatchNorm2d momentum.
const BN_MOMENTUM: f64 = 0.1;

/// The overparameterised network as tch tensors, with the spec that describes it.
#[derive(Debug)]
pub struct OpModel {
    spec: TrainSpec,
    /// Per-image activation shapes of every node (the spec is static).
    shapes: HashMap<String, ActShape>,
    /// Every layout tensor by its PyTorch name (shared tensors appear once).
    vars: HashMap<String, Tensor>,
    kinds: HashMap<String, ParamKind>,
    /// Quantisation-aware training: every conv runs its folded kernel, fake-quantised where
    /// the plan quantises it ([`crate::qat`]).
    qat: Option<crate::qat::Qat>,
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// Creates `a.b.c` as variable `c` under sub-path `a/b` (tch joins path segments with '.',
/// and refuses dots inside a variable name).
fn create(root: &nn::Path, name: &str, shape: &[usize], trainable: bool) -> Result<Tensor> {
    let mut path = root.clone();
    let mut parts: Vec<&str> = name.split('.').collect();
    let leaf = parts.pop().expect("non-empty name");
    for p in parts {
        path = path.sub(p);
    }
    let d = dims(shape);
    Ok(if trainable {
        path.f_var(leaf, &d, nn::Init::Const(0.0))?
    } else {
        path.f_zeros_no_train(leaf, &d)?
    })
}

impl OpModel {
    /// Creates every tensor of the spec's layout under `root` and copies `init` into them.
    pub fn new(root: &nn::Path, spec: &TrainSpec, init: &Weights<f32>) -> Result<Self> {
        let layout = train_layout(spec)?;
        overparam_fuse::checkpoint::check_against_layout(&layout, init)?;
        let mut vars = HashMap::new();
        let mut kinds = HashMap::new();
        for p in &layout {
            let mut t = create(root, &p.name, &p.shape, !p.kind.is_buffer())?;
            let src = &init[&p.name];
            let value = Tensor::f_from_slice(&src.data)?
                .f_reshape(dims(&src.shape))?
                .f_to_device(t.device())?;
            tch::no_grad(|| t.f_copy_(&value))?;
            vars.insert(p.name.clone(), t);
            kinds.insert(p.name.clone(), p.kind);
        }
        Ok(Self {
            shapes: spec.infer_shapes()?,
            spec: spec.clone(),
            vars,
            kinds,
            qat: None,
        })
    }

    /// Turns QAT on (`Some`) or off. With QAT on, every BatchNorm is frozen at its running
    /// statistics, in training too.
    pub fn set_qat(&mut self, qat: Option<crate::qat::Qat>) {
        self.qat = qat;
    }

    pub fn qat(&self) -> Option<&crate::qat::Qat> {
        self.qat.as_ref()
    }

    pub fn spec(&self) -> &TrainSpec {
        &self.spec
    }

    pub fn var(&self, name: &str) -> Result<&Tensor> {
        self.vars
            .get(name)
            .ok_or_else(|| Error::Model(format!("no tensor `{name}` in the model")))
    }

    pub fn kind(&self, name: &str) -> Option<ParamKind> {
        self.kinds.get(name).copied()
    }

    /// Names of every tensor, as the fuse layout declares them.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// Copies every tensor back to fuse weights (for checkpoints and folding).
    pub fn weights(&self) -> Result<Weights<f32>> {
        let mut out = Weights::new();
        for (name, t) in &self.vars {
            let t = t
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_to_device(tch::Device::Cpu)?;
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let data = Vec::<f32>::try_from(&t.f_flatten(0, -1)?)?;
            out.insert(name.clone(), FTensor::new(shape, data));
        }
        Ok(out)
    }

    /// Runs the network; `train` selects batch statistics (and running-stat updates) for BN.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.run(x, train, None)
    }

    /// Training forward that also returns Σ‖W‖²_F over the composed kernels of factorised
    /// convs (for Frobenius decay, Khodak et al.), reusing the kernels the forward composed.
    pub fn forward_with_frobenius(&self, x: &Tensor) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        let mut kernels = Vec::new();
        let ys = self.run(x, true, Some(&mut kernels))?;
        let mut sum: Option<Tensor> = None;
        for k in kernels {
            let sq = k.f_square()?.f_sum(Kind::Float)?;
            sum = Some(match sum {
                Some(s) => s.f_add(&sq)?,
                None => sq,
            });
        }
        Ok((ys, sum))
    }

    fn run(
        &self,
        x: &Tensor,
        train: bool,
        kernels: Option<&mut Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        let mut b = Tch {
            model: self,
            train,
            kernels,
        };
        let acts =
            overparam_fuse::ops::run_graph(&self.spec, &self.shapes, &mut b, x.shallow_clone())?;
        self.spec
            .outputs
            .iter()
            .map(|o| Ok(acts[o.node.as_str()].shallow_clone()))
            .collect()
    }

    fn bn(&self, prefix: &str, x: &Tensor, eps: f64, train: bool) -> Result<Tensor> {
        let v = |s: &str| self.var(&format!("{prefix}.{s}"));
        let y = Tensor::f_batch_norm(
            x,
            Some(v("weight")?),
            Some(v("bias")?),
            Some(v("running_mean")?),
            Some(v("running_var")?),
            train,
            BN_MOMENTUM,
            eps,
            false,
        )?;
        if train {
            let count = v("num_batches_tracked")?;
            let mut count = count.shallow_clone();
            let _ = tch::no_grad(|| count.f_add_scalar_(1.0))?;
        }
        Ok(y)
    }

    /// A conv with any geometry: asymmetric pads (which libtorch's conv does not take) are
    /// applied as an explicit zero pad first.
    fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: &ConvShape) -> Result<Tensor> {
        let [t, l, bo, r] = s.padding;
        let (x, padding) = if t == bo && l == r {
            (x.shallow_clone(), [t as i64, l as i64])
        } else {
            (
                x.f_constant_pad_nd([l as i64, r as i64, t as i64, bo as i64])?,
                [0, 0],
            )
        };
        let stride = s.stride.map(|v| v as i64);
        let dilation = s.dilation.map(|v| v as i64);
        if x.device().is_cuda() {
            // `_convolution` is what conv2d dispatches to; called directly it takes TF32 as an
            // argument instead of libtorch's global cuDNN switch, which tch does not expose.
            return Ok(x.f_internal_convolution(
                w,
                b,
                stride,
                padding,
                dilation,
                false,
                [0, 0],
                s.groups as i64,
                false,
                false,
                tch::Cuda::user_enabled_cudnn(),
                allow_tf32(),
            )?);
        }
        Ok(x.f_conv2d(w, b, stride, padding, dilation, s.groups as i64)?)
    }

    /// The kernel a factorised conv computes, composed in kernel space (one conv follows).
    pub fn composed_kernel(&self, node: &str, c: &TrainConv) -> Result<Tensor> {
        let (un, mn, vn) = overparam_fuse::layout::factor_names(node, &c.method);
        let (u, m, v) = (self.var(&un)?, self.var(&mn)?, self.var(&vn)?);
        let s = &c.shape;
        let g = s.groups as i64;
        let (kh, kw) = (s.kernel[0] as i64, s.kernel[1] as i64);
        let (o, i) = (s.out_channels as i64 / g, s.in_channels as i64 / g);
        let um = u.f_matmul(m)?;
        Ok(match &c.method {
            // Ŵ = (U·M)·Vᵀ on rows (o,u) × columns (i,v), back to [O, I, kh, kw].
            Method::Fnl { .. } => um
                .f_matmul(&v.f_transpose(-1, -2)?)?
                .f_reshape([g, o, kh, i, kw])?
                .f_permute([0, 1, 3, 2, 4])?
                .f_reshape([g * o, i, kh, kw])?,
            // W = (U·M)·V on the O × (I·kh·kw) view.
            Method::Sfo { .. } => um.f_matmul(v)?.f_reshape([g * o, i, kh, kw])?,
            _ => return Err(Error::Model(format!("`{node}` is not factorised"))),
        })
    }

    /// Eval-mode BN as a per-channel scale and shift on the conv before it, from the running
    /// statistics (`t = γ/√(σ²+ε)`, `b* = β + t·(b − μ)`, methods.md §1.1): differentiable in
    /// γ, β and the kernel; the statistics stay as they are.
    fn fold_bn(
        &self,
        prefix: &str,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        let v = |s: &str| self.var(&format!("{prefix}.{s}"));
        let t = v("weight")?.f_div(&v("running_var")?.f_add_scalar(eps)?.f_sqrt()?)?;
        let o = w.size()[0];
        let k = w.f_mul(&t.f_reshape([o, 1, 1, 1])?)?;
        let centred = match b {
            Some(b) => b.f_sub(v("running_mean")?)?,
            None => v("running_mean")?.f_neg()?,
        };
        Ok((k, v("bias")?.f_add(&t.f_mul(&centred)?)?))
    }

    /// The deploy kernel and bias of one conv, composed differentiably from the method's
    /// parameters: `fuse::fold::fold_conv` in tch, branch for branch.
    fn deploy_kernel(
        &self,
        node: &str,
        c: &TrainConv,
        kernels: Option<&mut Vec<Tensor>>,
    ) -> Result<(Tensor, Tensor)> {
        let s = &c.shape;
        let eps = c.bn.as_ref().map_or(1e-5, |b| b.eps);
        let var = |n: String| self.var(&n);
        let with_bn = |k: Tensor| -> Result<(Tensor, Tensor)> {
            let bias = if s.bias {
                Some(var(format!("{node}.bias"))?)
            } else {
                None
            };
            match &c.bn {
                Some(bn) => self.fold_bn(&bn.name, &k, bias, bn.eps),
                None => {
                    let b = match bias {
                        Some(b) => b.shallow_clone(),
                        None => {
                            Tensor::f_zeros([s.out_channels as i64], (Kind::Float, k.device()))?
                        }
                    };
                    Ok((k, b))
                }
            }
        };
        let [kh, kw] = s.kernel.map(|v| v as i64);
        // A centred 1×1 kernel padded to kh×kw (`fuse::fold::pad_1x1`).
        let pad =
            |w: &Tensor| w.f_constant_pad_nd([kw / 2, kw - 1 - kw / 2, kh / 2, kh - 1 - kh / 2]);
        let identity = || -> Result<Tensor> {
            let id = overparam_fuse::fold::identity_kernel::<f32>(s);
            let device = self.var(&format!("{node}.rbr_dense.conv.weight"))?.device();
            Ok(Tensor::f_from_slice(&id.data)?
                .f_reshape(dims(&id.shape))?
                .f_to_device(device)?)
        };
        let dense = || {
            self.fold_bn(
                &format!("{node}.rbr_dense.bn"),
                var(format!("{node}.rbr_dense.conv.weight"))?,
                None,
                eps,
            )
        };
        match &c.method {
            Method::Plain => with_bn(var(format!("{node}.weight"))?.shallow_clone()),
            Method::Fnl { .. } | Method::Sfo { .. } => {
                let w = self.composed_kernel(node, c)?;
                if let Some(k) = kernels {
                    k.push(w.shallow_clone());
                }
                with_bn(w)
            }
            Method::Repvgg => {
                let (mut k, mut b) = dense()?;
                if !s.is_1x1() {
                    let (k1, b1) = self.fold_bn(
                        &format!("{node}.rbr_1x1.bn"),
                        var(format!("{node}.rbr_1x1.conv.weight"))?,
                        None,
                        eps,
                    )?;
                    k = k.f_add(&pad(&k1)?)?;
                    b = b.f_add(&b1)?;
                }
                if has_identity(s) {
                    let (k0, b0) =
                        self.fold_bn(&format!("{node}.rbr_identity"), &identity()?, None, eps)?;
                    k = k.f_add(&k0)?;
                    b = b.f_add(&b0)?;
                }
                Ok((k, b))
            }
            Method::Qarepvgg => {
                let (k, b) = dense()?;
                // The 1×1 and identity branches summed first, as fold_conv does.
                let mut branches = if !s.is_1x1() {
                    Some(pad(var(format!("{node}.rbr_1x1.weight"))?)?)
                } else {
                    None
                };
                if has_identity(s) {
                    let id = identity()?;
                    branches = Some(match branches {
                        Some(b) => b.f_add(&id)?,
                        None => id,
                    });
                }
                let k = match branches {
                    Some(br) => k.f_add(&br)?,
                    None => k,
                };
                self.fold_bn(&format!("{node}.bn"), &k, Some(&b), eps)
            }
        }
    }

    /// A conv under QAT: the deploy kernel, fake-quantised with its input (and, in the CPU
    /// encoding, its output) where the plan quantises the layer, as the INT8 export computes.
    fn qat_conv(
        &self,
        qat: &crate::qat::Qat,
        cx: &NodeCx,
        c: &TrainConv,
        x: &Tensor,
        kernels: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let (w, b) = self.deploy_kernel(cx.prefix, c, kernels)?;
        if !qat.quantises(cx.name) {
            return Self::conv2d(x, &w, Some(&b), &c.shape);
        }
        let x = qat.activation(x, &cx.inputs[0])?;
        let y = Self::conv2d(&x, &qat.weight(&w)?, Some(&b), &c.shape)?;
        if qat.quantises_output(cx.name) {
            return qat.activation(&y, cx.name);
        }
        Ok(y)
    }

    fn conv(
        &self,
        node: &str,
        c: &TrainConv,
        x: &Tensor,
        train: bool,
        kernels: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let s = &c.shape;
        let eps = c.bn.as_ref().map_or(1e-5, |b| b.eps);
        // BatchNorms an expansion inserted run on their running statistics in training too.
        let train = train && !c.bn.as_ref().is_some_and(|b| b.frozen);
        let conv_bn = |w: &Tensor| -> Result<Tensor> {
            let bias = if s.bias {
                Some(self.var(&format!("{node}.bias"))?)
            } else {
                None
            };
            let y = Self::conv2d(x, w, bias, s)?;
            match &c.bn {
                Some(bn) => self.bn(&bn.name, &y, bn.eps, train),
                None => Ok(y),
            }
        };
        let one_by_one = overparam_fuse::exec::one_by_one(s);
        // RepVGG and QARepVGG share the k×k branch with its BN.
        let dense_bn = || -> Result<Tensor> {
            let w = self.var(&format!("{node}.rbr_dense.conv.weight"))?;
            self.bn(
                &format!("{node}.rbr_dense.bn"),
                &Self::conv2d(x, w, None, s)?,
                eps,
                train,
            )
        };
        match &c.method {
            Method::Plain => conv_bn(self.var(&format!("{node}.weight"))?),
            Method::Fnl { .. } | Method::Sfo { .. } => {
                let w = self.composed_kernel(node, c)?;
                if let Some(k) = kernels {
                    k.push(w.shallow_clone());
                }
                conv_bn(&w)
            }
            Method::Repvgg => {
                let mut y = dense_bn()?;
                if !s.is_1x1() {
                    let b1 = Self::conv2d(
                        x,
                        self.var(&format!("{node}.rbr_1x1.conv.weight"))?,
                        None,
                        &one_by_one,
                    )?;
                    y = y.f_add(&self.bn(&format!("{node}.rbr_1x1.bn"), &b1, eps, train)?)?;
                }
                if has_identity(s) {
                    y = y.f_add(&self.bn(&format!("{node}.rbr_identity"), x, eps, train)?)?;
                }
                Ok(y)
            }
            Method::Qarepvgg => {
                let mut y = dense_bn()?;
                if !s.is_1x1() {
                    y = y.f_add(&Self::conv2d(
                        x,
                        self.var(&format!("{node}.rbr_1x1.weight"))?,
                        None,
                        &one_by_one,
                    )?)?;
                }
                if has_identity(s) {
                    y = y.f_add(x)?;
                }
                self.bn(&format!("{node}.bn"), &y, eps, train)
            }
        }
    }
}

/// The libtorch [`Backend`]: the training forward of every op.
struct Tch<'m, 'k> {
    model: &'m OpModel,
    train: bool,
    kernels: Option<&'k mut Vec<Tensor>>,
}

/// Pads `[top, left, bottom, right]` as libtorch's `(left, right, top, bottom)`.
fn torch_pads(p: [usize; 4]) -> [i64; 4] {
    [p[1] as i64, p[3] as i64, p[0] as i64, p[2] as i64]
}

/// Whether libtorch's pools take these pads directly: symmetric, and at most half the
/// (dilated) window, as `max_pool2d`/`avg_pool2d` require.
fn native_pool_pads(w: &Window) -> bool {
    let half = |a: usize| (w.dilation[a] * (w.kernel[a] - 1)).div_ceil(2);
    w.symmetric() && w.padding[0] <= half(0) && w.padding[1] <= half(1)
}

impl Backend for Tch<'_, '_> {
    type T = Tensor;
    type Error = Error;

    fn param(&mut self, cx: &NodeCx, leaf: &str) -> Result<Tensor> {
        Ok(self.model.var(&cx.param(leaf))?.shallow_clone())
    }
    fn unary(&mut self, _cx: &NodeCx, x: &Tensor, f: Unary) -> Result<Tensor> {
        let hard = |x: &Tensor, alpha: f64, beta: f64| -> Result<Tensor> {
            Ok(x.f_mul_scalar(alpha)?
                .f_add_scalar(beta)?
                .f_clamp(0.0, 1.0)?)
        };
        Ok(match f {
            Unary::Relu => x.f_relu()?,
            Unary::LeakyRelu { alpha } => {
                x.f_where_self(&x.f_ge(0.0)?, &x.f_mul_scalar(alpha as f64)?)?
            }
            Unary::Clip { min, max } => x.f_clamp(min as f64, max as f64)?,
            Unary::Sigmoid => x.f_sigmoid()?,
            Unary::HardSigmoid { alpha, beta } => hard(x, alpha as f64, beta as f64)?,
            Unary::HardSwish => x.f_mul(&hard(x, 1.0 / 6.0, 0.5)?)?,
        })
    }
    fn binary(&mut self, _cx: &NodeCx, a: &Tensor, b: &Tensor, f: BinaryKind) -> Result<Tensor> {
        Ok(match f {
            BinaryKind::Add => a.f_add(b)?,
            BinaryKind::Sub => a.f_sub(b)?,
            BinaryKind::Mul => a.f_mul(b)?,
            BinaryKind::Div => a.f_div(b)?,
        })
    }
    fn affine(&mut self, cx: &NodeCx, x: &Tensor) -> Result<Tensor> {
        let c = cx.out[0] as i64;
        let view: Vec<i64> = std::iter::once(1)
            .chain(std::iter::once(c))
            .chain(std::iter::repeat_n(1, cx.out.len() - 1))
            .collect();
        let (w, b) = (self.param(cx, "weight")?, self.param(cx, "bias")?);
        Ok(x.f_mul(&w.f_reshape(&view)?)?.f_add(&b.f_reshape(&view)?)?)
    }
    fn conv_transpose(&mut self, cx: &NodeCx, x: &Tensor, op: &ConvTranspose) -> Result<Tensor> {
        let (w, b) = (self.param(cx, "weight")?, self.param(cx, "bias")?);
        let [t, l, bo, r] = op.padding;
        let sym = t == bo && l == r;
        let pad = if sym { [t as i64, l as i64] } else { [0, 0] };
        let y = x.f_conv_transpose2d(
            &w,
            Some(&b),
            op.stride.map(|v| v as i64),
            pad,
            op.output_padding.map(|v| v as i64),
            op.groups as i64,
            op.dilation.map(|v| v as i64),
        )?;
        if sym {
            return Ok(y);
        }
        // The full output, cropped by the pads on each side.
        let (h, wd) = (cx.out[1] as i64, cx.out[2] as i64);
        Ok(y.f_narrow(2, t as i64, h)?.f_narrow(3, l as i64, wd)?)
    }
    fn max_pool(&mut self, _cx: &NodeCx, x: &Tensor, w: &Window) -> Result<Tensor> {
        let k = w.kernel.map(|v| v as i64);
        let s = w.stride.map(|v| v as i64);
        let d = w.dilation.map(|v| v as i64);
        if native_pool_pads(w) {
            let p = [w.padding[0] as i64, w.padding[1] as i64];
            return Ok(x.f_max_pool2d(k, s, p, d, false)?);
        }
        let padded = x.f_pad(torch_pads(w.padding), "constant", f64::NEG_INFINITY)?;
        Ok(padded.f_max_pool2d(k, s, [0, 0], d, false)?)
    }
    fn avg_pool(&mut self, _cx: &NodeCx, x: &Tensor, op: &AvgPool) -> Result<Tensor> {
        let w = &op.window;
        let k = w.kernel.map(|v| v as i64);
        let s = w.stride.map(|v| v as i64);
        if native_pool_pads(w) {
            let p = [w.padding[0] as i64, w.padding[1] as i64];
            return Ok(x.f_avg_pool2d(k, s, p, false, op.count_include_pad, None)?);
        }
        if !op.count_include_pad {
            return Err(Error::Model(format!(
                "avg_pool: pads {:?} without count_include_pad have no libtorch equivalent",
                w.padding
            )));
        }
        // Padding counted as zeros: pad with zeros, then average over whole windows.
        let padded = x.f_constant_pad_nd(torch_pads(w.padding))?;
        Ok(padded.f_avg_pool2d(k, s, [0, 0], false, true, None)?)
    }
    fn global_avg_pool(&mut self, _cx: &NodeCx, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_adaptive_avg_pool2d([1, 1])?)
    }
    fn concat(&mut self, _cx: &NodeCx, xs: &[&Tensor]) -> Result<Tensor> {
        Ok(Tensor::f_cat(xs, 1)?)
    }
    fn flatten(&mut self, _cx: &NodeCx, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_flatten(1, -1)?)
    }
    fn linear(&mut self, cx: &NodeCx, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.param(cx, "weight")?, self.param(cx, "bias")?);
        if let Some(q) = self.model.qat.as_ref().filter(|q| q.quantises(cx.name)) {
            let x = q.activation(x, &cx.inputs[0])?;
            return Ok(x.f_linear(&q.weight(&w)?, Some(&b))?);
        }
        Ok(x.f_linear(&w, Some(&b))?)
    }
    fn resize(&mut self, _cx: &NodeCx, x: &Tensor, op: &Resize) -> Result<Tensor> {
        let size = [op.height as i64, op.width as i64];
        Ok(match op.mode {
            ResizeMode::Nearest => x.f_upsample_nearest2d(size, None, None)?,
            ResizeMode::Bilinear => x.f_upsample_bilinear2d(size, false, None, None)?,
            ResizeMode::BilinearAlignCorners => x.f_upsample_bilinear2d(size, true, None, None)?,
        })
    }
    fn l2_norm(&mut self, _cx: &NodeCx, x: &Tensor) -> Result<Tensor> {
        let norm = x
            .f_square()?
            .f_sum_dim_intlist(1, true, Kind::Float)?
            .f_sqrt()?
            .f_clamp_min(1e-12)?;
        Ok(x.f_div(&norm)?)
    }
}

impl ConvBackend<TrainConv> for Tch<'_, '_> {
    fn conv(&mut self, cx: &NodeCx, c: &TrainConv, x: &Tensor) -> Result<Tensor> {
        if let Some(q) = &self.model.qat {
            return self
                .model
                .qat_conv(q, cx, c, x, self.kernels.as_deref_mut());
        }
        self.model
            .conv(cx.prefix, c, x, self.train, self.kernels.as_deref_mut())
    }
}

//! A tch model built from a [`TrainSpec`]: tensors created exactly from the fuse layout.

use std::collections::HashMap;

use overparam_fuse::layout::{ParamKind, train_layout};
use overparam_fuse::method::{Method, has_identity};
use overparam_fuse::spec::{ConvShape, Op, TrainConv, TrainSpec};
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
    /// Every layout tensor by its PyTorch name (shared tensors appear once).
    vars: HashMap<String, Tensor>,
    kinds: HashMap<String, ParamKind>,
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
            spec: spec.clone(),
            vars,
            kinds,
        })
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
        mut kernels: Option<&mut Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        let mut acts: HashMap<&str, Tensor> = HashMap::new();
        acts.insert(overparam_fuse::spec::INPUT, x.shallow_clone());
        for n in &self.spec.nodes {
            let ins: Vec<&Tensor> = n
                .inputs
                .iter()
                .map(|i| {
                    acts.get(i.as_str()).ok_or_else(|| {
                        Error::Model(format!("node `{}`: input `{i}` missing", n.name))
                    })
                })
                .collect::<Result<_>>()?;
            let x = ins[0];
            let y = match &n.op {
                Op::Conv(c) => self.conv(&n.name, c, x, train, kernels.as_deref_mut())?,
                Op::Relu => x.f_relu()?,
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => x.f_max_pool2d(
                    [*kernel as i64; 2],
                    [*stride as i64; 2],
                    [*padding as i64; 2],
                    [1, 1],
                    false,
                )?,
                Op::GlobalAvgPool => x.f_adaptive_avg_pool2d([1, 1])?,
                Op::Add => x.f_add(ins[1])?,
                Op::Flatten => x.f_flatten(1, -1)?,
                Op::Resize {
                    height,
                    width,
                    mode,
                } => {
                    let size = [*height as i64, *width as i64];
                    match mode {
                        overparam_fuse::spec::ResizeMode::Nearest => {
                            x.f_upsample_nearest2d(size, None, None)?
                        }
                        overparam_fuse::spec::ResizeMode::Bilinear => {
                            x.f_upsample_bilinear2d(size, false, None, None)?
                        }
                    }
                }
                Op::L2Norm => {
                    let norm = x
                        .f_square()?
                        .f_sum_dim_intlist(1, true, Kind::Float)?
                        .f_sqrt()?
                        .f_clamp_min(1e-12)?;
                    x.f_div(&norm)?
                }
                Op::Linear { .. } => x.f_linear(
                    self.var(&format!("{}.weight", n.name))?,
                    Some(self.var(&format!("{}.bias", n.name))?),
                )?,
            };
            acts.insert(&n.name, y);
        }
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

    fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: &ConvShape) -> Result<Tensor> {
        let (stride, padding) = ([s.stride as i64; 2], [s.padding as i64; 2]);
        if x.device().is_cuda() {
            // `_convolution` is what conv2d dispatches to; called directly it takes TF32 as an
            // argument instead of libtorch's global cuDNN switch, which tch does not expose.
            return Ok(x.f_internal_convolution(
                w,
                b,
                stride,
                padding,
                [1, 1],
                false,
                [0, 0],
                s.groups as i64,
                false,
                false,
                tch::Cuda::user_enabled_cudnn(),
                allow_tf32(),
            )?);
        }
        Ok(x.f_conv2d(w, b, stride, padding, [1, 1], s.groups as i64)?)
    }

    /// The kernel a factorised conv computes, composed in kernel space (one conv follows).
    pub fn composed_kernel(&self, node: &str, c: &TrainConv) -> Result<Tensor> {
        let (un, mn, vn) = overparam_fuse::layout::factor_names(node, &c.method);
        let (u, m, v) = (self.var(&un)?, self.var(&mn)?, self.var(&vn)?);
        let s = &c.shape;
        let (g, k) = (s.groups as i64, s.kernel as i64);
        let (o, i) = (s.out_channels as i64 / g, s.in_channels as i64 / g);
        let um = u.f_matmul(m)?;
        Ok(match &c.method {
            // Ŵ = (U·M)·Vᵀ on rows (o,u) × columns (i,v), back to [O, I, k, k].
            Method::Fnl { .. } => um
                .f_matmul(&v.f_transpose(-1, -2)?)?
                .f_reshape([g, o, k, i, k])?
                .f_permute([0, 1, 3, 2, 4])?
                .f_reshape([g * o, i, k, k])?,
            // W = (U·M)·V on the O × (I·k·k) view.
            Method::Sfo { .. } => um.f_matmul(v)?.f_reshape([g * o, i, k, k])?,
            _ => return Err(Error::Model(format!("`{node}` is not factorised"))),
        })
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
        let one_by_one = ConvShape {
            kernel: 1,
            padding: s.padding - s.kernel / 2,
            bias: false,
            ..s.clone()
        };
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
                if s.kernel > 1 {
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
                if s.kernel > 1 {
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

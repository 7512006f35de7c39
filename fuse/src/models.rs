//! Model builders. Each returns a train spec whose node names are torchvision's, so a deploy
//! checkpoint loads into the PyTorch model with `load_state_dict(strict=True)`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::method::{Method, MethodConfig, SfoShare};
use crate::spec::{
    BatchNorm, ConvShape, INPUT, InputSpec, Node, Op, OutputSpec, ResizeMode, TrainConv, TrainSpec,
};

/// The models `overparam init --model` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Resnet18Cifar,
    Resnet50Cifar,
    VggSmall,
    /// The multi-task encoder–decoder (segmentation, depth, normals).
    Mtl,
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [
        ModelKind::Resnet18Cifar,
        ModelKind::Resnet50Cifar,
        ModelKind::VggSmall,
        ModelKind::Mtl,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Resnet18Cifar => "resnet18_cifar",
            ModelKind::Resnet50Cifar => "resnet50_cifar",
            ModelKind::VggSmall => "vgg_small",
            ModelKind::Mtl => "mtl",
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::Spec(format!(
                    "unknown model `{s}` (expected resnet18_cifar, resnet50_cifar, vgg_small or mtl)"
                ))
            })
    }
}

/// Options shared by the classification builders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierOptions {
    /// Width multiplier on every channel count (1.0 = the paper's model).
    pub width: f64,
    pub num_classes: usize,
    /// Input height = width (the data's: 32 for CIFAR, 28 for the MNIST family).
    pub image_size: usize,
    /// Input channels (the data's: 3 for CIFAR, 1 for the MNIST family); the stem takes them.
    #[serde(default = "three")]
    pub in_channels: usize,
    pub method: MethodConfig,
}

fn three() -> usize {
    3
}

impl ClassifierOptions {
    pub fn new(method: MethodConfig) -> Self {
        Self {
            width: 1.0,
            num_classes: 100,
            image_size: 32,
            in_channels: 3,
            method,
        }
    }
}

pub fn build(kind: ModelKind, opts: &ClassifierOptions) -> Result<TrainSpec> {
    match kind {
        ModelKind::Resnet18Cifar => resnet_cifar(kind, &[2, 2, 2, 2], false, opts),
        ModelKind::Resnet50Cifar => resnet_cifar(kind, &[3, 4, 6, 3], true, opts),
        ModelKind::VggSmall => vgg_small(opts),
        // NYUv2's 3:4 aspect (288×384 at image_size 288), RGB only.
        ModelKind::Mtl if opts.in_channels != 3 => Err(Error::Spec(format!(
            "mtl takes 3-channel images, not {}",
            opts.in_channels
        ))),
        ModelKind::Mtl => mtl_net(&MtlOptions {
            width: opts.width,
            height: opts.image_size,
            width_px: opts.image_size * 4 / 3,
            classes: NYU_CLASSES,
            method: opts.method.clone(),
        }),
    }
}

struct Builder<'a> {
    nodes: Vec<Node<TrainConv>>,
    method: &'a MethodConfig,
}

impl Builder<'_> {
    fn push(&mut self, name: &str, inputs: &[&str], op: Op<TrainConv>) -> String {
        self.nodes.push(Node::new(name, inputs, op));
        name.to_string()
    }
    /// A conv (with or without its own bias) followed by a BN named `bn`.
    fn conv_bn(&mut self, name: &str, input: &str, shape: ConvShape, bn: &str) -> String {
        let method = self.method.for_conv(&shape);
        self.push(
            name,
            &[input],
            Op::Conv(TrainConv::new(
                shape,
                Some(BatchNorm::new(bn, 1e-5)),
                method,
            )),
        )
    }
    fn relu(&mut self, name: &str, input: &str) -> String {
        self.push(name, &[input], Op::relu())
    }
}

fn scaled(c: usize, width: f64) -> usize {
    ((c as f64 * width).round() as usize).max(1)
}

fn check_opts(opts: &ClassifierOptions) -> Result<()> {
    opts.method.validate()?;
    if !(opts.width > 0.0 && opts.width.is_finite()) {
        return Err(Error::Spec(format!(
            "width must be positive, got {}",
            opts.width
        )));
    }
    if opts.num_classes == 0 || opts.image_size < 4 || opts.in_channels == 0 {
        return Err(Error::Spec(
            "num_classes ≥ 1, image_size ≥ 4 and in_channels ≥ 1 required".into(),
        ));
    }
    Ok(())
}

/// CIFAR ResNet (torchvision names): 3×3 stem (stride 1, no max-pool), four stages with
/// stride on the 3×3 conv (torchvision v1.5), global average pool, `fc`.
fn resnet_cifar(
    kind: ModelKind,
    blocks: &[usize; 4],
    bottleneck: bool,
    opts: &ClassifierOptions,
) -> Result<TrainSpec> {
    check_opts(opts)?;
    let mut b = Builder {
        nodes: vec![],
        method: &opts.method,
    };
    let w = |c| scaled(c, opts.width);
    let expansion = if bottleneck { 4 } else { 1 };
    let mut ch = w(64);
    let mut x = b.conv_bn(
        "conv1",
        INPUT,
        ConvShape::new(opts.in_channels, ch, 3, 1),
        "bn1",
    );
    x = b.relu("relu", &x);
    for (stage, &n) in blocks.iter().enumerate() {
        let planes = w(64 << stage);
        for i in 0..n {
            let p = format!("layer{}.{i}", stage + 1);
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let out_ch = planes * expansion;
            let identity = x.clone();
            let mut y = if bottleneck {
                let y = b.conv_bn(
                    &format!("{p}.conv1"),
                    &x,
                    ConvShape::new(ch, planes, 1, 1),
                    &format!("{p}.bn1"),
                );
                let y = b.relu(&format!("{p}.relu1"), &y);
                let y = b.conv_bn(
                    &format!("{p}.conv2"),
                    &y,
                    ConvShape::new(planes, planes, 3, stride),
                    &format!("{p}.bn2"),
                );
                let y = b.relu(&format!("{p}.relu2"), &y);
                b.conv_bn(
                    &format!("{p}.conv3"),
                    &y,
                    ConvShape::new(planes, out_ch, 1, 1),
                    &format!("{p}.bn3"),
                )
            } else {
                let y = b.conv_bn(
                    &format!("{p}.conv1"),
                    &x,
                    ConvShape::new(ch, planes, 3, stride),
                    &format!("{p}.bn1"),
                );
                let y = b.relu(&format!("{p}.relu1"), &y);
                b.conv_bn(
                    &format!("{p}.conv2"),
                    &y,
                    ConvShape::new(planes, planes, 3, 1),
                    &format!("{p}.bn2"),
                )
            };
            let shortcut = if stride != 1 || ch != out_ch {
                b.conv_bn(
                    &format!("{p}.downsample.0"),
                    &identity,
                    ConvShape::new(ch, out_ch, 1, stride),
                    &format!("{p}.downsample.1"),
                )
            } else {
                identity
            };
            y = b.push(&format!("{p}.add"), &[&y, &shortcut], Op::add());
            x = b.relu(&format!("{p}.relu"), &y);
            ch = out_ch;
        }
    }
    finish_classifier(b, kind.as_str(), &x, ch, opts)
}

fn finish_classifier(
    mut b: Builder,
    model: &str,
    x: &str,
    ch: usize,
    opts: &ClassifierOptions,
) -> Result<TrainSpec> {
    let x = b.push("avgpool", &[x], Op::global_avg_pool());
    let x = b.push("flatten", &[&x], Op::flatten());
    let x = b.push("fc", &[&x], Op::linear(ch, opts.num_classes));
    let spec = TrainSpec {
        model: model.to_string(),
        input: InputSpec {
            channels: opts.in_channels,
            height: opts.image_size,
            width: opts.image_size,
            normalize: None,
        },
        nodes: b.nodes,
        outputs: vec![OutputSpec::new("logits", x)],
    };
    spec.validate()?;
    Ok(spec)
}

/// A small plain VGG-style net: (conv3×3-BN-ReLU)×2 per stage, max-pool between stages,
/// torchvision VGG's `features.<i>` indices, global pool and `fc`.
fn vgg_small(opts: &ClassifierOptions) -> Result<TrainSpec> {
    check_opts(opts)?;
    let mut b = Builder {
        nodes: vec![],
        method: &opts.method,
    };
    let mut x = INPUT.to_string();
    let mut ch = opts.in_channels;
    let mut idx = 0;
    for (stage, c) in [32usize, 64, 128].into_iter().enumerate() {
        let c = scaled(c, opts.width);
        for _ in 0..2 {
            x = b.conv_bn(
                &format!("features.{idx}"),
                &x,
                ConvShape::new(ch, c, 3, 1),
                &format!("features.{}", idx + 1),
            );
            x = b.relu(&format!("features.{}", idx + 2), &x);
            idx += 3;
            ch = c;
        }
        if stage < 2 {
            x = b.push(&format!("features.{idx}"), &[&x], Op::max_pool(2, 2, 0));
            idx += 1;
        }
    }
    finish_classifier(b, ModelKind::VggSmall.as_str(), &x, ch, opts)
}

/// The SFO multi-task head form on a toy trunk: two equal-shape heads share U and V with a
/// per-task M (group `pred`), and two heads of different output widths share V with per-task
/// U and M (group `last`). Used by tests of both the fuse and train crates.
pub fn shared_heads_example() -> TrainSpec {
    let conv = |shape: ConvShape, bn: &str, method: Method| {
        Op::Conv(TrainConv::new(
            shape,
            Some(BatchNorm::new(bn, 1e-5)),
            method,
        ))
    };
    let head = |name: &str, out: usize, group: &str, share_u: bool, rank: usize| Node {
        name: name.into(),
        inputs: vec!["trunk".into()],
        params: None,
        op: conv(
            ConvShape {
                bias: true,
                ..ConvShape::new(6, out, 3, 1)
            },
            &format!("{name}_bn"),
            Method::Sfo {
                rank,
                share: Some(SfoShare {
                    group: group.into(),
                    share_u,
                }),
            },
        ),
    };
    let trunk = Node {
        name: "trunk".into(),
        inputs: vec![INPUT.into()],
        params: None,
        op: conv(
            ConvShape::new(3, 6, 3, 1),
            "trunk_bn",
            Method::Sfo {
                rank: 6,
                share: None,
            },
        ),
    };
    TrainSpec {
        model: "shared_heads_example".into(),
        input: InputSpec {
            channels: 3,
            height: 4,
            width: 5,
            normalize: None,
        },
        nodes: vec![
            trunk,
            // d_h = min(T·O, I·k²) = min(12, 54) (methods.md §5.2).
            head("seg", 6, "pred", true, 12),
            head("depth", 6, "pred", true, 12),
            head("out_seg", 5, "last", false, 6),
            head("out_depth", 1, "last", false, 6),
        ],
        outputs: ["seg", "depth", "out_seg", "out_depth"]
            .iter()
            .map(|n| OutputSpec {
                name: n.to_string(),
                node: n.to_string(),
                role: overparam_base::Role::Raw,
            })
            .collect(),
    }
}

/// NYUv2's 13 semantic classes (MTAN protocol), named in `overparam_base::task`.
pub const NYU_CLASSES: usize = overparam_base::task::NYU_CLASSES;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MtlOptions {
    pub width: f64,
    pub height: usize,
    pub width_px: usize,
    pub classes: usize,
    pub method: MethodConfig,
}

/// The task heads of the multi-task network: (name, output channels).
pub fn mtl_tasks(classes: usize) -> [(&'static str, usize); 3] {
    use overparam_base::Task;
    [
        (Task::Segmentation.name(), classes),
        (Task::Depth.name(), 1),
        (Task::Normals.name(), 3),
    ]
}

/// A SegNet-sized encoder–decoder with hard parameter sharing (MTAN's "split" layout):
/// encoder stages of conv3×3(+bias)-BN-ReLU blocks ([64, 128, 256, 512, 512] channels, [2, 2, 3,
/// 3, 3] convs) with 2×2 max-pooling; a mirrored decoder that upsamples with Resize (nearest,
/// back to each stage's exact size) instead of MaxUnpool, which TensorRT's ONNX parser lacks;
/// and per task a head conv3×3 (64→64) → conv1×1 (64→C) with no nonlinearity between (as
/// MTAN). Normals are L2-normalised per pixel.
///
/// With `sfo`, the three hidden head convs (equal shapes) share U and V with a per-task M
/// (group `heads.hidden`, d = min(T·O, I·9)); with `include_1x1` the output convs (different
/// widths) share V (group `heads.output`, d = min(ΣO_t, I)). RepVGG-style methods apply to the
/// conv-BN layers; the BN-free heads stay plain.
///
/// Long on purpose: the network written out layer by layer, in the order of its PyTorch
/// reference (MTAN), which fixes its tensor names.
pub fn mtl_net(opts: &MtlOptions) -> Result<TrainSpec> {
    opts.method.validate()?;
    if !(opts.width > 0.0 && opts.width.is_finite()) || opts.height < 32 || opts.width_px < 32 {
        return Err(Error::Spec(
            "mtl: width > 0 and an input of at least 32×32 required".into(),
        ));
    }
    let mut b = Builder {
        nodes: vec![],
        method: &opts.method,
    };
    let w = |c| scaled(c, opts.width);
    let stages: [(usize, usize); 5] = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)];
    let mut x = INPUT.to_string();
    let mut ch = 3;
    let (mut h, mut wd) = (opts.height, opts.width_px);
    let mut sizes = vec![];
    let conv_block = |b: &mut Builder, name: &str, x: &str, cin: usize, cout: usize| -> String {
        let shape = ConvShape {
            bias: true,
            ..ConvShape::new(cin, cout, 3, 1)
        };
        let y = b.conv_bn(&format!("{name}.conv"), x, shape, &format!("{name}.bn"));
        b.relu(&format!("{name}.relu"), &y)
    };
    for (s, &(c, n)) in stages.iter().enumerate() {
        for i in 0..n {
            x = conv_block(&mut b, &format!("encoder.{s}.{i}"), &x, ch, w(c));
            ch = w(c);
        }
        sizes.push((h, wd));
        x = b.push(&format!("encoder.{s}.pool"), &[&x], Op::max_pool(2, 2, 0));
        (h, wd) = (h / 2, wd / 2);
    }
    for (s, &(c, n)) in stages.iter().enumerate().rev() {
        let (th, tw) = sizes[s];
        x = b.push(
            &format!("decoder.{s}.up"),
            &[&x],
            Op::resize(th, tw, ResizeMode::Nearest),
        );
        // Mirror the encoder: the last conv of a stage maps to the previous stage's width.
        let out = if s == 0 { w(64) } else { w(stages[s - 1].0) };
        for i in 0..n {
            let cout = if i + 1 == n { out } else { w(c) };
            x = conv_block(&mut b, &format!("decoder.{s}.{i}"), &x, ch, cout);
            ch = cout;
        }
    }
    let tasks = mtl_tasks(opts.classes);
    let hidden_rank = (tasks.len() * ch).min(ch * 9);
    let out_rank = tasks.iter().map(|t| t.1).sum::<usize>().min(ch);
    let mut outputs = vec![];
    for (task, c_out) in tasks {
        let mut head = |name: String,
                        input: &str,
                        shape: ConvShape,
                        group: &str,
                        rank: usize,
                        share_u: bool| {
            let mut method = opts.method.for_conv(&shape);
            match &mut method {
                Method::Sfo { rank: r, share } => {
                    *r = rank;
                    *share = Some(SfoShare {
                        group: group.into(),
                        share_u,
                    });
                }
                // RepVGG-style methods replace a conv and its BN; heads have no BN.
                Method::Repvgg | Method::Qarepvgg => method = Method::Plain,
                _ => {}
            }
            b.push(
                &name,
                &[input],
                Op::Conv(TrainConv::new(shape, None, method)),
            )
        };
        let hidden = head(
            format!("heads.{task}.0"),
            &x,
            ConvShape {
                bias: true,
                ..ConvShape::new(ch, ch, 3, 1)
            },
            "heads.hidden",
            hidden_rank,
            true,
        );
        let mut y = head(
            format!("heads.{task}.1"),
            &hidden,
            ConvShape {
                bias: true,
                ..ConvShape::new(ch, c_out, 1, 1)
            },
            "heads.output",
            out_rank,
            false,
        );
        if task == overparam_base::Task::Normals.name() {
            y = b.push("heads.normals.norm", &[&y], Op::l2_norm());
        }
        outputs.push(OutputSpec::new(task, y));
    }
    let spec = TrainSpec {
        model: ModelKind::Mtl.as_str().to_string(),
        input: InputSpec {
            channels: 3,
            height: opts.height,
            width: opts.width_px,
            normalize: None,
        },
        nodes: b.nodes,
        outputs,
    };
    spec.validate()?;
    Ok(spec)
}

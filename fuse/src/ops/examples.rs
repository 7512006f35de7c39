//! Every op on small, odd shapes (borders show), as one-or-two-node deploy graphs with random
//! weights: the cases the op tests run on each backend (the reference executor against
//! libtorch in `overparam-train`, against ONNX Runtime in `overparam-engine`). A new op adds
//! its cases here.

use super::*;
use crate::fold::Weights;
use crate::init::random_weights;
use crate::spec::{ConvShape, DeployConv, DeploySpec, INPUT, InputSpec, Node, OutputSpec};

fn graph(name: &str, input: [usize; 3], nodes: Vec<Node<DeployConv>>) -> DeploySpec {
    let last = nodes.last().expect("nodes").name.clone();
    DeploySpec {
        model: format!("op:{name}"),
        input: InputSpec {
            channels: input[0],
            height: input[1],
            width: input[2],
            normalize: None,
        },
        nodes,
        outputs: vec![OutputSpec {
            name: "y".into(),
            node: last,
            role: overparam_base::Role::Raw,
        }],
    }
}

fn one(name: &str, input: [usize; 3], op: Op<DeployConv>) -> DeploySpec {
    graph(name, input, vec![Node::new("op", &[INPUT], op)])
}

/// `op` on the input and on its ReLU (two feature maps of the same shape).
fn two(name: &str, input: [usize; 3], op: Op<DeployConv>) -> DeploySpec {
    graph(
        name,
        input,
        vec![
            Node::new("r", &[INPUT], Op::relu()),
            Node::new("op", &[INPUT, "r"], op),
        ],
    )
}

fn conv(shape: ConvShape) -> Op<DeployConv> {
    Op::Conv(DeployConv {
        shape: ConvShape {
            bias: true,
            ..shape
        },
    })
}

fn window(
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
) -> Window {
    Window {
        kernel,
        stride,
        padding,
        dilation,
    }
}

/// The cases: (name, graph). Inputs are C×7×5 unless an op needs otherwise.
pub fn cases() -> Vec<(String, DeploySpec)> {
    let i = [4, 7, 5];
    let mut out: Vec<DeploySpec> = vec![
        one("conv 3×3", i, conv(ConvShape::new(4, 6, 3, 1))),
        one(
            "conv 1×3 s(2,1) d(1,2) asymmetric pads g2",
            i,
            conv(ConvShape {
                kernel: [1, 3],
                stride: [2, 1],
                padding: [0, 1, 1, 3],
                dilation: [1, 2],
                groups: 2,
                ..ConvShape::new(4, 6, 3, 1)
            }),
        ),
        one(
            "conv 3×1 depthwise s2",
            i,
            conv(ConvShape {
                kernel: [3, 1],
                padding: [1, 0, 1, 0],
                groups: 4,
                ..ConvShape::new(4, 4, 3, 2)
            }),
        ),
        one(
            "conv_transpose 2×2 s2",
            i,
            Op::ConvTranspose(ConvTranspose {
                in_channels: 4,
                out_channels: 3,
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0; 4],
                output_padding: [0, 0],
                dilation: [1, 1],
                groups: 1,
            }),
        ),
        one(
            "conv_transpose 3×3 s2 asymmetric pads, output padding, g2",
            i,
            Op::ConvTranspose(ConvTranspose {
                in_channels: 4,
                out_channels: 6,
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 0, 0, 1],
                output_padding: [1, 1],
                dilation: [1, 1],
                groups: 2,
            }),
        ),
        one("relu", i, Op::relu()),
        one("leaky_relu", i, Op::LeakyRelu(LeakyRelu { alpha: 0.1 })),
        one("clip (relu6)", i, Op::Clip(Clip { min: 0.0, max: 0.6 })),
        one(
            "clip (no lower bound)",
            i,
            Op::Clip(Clip {
                min: f32::NEG_INFINITY,
                max: 0.3,
            }),
        ),
        one("sigmoid", i, Op::Sigmoid(Sigmoid {})),
        one(
            "hard_sigmoid",
            i,
            Op::HardSigmoid(HardSigmoid {
                alpha: 1.0 / 6.0,
                beta: 0.5,
            }),
        ),
        one("hard_swish", i, Op::HardSwish(HardSwish {})),
        two("add", i, Op::add()),
        two("sub", i, Op::Sub(binary::Sub::default())),
        two("mul", i, Op::Mul(binary::Mul::default())),
        graph(
            "div",
            i,
            vec![
                Node::new("s", &[INPUT], Op::Sigmoid(Sigmoid {})),
                Node::new("op", &[INPUT, "s"], Op::Div(binary::Div::default())),
            ],
        ),
        graph(
            "mul broadcast N×C×1×1 (squeeze-excite)",
            i,
            vec![
                Node::new("g", &[INPUT], Op::global_avg_pool()),
                Node::new("op", &[INPUT, "g"], Op::Mul(binary::Mul::default())),
            ],
        ),
        one(
            "sub constant C×1×1 (left)",
            i,
            Op::Sub(binary::Sub(Binary {
                constant: Some(ConstOperand {
                    shape: vec![4, 1, 1],
                    left: true,
                }),
            })),
        ),
        one(
            "div constant scalar",
            i,
            Op::Div(binary::Div(Binary {
                constant: Some(ConstOperand {
                    shape: vec![],
                    left: false,
                }),
            })),
        ),
        one("affine", i, Op::Affine(Affine { channels: 4 })),
        one("max_pool 3×3 s2 p1", i, Op::max_pool(3, 2, 1)),
        one(
            "max_pool 2×3 s(1,2) dilation, asymmetric pads",
            i,
            Op::MaxPool(MaxPool(window([2, 3], [1, 2], [0, 1, 1, 2], [2, 1]))),
        ),
        one(
            "avg_pool 3×3 s2 p1 counting pads",
            i,
            Op::AvgPool(AvgPool {
                window: Window::square(3, 2, 1),
                count_include_pad: true,
            }),
        ),
        one(
            "avg_pool 3×3 s2 p1 not counting pads",
            i,
            Op::AvgPool(AvgPool {
                window: Window::square(3, 2, 1),
                count_include_pad: false,
            }),
        ),
        one(
            "avg_pool 2×2 asymmetric pads counting pads",
            i,
            Op::AvgPool(AvgPool {
                window: window([2, 2], [2, 2], [1, 0, 0, 1], [1, 1]),
                count_include_pad: true,
            }),
        ),
        one("global_avg_pool", i, Op::global_avg_pool()),
        graph(
            "concat",
            i,
            vec![
                Node::new("r", &[INPUT], Op::relu()),
                Node::new("s", &[INPUT], Op::Sigmoid(Sigmoid {})),
                Node::new("op", &[INPUT, "r", "s"], Op::Concat(Concat {})),
            ],
        ),
        graph(
            "flatten + linear",
            i,
            vec![
                Node::new("f", &[INPUT], Op::flatten()),
                Node::new("op", &["f"], Op::linear(4 * 7 * 5, 3)),
            ],
        ),
        one(
            "resize nearest up 7×5→15×11",
            i,
            Op::resize(15, 11, ResizeMode::Nearest),
        ),
        one(
            "resize nearest down 7×5→3×2",
            i,
            Op::resize(3, 2, ResizeMode::Nearest),
        ),
        one(
            "resize bilinear 7×5→12×9",
            i,
            Op::resize(12, 9, ResizeMode::Bilinear),
        ),
        one(
            "resize bilinear align corners 7×5→13×8",
            i,
            Op::resize(13, 8, ResizeMode::BilinearAlignCorners),
        ),
        one("l2_norm", i, Op::l2_norm()),
    ];
    out.iter_mut()
        .for_each(|g| g.validate().unwrap_or_else(|e| panic!("{}: {e}", g.model)));
    out.into_iter().map(|g| (g.model.clone(), g)).collect()
}

/// Seeded random weights of a case (constants included), away from zero for Div.
pub fn weights(g: &DeploySpec, seed: u64) -> Weights<f32> {
    let mut w: Weights<f32> = random_weights(&crate::layout::deploy_layout(g), seed);
    for (k, t) in w.iter_mut() {
        if k.ends_with(".value") {
            t.data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
        }
    }
    w
}

/// Every op of the list is covered by at least one case.
#[cfg(test)]
mod tests {
    #[test]
    fn every_op_has_a_case() {
        let cases = super::cases();
        for op in super::OP_NAMES {
            assert!(
                cases
                    .iter()
                    .any(|(_, g)| g.nodes.iter().any(|n| n.op.kind() == *op)),
                "no case for `{op}`"
            );
        }
    }
}

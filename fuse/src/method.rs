//! Overparameterisation methods: which convs a method replaces, and its per-conv config.
//!
//! Parameter layouts (names, shapes) live in [`crate::layout`]; folds in [`crate::fold`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::{ConvShape, TrainConv};

/// How one conv is overparameterised during training. Stored per conv in the spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// conv (+ BN). Fold: BN into conv.
    Plain,
    /// RepVGG (Ding et al., CVPR'21): k×k+BN, 1×1+BN, identity BN (stride 1, in = out).
    Repvgg,
    /// QARepVGG (Chu et al., arXiv 2212.01593): k×k+BN, plain 1×1, identity, one BN after the sum.
    Qarepvgg,
    /// FNL (Khodak et al., ICLR'21): Ŵ = U·M·Vᵀ on the (O·k)×(I·k) view, square M, one conv.
    Fnl {
        /// Inner dimension r of the factorisation (per group).
        rank: usize,
    },
    /// SFO (ours): W = U·M·V on the O×(I·k·k) view, composed in kernel space every step.
    Sfo {
        /// Inner dimension d (per group).
        rank: usize,
        /// Factors shared with other convs (multi-task heads).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share: Option<SfoShare>,
    },
}

/// SFO factor sharing across task heads: `W_t = U_h·M_t·V_h` (equal shapes, `share_u`) or
/// `W_t = U_t·M_t·V_h` (different output widths). Shared tensors are named `<group>.U`/`<group>.V`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SfoShare {
    pub group: String,
    pub share_u: bool,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Plain => "plain",
            Method::Repvgg => "repvgg",
            Method::Qarepvgg => "qarepvgg",
            Method::Fnl { .. } => "fnl",
            Method::Sfo { .. } => "sfo",
        }
    }
}

/// Method names as users type them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Plain,
    Repvgg,
    Qarepvgg,
    Fnl,
    Sfo,
}

impl MethodKind {
    pub const ALL: [MethodKind; 5] = [
        MethodKind::Plain,
        MethodKind::Repvgg,
        MethodKind::Qarepvgg,
        MethodKind::Fnl,
        MethodKind::Sfo,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Plain => "plain",
            MethodKind::Repvgg => "repvgg",
            MethodKind::Qarepvgg => "qarepvgg",
            MethodKind::Fnl => "fnl",
            MethodKind::Sfo => "sfo",
        }
    }
}

impl std::str::FromStr for MethodKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::Spec(format!(
                    "unknown method `{s}` (expected one of plain, repvgg, qarepvgg, fnl, sfo)"
                ))
            })
    }
}

/// Which convs a method replaces and with which hyper-parameters. The default follows
/// OREPA's shared codebase (methods.md §1.3): every k×k conv with k > 1; `include_1x1` adds
/// the 1×1s (bottleneck convs, shortcuts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodConfig {
    pub kind: MethodKind,
    #[serde(default)]
    pub include_1x1: bool,
    /// SFO expansion e: d = e·min(O, I·k²) (methods.md §5.1).
    #[serde(default = "one")]
    pub sfo_expand: usize,
    /// FNL rank scale: r = round(rank_scale·O·k), ≥ 1 (over-complete).
    #[serde(default = "one_f")]
    pub fnl_rank_scale: f64,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}

impl MethodConfig {
    pub fn new(kind: MethodKind) -> Self {
        Self {
            kind,
            include_1x1: false,
            sfo_expand: 1,
            fnl_rank_scale: 1.0,
        }
    }

    /// The method for one conv (plain where this config does not replace it).
    pub fn for_conv(&self, shape: &ConvShape) -> Method {
        self.for_conv_why(shape).0
    }

    /// The method for one conv, and why it stays plain where the method was asked for but
    /// cannot take it: FNL and SFO on a depthwise conv (a 1×(kh·kw) kernel per channel has no
    /// room to factorise), RepVGG-style branches on a conv that is not centred (their 1×1 and
    /// identity taps must sit on the kernel's centre).
    pub fn for_conv_why(&self, shape: &ConvShape) -> (Method, Option<String>) {
        if shape.is_1x1() && !self.include_1x1 {
            return (Method::Plain, None);
        }
        let g = shape.groups;
        let o = shape.out_channels / g;
        let plain = |why: String| (Method::Plain, Some(why));
        match self.kind {
            MethodKind::Plain => (Method::Plain, None),
            MethodKind::Repvgg | MethodKind::Qarepvgg if !shape.is_centred() => plain(format!(
                "{} needs odd kernel sides with 'same' padding so its 1×1 and identity branches align with the kernel's centre; this conv is {}",
                self.kind.as_str(),
                shape.describe()
            )),
            MethodKind::Repvgg => (Method::Repvgg, None),
            MethodKind::Qarepvgg => (Method::Qarepvgg, None),
            MethodKind::Fnl | MethodKind::Sfo if shape.is_depthwise() => plain(format!(
                "{} factorises a conv's kernel matrix; a depthwise conv has one input channel per group, so each group's kernel is a single row ({}), with nothing to factorise",
                self.kind.as_str(),
                shape.describe()
            )),
            MethodKind::Fnl => (
                Method::Fnl {
                    rank: ((self.fnl_rank_scale * (o * shape.kernel[0]) as f64).round() as usize)
                        .max(1),
                },
                None,
            ),
            MethodKind::Sfo => (
                Method::Sfo {
                    rank: self.sfo_expand.max(1) * o.min(shape.fan_in()),
                    share: None,
                },
                None,
            ),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.fnl_rank_scale.is_nan() || self.fnl_rank_scale < 1.0 {
            return Err(Error::Spec(format!(
                "fnl_rank_scale {} < 1: compression is not exact overparameterisation",
                self.fnl_rank_scale
            )));
        }
        if self.fnl_rank_scale > MAX_EXPANSION as f64 {
            return Err(Error::Spec(format!(
                "fnl_rank_scale {} is outside 1..={MAX_EXPANSION}",
                self.fnl_rank_scale
            )));
        }
        if !(1..=MAX_EXPANSION).contains(&self.sfo_expand) {
            return Err(Error::Spec(format!(
                "sfo_expand {} is outside 1..={MAX_EXPANSION}",
                self.sfo_expand
            )));
        }
        Ok(())
    }
}

/// Largest factor rank a spec may declare: rank² and rank·(I·k²) stay far from `usize`
/// overflow with the declared-size bounds of [`crate::spec`] (specs come from files).
pub const MAX_RANK: usize = 1 << 20;
/// Largest SFO expansion or FNL rank scale a config may ask for (the papers use 1–4).
pub const MAX_EXPANSION: usize = 64;

/// Whether a RepVGG-style identity branch exists for this conv.
pub fn has_identity(s: &ConvShape) -> bool {
    s.stride == [1, 1] && s.in_channels == s.out_channels && s.is_centred()
}

/// Refuses configurations whose fold would not be exact.
pub fn check_applicable(node: &str, c: &TrainConv) -> Result<()> {
    let s = &c.shape;
    let fail = |reason: String| {
        Err(Error::Method {
            node: node.to_string(),
            method: c.method.name().to_string(),
            reason,
        })
    };
    match &c.method {
        Method::Plain => Ok(()),
        Method::Repvgg | Method::Qarepvgg => {
            if c.bn.is_none() {
                return fail("it replaces a conv and its BatchNorm, and this conv has none".into());
            }
            if !s.is_centred() {
                // Centred 1×1 and identity branches need odd kernel sides with 'same' padding
                // (methods.md §1.2, transVI).
                return fail(format!(
                    "needs odd kernel sides with padding d·(k−1)/2 on each side, got {}",
                    s.describe()
                ));
            }
            Ok(())
        }
        Method::Fnl { rank } => {
            if !(1..=MAX_RANK).contains(rank) {
                return fail(format!("rank {rank} is outside 1..={MAX_RANK}"));
            }
            Ok(())
        }
        Method::Sfo { rank, share } => {
            if !(1..=MAX_RANK).contains(rank) {
                return fail(format!("rank {rank} is outside 1..={MAX_RANK}"));
            }
            if share.is_some() && s.groups != 1 {
                return fail("shared factors need groups = 1".into());
            }
            Ok(())
        }
    }
}

/// Members of one SFO share group must agree on rank, `share_u` and input shape.
pub fn check_share_groups(spec: &crate::spec::TrainSpec) -> Result<()> {
    use crate::spec::Op;
    let mut first: std::collections::HashMap<&str, (&str, &TrainConv)> = Default::default();
    for n in &spec.nodes {
        let Op::Conv(c) = &n.op else { continue };
        let Method::Sfo {
            rank,
            share: Some(sh),
        } = &c.method
        else {
            continue;
        };
        let Some((fname, f)) = first.get(sh.group.as_str()) else {
            first.insert(&sh.group, (&n.name, c));
            continue;
        };
        let Method::Sfo {
            rank: frank,
            share: Some(fsh),
        } = &f.method
        else {
            unreachable!()
        };
        let (a, b) = (&c.shape, &f.shape);
        if frank != rank
            || fsh.share_u != sh.share_u
            || a.in_channels != b.in_channels
            || a.kernel != b.kernel
            || (sh.share_u && a.out_channels != b.out_channels)
        {
            return Err(Error::Method {
                node: n.name.clone(),
                method: "sfo".into(),
                reason: format!(
                    "share group `{}` mixes incompatible convs (`{fname}` has rank {frank}, \
                     share_u {}, shape {:?}); members need equal rank, share_u, input channels \
                     and kernel (and outputs when U is shared)",
                    sh.group, fsh.share_u, b
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_factors_outside_their_range_are_refused() {
        let ok = MethodConfig::new(MethodKind::Sfo);
        assert!(ok.validate().is_ok());
        for (expand, scale) in [(0, 1.0), (65, 1.0), (1, 0.5), (1, f64::NAN), (1, 65.0)] {
            let c = MethodConfig {
                sfo_expand: expand,
                fnl_rank_scale: scale,
                ..ok.clone()
            };
            assert!(
                c.validate().is_err(),
                "expand {expand} scale {scale} accepted"
            );
        }
    }

    #[test]
    fn ranks_beyond_the_bound_are_refused_before_any_layout() {
        let shape = ConvShape::new(3, 6, 3, 1);
        for method in [
            Method::Sfo {
                rank: MAX_RANK + 1,
                share: None,
            },
            Method::Fnl { rank: 1 << 32 },
            Method::Fnl { rank: 0 },
        ] {
            let c = TrainConv::new(shape.clone(), None, method);
            let e = check_applicable("conv", &c).unwrap_err().to_string();
            assert!(e.contains("outside 1..="), "{e}");
        }
        let c = TrainConv::new(
            shape,
            None,
            Method::Sfo {
                rank: MAX_RANK,
                share: None,
            },
        );
        assert!(check_applicable("conv", &c).is_ok());
    }
}

//! NYUv2 in the MTAN preprocessed layout: `{train,val}/{image,label,depth,normal}/<i>.npy`,
//! image HWC float, label HW float (13 classes, −1 ignored), depth HW1 (0 = invalid), normal
//! HWC in [−1, 1] (all-zero = invalid). Every file is validated; errors name it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::npy;

/// NYUv2's 13 semantic classes (MTAN protocol), named in `overparam_base::task`.
pub const CLASSES: usize = overparam_base::task::NYU_CLASSES;
pub const KINDS: [&str; 4] = ["image", "label", "depth", "normal"];

/// One sample, all maps row-major at the same H×W.
#[derive(Clone, Debug, PartialEq)]
pub struct NyuSample {
    pub height: usize,
    pub width: usize,
    /// H×W×3.
    pub image: Vec<f32>,
    /// H×W, class index or −1.
    pub label: Vec<f32>,
    /// H×W metres, 0 = invalid.
    pub depth: Vec<f32>,
    /// H×W×3 unit normals, all-zero = invalid.
    pub normal: Vec<f32>,
}

/// A split directory (`train` or `val`).
#[derive(Clone, Debug)]
pub struct NyuSplit {
    pub dir: PathBuf,
    pub indices: Vec<usize>,
}

fn bad(path: &Path, m: String) -> Error {
    Error::Format {
        path: path.into(),
        message: m,
    }
}

impl NyuSplit {
    /// Lists the samples of `root/split` and checks every sample has all four files.
    pub fn open(root: &Path, split: &str) -> Result<Self> {
        let dir = root.join(split);
        let image_dir = dir.join("image");
        let entries = std::fs::read_dir(&image_dir).map_err(|e| Error::io(&image_dir, e))?;
        let mut indices: Vec<usize> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".npy")?.parse().ok())
            .collect();
        indices.sort_unstable();
        if indices.is_empty() {
            return Err(bad(&image_dir, "no <i>.npy images".into()));
        }
        for &i in &indices {
            for k in &KINDS[1..] {
                let p = dir.join(k).join(format!("{i}.npy"));
                if !p.exists() {
                    return Err(bad(&p, format!("missing: image/{i}.npy has no {k} file")));
                }
            }
        }
        Ok(Self { dir, indices })
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn path(&self, kind: &str, i: usize) -> PathBuf {
        self.dir.join(kind).join(format!("{}.npy", self.indices[i]))
    }

    /// Loads and validates sample `i` (position in `indices`).
    pub fn get(&self, i: usize) -> Result<NyuSample> {
        let load = |kind: &str| -> Result<(PathBuf, npy::Array)> {
            let p = self.path(kind, i);
            let a = npy::read(&p)?;
            Ok((p, a))
        };
        let (ip, image) = load("image")?;
        let (h, w) = match image.shape.as_slice() {
            [h, w, 3] => (*h, *w),
            s => return Err(bad(&ip, format!("image shape {s:?}, expected [H, W, 3]"))),
        };
        let check =
            |(p, a): (PathBuf, npy::Array), want: &[&[usize]]| -> Result<(PathBuf, Vec<f32>)> {
                if !want.iter().any(|s| a.shape == *s) {
                    return Err(bad(
                        &p,
                        format!(
                            "shape {:?}, expected {:?} (the image is {h}×{w})",
                            a.shape, want[0]
                        ),
                    ));
                }
                if let Some(k) = a.data.iter().position(|v| !v.is_finite()) {
                    return Err(bad(&p, format!("non-finite value at flat index {k}")));
                }
                Ok((p, a.data))
            };
        let (lp, label) = check(load("label")?, &[&[h, w]])?;
        if let Some(k) = label
            .iter()
            .position(|&v| v != -1.0 && !(v >= 0.0 && v < CLASSES as f32 && v.fract() == 0.0))
        {
            return Err(bad(
                &lp,
                format!(
                    "label {} at pixel {k}; expected −1 or 0..{}",
                    label[k],
                    CLASSES - 1
                ),
            ));
        }
        let (dp, depth) = check(load("depth")?, &[&[h, w, 1], &[h, w]])?;
        if let Some(k) = depth.iter().position(|&v| v < 0.0) {
            return Err(bad(
                &dp,
                format!("negative depth {} at pixel {k}", depth[k]),
            ));
        }
        let (_, normal) = check(load("normal")?, &[&[h, w, 3]])?;
        if let Some(k) = image.data.iter().position(|v| !v.is_finite()) {
            return Err(bad(&ip, format!("non-finite value at flat index {k}")));
        }
        Ok(NyuSample {
            height: h,
            width: w,
            image: image.data,
            label,
            depth,
            normal,
        })
    }
}

/// Writes one sample in the MTAN layout under `root/split` (index `i`), atomically per file.
pub fn write_sample(root: &Path, split: &str, i: usize, s: &NyuSample) -> Result<()> {
    let (h, w) = (s.height, s.width);
    for (kind, shape, data) in [
        ("image", vec![h, w, 3], &s.image),
        ("label", vec![h, w], &s.label),
        ("depth", vec![h, w, 1], &s.depth),
        ("normal", vec![h, w, 3], &s.normal),
    ] {
        let dir = root.join(split).join(kind);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        npy::write(&dir.join(format!("{i}.npy")), &shape, data)?;
    }
    Ok(())
}

/// The MTAN/LibMTL augmentation: a random scale s ∈ {1.0, 1.2, 1.5} — crop an (H/s)×(W/s)
/// window and resize it back to H×W (image bilinear with aligned corners, maps nearest; depth
/// divided by s, since the scene appears s times closer) — then a horizontal flip with
/// probability ½ (which negates the normals' x component).
pub fn augment(s: &NyuSample, rng: &mut overparam_base::Rng) -> NyuSample {
    let (h, w) = (s.height, s.width);
    let scale = [1.0f64, 1.2, 1.5][rng.below(3)];
    let (ch, cw) = (
        ((h as f64 / scale) as usize).max(1),
        ((w as f64 / scale) as usize).max(1),
    );
    let (top, left) = (rng.below(h - ch + 1), rng.below(w - cw + 1));
    let flip = rng.below(2) == 1;
    let mut out = NyuSample {
        height: h,
        width: w,
        image: vec![0.0; h * w * 3],
        label: vec![0.0; h * w],
        depth: vec![0.0; h * w],
        normal: vec![0.0; h * w * 3],
    };
    // Nearest source pixel (PyTorch `nearest`: ⌊dst·in/out⌋) inside the crop.
    let near = |oy: usize, ox: usize| -> usize {
        let y = top + ((oy * ch) / h).min(ch - 1);
        let x = left + ((ox * cw) / w).min(cw - 1);
        y * w + x
    };
    for oy in 0..h {
        for ox in 0..w {
            let dst = oy * w + if flip { w - 1 - ox } else { ox };
            let src = near(oy, ox);
            out.label[dst] = s.label[src];
            out.depth[dst] = s.depth[src] / scale as f32;
            for c in 0..3 {
                let v = s.normal[src * 3 + c];
                out.normal[dst * 3 + c] = if c == 0 && flip { -v } else { v };
            }
            // Bilinear with align_corners=True: corners map to corners.
            let fy = if h > 1 {
                oy as f64 * (ch - 1) as f64 / (h - 1) as f64
            } else {
                0.0
            };
            let fx = if w > 1 {
                ox as f64 * (cw - 1) as f64 / (w - 1) as f64
            } else {
                0.0
            };
            let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(ch - 1), (x0 + 1).min(cw - 1));
            let (ly, lx) = ((fy - y0 as f64) as f32, (fx - x0 as f64) as f32);
            let at = |y: usize, x: usize, c: usize| s.image[((top + y) * w + left + x) * 3 + c];
            for c in 0..3 {
                let t = at(y0, x0, c) * (1.0 - lx) + at(y0, x1, c) * lx;
                let b = at(y1, x0, c) * (1.0 - lx) + at(y1, x1, c) * lx;
                out.image[dst * 3 + c] = t * (1.0 - ly) + b * ly;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(h: usize, w: usize) -> NyuSample {
        let n = h * w;
        NyuSample {
            height: h,
            width: w,
            image: (0..n * 3).map(|i| (i % 7) as f32 / 7.0).collect(),
            label: (0..n).map(|i| (i % 13) as f32).collect(),
            depth: (0..n).map(|i| 1.0 + i as f32).collect(),
            normal: (0..n)
                .flat_map(|i| [0.6, 0.0, if i % 2 == 0 { 0.8 } else { -0.8 }])
                .collect(),
        }
    }

    #[test]
    fn augmentation_scales_depth_and_flips_normals() {
        let s = sample(10, 12);
        let (mut scales, mut flips) = (std::collections::BTreeSet::new(), 0);
        for seed in 0..60 {
            let a = augment(&s, &mut overparam_base::Rng::new(seed));
            // Every output depth is an input depth divided by one of the scales.
            let ratio_ok = a.depth.iter().all(|d| {
                [1.0f32, 1.2, 1.5].iter().any(|sc| {
                    let src = d * sc;
                    (src - src.round()).abs() < 1e-3 && (1.0..=120.0).contains(&src)
                })
            });
            assert!(ratio_ok);
            let sc = (0..3).find(|&k| {
                let sc = [1.0f32, 1.2, 1.5][k];
                a.depth
                    .iter()
                    .all(|d| ((d * sc) - (d * sc).round()).abs() < 1e-3)
            });
            scales.insert(sc);
            // Normals: |x| preserved, sign flipped exactly when the image is mirrored.
            assert!(a.normal.chunks(3).all(|n| (n[0].abs() - 0.6).abs() < 1e-6));
            if a.normal[0] < 0.0 {
                flips += 1;
            }
            assert!(a.label.iter().all(|l| (0.0..13.0).contains(l)));
        }
        assert!(
            scales.len() >= 2 && flips > 10 && flips < 50,
            "{scales:?} {flips}"
        );
        // Scale 1 without flip is the identity.
        let mut found_identity = false;
        for seed in 0..200 {
            let a = augment(&s, &mut overparam_base::Rng::new(seed));
            if a.depth == s.depth {
                assert_eq!(a.image, s.image);
                assert_eq!(a.normal, s.normal);
                found_identity = true;
            }
        }
        assert!(found_identity);
    }
}

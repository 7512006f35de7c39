//! NYUv2 in the MTAN preprocessed layout: `{train,val}/{image,label,depth,normal}/<i>.npy`,
//! image HWC float, label HW float (13 classes, −1 ignored), depth HW1 (0 = invalid), normal
//! HWC in [−1, 1] (all-zero = invalid). Every file is validated; errors name it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::npy;

pub const CLASSES: usize = 13;
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

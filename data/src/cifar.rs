//! CIFAR-10/100 in the standard binary layout (Krizhevsky's `*-binary` releases):
//! CIFAR-100 `train.bin`/`test.bin` with records `coarse u8, fine u8, 3072 pixel bytes`;
//! CIFAR-10 `data_batch_{1..5}.bin`/`test_batch.bin` with records `label u8, 3072 bytes`.
//! Pixels are CHW planes (1024 red, 1024 green, 1024 blue), 32×32.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const SIDE: usize = 32;
pub const PIXELS: usize = 3 * SIDE * SIDE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

impl CifarKind {
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// The shape of one image of a set: channels, height and width (CHW planes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// CIFAR's 3×32×32.
    pub const CIFAR: ImageShape = ImageShape {
        channels: 3,
        height: SIDE,
        width: SIDE,
    };
    /// Bytes (= pixel values) of one image.
    pub fn pixels(self) -> usize {
        self.channels * self.height * self.width
    }
}

/// An in-memory image classification set: u8 CHW images of one shape and class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
    pub num_classes: usize,
    pub shape: ImageShape,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let px = self.shape.pixels();
        &self.images[i * px..(i + 1) * px]
    }
    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.shape.channels;
        let plane = self.shape.height * self.shape.width;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for img in self.images.chunks(self.shape.pixels()) {
            for (c, plane) in img.chunks(plane).enumerate() {
                for &p in plane {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = (0..c)
            .map(|c| (sq[c] / n - mean[c] * mean[c]).max(1e-12).sqrt() as f32)
            .collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }
}

/// Reads one CIFAR binary file, validating its length and every label.
pub fn read_file(path: &Path, kind: CifarKind) -> Result<ImageSet> {
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &buf, kind)
}

/// Validates and decodes the records of one CIFAR binary file (`path` names it in errors).
pub fn parse(path: &Path, buf: &[u8], kind: CifarKind) -> Result<ImageSet> {
    let rec = kind.record_len();
    if buf.is_empty() {
        return Err(Error::Format {
            path: path.into(),
            message: "empty file".into(),
        });
    }
    if !buf.len().is_multiple_of(rec) {
        return Err(Error::Record {
            path: path.into(),
            record: buf.len() / rec,
            message: format!(
                "truncated: {} bytes is not a whole number of {rec}-byte records ({} complete, {} bytes left over)",
                buf.len(),
                buf.len() / rec,
                buf.len() % rec
            ),
        });
    }
    let n = buf.len() / rec;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    let classes = kind.num_classes();
    for (i, r) in buf.chunks_exact(rec).enumerate() {
        let (label, limit, what) = match kind {
            CifarKind::Cifar10 => (r[0], 10, "label"),
            CifarKind::Cifar100 => {
                if r[0] >= 20 {
                    return Err(Error::Record {
                        path: path.into(),
                        record: i,
                        message: format!("coarse label {} out of range (0..20)", r[0]),
                    });
                }
                (r[1], 100, "fine label")
            }
        };
        if label as usize >= limit {
            return Err(Error::Record {
                path: path.into(),
                record: i,
                message: format!("{what} {label} out of range (0..{classes})"),
            });
        }
        labels.push(label as u16);
        images.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(ImageSet {
        images,
        labels,
        num_classes: classes,
        shape: ImageShape::CIFAR,
    })
}

/// The files of a split, and which CIFAR it is, found in `dir`.
pub fn split_files(dir: &Path, split: Split) -> Result<(CifarKind, Vec<PathBuf>)> {
    let c100 = dir.join(match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    });
    if c100.exists() {
        return Ok((CifarKind::Cifar100, vec![c100]));
    }
    let c10: Vec<PathBuf> = match split {
        Split::Train => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    };
    if c10.iter().all(|p| p.exists()) {
        return Ok((CifarKind::Cifar10, c10));
    }
    Err(Error::Format {
        path: dir.into(),
        message: format!(
            "no CIFAR {} split here: expected {} (CIFAR-100) or {} (CIFAR-10)",
            if split == Split::Train {
                "train"
            } else {
                "test"
            },
            c100.file_name().unwrap().to_string_lossy(),
            c10.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Loads a split of CIFAR-10 or CIFAR-100 from a directory of binary files.
pub fn load(dir: &Path, split: Split) -> Result<ImageSet> {
    let (kind, files) = split_files(dir, split)?;
    let mut out = ImageSet {
        images: vec![],
        labels: vec![],
        num_classes: kind.num_classes(),
        shape: ImageShape::CIFAR,
    };
    for f in files {
        let part = read_file(&f, kind)?;
        out.images.extend(part.images);
        out.labels.extend(part.labels);
    }
    Ok(out)
}

/// Writes CIFAR-100 records atomically (temp file, then rename).
pub fn write_cifar100(path: &Path, images: &[u8], fine: &[u16], coarse: &[u8]) -> Result<()> {
    if images.len() != fine.len() * PIXELS || coarse.len() != fine.len() {
        return Err(Error::Invalid(
            "images, fine and coarse labels disagree in count".into(),
        ));
    }
    let mut buf = Vec::with_capacity(fine.len() * CifarKind::Cifar100.record_len());
    for (i, (&f, &c)) in fine.iter().zip(coarse).enumerate() {
        if f >= 100 || c >= 20 {
            return Err(Error::Invalid(format!("record {i}: label out of range")));
        }
        buf.push(c);
        buf.push(f as u8);
        buf.extend_from_slice(&images[i * PIXELS..(i + 1) * PIXELS]);
    }
    write_atomic(path, &buf)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    overparam_base::write_file_atomic(path, bytes).map_err(|e| Error::io(path, e))
}

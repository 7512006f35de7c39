//! The IDX format of LeCun's MNIST release, shared by Fashion-MNIST and KMNIST
//! (<http://yann.lecun.com/exdb/mnist/>, "FILE FORMATS FOR THE MNIST DATABASE"): a magic number
//! `0x00 0x00 <type> <ndim>`, `ndim` big-endian u32 dimensions, then the data, row-major.
//! Image files are `0x00000803` (u8, `n × rows × cols`), label files `0x00000801` (u8, `n`).
//! Files come raw or gzip-compressed (`*.gz`, as distributed and as Debian's
//! `dataset-fashion-mnist` installs them); both are read, told apart by the gzip magic.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::cifar::{ImageSet, ImageShape, Split};
use crate::error::{Error, Result};

/// The IDX type code of unsigned bytes, the only one the MNIST family uses.
pub const U8: u8 = 0x08;
/// Magic number of an image file (u8, 3 dimensions) and of a label file (u8, 1 dimension).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Most values one file may declare (4 GiB of u8): larger headers are refused before any
/// allocation, so a corrupt header cannot ask for terabytes.
pub const MAX_VALUES: usize = u32::MAX as usize;

/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST's IDX files.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The Debian package that installs them.
pub const FASHION_MNIST_PACKAGE: &str = "dataset-fashion-mnist";

/// The MNIST family's file names, per split (stem without `.gz`).
pub fn file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// One decoded IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

fn format(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.into(),
        message: message.into(),
    }
}

fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// Decodes one IDX file held in memory: gzip-compressed or raw (told apart by the gzip magic
/// `1f 8b`; an IDX file starts with `00 00`). `path` names the file in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.starts_with(&GZIP_MAGIC) {
        parse_stream(path, &mut flate2::read::GzDecoder::new(bytes), true)
    } else {
        parse_stream(path, &mut { bytes }, false)
    }
}

/// Reads and decodes one IDX file (raw or gzip).
pub fn read_file(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &bytes)
}

/// Reads up to `n` bytes; fewer only at the end of the stream.
fn read_up_to(path: &Path, r: &mut dyn Read, n: usize, gz: bool) -> Result<Vec<u8>> {
    // Grow with the data actually present, not with what a header claims.
    let mut out = Vec::with_capacity(n.min(1 << 20));
    r.take(n as u64).read_to_end(&mut out).map_err(|e| {
        if gz {
            format(path, format!("corrupt gzip stream: {e}"))
        } else {
            Error::io(path, e)
        }
    })?;
    Ok(out)
}

fn parse_stream(path: &Path, r: &mut dyn Read, gz: bool) -> Result<IdxArray> {
    let head = read_up_to(path, r, 4, gz)?;
    if head.len() < 4 {
        return Err(format(
            path,
            format!(
                "truncated: {} bytes, shorter than the 4-byte IDX magic number",
                head.len()
            ),
        ));
    }
    if head[0] != 0 || head[1] != 0 {
        return Err(format(
            path,
            format!(
                "wrong magic {:02x} {:02x} {:02x} {:02x}: not an IDX file (an IDX magic number starts 00 00)",
                head[0], head[1], head[2], head[3]
            ),
        ));
    }
    if head[2] != U8 {
        return Err(format(
            path,
            format!(
                "IDX type 0x{:02x} ({}) not supported: the MNIST family stores unsigned bytes (0x08)",
                head[2],
                type_name(head[2])
            ),
        ));
    }
    let ndim = head[3] as usize;
    if ndim == 0 {
        return Err(format(path, "IDX header declares 0 dimensions"));
    }
    let raw = read_up_to(path, r, 4 * ndim, gz)?;
    if raw.len() < 4 * ndim {
        return Err(format(
            path,
            format!("truncated: the header declares {ndim} dimensions but ends inside them"),
        ));
    }
    let dims: Vec<usize> = raw
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| {
            format(
                path,
                format!("dimensions {dims:?} declare more than {MAX_VALUES} values"),
            )
        })?;
    // One byte more than declared tells trailing data from an exact fit.
    let data = read_up_to(path, r, count + 1, gz)?;
    if data.len() < count {
        return Err(format(
            path,
            format!(
                "truncated: dimensions {dims:?} declare {count} data bytes, the file has {}",
                data.len()
            ),
        ));
    }
    if data.len() > count {
        return Err(format(
            path,
            format!(
                "dimensions {dims:?} declare {count} data bytes, but the file has more (trailing data or a wrong count)"
            ),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// Checks the magic number of a decoded array against what a role expects.
fn expect_magic(path: &Path, a: &IdxArray, magic: u32, what: &str) -> Result<()> {
    let got = ((U8 as u32) << 8) | a.dims.len() as u32;
    if got != magic {
        return Err(format(
            path,
            format!(
                "wrong magic 0x{got:08x} for {what} (expected 0x{magic:08x}: unsigned bytes, {} dimension{})",
                magic & 0xff,
                if magic & 0xff == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(())
}

/// Joins an image file (`n × rows × cols`) and a label file (`n`) into a 1-channel set,
/// checking that the counts agree and every label is below `num_classes`.
pub fn image_set(
    images_path: &Path,
    images: IdxArray,
    labels_path: &Path,
    labels: IdxArray,
    num_classes: usize,
) -> Result<ImageSet> {
    expect_magic(images_path, &images, IMAGES_MAGIC, "an image file")?;
    expect_magic(labels_path, &labels, LABELS_MAGIC, "a label file")?;
    let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    if n == 0 || rows == 0 || cols == 0 {
        return Err(format(
            images_path,
            format!("empty: {n} images of {rows}×{cols}"),
        ));
    }
    if labels.dims[0] != n {
        return Err(format(
            labels_path,
            format!(
                "wrong count: {} labels, but {} holds {n} images",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    if !(1..=u16::MAX as usize + 1).contains(&num_classes) {
        return Err(Error::Invalid(format!(
            "{}: {num_classes} classes: expected 1..=65536",
            labels_path.display()
        )));
    }
    if let Some((i, &l)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= num_classes)
    {
        return Err(Error::Record {
            path: labels_path.into(),
            record: i,
            message: format!("label {l} out of range (0..{num_classes})"),
        });
    }
    Ok(ImageSet {
        images: images.data,
        labels: labels.data.iter().map(|&l| l as u16).collect(),
        num_classes,
        shape: ImageShape {
            channels: 1,
            height: rows,
            width: cols,
        },
    })
}

/// The image and label files of a split in `dir`: `<name>` or `<name>.gz`, the raw file first.
pub fn split_files(dir: &Path, split: Split) -> Option<(PathBuf, PathBuf)> {
    let (img, lbl) = file_names(split);
    let find = |stem: &str| {
        [dir.join(stem), dir.join(format!("{stem}.gz"))]
            .into_iter()
            .find(|p| p.is_file())
    };
    Some((find(img)?, find(lbl)?))
}

/// Whether `dir` holds the MNIST-family train files (raw or gzip).
pub fn is_idx_dir(dir: &Path) -> bool {
    split_files(dir, Split::Train).is_some()
}

/// Loads a split of an MNIST-family dataset (labels `0..num_classes`) from `dir`.
pub fn load(dir: &Path, split: Split, num_classes: usize) -> Result<ImageSet> {
    let (img, lbl) = split_files(dir, split).ok_or_else(|| {
        let (i, l) = file_names(split);
        let which = if split == Split::Train {
            "train"
        } else {
            "test"
        };
        format(
            dir,
            format!("no IDX {which} split here: expected {i}[.gz] and {l}[.gz]"),
        )
    })?;
    let images = read_file(&img)?;
    let labels = read_file(&lbl)?;
    image_set(&img, images, &lbl, labels, num_classes)
}

/// Encodes an array of unsigned bytes as a raw IDX file.
pub fn to_bytes(dims: &[usize], data: &[u8]) -> Vec<u8> {
    debug_assert_eq!(dims.iter().product::<usize>(), data.len());
    let mut out = vec![0, 0, U8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Gzip-compresses bytes (as the distributed `*.gz` files are).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

/// Writes a split of a set as the MNIST family's files in `dir` (gzip-compressed when `gz`),
/// each atomically. For fixtures and tests: 1-channel sets only.
pub fn write_split(dir: &Path, split: Split, set: &ImageSet, gz: bool) -> Result<()> {
    if set.shape.channels != 1 || set.labels.iter().any(|&l| l > 255) {
        return Err(Error::Invalid(
            "IDX image sets are 1-channel with labels below 256".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (img, lbl) = file_names(split);
    let labels: Vec<u8> = set.labels.iter().map(|&l| l as u8).collect();
    let files = [
        (
            img,
            to_bytes(&[set.len(), set.shape.height, set.shape.width], &set.images),
        ),
        (lbl, to_bytes(&[set.len()], &labels)),
    ];
    for (name, bytes) in files {
        let (name, bytes) = if gz {
            (format!("{name}.gz"), gzip(&bytes))
        } else {
            (name.to_string(), bytes)
        };
        crate::cifar::write_atomic(&dir.join(name), &bytes)?;
    }
    Ok(())
}

/// A small deterministic 1-channel set (`side`×`side`, labels `0..classes`) for fixtures and
/// tests: each class is a bright bar at its own position and angle over seeded noise, so a
/// small net can learn it.
pub fn synthetic_set(n: usize, side: usize, classes: usize, seed: u64, split: &str) -> ImageSet {
    let mut images = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let mut rng = overparam_base::Rng::derive(seed, &format!("synth-idx.{split}.{i}"));
        let label = i % classes.max(1);
        let angle = std::f64::consts::PI * label as f64 / classes.max(1) as f64;
        let (s, c) = angle.sin_cos();
        let half = side as f64 / 2.0;
        for y in 0..side {
            for x in 0..side {
                let (dx, dy) = (x as f64 - half, y as f64 - half);
                let bar = (dx * s - dy * c).abs() < side as f64 / 8.0;
                let v = if bar { 200.0 } else { 30.0 } + rng.uniform_in(-25.0, 25.0);
                images.push(v.clamp(0.0, 255.0) as u8);
            }
        }
        labels.push(label as u16);
    }
    ImageSet {
        images,
        labels,
        num_classes: classes,
        shape: ImageShape {
            channels: 1,
            height: side,
            width: side,
        },
    }
}

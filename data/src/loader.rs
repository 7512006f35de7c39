//! Augmentation (random crop with zero padding, horizontal flip, per-channel normalisation)
//! and a loader that prepares batches on a background thread. Every random choice comes from
//! a stream derived from (seed, epoch, sample), so an epoch's batches are the same whatever
//! the thread timing, and a resumed run sees exactly the data it would have seen.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use overparam_base::Rng;

use crate::cifar::{ImageSet, ImageShape};

/// Per-channel normalisation `(x/255 − mean) / std` (one entry per channel).
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Training augmentation of the standard CIFAR recipe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Zero padding before a random crop at the image's size (4 in the usual recipe; 0 for
    /// none).
    pub crop_pad: usize,
    pub hflip: bool,
}

/// Writes one normalised (and optionally augmented) image of `shape` into `out` (CHW f32).
pub fn prepare(
    img: &[u8],
    shape: ImageShape,
    norm: &Normalize,
    aug: Option<(&Augment, &mut Rng)>,
    out: &mut [f32],
) {
    debug_assert_eq!(img.len(), shape.pixels());
    debug_assert_eq!(norm.mean.len(), shape.channels);
    let (dy, dx, flip) = match aug {
        Some((a, rng)) => {
            let p = a.crop_pad as isize;
            let dy = rng.below(2 * a.crop_pad + 1) as isize - p;
            let dx = rng.below(2 * a.crop_pad + 1) as isize - p;
            (dy, dx, a.hflip && rng.below(2) == 1)
        }
        None => (0, 0, false),
    };
    let (h, w) = (shape.height, shape.width);
    let plane = h * w;
    for c in 0..shape.channels {
        let (m, s) = (norm.mean[c], norm.std[c]);
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x } as isize + dx;
                let sy = y as isize + dy;
                let v = if sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                    img[c * plane + sy as usize * w + sx as usize] as f32 / 255.0
                } else {
                    0.0 // zero padding in pixel space, as torchvision's RandomCrop(padding=4)
                };
                out[c * plane + y * w + x] = (v - m) / s;
            }
        }
    }
}

/// The sample order of an epoch: a seeded Fisher–Yates permutation, or 0..n.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = Rng::derive(seed, &format!("order.epoch{epoch}"));
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    order
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub augment: Option<Augment>,
    pub normalize: Normalize,
    pub seed: u64,
}

/// One batch: NCHW f32 images and i64 labels.
#[derive(Clone, Debug)]
pub struct Batch {
    pub index: usize,
    pub size: usize,
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
}

/// Number of batches an epoch yields.
pub fn batches_per_epoch(n: usize, cfg: &LoaderConfig) -> usize {
    if cfg.drop_last {
        n / cfg.batch_size
    } else {
        n.div_ceil(cfg.batch_size)
    }
}

fn make_batch(
    set: &ImageSet,
    cfg: &LoaderConfig,
    epoch: usize,
    index: usize,
    ids: &[usize],
) -> Batch {
    let px = set.shape.pixels();
    let mut images = vec![0f32; ids.len() * px];
    for (slot, &i) in ids.iter().enumerate() {
        let out = &mut images[slot * px..(slot + 1) * px];
        match &cfg.augment {
            Some(a) => {
                let mut rng = Rng::derive(cfg.seed, &format!("augment.epoch{epoch}.{i}"));
                prepare(
                    set.image(i),
                    set.shape,
                    &cfg.normalize,
                    Some((a, &mut rng)),
                    out,
                )
            }
            None => prepare(set.image(i), set.shape, &cfg.normalize, None, out),
        }
    }
    Batch {
        index,
        size: ids.len(),
        images,
        labels: ids.iter().map(|&i| set.labels[i] as i64).collect(),
    }
}

/// Iterates an epoch's batches, prepared on a background thread two batches ahead.
pub struct Loader {
    rx: Receiver<Batch>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts at batch `start` (for resuming mid-epoch).
    pub fn spawn(set: Arc<ImageSet>, cfg: LoaderConfig, epoch: usize, start: usize) -> Self {
        let (tx, rx) = sync_channel(2);
        let handle = std::thread::spawn(move || {
            let order = epoch_order(set.len(), cfg.seed, epoch, cfg.shuffle);
            let n = batches_per_epoch(set.len(), &cfg);
            for b in start..n {
                let ids = &order[b * cfg.batch_size..((b + 1) * cfg.batch_size).min(order.len())];
                if tx.send(make_batch(&set, &cfg, epoch, b, ids)).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        Self {
            rx,
            handle: Some(handle),
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer, then wait for it, so no thread outlives the loader.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

//! Synthetic CIFAR-100: 100 procedurally drawn classes written in the real binary format, so the
//! real reader is always exercised. A class is (shape family × texture × colour family):
//! 5 shapes × 5 textures × 4 colours = 100 fine classes; the coarse label is fine / 5.
//! Each image draws a random scale, rotation and translation, a cluttered background with
//! distractor shapes, colour jitter and pixel noise, from a stream seeded by (seed, split,
//! index): deterministic, and the same image whatever the thread count.

use std::path::Path;

use overparam_base::Rng;

use crate::cifar::{PIXELS, SIDE, write_cifar100};
use crate::error::Result;

pub const SHAPES: usize = 5;
pub const TEXTURES: usize = 5;
pub const COLOURS: usize = 4;
pub const CLASSES: usize = SHAPES * TEXTURES * COLOURS;

/// Base hues (RGB) of the colour families; each image jitters them.
const PALETTE: [[f64; 3]; COLOURS] = [
    [0.85, 0.25, 0.2],
    [0.25, 0.75, 0.3],
    [0.2, 0.35, 0.9],
    [0.9, 0.8, 0.2],
];

/// Signed "inside" measure of a shape at object coordinates (x, y) ∈ [-1, 1]²: > 0 inside.
fn shape_field(shape: usize, x: f64, y: f64) -> f64 {
    match shape {
        0 => 1.0 - (x * x + y * y).sqrt(),                         // disk
        1 => 1.0 - x.abs().max(y.abs()) * 1.15,                    // square
        2 => (0.8 - y).min(0.9 * (y + 0.6) - 1.6 * x.abs()) * 1.2, // triangle
        3 => (0.35 - x.abs())
            .max(0.35 - y.abs())
            .min(1.0 - x.abs().max(y.abs())), // plus
        _ => 0.35 - ((x * x + y * y).sqrt() - 0.65).abs(),         // ring
    }
}

/// Texture intensity in [0, 1] at object coordinates.
fn texture(tex: usize, x: f64, y: f64, freq: f64, phase: f64) -> f64 {
    match tex {
        0 => 1.0,
        1 => 0.5 + 0.5 * (freq * y + phase).sin().signum(),
        2 => {
            let a = ((freq * x + phase).sin() * (freq * y + phase).sin()).signum();
            0.5 + 0.5 * a
        }
        3 => {
            let (fx, fy) = (
                (freq * 0.5 * x + phase).sin(),
                (freq * 0.5 * y + phase).sin(),
            );
            if fx * fx + fy * fy > 1.2 { 1.0 } else { 0.25 }
        }
        _ => (1.0 - (x * x + y * y).sqrt()).clamp(0.0, 1.0),
    }
}

/// The class of fine label `c`: (shape, texture, colour).
pub fn decompose(c: usize) -> (usize, usize, usize) {
    (
        c / (TEXTURES * COLOURS),
        (c / COLOURS) % TEXTURES,
        c % COLOURS,
    )
}

struct Placement {
    cx: f64,
    cy: f64,
    scale: f64,
    cos: f64,
    sin: f64,
}

impl Placement {
    fn draw(rng: &mut Rng, min_scale: f64, max_scale: f64) -> Self {
        let angle = rng.uniform_in(0.0, std::f64::consts::TAU);
        Self {
            cx: rng.uniform_in(0.3, 0.7) * SIDE as f64,
            cy: rng.uniform_in(0.3, 0.7) * SIDE as f64,
            scale: rng.uniform_in(min_scale, max_scale) * SIDE as f64 / 2.0,
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }
    fn local(&self, px: f64, py: f64) -> (f64, f64) {
        let (dx, dy) = ((px - self.cx) / self.scale, (py - self.cy) / self.scale);
        (
            self.cos * dx + self.sin * dy,
            -self.sin * dx + self.cos * dy,
        )
    }
}

/// Renders one image of class `class` (CHW u8).
pub fn render(class: usize, rng: &mut Rng) -> Vec<u8> {
    let (shape, tex, colour) = decompose(class);
    let mut img = vec![0f64; PIXELS];
    let plane = SIDE * SIDE;
    // Background: a random two-colour gradient.
    let bg0: [f64; 3] = [0, 1, 2].map(|_| rng.uniform_in(0.1, 0.7));
    let bg1: [f64; 3] = [0, 1, 2].map(|_| rng.uniform_in(0.1, 0.7));
    let (gx, gy) = (rng.normal(), rng.normal());
    for y in 0..SIDE {
        for x in 0..SIDE {
            let t = (0.5 + 0.5 * ((gx * x as f64 + gy * y as f64) / SIDE as f64).tanh())
                .clamp(0.0, 1.0);
            for c in 0..3 {
                img[c * plane + y * SIDE + x] = bg0[c] * (1.0 - t) + bg1[c] * t;
            }
        }
    }
    // Clutter: small distractor shapes of random families and colours.
    for _ in 0..rng.below(3) {
        let p = Placement::draw(rng, 0.15, 0.3);
        let s = rng.below(SHAPES);
        let col: [f64; 3] = [0, 1, 2].map(|_| rng.uniform_in(0.0, 1.0));
        paint(&mut img, &p, |x, y| (shape_field(s, x, y), 1.0), col, 0.6);
    }
    // The object.
    let p = Placement::draw(rng, 0.45, 0.85);
    let freq = rng.uniform_in(6.0, 11.0);
    let phase = rng.uniform_in(0.0, std::f64::consts::TAU);
    let base = PALETTE[colour];
    let col = base.map(|v| (v + rng.normal() * 0.08).clamp(0.0, 1.0));
    paint(
        &mut img,
        &p,
        |x, y| {
            (
                shape_field(shape, x, y),
                0.35 + 0.65 * texture(tex, x, y, freq, phase),
            )
        },
        col,
        1.0,
    );
    let noise = rng.uniform_in(0.02, 0.08);
    img.iter()
        .map(|&v| ((v + rng.normal() * noise).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

/// Alpha-blends a shape (soft edge) with a per-pixel shade into the image.
fn paint(
    img: &mut [f64],
    p: &Placement,
    field: impl Fn(f64, f64) -> (f64, f64),
    col: [f64; 3],
    opacity: f64,
) {
    let plane = SIDE * SIDE;
    for y in 0..SIDE {
        for x in 0..SIDE {
            let (lx, ly) = p.local(x as f64 + 0.5, y as f64 + 0.5);
            let (inside, shade) = field(lx, ly);
            let alpha = (inside * p.scale).clamp(0.0, 1.0) * opacity;
            if alpha > 0.0 {
                for (c, &v) in col.iter().enumerate() {
                    let i = c * plane + y * SIDE + x;
                    img[i] = img[i] * (1.0 - alpha) + v * shade * alpha;
                }
            }
        }
    }
}

/// Draws a split: balanced classes (round robin), shuffled order, images and labels.
pub fn generate(n: usize, seed: u64, split: &str) -> (Vec<u8>, Vec<u16>) {
    let mut order_rng = Rng::derive(seed, &format!("synth-cifar.{split}.order"));
    let mut labels: Vec<u16> = (0..n).map(|i| (i % CLASSES) as u16).collect();
    for i in (1..n).rev() {
        labels.swap(i, order_rng.below(i + 1));
    }
    let mut images = Vec::with_capacity(n * PIXELS);
    for (i, &l) in labels.iter().enumerate() {
        let mut rng = Rng::derive(seed, &format!("synth-cifar.{split}.{i}"));
        images.extend(render(l as usize, &mut rng));
    }
    (images, labels)
}

/// A split held in memory (the same images [`write_synthetic_cifar100`] writes).
pub fn image_set(n: usize, seed: u64, split: &str) -> crate::cifar::ImageSet {
    let (images, labels) = generate(n, seed, split);
    crate::cifar::ImageSet {
        images,
        labels,
        num_classes: CLASSES,
        shape: crate::cifar::ImageShape::CIFAR,
    }
}

/// Most images per synthetic split: a split is drawn in memory (3 KiB an image, so 3 GiB).
pub const MAX_SYNTH_IMAGES: usize = 1 << 20;

/// Refuses split sizes over [`MAX_SYNTH_IMAGES`] before anything is drawn.
pub fn check_split_sizes(train: usize, test: usize) -> Result<()> {
    for (name, n) in [("train", train), ("test", test)] {
        if n > MAX_SYNTH_IMAGES {
            return Err(crate::error::Error::Invalid(format!(
                "synthetic CIFAR-100: {n} {name} images is more than {MAX_SYNTH_IMAGES} (a split is drawn in memory, {} bytes an image)",
                PIXELS
            )));
        }
    }
    Ok(())
}

/// Writes `train.bin` and `test.bin` in the CIFAR-100 binary layout.
pub fn write_synthetic_cifar100(dir: &Path, train: usize, test: usize, seed: u64) -> Result<()> {
    check_split_sizes(train, test)?;
    std::fs::create_dir_all(dir).map_err(|e| crate::error::Error::io(dir, e))?;
    for (name, n) in [("train", train), ("test", test)] {
        let (images, labels) = generate(n, seed, name);
        let coarse: Vec<u8> = labels.iter().map(|&l| (l / 5) as u8).collect();
        write_cifar100(&dir.join(format!("{name}.bin")), &images, &labels, &coarse)?;
    }
    Ok(())
}

//! Synthetic indoor scenes in the NYUv2 (MTAN) layout, by ray casting: a room (floor, ceiling,
//! walls with paintings and windows) with beds, tables, sofas, chairs, cupboards, TVs, books
//! and spheres, seen by a pinhole camera. Per pixel: the exact class of the first hit, its
//! depth along the optical axis in metres, and its camera-frame normal (facing the camera).
//! Lambert shading, per-object textures and noise make the image; windows (glass) and a few
//! random patches are invalid (depth 0, normal 0; label −1 in the patches). Deterministic per
//! (seed, split, index).

use std::path::Path;

use overparam_base::Rng;

use crate::error::Result;
use crate::nyuv2::{NyuSample, write_sample};

// NYUv2 13-class indices (MTAN): bed, books, ceiling, chair, floor, furniture, objects,
// painting, sofa, table, tv, wall, window.
const BED: u8 = 0;
const BOOKS: u8 = 1;
const CEILING: u8 = 2;
const CHAIR: u8 = 3;
const FLOOR: u8 = 4;
const FURNITURE: u8 = 5;
const OBJECTS: u8 = 6;
const PAINTING: u8 = 7;
const SOFA: u8 = 8;
const TABLE: u8 = 9;
const TV: u8 = 10;
const WALL: u8 = 11;
const WINDOW: u8 = 12;

type V3 = [f64; 3];
/// (class, base colour, width range, height range, depth range) of a furniture kind.
type Furniture = (u8, V3, (f64, f64), (f64, f64), (f64, f64));
/// The nearest hit so far: distance, normal, class, colour, texture.
type Hit = (f64, V3, u8, V3, (usize, f64));

fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[derive(Clone, Copy)]
enum Shape {
    /// Axis-aligned box (min, max).
    Aabb(V3, V3),
    Sphere(V3, f64),
    /// Vertical cylinder: centre (x, z), radius, y range.
    Cylinder(f64, f64, f64, f64, f64),
}

struct Object {
    shape: Shape,
    class: u8,
    colour: V3,
    texture: (usize, f64),
}

/// Ray (origin 0, direction d) against a shape: distance and outward normal.
fn hit(shape: &Shape, d: V3) -> Option<(f64, V3)> {
    match *shape {
        Shape::Aabb(lo, hi) => {
            let (mut t0, mut t1, mut axis) = (0.0f64, f64::INFINITY, 0);
            for a in 0..3 {
                if d[a].abs() < 1e-12 {
                    if 0.0 < lo[a] || 0.0 > hi[a] {
                        return None;
                    }
                    continue;
                }
                let (mut ta, mut tb) = (lo[a] / d[a], hi[a] / d[a]);
                if ta > tb {
                    std::mem::swap(&mut ta, &mut tb);
                }
                if ta > t0 {
                    t0 = ta;
                    axis = a;
                }
                t1 = t1.min(tb);
                if t0 > t1 {
                    return None;
                }
            }
            let mut n = [0.0; 3];
            n[axis] = -d[axis].signum();
            (t0 > 1e-6).then_some((t0, n))
        }
        Shape::Sphere(c, r) => {
            let b = dot(d, c);
            let disc = b * b - (dot(c, c) - r * r);
            if disc < 0.0 {
                return None;
            }
            let t = b - disc.sqrt();
            let p = [d[0] * t, d[1] * t, d[2] * t];
            (t > 1e-6).then(|| (t, [(p[0] - c[0]) / r, (p[1] - c[1]) / r, (p[2] - c[2]) / r]))
        }
        Shape::Cylinder(cx, cz, r, y0, y1) => {
            let a = d[0] * d[0] + d[2] * d[2];
            if a < 1e-12 {
                return None;
            }
            let b = d[0] * cx + d[2] * cz;
            let disc = b * b - a * (cx * cx + cz * cz - r * r);
            if disc < 0.0 {
                return None;
            }
            let t = (b - disc.sqrt()) / a;
            let y = d[1] * t;
            if t > 1e-6 && y >= y0 && y <= y1 {
                return Some((t, [(d[0] * t - cx) / r, 0.0, (d[2] * t - cz) / r]));
            }
            // Top cap (y0 is the upper end in camera coordinates, y pointing down).
            if d[1].abs() > 1e-12 {
                let t = y0 / d[1];
                let (x, z) = (d[0] * t, d[2] * t);
                if t > 1e-6 && (x - cx).powi(2) + (z - cz).powi(2) <= r * r {
                    return Some((t, [0.0, -1.0, 0.0]));
                }
            }
            None
        }
    }
}

fn texture(kind: usize, freq: f64, p: V3) -> f64 {
    match kind {
        0 => 1.0,
        1 => 0.75 + 0.25 * (freq * (p[0] + p[2])).sin().signum(),
        2 => 0.8 + 0.2 * ((freq * p[0]).sin() * (freq * p[1]).sin() * (freq * p[2]).cos()).signum(),
        _ => 0.85 + 0.15 * (freq * p[1]).sin(),
    }
}

fn random_colour(rng: &mut Rng, base: V3) -> V3 {
    base.map(|c| (c + rng.normal() * 0.08).clamp(0.02, 1.0))
}

/// Renders one scene at `h`×`w`.
///
/// Long on purpose: the draws from `rng` happen in one fixed order (room, pose, boxes, then
/// per-pixel ray casting) and that order is the golden stream of every synthetic NYUv2 set;
/// keeping it in one function keeps the order visible.
pub fn render(h: usize, w: usize, rng: &mut Rng) -> NyuSample {
    let f = 0.82 * w as f64; // ≈ NYUv2's horizontal field of view
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    // Room bounds in camera coordinates (x right, y down, z forward), with a random pose offset.
    let floor_y = rng.uniform_in(1.1, 1.5);
    let ceil_y = -rng.uniform_in(1.2, 1.6);
    let (left, right) = (-rng.uniform_in(1.6, 2.6), rng.uniform_in(1.6, 2.6));
    let back = rng.uniform_in(4.5, 7.5);
    let mut objects: Vec<Object> = vec![];
    let furniture: [Furniture; 7] = [
        (BED, [0.8, 0.75, 0.7], (1.4, 2.0), (0.4, 0.6), (1.8, 2.2)),
        (TABLE, [0.55, 0.35, 0.2], (0.8, 1.4), (0.7, 0.8), (0.6, 0.9)),
        (SOFA, [0.35, 0.4, 0.6], (1.6, 2.2), (0.5, 0.8), (0.7, 0.9)),
        (CHAIR, [0.6, 0.3, 0.25], (0.4, 0.5), (0.8, 1.0), (0.4, 0.5)),
        (
            FURNITURE,
            [0.7, 0.6, 0.45],
            (0.6, 1.2),
            (1.4, 2.0),
            (0.4, 0.6),
        ),
        (TV, [0.05, 0.05, 0.07], (0.8, 1.2), (0.5, 0.7), (0.08, 0.12)),
        (BOOKS, [0.7, 0.2, 0.3], (0.2, 0.4), (0.2, 0.3), (0.15, 0.25)),
    ];
    for _ in 0..2 + rng.below(4) {
        let (class, base, sx, sy, sz) = furniture[rng.below(furniture.len())];
        let size = [
            rng.uniform_in(sx.0, sx.1),
            rng.uniform_in(sy.0, sy.1),
            rng.uniform_in(sz.0, sz.1),
        ];
        let x = rng.uniform_in(left + 0.2, right - 0.2 - size[0]);
        let z = rng.uniform_in(2.0, back - size[2] - 0.1);
        // TVs and books sit on something; everything else stands on the floor.
        let bottom = if class == TV || class == BOOKS {
            floor_y - rng.uniform_in(0.5, 0.8)
        } else {
            floor_y
        };
        let shape = if class == CHAIR && rng.below(2) == 0 {
            Shape::Cylinder(
                x + size[0] / 2.0,
                z + size[2] / 2.0,
                size[0] / 2.0,
                bottom - size[1],
                bottom,
            )
        } else {
            Shape::Aabb([x, bottom - size[1], z], [x + size[0], bottom, z + size[2]])
        };
        objects.push(Object {
            shape,
            class,
            colour: random_colour(rng, base),
            texture: (rng.below(4), rng.uniform_in(8.0, 20.0)),
        });
    }
    for _ in 0..rng.below(3) {
        let r = rng.uniform_in(0.1, 0.3);
        let c = [
            rng.uniform_in(left + r, right - r),
            floor_y - r,
            rng.uniform_in(1.5, back - r),
        ];
        let base = [rng.uniform(), rng.uniform(), rng.uniform()];
        let colour = random_colour(rng, base);
        objects.push(Object {
            shape: Shape::Sphere(c, r),
            class: OBJECTS,
            colour,
            texture: (0, 1.0),
        });
    }
    // Room surfaces as thin boxes so one intersection routine serves all.
    let big = 50.0;
    let room = [
        (
            Shape::Aabb([-big, floor_y, -big], [big, floor_y + 0.01, big]),
            FLOOR,
            [0.55, 0.45, 0.35],
        ),
        (
            Shape::Aabb([-big, ceil_y - 0.01, -big], [big, ceil_y, big]),
            CEILING,
            [0.9, 0.9, 0.88],
        ),
        (
            Shape::Aabb([left - 0.01, -big, -big], [left, big, big]),
            WALL,
            [0.8, 0.78, 0.7],
        ),
        (
            Shape::Aabb([right, -big, -big], [right + 0.01, big, big]),
            WALL,
            [0.8, 0.78, 0.7],
        ),
        (
            Shape::Aabb([-big, -big, back], [big, big, back + 0.01]),
            WALL,
            [0.75, 0.8, 0.78],
        ),
    ];
    let wall_tint = random_colour(rng, [0.8, 0.78, 0.72]);
    // Rectangles on the back wall: paintings and windows (x0, x1, y0, y1, class).
    let mut decals = vec![];
    for _ in 0..1 + rng.below(2) {
        let (wd, ht) = (rng.uniform_in(0.5, 1.2), rng.uniform_in(0.4, 0.9));
        let x0 = rng.uniform_in(left + 0.1, right - wd - 0.1);
        let y0 = rng.uniform_in(ceil_y + 0.2, 0.0);
        decals.push((
            x0,
            x0 + wd,
            y0,
            y0 + ht,
            if rng.below(2) == 0 { PAINTING } else { WINDOW },
            random_colour(rng, [0.5, 0.4, 0.6]),
        ));
    }
    let light = {
        let l: V3 = [rng.uniform_in(-0.5, 0.5), -1.0, rng.uniform_in(-0.6, -0.2)];
        let n = dot(l, l).sqrt();
        l.map(|v| -v / n)
    };
    let noise = rng.uniform_in(0.01, 0.04);
    let n_px = h * w;
    let mut s = NyuSample {
        height: h,
        width: w,
        image: vec![0.0; n_px * 3],
        label: vec![0.0; n_px],
        depth: vec![0.0; n_px],
        normal: vec![0.0; n_px * 3],
    };
    for py in 0..h {
        for px in 0..w {
            let dir = {
                let d = [(px as f64 + 0.5 - cx) / f, (py as f64 + 0.5 - cy) / f, 1.0];
                let n = dot(d, d).sqrt();
                d.map(|v| v / n)
            };
            let mut best: Option<Hit> = None;
            for (shape, class, colour) in &room {
                if let Some((t, nrm)) = hit(shape, dir)
                    && best.is_none_or(|b| t < b.0)
                {
                    let colour = if *class == WALL { wall_tint } else { *colour };
                    best = Some((t, nrm, *class, colour, (0, 1.0)));
                }
            }
            for o in &objects {
                if let Some((t, nrm)) = hit(&o.shape, dir)
                    && best.is_none_or(|b| t < b.0)
                {
                    best = Some((t, nrm, o.class, o.colour, o.texture));
                }
            }
            let (t, nrm, mut class, mut colour, tex) = best.expect("the room encloses the camera");
            let p = dir.map(|v| v * t);
            let mut glass = false;
            if class == WALL && (p[2] - back).abs() < 0.02 {
                for &(x0, x1, y0, y1, c, col) in &decals {
                    if p[0] >= x0 && p[0] <= x1 && p[1] >= y0 && p[1] <= y1 {
                        class = c;
                        colour = if c == WINDOW { [0.85, 0.92, 1.0] } else { col };
                        glass = c == WINDOW;
                    }
                }
            }
            let i = py * w + px;
            let shade = 0.35 + 0.65 * dot(nrm, light).max(0.0);
            let tx = texture(tex.0, tex.1, p);
            for (c, &base) in colour.iter().enumerate() {
                let v = base * shade * tx + rng.normal() * noise;
                s.image[i * 3 + c] = v.clamp(0.0, 1.0) as f32;
            }
            s.label[i] = class as f32;
            // Depth sensors return nothing through glass.
            if !glass {
                s.depth[i] = p[2] as f32;
                for (dst, &v) in s.normal[i * 3..i * 3 + 3].iter_mut().zip(&nrm) {
                    *dst = v as f32;
                }
            }
        }
    }
    // A few unlabelled, invalid patches (sensor dropouts, unlabelled regions).
    for _ in 0..rng.below(3) {
        let (ph, pw) = (1 + rng.below(h / 10 + 1), 1 + rng.below(w / 10 + 1));
        let (y0, x0) = (rng.below(h - ph + 1), rng.below(w - pw + 1));
        for y in y0..y0 + ph {
            for x in x0..x0 + pw {
                let i = y * w + x;
                s.label[i] = -1.0;
                s.depth[i] = 0.0;
                s.normal[i * 3..i * 3 + 3].fill(0.0);
            }
        }
    }
    s
}

/// Smallest and largest scene side (NYUv2 itself is 288×384 after MTAN's preprocessing).
pub const MIN_SIDE: usize = 8;
pub const MAX_SIDE: usize = 4096;

/// Refuses a scene size outside [`MIN_SIDE`]..=[`MAX_SIDE`] before anything is allocated (a
/// scene holds 8 f32 per pixel while it is drawn: 512 MiB at the largest size).
pub fn check_scene_size(h: usize, w: usize) -> Result<()> {
    if !(MIN_SIDE..=MAX_SIDE).contains(&h) || !(MIN_SIDE..=MAX_SIDE).contains(&w) {
        return Err(crate::error::Error::Invalid(format!(
            "synthetic NYUv2: scene size {h}×{w}: height and width must be in {MIN_SIDE}..={MAX_SIDE}"
        )));
    }
    Ok(())
}

/// Writes `train` and `val` scenes in the MTAN layout.
pub fn write_synthetic_nyuv2(
    dir: &Path,
    train: usize,
    val: usize,
    h: usize,
    w: usize,
    seed: u64,
) -> Result<()> {
    check_scene_size(h, w)?;
    for (split, n) in [("train", train), ("val", val)] {
        for i in 0..n {
            let mut rng = Rng::derive(seed, &format!("nyuv2.{split}.{i}"));
            write_sample(dir, split, i, &render(h, w, &mut rng))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn scene_sizes_are_bounded_before_allocation() {
        super::check_scene_size(288, 384).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = super::write_synthetic_nyuv2(dir.path(), 1, 0, 100_000, 384, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("100000×384") && e.contains("4096"), "{e}");
        assert!(super::check_scene_size(4, 384).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn synthetic_cifar_splits_are_bounded_before_allocation() {
        crate::synth::check_split_sizes(50_000, 10_000).unwrap();
        let e = crate::synth::check_split_sizes(1, usize::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test") && e.contains("1048576"), "{e}");
    }
}

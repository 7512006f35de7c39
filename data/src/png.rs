//! A minimal PNG writer (8-bit RGB, deflate by miniz_oxide): enough for diagnostic panels and
//! charts without an image crate.

use std::path::Path;

use crate::error::Result;

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// PNG bytes of a `w`×`h` RGB image (row-major, 3 bytes per pixel).
pub fn encode_rgb(w: usize, h: usize, rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len(), w * h * 3);
    let mut raw = Vec::with_capacity(h * (w * 3 + 1));
    for row in rgb.chunks(w * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    // zlib stream (header, deflate, Adler-32); level 6 shrinks charts ~50×.
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

pub fn write_rgb(path: &Path, w: usize, h: usize, rgb: &[u8]) -> Result<()> {
    crate::cifar::write_atomic(path, &encode_rgb(w, h, rgb))
}

/// 13 distinct class colours (NYUv2's 13 classes); index ≥ 13 wraps.
pub const PALETTE: [[u8; 3]; 13] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 190],
    [0, 128, 128],
    [170, 110, 40],
    [128, 128, 255],
];

/// A class index as a colour; negative (ignored) is black.
pub fn class_colour(v: f32) -> [u8; 3] {
    if v >= 0.0 {
        PALETTE[(v as usize) % PALETTE.len()]
    } else {
        [0, 0, 0]
    }
}

/// Depth as grey, near bright; 0 (invalid) black.
pub fn depth_grey(d: f32, dmax: f32) -> [u8; 3] {
    let g = if d > 0.0 {
        (255.0 * (1.0 - d / dmax)).clamp(0.0, 255.0) as u8
    } else {
        0
    };
    [g, g, g]
}

/// A unit normal as RGB (n·0.5 + 0.5); all-zero (invalid) black.
pub fn normal_colour(n: &[f32]) -> [u8; 3] {
    if n.iter().all(|v| *v == 0.0) {
        [0, 0, 0]
    } else {
        std::array::from_fn(|c| ((n[c] * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0) as u8)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksums_match_known_values() {
        assert_eq!(super::crc32(b"IEND"), 0xAE42_6082);
    }
}

//! PNG output for diagnostic panels and charts (8-bit RGB, through the `png` crate), and the
//! colour maps that draw class maps, depth and normals.

use std::path::Path;

use crate::error::{Error, Result};

/// PNG bytes of a `w`×`h` RGB image (row-major, 3 bytes per pixel).
pub fn encode_rgb(w: usize, h: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    let bad = |m: String| Error::Invalid(format!("png {w}×{h}: {m}"));
    if rgb.len() != w * h * 3 {
        return Err(bad(format!(
            "{} bytes of RGB, want {}",
            rgb.len(),
            w * h * 3
        )));
    }
    let (pw, ph) = (
        u32::try_from(w).map_err(|_| bad("too wide".into()))?,
        u32::try_from(h).map_err(|_| bad("too tall".into()))?,
    );
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, pw, ph);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    // Charts are mostly flat colour: the best deflate keeps them a few KB.
    e.set_compression(png::Compression::Best);
    let mut writer = e.write_header().map_err(|x| bad(x.to_string()))?;
    writer
        .write_image_data(rgb)
        .map_err(|x| bad(x.to_string()))?;
    writer.finish().map_err(|x| bad(x.to_string()))?;
    Ok(out)
}

pub fn write_rgb(path: &Path, w: usize, h: usize, rgb: &[u8]) -> Result<()> {
    crate::cifar::write_atomic(path, &encode_rgb(w, h, rgb)?)
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
    use super::*;

    /// What is written decodes back to the same pixels; sizes that do not match are errors.
    #[test]
    fn encoded_images_decode_to_the_same_pixels() {
        let (w, h) = (5, 3);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let bytes = encode_rgb(w, h, &rgb).unwrap();
        let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut back = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut back).unwrap();
        assert_eq!((info.width, info.height), (w as u32, h as u32));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&back[..info.buffer_size()], &rgb[..]);
        assert!(encode_rgb(w, h, &rgb[1..]).is_err());
    }
}

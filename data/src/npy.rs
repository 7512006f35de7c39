//! NumPy `.npy` files (format 1.0/2.0/3.0), C order, little-endian float32 (and float64/
//! int64, converted to f32 on read). Errors name the file; sizes in the header are checked
//! against the file before anything is allocated.

use std::path::Path;

use crate::error::{Error, Result};

/// An array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn bad(path: &Path, m: impl Into<String>) -> Error {
    Error::Format {
        path: path.into(),
        message: m.into(),
    }
}

/// Parses `.npy` bytes; `path` is only used in messages.
pub fn parse(path: &Path, buf: &[u8]) -> Result<Array> {
    if buf.len() < 10 || &buf[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not a .npy file (bad magic)"));
    }
    let (hlen, start) = match buf[6] {
        1 => (u16::from_le_bytes([buf[8], buf[9]]) as usize, 10),
        2 | 3 if buf.len() >= 12 => (
            u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!("unsupported .npy version {v}"))),
    };
    let header = buf
        .get(start..start + hlen)
        .ok_or_else(|| bad(path, "truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad(path, "header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[i..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")
        .and_then(|d| d.strip_prefix('\'')?.split('\'').next())
        .ok_or_else(|| bad(path, "no descr"))?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad(path, "Fortran-order arrays are not supported"));
    }
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('(')?.split(')').next())
        .ok_or_else(|| bad(path, "no shape"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("bad dimension `{s}` in shape")))
        })
        .collect::<Result<_>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, "shape overflows"))?;
    let body = &buf[start + hlen..];
    let size = match descr {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "|i1" | "|b1" => 1,
        d => {
            return Err(bad(
                path,
                format!("unsupported dtype `{d}` (expected little-endian float or int)"),
            ));
        }
    };
    let need = n
        .checked_mul(size)
        .ok_or_else(|| bad(path, "shape overflows"))?;
    if body.len() != need {
        return Err(bad(
            path,
            format!(
                "data has {} bytes, shape {shape:?} of {descr} needs {need}",
                body.len()
            ),
        ));
    }
    let data: Vec<f32> = match descr {
        "<f4" => body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "<i4" => body
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        "<f8" => body
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32)
            .collect(),
        "<i8" => body
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8")) as f32)
            .collect(),
        "|i1" => body.iter().map(|&b| b as i8 as f32).collect(),
        _ => body.iter().map(|&b| b as f32).collect(),
    };
    Ok(Array { shape, data })
}

pub fn read(path: &Path) -> Result<Array> {
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &buf)
}

/// `.npy` (version 1.0) bytes of a float32 C-order array.
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that magic + version + length + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 array atomically.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    crate::cifar::write_atomic(path, &to_bytes(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let p = Path::new("x.npy");
        let b = to_bytes(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        assert_eq!((b.len() - 24) % 64, 0);
        let a = parse(p, &b).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data[5], -6.5);
        assert!(
            parse(p, &b[..b.len() - 1])
                .unwrap_err()
                .to_string()
                .contains("needs 24")
        );
        assert!(
            parse(p, b"garbage!!!!")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let mut huge = b.clone();
        let s = String::from_utf8_lossy(&huge).replace("(2, 3)", "(9999999999999, 99999999999)");
        huge = s.into_bytes();
        assert!(parse(p, &huge).is_err());
    }

    /// Absurd shapes in a header (2^40 elements, a negative dimension, an overflowing
    /// product) are refused by the byte count before anything is allocated.
    #[test]
    fn absurd_shapes_are_refused_before_allocation() {
        let with_shape = |shape: &str| {
            let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            while (10 + h.len() + 1) % 64 != 0 {
                h.push(' ');
            }
            h.push('\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&[0u8; 16]);
            b
        };
        let p = std::path::Path::new("x.npy");
        for shape in [
            "(1099511627776,)",
            "(-1, 4)",
            "(4294967296, 4294967296, 16)",
        ] {
            let e = parse(p, &with_shape(shape)).unwrap_err().to_string();
            assert!(e.contains("x.npy"), "{shape}: {e}");
        }
        assert_eq!(parse(p, &with_shape("(2, 2)")).unwrap().shape, vec![2, 2]);
    }
}

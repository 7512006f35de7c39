//! Window geometry shared by convolutions and pools: (height, width) pairs and four-sided
//! padding, stored compactly (one number when every side is equal, which is every spec written
//! before non-square windows existed, so those still load unchanged).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A pair or a single number standing for both, as stored in spec JSON.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(usize),
    Many(Vec<usize>),
}

fn read<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[usize; N], D::Error> {
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => Ok([v; N]),
        OneOrMany::Many(v) => v
            .try_into()
            .map_err(|v: Vec<usize>| D::Error::custom(format!("expected {N} numbers, got {v:?}"))),
    }
}

fn write<S: Serializer, const N: usize>(v: &[usize; N], s: S) -> Result<S::Ok, S::Error> {
    if v.iter().all(|&x| x == v[0]) {
        v[0].serialize(s)
    } else {
        v.as_slice().serialize(s)
    }
}

/// `(height, width)`: serde as one number when both are equal.
pub mod pair {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[usize; 2], s: S) -> Result<S::Ok, S::Error> {
        write(v, s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[usize; 2], D::Error> {
        read(d)
    }
}

/// `[top, left, bottom, right]` (ONNX's `pads` order for 2-D): one number when all are equal.
pub mod quad {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[usize; 4], s: S) -> Result<S::Ok, S::Error> {
        write(v, s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[usize; 4], D::Error> {
        read(d)
    }
}

pub(crate) fn ones() -> [usize; 2] {
    [1, 1]
}

pub(crate) fn is_ones(v: &[usize; 2]) -> bool {
    *v == [1, 1]
}

/// Output length of a sliding window over `n` padded by `before + after`:
/// `⌊(n + pads − d·(k−1) − 1)/s⌋ + 1` (ONNX Conv/MaxPool with floor rounding). `None` when
/// the (dilated) window does not fit.
pub fn out_len(
    n: usize,
    k: usize,
    s: usize,
    d: usize,
    before: usize,
    after: usize,
) -> Option<usize> {
    let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = n.checked_add(before)?.checked_add(after)?;
    if padded < span || s == 0 {
        return None;
    }
    Some((padded - span) / s + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct W {
        #[serde(with = "pair")]
        k: [usize; 2],
        #[serde(with = "quad")]
        p: [usize; 4],
    }

    #[test]
    fn equal_sides_are_one_number_and_both_forms_load() {
        let square = W {
            k: [3, 3],
            p: [1; 4],
        };
        assert_eq!(serde_json::to_string(&square).unwrap(), r#"{"k":3,"p":1}"#);
        let odd = W {
            k: [1, 3],
            p: [0, 1, 0, 2],
        };
        let s = serde_json::to_string(&odd).unwrap();
        assert_eq!(s, r#"{"k":[1,3],"p":[0,1,0,2]}"#);
        assert_eq!(serde_json::from_str::<W>(&s).unwrap(), odd);
        assert_eq!(
            serde_json::from_str::<W>(r#"{"k":3,"p":1}"#).unwrap(),
            square
        );
        let e = serde_json::from_str::<W>(r#"{"k":[1,2,3],"p":1}"#).unwrap_err();
        assert!(e.to_string().contains("expected 2 numbers"), "{e}");
    }

    #[test]
    fn window_lengths_follow_onnx() {
        assert_eq!(out_len(5, 3, 1, 1, 1, 1), Some(5));
        assert_eq!(out_len(5, 3, 2, 1, 1, 1), Some(3));
        assert_eq!(out_len(7, 3, 1, 2, 2, 2), Some(7));
        assert_eq!(out_len(2, 3, 1, 1, 0, 0), None);
        assert_eq!(out_len(6, 2, 2, 1, 0, 1), Some(3));
    }
}

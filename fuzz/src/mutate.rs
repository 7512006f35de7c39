//! Byte- and token-level mutations. Blind (no coverage feedback): the harness keeps inputs
//! that produce a new kind of outcome, which steers it past the first validation checks.

use overparam_fuse::Rng;

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    u64::MAX,
];
const NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "1",
    "3",
    "65536",
    "4294967296",
    "18446744073709551615",
    "1e309",
    "-9223372036854775808",
    "0.5",
    "NaN",
    "99999999999999999999999",
];
const TOKENS: [&str; 16] = [
    "{", "}", "[", "]", "\"", ",", ":", "=", "null", "true", "-", "\n", "\\u0000", "[[", "]]", ".",
];

fn below(rng: &mut Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (rng.next_u64() % n as u64) as usize
    }
}

/// An offset, inside the first `bias` bytes 80% of the time (headers matter more than payloads).
fn offset(rng: &mut Rng, len: usize, bias: usize) -> usize {
    if bias > 0 && bias < len && rng.next_u64() % 10 < 8 {
        below(rng, bias)
    } else {
        below(rng, len)
    }
}

/// Applies 1–4 random mutations; `other` is a second corpus entry for splicing, `text` turns
/// on token-level mutations.
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng, bias: usize, text: bool) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let kinds = if text { 12 } else { 9 };
        match below(rng, kinds) {
            0 if !b.is_empty() => {
                let i = offset(rng, b.len(), bias);
                b[i] ^= 1 << below(rng, 8);
            }
            1 if !b.is_empty() => {
                let i = offset(rng, b.len(), bias);
                b[i] = INTERESTING_U64[below(rng, INTERESTING_U64.len())] as u8;
            }
            2 if !b.is_empty() => {
                let i = offset(rng, b.len(), bias);
                b[i] = rng.next_u64() as u8;
            }
            3 => {
                let i = offset(rng, b.len() + 1, bias).min(b.len());
                let n = 1 + below(rng, 8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(i..i, bytes);
            }
            4 if !b.is_empty() => {
                let i = offset(rng, b.len(), bias);
                let n = (1 + below(rng, 16)).min(b.len() - i);
                b.drain(i..i + n);
            }
            5 if b.len() >= 8 => {
                let i = offset(rng, b.len() - 7, bias);
                let v = INTERESTING_U64[below(rng, INTERESTING_U64.len())];
                let v = if rng.next_u64().is_multiple_of(2) {
                    v
                } else {
                    v.wrapping_neg()
                };
                let w = [1usize, 2, 4, 8][below(rng, 4)];
                b[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            6 => b.truncate(below(rng, b.len() + 1)),
            7 if !other.is_empty() => {
                let cut = below(rng, b.len() + 1);
                let from = below(rng, other.len());
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            8 if b.len() > 1 => {
                let i = below(rng, b.len());
                let n = (1 + below(rng, 32)).min(b.len() - i);
                let chunk = b[i..i + n].to_vec();
                let j = below(rng, b.len() + 1);
                b.splice(j..j, chunk);
            }
            9 => {
                // Replace a run of digits with an interesting number.
                let starts: Vec<usize> = (0..b.len())
                    .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
                    .collect();
                if !starts.is_empty() {
                    let s = starts[below(rng, starts.len())];
                    let e = (s..b.len())
                        .find(|&i| !b[i].is_ascii_digit())
                        .unwrap_or(b.len());
                    let n = NUMBERS[below(rng, NUMBERS.len())].as_bytes().to_vec();
                    b.splice(s..e, n);
                }
            }
            10 => {
                let i = below(rng, b.len() + 1);
                let t = TOKENS[below(rng, TOKENS.len())].as_bytes().to_vec();
                b.splice(i..i, t);
            }
            11 if !b.is_empty() => {
                // Delete up to the next delimiter (a JSON value, a TOML line).
                let i = below(rng, b.len());
                let e = (i..b.len())
                    .find(|&k| matches!(b[k], b',' | b'\n' | b'}' | b']'))
                    .unwrap_or(b.len());
                b.drain(i..e);
            }
            _ => {}
        }
    }
    b
}

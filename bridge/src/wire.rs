//! The native wire format, version 1: a fixed 88-byte little-endian header followed by the raw
//! tensor, row-major. The decoder checks every field against the byte count before it allocates
//! and returns an error (never panics) on anything else, so a subscriber can count and go on.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `OPTM` |
//! | 4 | 2 | version (1) |
//! | 6 | 2 | header length (88) |
//! | 8 | 8 | stream id (random per publisher start; a change means the publisher restarted) |
//! | 16 | 8 | frame id (per stream, from 0) |
//! | 24 | 8×4 | capture, inference start, inference end, publish (ns since the Unix epoch, i64) |
//! | 56 | 1 | dtype (1 = u8, 2 = f32) |
//! | 57 | 1 | encoding (0 = raw) |
//! | 58 | 1 | number of dimensions (1–4) |
//! | 59 | 1 | task (0 camera, 1 segmentation, 2 depth, 3 normals, 4 segmentation colour map, 16 + i the model's i-th raw output) |
//! | 60 | 4×4 | shape, u32 each, unused dimensions 0 |
//! | 76 | 8 | payload length in bytes (u64) |
//! | 84 | 4 | reserved, 0 |

use crate::error::{Error, Result};

pub const MAGIC: [u8; 4] = *b"OPTM";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 88;
/// Refused above this many elements (2^28, 1 GiB of f32) before any allocation.
pub const MAX_ELEMENTS: u64 = 1 << 28;
/// The zenoh encoding string set on every native sample.
pub const ZENOH_ENCODING: &str = "application/x-overparam-tensor;v=1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    U8,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F32 => 4,
        }
    }
    fn code(self) -> u8 {
        match self {
            DType::U8 => 1,
            DType::F32 => 2,
        }
    }
    fn from_code(c: u8) -> Result<Self> {
        match c {
            1 => Ok(DType::U8),
            2 => Ok(DType::F32),
            _ => Err(Error::Malformed(format!("unknown dtype code {c}"))),
        }
    }
}

/// What a message carries; also the last key segment of its topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Camera,
    Segmentation,
    Depth,
    Normals,
    /// The segmentation's class map drawn in the class palette, H×W×3 u8, for people to look
    /// at (ROS 2 perception nodes publish one beside the mono8 map).
    SegmentationColor,
    /// A classifier's top-k classes with scores (JSON natively, `vision_msgs/Classification`
    /// in ROS 2; never in the tensor format).
    Classes,
    /// The model's i-th output of role `raw`, published as it is (f32, the model's shape, at
    /// most 4 dimensions) on `raw/<output name>`; at most [`MAX_RAW`] of them.
    Raw(u8),
}

/// Raw outputs a model may publish (their wire codes are 16 + i ≤ 255).
pub const MAX_RAW: usize = 240;

/// The model's dense tasks on the wire (the wire adds the camera image).
impl From<overparam_base::Task> for Task {
    fn from(t: overparam_base::Task) -> Self {
        match t {
            overparam_base::Task::Segmentation => Task::Segmentation,
            overparam_base::Task::Depth => Task::Depth,
            overparam_base::Task::Normals => Task::Normals,
        }
    }
}

impl Task {
    pub const OUTPUTS: [Task; 3] = [Task::Segmentation, Task::Depth, Task::Normals];
    /// The topic name: the dense tasks' names from `overparam_base::Task`, and `image`.
    pub fn name(self) -> &'static str {
        use overparam_base::Task as Dense;
        match self {
            Task::Camera => "image",
            Task::Segmentation => Dense::Segmentation.name(),
            Task::Depth => Dense::Depth.name(),
            Task::Normals => Dense::Normals.name(),
            Task::SegmentationColor => "segmentation/color",
            Task::Classes => "classes",
            Task::Raw(_) => "raw",
        }
    }
    pub fn from_name(s: &str) -> Option<Task> {
        [
            Task::Camera,
            Task::Segmentation,
            Task::Depth,
            Task::Normals,
            Task::SegmentationColor,
            Task::Classes,
        ]
        .into_iter()
        .find(|t| t.name() == s)
    }
    fn code(self) -> u8 {
        match self {
            Task::Camera => 0,
            Task::Segmentation => 1,
            Task::Depth => 2,
            Task::Normals => 3,
            Task::SegmentationColor => 4,
            Task::Classes => 5,
            Task::Raw(i) => 16 + i.min((MAX_RAW - 1) as u8),
        }
    }
    fn from_code(c: u8) -> Result<Self> {
        match c {
            0 => Ok(Task::Camera),
            1 => Ok(Task::Segmentation),
            2 => Ok(Task::Depth),
            3 => Ok(Task::Normals),
            4 => Ok(Task::SegmentationColor),
            16.. => Ok(Task::Raw(c - 16)),
            _ => Err(Error::Malformed(format!("unknown task code {c}"))),
        }
    }
}

/// Nanosecond timestamps along one frame's path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamps {
    pub capture_ns: i64,
    pub infer_start_ns: i64,
    pub infer_end_ns: i64,
    pub publish_ns: i64,
}

/// Tensor contents; row-major, channels last for images.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::U8(_) => DType::U8,
            TensorData::F32(_) => DType::F32,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            TensorData::U8(v) => v.len(),
            TensorData::F32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends the elements as little-endian bytes (a memcpy on little-endian hosts: every
    /// Jetson/Drive and x86 target).
    pub fn extend_le(&self, out: &mut Vec<u8>) {
        out.reserve(self.len() * self.dtype().size());
        match self {
            TensorData::U8(v) => out.extend_from_slice(v),
            #[cfg(target_endian = "little")]
            TensorData::F32(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
            #[cfg(not(target_endian = "little"))]
            TensorData::F32(v) => {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMsg {
    pub stream_id: u64,
    pub frame_id: u64,
    pub task: Task,
    pub stamps: Stamps,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Writes header + payload into one buffer.
pub fn encode(msg: &TensorMsg) -> Result<Vec<u8>> {
    let mut out = encode_header(msg, &msg.shape, &msg.data)?;
    msg.data.extend_le(&mut out);
    Ok(out)
}

/// Offset of the publish timestamp, which a publisher patches in just before the put.
pub const PUBLISH_NS_OFFSET: usize = 48;

/// The [`HEADER_LEN`]-byte header alone, checked against the tensor that is to follow it
/// (`head`'s own shape and data are ignored): a publisher that owns the tensor sends header and
/// tensor bytes as two slices of one message, without copying the tensor.
pub fn encode_header(head: &TensorMsg, shape: &[usize], data: &TensorData) -> Result<Vec<u8>> {
    let n: usize = shape.iter().product();
    if shape.is_empty() || shape.len() > 4 || n != data.len() {
        return Err(Error::Malformed(format!(
            "shape {shape:?} does not describe {} elements (1–4 dimensions)",
            data.len()
        )));
    }
    if shape.iter().any(|&d| d == 0 || d > u32::MAX as usize) || n as u64 > MAX_ELEMENTS {
        return Err(Error::Malformed(format!("shape {shape:?} out of range")));
    }
    let payload = n * data.dtype().size();
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    out.extend_from_slice(&head.stream_id.to_le_bytes());
    out.extend_from_slice(&head.frame_id.to_le_bytes());
    for t in [
        head.stamps.capture_ns,
        head.stamps.infer_start_ns,
        head.stamps.infer_end_ns,
        head.stamps.publish_ns,
    ] {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(&[data.dtype().code(), 0, shape.len() as u8, head.task.code()]);
    for i in 0..4 {
        let d = shape.get(i).copied().unwrap_or(0) as u32;
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&(payload as u64).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    debug_assert_eq!(out.len(), HEADER_LEN);
    Ok(out)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// A validated message header; [`decode_header`] checked that the payload that follows has
/// exactly the length its shape and dtype call for.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub stream_id: u64,
    pub frame_id: u64,
    pub task: Task,
    pub stamps: Stamps,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// Validates a whole message (every header field, and the payload length against the shape
/// and the byte count) without copying the tensor: what a listener that only counts and times
/// needs. Every index below is within `HEADER_LEN`, which is checked first.
pub fn decode_header(b: &[u8]) -> Result<Header> {
    if b.len() < 8 {
        return Err(Error::Truncated {
            got: b.len(),
            need: HEADER_LEN,
        });
    }
    let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(Error::Magic(magic));
    }
    let version = u16_at(b, 4);
    if version != VERSION {
        return Err(Error::Version {
            got: version,
            supported: VERSION,
        });
    }
    if b.len() < HEADER_LEN {
        return Err(Error::Truncated {
            got: b.len(),
            need: HEADER_LEN,
        });
    }
    let hlen = u16_at(b, 6) as usize;
    if hlen != HEADER_LEN {
        return Err(Error::Malformed(format!(
            "header length {hlen}, version 1 has {HEADER_LEN}"
        )));
    }
    let dtype = DType::from_code(b[56])?;
    if b[57] != 0 {
        return Err(Error::Malformed(format!("unknown encoding {}", b[57])));
    }
    let ndim = b[58] as usize;
    if !(1..=4).contains(&ndim) {
        return Err(Error::Malformed(format!("{ndim} dimensions (1–4 allowed)")));
    }
    let task = Task::from_code(b[59])?;
    let mut shape = Vec::with_capacity(ndim);
    let mut n: u64 = 1;
    for i in 0..4 {
        let d = u32_at(b, 60 + 4 * i) as u64;
        if i < ndim {
            if d == 0 {
                return Err(Error::Malformed(format!("dimension {i} is 0")));
            }
            n = n.saturating_mul(d);
            if n > MAX_ELEMENTS {
                return Err(Error::Malformed(format!(
                    "more than {MAX_ELEMENTS} elements; refused before allocating"
                )));
            }
            shape.push(d as usize);
        } else if d != 0 {
            return Err(Error::Malformed(format!(
                "unused dimension {i} is {d}, must be 0"
            )));
        }
    }
    let payload = u64_at(b, 76);
    let want = n * dtype.size() as u64;
    if payload != want {
        return Err(Error::Malformed(format!(
            "payload length {payload} does not match shape {shape:?} × {} bytes",
            dtype.size()
        )));
    }
    if u32_at(b, 84) != 0 {
        return Err(Error::Malformed("reserved bytes are not 0".into()));
    }
    let body = &b[HEADER_LEN..];
    if body.len() as u64 != payload {
        return Err(if (body.len() as u64) < payload {
            Error::Truncated {
                got: b.len(),
                need: HEADER_LEN + payload as usize,
            }
        } else {
            Error::Malformed(format!(
                "{} trailing bytes after the payload",
                body.len() as u64 - payload
            ))
        });
    }
    let t = |o: usize| u64_at(b, o) as i64;
    Ok(Header {
        stream_id: u64_at(b, 8),
        frame_id: u64_at(b, 16),
        task,
        stamps: Stamps {
            capture_ns: t(24),
            infer_start_ns: t(32),
            infer_end_ns: t(40),
            publish_ns: t(48),
        },
        shape,
        dtype,
    })
}

/// Validates a whole message (header and payload length) and copies its tensor out.
pub fn decode(b: &[u8]) -> Result<TensorMsg> {
    let h = decode_header(b)?;
    let body = &b[HEADER_LEN..];
    let data = match h.dtype {
        DType::U8 => TensorData::U8(body.to_vec()),
        DType::F32 => {
            let mut v = vec![0f32; body.len() / 4];
            // The body need not be 4-byte aligned: copy its bytes into the f32 buffer.
            bytemuck::cast_slice_mut::<f32, u8>(&mut v).copy_from_slice(body);
            if cfg!(target_endian = "big") {
                v.iter_mut()
                    .for_each(|x| *x = f32::from_bits(x.to_bits().swap_bytes()));
            }
            TensorData::F32(v)
        }
    };
    Ok(TensorMsg {
        stream_id: h.stream_id,
        frame_id: h.frame_id,
        task: h.task,
        stamps: h.stamps,
        shape: h.shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorMsg {
        TensorMsg {
            stream_id: 7,
            frame_id: 42,
            task: Task::Normals,
            stamps: Stamps {
                capture_ns: 1,
                infer_start_ns: 2,
                infer_end_ns: 3,
                publish_ns: 4,
            },
            shape: vec![2, 3, 3],
            data: TensorData::F32((0..18).map(|i| i as f32 * -0.5).collect()),
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let m = sample();
        let b = encode(&m).unwrap();
        assert_eq!(b.len(), HEADER_LEN + 18 * 4);
        assert_eq!(decode(&b).unwrap(), m);
        // What a zero-copy publisher sends as its first slice.
        assert_eq!(
            encode_header(&m, &m.shape, &m.data).unwrap(),
            b[..HEADER_LEN]
        );
        let u = TensorMsg {
            task: Task::Segmentation,
            shape: vec![5],
            data: TensorData::U8(vec![0, 1, 2, 250, 255]),
            ..m
        };
        assert_eq!(decode(&encode(&u).unwrap()).unwrap(), u);
        // A raw output keeps its index and its NCHW shape.
        let r = TensorMsg {
            task: Task::Raw(3),
            shape: vec![1, 2, 3, 3],
            ..sample()
        };
        let b = encode(&r).unwrap();
        assert_eq!(b[59], 19);
        assert_eq!(decode(&b).unwrap(), r);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = encode(&sample()).unwrap();
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn wrong_version_and_magic_are_named() {
        let mut b = encode(&sample()).unwrap();
        b[4] = 2;
        assert!(matches!(decode(&b), Err(Error::Version { got: 2, .. })));
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(Error::Magic(_))));
    }

    #[test]
    fn absurd_shapes_are_refused_before_allocation() {
        let mut b = encode(&sample()).unwrap();
        // 2^20 × 2^20 × 3 elements with a matching payload length claim: refused on the count.
        b[60..64].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b[64..68].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b[76..84].copy_from_slice(&(12u64 << 40).to_le_bytes());
        assert!(matches!(decode(&b), Err(Error::Malformed(m)) if m.contains("refused")));
        let mut z = encode(&sample()).unwrap();
        z[60..64].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode(&z).is_err());
    }

    #[test]
    fn random_corruption_never_panics() {
        let b = encode(&sample()).unwrap();
        let mut rng = overparam_base::Rng::new(3);
        for _ in 0..20_000 {
            let mut c = b.clone();
            for _ in 0..1 + (rng.next_u64() % 4) as usize {
                let i = (rng.next_u64() as usize) % c.len();
                c[i] = rng.next_u64() as u8;
            }
            let _ = decode(&c);
        }
    }
}

//! ROS 2 over zenoh, as rmw_zenoh (Jazzy) puts it on the wire: `sensor_msgs/msg/Image` in CDR,
//! the data key with the RIHS01 type hash, the 33-byte attachment, and the liveliness tokens
//! that make a publisher visible to `ros2 topic list`.
//!
//! Sources (checked, see `../shared/reference/stack.md` §3.1): ros2/rmw_zenoh `docs/design.md`,
//! `liveliness_utils.cpp`, `attachment_helpers.cpp`. Pinned to one rmw_zenoh generation; the
//! tests compare the CDR bytes and the type hash with the `rosbags` Python package.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::wire::{Stamps, Task, TensorData, TensorMsg};

/// `rosbags`' `hash_rihs01('sensor_msgs/msg/Image')` for Jazzy (and rmw_zenoh's key suffix).
pub const IMAGE_TYPE_HASH: &str =
    "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47";
/// The DDS-mangled type name rmw_zenoh puts in keys.
pub const IMAGE_TYPE_NAME: &str = "sensor_msgs::msg::dds_::Image_";
/// CDR little-endian encapsulation (`DDS_CDR`, LE), which Fast-CDR writes first.
pub const CDR_LE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x00];
/// The encapsulation kind of big-endian plain CDR (`CDR_BE`); Fast-CDR writes the host's byte
/// order, so a big-endian camera host would send this.
pub const CDR_BE_KIND: [u8; 2] = [0x00, 0x00];
/// Image encodings taken as camera input (`sensor_msgs/image_encodings.hpp` names), with their
/// channel counts.
pub const CAMERA_ENCODINGS: [(&str, usize); 5] = [
    ("rgb8", 3),
    ("bgr8", 3),
    ("rgba8", 4),
    ("bgra8", 4),
    ("mono8", 1),
];
/// Camera images above this many pixels are refused before any conversion (2^26, as the PNG
/// reader).
pub const MAX_CAMERA_PIXELS: u64 = 1 << 26;
pub const ATTACHMENT_LEN: usize = 33;
/// The zenoh encoding rmw_zenoh does not read, set for other zenoh tools.
pub const ZENOH_ENCODING: &str = "application/cdr;sensor_msgs/msg/Image";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

impl Time {
    pub fn from_ns(ns: i64) -> Self {
        Time {
            sec: ns.div_euclid(1_000_000_000) as i32,
            nanosec: ns.rem_euclid(1_000_000_000) as u32,
        }
    }
    pub fn to_ns(&self) -> i64 {
        self.sec as i64 * 1_000_000_000 + self.nanosec as i64
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub stamp: Time,
    pub frame_id: String,
}

/// `sensor_msgs/msg/Image`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub encoding: String,
    pub is_bigendian: u8,
    pub step: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// ROS image encoding, channel count and bytes per channel of a task's tensor (H×W or
/// H×W×C); `None` for the classes and raw outputs, which are not images.
pub fn image_encoding(task: Task) -> Option<(&'static str, usize, usize)> {
    Some(match task {
        Task::Camera | Task::SegmentationColor => ("rgb8", 3, 1),
        Task::Segmentation => ("mono8", 1, 1),
        Task::Depth => ("32FC1", 1, 4),
        Task::Normals => ("32FC3", 3, 4),
        Task::Classes | Task::Raw(_) => return None,
    })
}

/// The CDR payload (with its encapsulation header) of one output as an Image.
pub fn encode_image(msg: &TensorMsg, frame_id: &str) -> Result<Vec<u8>> {
    let mut out = image_prefix(msg, &msg.shape, &msg.data, frame_id)?;
    msg.data.extend_le(&mut out);
    Ok(out)
}

/// Everything of the CDR payload before the pixel bytes: the encapsulation header and every
/// Image field up to and including `data`'s length (`msg`'s own shape and data are ignored).
/// `data` is the last field and a `uint8[]`
/// needs no alignment, so prefix + the tensor's little-endian bytes is the whole message, and a
/// publisher that owns the tensor can send it as a second slice without copying it.
pub fn image_prefix(
    msg: &TensorMsg,
    shape: &[usize],
    data: &TensorData,
    frame_id: &str,
) -> Result<Vec<u8>> {
    let header = Header {
        stamp: Time::from_ns(msg.stamps.capture_ns),
        frame_id: frame_id.to_string(),
    };
    image_prefix_with_header(msg.task, shape, data, header)
}

/// [`image_prefix`] with the Image header given whole: an output of a ROS 2 camera frame
/// carries that frame's stamp and frame_id unchanged, so a consumer can match them.
pub fn image_prefix_with_header(
    task: Task,
    shape: &[usize],
    data: &TensorData,
    header: Header,
) -> Result<Vec<u8>> {
    let (enc, ch, bpc) = image_encoding(task)
        .ok_or_else(|| Error::Malformed(format!("{} is not an image", task.name())))?;
    let (h, w) = match shape {
        [h, w] if ch == 1 => (*h, *w),
        [h, w, c] if *c == ch => (*h, *w),
        s => {
            return Err(Error::Malformed(format!(
                "{} as {enc} needs H×W{}, got {s:?}",
                task.name(),
                if ch == 1 {
                    String::new()
                } else {
                    format!("×{ch}")
                }
            )));
        }
    };
    match (data, bpc) {
        (TensorData::U8(_), 1) | (TensorData::F32(_), 4) => {}
        _ => {
            return Err(Error::Malformed(format!(
                "{enc} with the wrong element type"
            )));
        }
    }
    let bytes = h * w * ch * bpc;
    if data.len() * bpc != bytes || bytes > u32::MAX as usize {
        return Err(Error::Malformed(format!(
            "{enc} {h}×{w}: {} elements for {bytes} bytes",
            data.len()
        )));
    }
    let img = Image {
        header,
        height: h as u32,
        width: w as u32,
        encoding: enc.to_string(),
        is_bigendian: 0,
        step: (w * ch * bpc) as u32,
        data: vec![],
    };
    let mut out = CDR_LE_HEADER.to_vec();
    out.extend(
        cdr_encoding::to_vec::<_, byteorder::LittleEndian>(&img)
            .map_err(|e| Error::Cdr(e.to_string()))?,
    );
    // The empty sequence ends the encoding with its u32 length 0; it becomes the real length.
    let n = out.len();
    debug_assert_eq!(out[n - 4..], [0; 4]);
    out[n - 4..].copy_from_slice(&(bytes as u32).to_le_bytes());
    Ok(out)
}

/// A whole Image as CDR with its encapsulation header, little- or big-endian (tests, fuzz
/// seeds and tools; the publisher sends [`image_prefix`] and the pixels as two slices).
pub fn serialize_image(img: &Image, little_endian: bool) -> Result<Vec<u8>> {
    let (mut out, body) = if little_endian {
        (
            CDR_LE_HEADER.to_vec(),
            cdr_encoding::to_vec::<_, byteorder::LittleEndian>(img),
        )
    } else {
        (
            vec![CDR_BE_KIND[0], CDR_BE_KIND[1], 0, 0],
            cdr_encoding::to_vec::<_, byteorder::BigEndian>(img),
        )
    };
    out.extend(body.map_err(|e| Error::Cdr(e.to_string()))?);
    Ok(out)
}

/// Parses the CDR of an Image in either byte order (the encapsulation header says which), with
/// no check of its fields beyond what CDR itself needs.
pub fn parse_image_cdr(b: &[u8]) -> Result<Image> {
    if b.len() < 4 {
        return Err(Error::Truncated {
            got: b.len(),
            need: 4,
        });
    }
    let body = &b[4..];
    let (img, used): (Image, usize) = match [b[0], b[1]] {
        [0x00, 0x01] => cdr_encoding::from_bytes::<Image, byteorder::LittleEndian>(body),
        k if k == CDR_BE_KIND => cdr_encoding::from_bytes::<Image, byteorder::BigEndian>(body),
        _ => {
            return Err(Error::Cdr(format!(
                "encapsulation {:02x?}: not plain CDR (00 01 little-endian or 00 00 big-endian; \
                 rmw_zenoh sends XCDR1 through Fast-CDR)",
                &b[..4]
            )));
        }
    }
    .map_err(|e| Error::Cdr(e.to_string()))?;
    // Fast-CDR pads the end to 4 bytes at most.
    if body.len() - used > 3 {
        return Err(Error::Cdr(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(img)
}

/// Parses and validates a CDR Image payload of one of the bridge's outputs.
pub fn decode_image(b: &[u8]) -> Result<Image> {
    let img = parse_image_cdr(b)?;
    let bpp = match img.encoding.as_str() {
        "mono8" => 1,
        "rgb8" | "bgr8" => 3,
        "32FC1" => 4,
        "32FC3" => 12,
        e => return Err(Error::Cdr(format!("unsupported image encoding {e:?}"))),
    };
    if img.is_bigendian != 0 {
        return Err(Error::Cdr("big-endian image data is not supported".into()));
    }
    let row = (img.width as u64) * bpp;
    if img.step as u64 != row || (img.step as u64) * (img.height as u64) != img.data.len() as u64 {
        return Err(Error::Cdr(format!(
            "{}×{} {} with step {} does not match {} data bytes",
            img.height,
            img.width,
            img.encoding,
            img.step,
            img.data.len()
        )));
    }
    Ok(img)
}

/// The tensor an Image carries (task from its encoding: mono8 is a class map).
pub fn image_to_tensor(img: &Image) -> Result<(Task, Vec<usize>, TensorData)> {
    let (h, w) = (img.height as usize, img.width as usize);
    let f32s = || {
        TensorData::F32(
            img.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
    };
    Ok(match img.encoding.as_str() {
        "mono8" => (
            Task::Segmentation,
            vec![h, w],
            TensorData::U8(img.data.clone()),
        ),
        "rgb8" => (
            Task::Camera,
            vec![h, w, 3],
            TensorData::U8(img.data.clone()),
        ),
        "32FC1" => (Task::Depth, vec![h, w], f32s()),
        "32FC3" => (Task::Normals, vec![h, w, 3], f32s()),
        e => return Err(Error::Cdr(format!("unsupported image encoding {e:?}"))),
    })
}

/// A camera Image as H×W×3 RGB in [0, 1], rows read at `step` (padding skipped), BGR swapped,
/// alpha dropped, mono replicated. Refuses what does not describe its own bytes: an encoding
/// outside [`CAMERA_ENCODINGS`] ([`Error::UnsupportedEncoding`]), an empty or oversized image,
/// a step shorter than a row, fewer bytes than step × height, `is_bigendian` other than 0 or 1
/// (8-bit data has no byte order, so either value is fine).
pub fn camera_rgb(img: &Image) -> Result<(usize, usize, Vec<f32>)> {
    let Some(&(_, ch)) = CAMERA_ENCODINGS
        .iter()
        .find(|(e, _)| *e == img.encoding.as_str())
    else {
        return Err(Error::UnsupportedEncoding(img.encoding.clone()));
    };
    let bad = |m: String| Error::Malformed(format!("{} image: {m}", img.encoding));
    if img.is_bigendian > 1 {
        return Err(bad(format!(
            "is_bigendian is {}, must be 0 or 1",
            img.is_bigendian
        )));
    }
    let (h, w) = (img.height as u64, img.width as u64);
    if h == 0 || w == 0 || h * w > MAX_CAMERA_PIXELS {
        return Err(bad(format!(
            "{h}×{w} pixels (want 1 to {MAX_CAMERA_PIXELS})"
        )));
    }
    let row = w * ch as u64;
    let step = img.step as u64;
    if step < row {
        return Err(bad(format!(
            "step {step} is shorter than a row of {w} pixels × {ch} bytes"
        )));
    }
    // The last row needs only its pixels, not the padding after them.
    if (h - 1) * step + row > img.data.len() as u64 {
        return Err(bad(format!(
            "{h} rows of step {step} need {} bytes, the data has {}",
            (h - 1) * step + row,
            img.data.len()
        )));
    }
    let (h, w, step) = (h as usize, w as usize, step as usize);
    let mut rgb = Vec::with_capacity(h * w * 3);
    let f = |v: u8| v as f32 / 255.0;
    for y in 0..h {
        let r = &img.data[y * step..y * step + w * ch];
        match img.encoding.as_str() {
            "rgb8" | "rgba8" => {
                for p in r.chunks_exact(ch) {
                    rgb.extend([f(p[0]), f(p[1]), f(p[2])]);
                }
            }
            "bgr8" | "bgra8" => {
                for p in r.chunks_exact(ch) {
                    rgb.extend([f(p[2]), f(p[1]), f(p[0])]);
                }
            }
            _ => {
                for &v in r {
                    rgb.extend([f(v); 3]);
                }
            }
        }
    }
    Ok((h, w, rgb))
}

/// rmw_zenoh's attachment: sequence number, source timestamp (ns), GID length 16, GID.
pub fn attachment(seq: i64, source_ns: i64, gid: &[u8; 16]) -> [u8; ATTACHMENT_LEN] {
    let mut a = [0u8; ATTACHMENT_LEN];
    a[..8].copy_from_slice(&seq.to_le_bytes());
    a[8..16].copy_from_slice(&source_ns.to_le_bytes());
    a[16] = 16;
    a[17..].copy_from_slice(gid);
    a
}

/// Parsed attachment: (sequence, source timestamp ns, GID).
pub fn parse_attachment(a: &[u8]) -> Result<(i64, i64, [u8; 16])> {
    if a.len() != ATTACHMENT_LEN || a[16] != 16 {
        return Err(Error::Malformed(format!(
            "rmw_zenoh attachment must be {ATTACHMENT_LEN} bytes with GID length 16, got {} bytes",
            a.len()
        )));
    }
    let i = |o: usize| i64::from_le_bytes(a[o..o + 8].try_into().expect("8 bytes"));
    Ok((i(0), i(8), a[17..].try_into().expect("16 bytes")))
}

/// Where and how a ROS 2 publisher appears.
#[derive(Clone, Debug)]
pub struct Ros2Names {
    pub domain_id: u32,
    /// Namespace without leading or trailing slashes ("" = root).
    pub namespace: String,
    pub node: String,
}

impl Ros2Names {
    pub fn new(domain_id: u32, namespace: &str, node: &str) -> Self {
        Ros2Names {
            domain_id,
            namespace: namespace.trim_matches('/').to_string(),
            node: node.to_string(),
        }
    }
    /// `/<ns>/<camera>/<leaf>`: an output topic by its last part (`depth`, `raw/<name>`,
    /// `camera_info`; [`crate::publisher::PublishConfig::leaf`]).
    pub fn output_topic(&self, camera: &str, leaf: &str) -> String {
        if self.namespace.is_empty() {
            format!("/{camera}/{leaf}")
        } else {
            format!("/{}/{camera}/{leaf}", self.namespace)
        }
    }
    /// The data key of an Image topic, `<domain>/<fully qualified name>/<type>/<hash>`, the name
    /// with its leading and trailing slashes stripped (rmw_zenoh `liveliness_utils.cpp`,
    /// `TopicInfo::TopicInfo`: `strip_slashes(name_)`). Publishers and subscriptions of one
    /// topic declare the same key, so the type hash pins the message type.
    pub fn topic_key(&self, fq_topic: &str) -> String {
        self.typed_key(fq_topic, IMAGE_TYPE_NAME, IMAGE_TYPE_HASH)
    }
    /// [`Ros2Names::topic_key`] of a topic of another type (its DDS name and RIHS01 hash).
    pub fn typed_key(&self, fq_topic: &str, dds_name: &str, hash: &str) -> String {
        format!(
            "{}/{}/{dds_name}/{hash}",
            self.domain_id,
            fq_topic.trim_matches('/')
        )
    }
    /// The fully qualified name of `topic` as rcl resolves it for this node: absolute names as
    /// they are, relative ones under the namespace, `~` under the node. Names rcl would refuse
    /// (`rcl_validate_topic_name`: empty, a trailing or doubled `/`, characters other than
    /// letters, digits, `_` and `/`, a token starting with a digit) are refused here, as are
    /// `{}` substitutions.
    pub fn resolve_topic(&self, topic: &str) -> Result<String> {
        let ns = if self.namespace.is_empty() {
            String::new()
        } else {
            format!("/{}", self.namespace)
        };
        let fq = if let Some(rest) = topic.strip_prefix('~') {
            format!("{ns}/{}{rest}", self.node)
        } else if topic.starts_with('/') {
            topic.to_string()
        } else {
            format!("{ns}/{topic}")
        };
        let bad = |why: &str| {
            Err(Error::InvalidOption(format!(
                "ROS 2 topic {topic:?} (resolved {fq:?}): {why}"
            )))
        };
        if fq.len() < 2 || fq.ends_with('/') {
            return bad("a topic name must not be empty or end with '/'");
        }
        for tok in fq[1..].split('/') {
            if tok.is_empty() {
                return bad("a topic name must not contain '//'");
            }
            if tok.starts_with(|c: char| c.is_ascii_digit()) {
                return bad("a name token must not start with a digit");
            }
            if !tok.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return bad("use only letters, digits, '_' and '/'");
            }
        }
        Ok(fq)
    }
    /// Every Image topic of this domain, for a listener.
    pub fn subscribe_all(&self) -> String {
        format!("{}/**/{IMAGE_TYPE_NAME}/*", self.domain_id)
    }
    fn ns_mangled(&self) -> String {
        mangle(&format!("/{}", self.namespace))
    }
    /// Node token `@ros2_lv/<dom>/<zid>/<nid>/<nid>/NN/<enclave>/<ns>/<node>`.
    pub fn node_token(&self, zid: &str, node_id: u32) -> String {
        format!(
            "@ros2_lv/{}/{zid}/{node_id}/{node_id}/NN/%/{}/{}",
            self.domain_id,
            self.ns_mangled(),
            self.node
        )
    }
    /// An endpoint's token, `.../<eid>/<kind>/<enclave>/<ns>/<node>/<topic>/<type>/<hash>/<qos>`
    /// (rmw_zenoh `liveliness_utils.cpp`: `MP` publisher, `MS` subscription).
    fn endpoint_token(&self, e: Endpoint<'_>, kind: &str) -> String {
        format!(
            "@ros2_lv/{}/{}/{}/{}/{kind}/%/{}/{}/{}/{}/{}/{}",
            self.domain_id,
            e.zid,
            e.node_id,
            e.entity_id,
            self.ns_mangled(),
            self.node,
            mangle(e.fq_topic),
            e.dds_name,
            e.hash,
            e.qos,
        )
    }
    /// The publisher token of any endpoint (`MP`).
    pub fn typed_publisher_token(&self, e: Endpoint<'_>) -> String {
        self.endpoint_token(e, "MP")
    }
    /// The subscription token of any endpoint (`MS`).
    pub fn typed_subscription_token(&self, e: Endpoint<'_>) -> String {
        self.endpoint_token(e, "MS")
    }
    /// Subscription token of an Image topic (a fully qualified name).
    pub fn subscription_token(
        &self,
        zid: &str,
        node_id: u32,
        entity_id: u32,
        fq_topic: &str,
        qos: &str,
    ) -> String {
        self.endpoint_token(
            Endpoint::image(zid, node_id, entity_id, fq_topic, qos),
            "MS",
        )
    }
}

/// One endpoint of a liveliness token: who declares it, on which topic, of which type, with
/// which QoS ([`qos_string`]).
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    pub zid: &'a str,
    pub node_id: u32,
    pub entity_id: u32,
    pub fq_topic: &'a str,
    pub dds_name: &'a str,
    pub hash: &'a str,
    pub qos: &'a str,
}

impl<'a> Endpoint<'a> {
    /// An endpoint of the type `ty` (a topic beyond Image: diagnostics, camera info).
    pub fn typed(
        zid: &'a str,
        node_id: u32,
        entity_id: u32,
        fq_topic: &'a str,
        ty: &'a crate::msgs::TypeKey,
        qos: &'a str,
    ) -> Self {
        Endpoint {
            zid,
            node_id,
            entity_id,
            fq_topic,
            dds_name: &ty.dds_name,
            hash: &ty.hash,
            qos,
        }
    }

    fn image(zid: &'a str, node_id: u32, entity_id: u32, fq_topic: &'a str, qos: &'a str) -> Self {
        Endpoint {
            zid,
            node_id,
            entity_id,
            fq_topic,
            dds_name: IMAGE_TYPE_NAME,
            hash: IMAGE_TYPE_HASH,
            qos,
        }
    }
}

/// The message type an output topic carries: `vision_msgs/Classification` for the classes,
/// `std_msgs/Float32MultiArray` for raw outputs, `sensor_msgs/Image` for the rest.
pub fn task_type(task: Task) -> crate::msgs::TypeKey {
    let name = match task {
        Task::Classes => crate::msgs::CLASSIFICATION,
        Task::Raw(_) => crate::msgs::FLOAT32_MULTI_ARRAY,
        _ => {
            return crate::msgs::TypeKey {
                dds_name: IMAGE_TYPE_NAME.into(),
                hash: IMAGE_TYPE_HASH.into(),
            };
        }
    };
    crate::msgs::TypeKey::of(name).expect("the output types are defined in msgs::DEFS")
}

/// rmw_zenoh writes names in liveliness keys with `/` as `%` (and `%` alone for empty).
fn mangle(name: &str) -> String {
    if name.is_empty() {
        "%".into()
    } else {
        name.replace('/', "%")
    }
}

/// rmw_zenoh's QoS key field, `rel:dur:hist,depth:dl_s,dl_ns:ls_s,ls_ns:liv,lease_s,lease_ns`,
/// empty meaning the default (RELIABLE, VOLATILE, KEEP_LAST).
pub fn qos_string(reliable: bool, depth: u32) -> String {
    qos_string_durable(reliable, depth, false)
}

/// [`qos_string`] with the durability: TRANSIENT_LOCAL is 1 (rmw `types.h`).
pub fn qos_string_durable(reliable: bool, depth: u32, transient_local: bool) -> String {
    format!(
        "{}:{}:,{depth}:,:,:,,",
        if reliable { "" } else { "2" },
        if transient_local { "1" } else { "" }
    )
}

/// A 16-byte GID for a publisher, stable for its session id and topic.
pub fn gid(zid: &str, topic: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{zid}{topic}").as_bytes());
    h[..16].try_into().expect("16 bytes")
}

/// A native message rebuilt from a ROS Image (stamps: capture from the header, publish from the
/// attachment's source timestamp) so both modes feed the same statistics.
pub fn to_tensor_msg(img: &Image, seq: i64, source_ns: i64) -> Result<TensorMsg> {
    let (task, shape, data) = image_to_tensor(img)?;
    Ok(TensorMsg {
        stream_id: 0,
        frame_id: seq.max(0) as u64,
        task,
        stamps: Stamps {
            capture_ns: img.header.stamp.to_ns(),
            publish_ns: source_ns,
            ..Stamps::default()
        },
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(task: Task) -> TensorMsg {
        let (shape, data) = match task {
            Task::Segmentation => (vec![2, 3], TensorData::U8(vec![0, 1, 2, 3, 4, 5])),
            Task::Depth => (vec![2, 2], TensorData::F32(vec![1.0, 2.5, 3.25, 4.0])),
            _ => (vec![1, 2, 3], TensorData::F32(vec![0.5; 6])),
        };
        TensorMsg {
            stream_id: 1,
            frame_id: 9,
            task,
            stamps: Stamps {
                capture_ns: 1_700_000_000_123_456_789,
                ..Stamps::default()
            },
            shape,
            data,
        }
    }

    /// The split encoding is the serde encoding of the whole Image, for every frame-id length
    /// (which moves every later field's alignment), and a tensor of the wrong size is refused.
    #[test]
    fn prefix_plus_pixels_is_the_whole_image() {
        for t in Task::OUTPUTS {
            let m = msg(t);
            for frame_id in ["", "c", "cam", "cam0", "camera_front"] {
                let (enc, ch, bpc) = image_encoding(t).unwrap();
                let (h, w) = (m.shape[0], m.shape[1]);
                let img = Image {
                    header: Header {
                        stamp: Time::from_ns(m.stamps.capture_ns),
                        frame_id: frame_id.into(),
                    },
                    height: h as u32,
                    width: w as u32,
                    encoding: enc.into(),
                    is_bigendian: 0,
                    step: (w * ch * bpc) as u32,
                    data: match &m.data {
                        TensorData::U8(v) => v.clone(),
                        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    },
                };
                let mut whole = CDR_LE_HEADER.to_vec();
                whole.extend(cdr_encoding::to_vec::<_, byteorder::LittleEndian>(&img).unwrap());
                assert_eq!(
                    encode_image(&m, frame_id).unwrap(),
                    whole,
                    "{t:?} {frame_id:?}"
                );
            }
            let mut short = m.clone();
            short.shape[0] += 1;
            assert!(encode_image(&short, "cam0").is_err(), "{t:?}");
        }
    }

    #[test]
    fn image_round_trip_for_every_task() {
        for t in Task::OUTPUTS {
            let m = msg(t);
            let b = encode_image(&m, "cam0").unwrap();
            assert_eq!(b[..4], CDR_LE_HEADER);
            let img = decode_image(&b).unwrap();
            assert_eq!(img.header.stamp.to_ns(), m.stamps.capture_ns);
            let (task, shape, data) = image_to_tensor(&img).unwrap();
            assert_eq!((task, shape, data), (t, m.shape.clone(), m.data.clone()));
        }
    }

    #[test]
    fn bad_cdr_is_an_error_not_a_panic() {
        let b = encode_image(&msg(Task::Depth), "cam0").unwrap();
        for n in 0..b.len() - 3 {
            assert!(decode_image(&b[..n]).is_err(), "prefix {n}");
        }
        let mut rng = overparam_base::Rng::new(5);
        for _ in 0..20_000 {
            let mut c = b.clone();
            let i = (rng.next_u64() as usize) % c.len();
            c[i] = rng.next_u64() as u8;
            let _ = decode_image(&c);
        }
    }

    #[test]
    fn keys_and_tokens_follow_rmw_zenoh() {
        let n = Ros2Names::new(0, "/perception/", "overparam");
        assert_eq!(
            n.typed_key(
                &n.output_topic("cam0", "segmentation"),
                IMAGE_TYPE_NAME,
                IMAGE_TYPE_HASH
            ),
            format!("0/perception/cam0/segmentation/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}")
        );
        assert_eq!(
            n.node_token("abc", 0),
            "@ros2_lv/0/abc/0/0/NN/%/%perception/overparam"
        );
        let (topic, qos) = (n.output_topic("cam0", "depth"), qos_string(true, 10));
        let t = task_type(Task::Depth);
        assert!(
            n.typed_publisher_token(Endpoint::typed("abc", 0, 3, &topic, &t, &qos))
                .ends_with(&format!(
                    "/3/MP/%/%perception/overparam/%perception%cam0%depth/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}/::,10:,:,:,,"
                ))
        );
        assert_eq!(qos_string(false, 5), "2::,5:,:,:,,");
        let sd = crate::publisher::TopicQos::sensor_data();
        assert_eq!(qos_string(sd.reliable, sd.depth), "2::,5:,:,:,,");
        assert!(!sd.block, "sensor data drops rather than waits");
        let root = Ros2Names::new(7, "", "n");
        assert_eq!(root.node_token("z", 1), "@ros2_lv/7/z/1/1/NN/%/%/n");
    }

    #[test]
    fn attachment_layout() {
        let g = gid("z", "/t");
        let a = attachment(5, -3, &g);
        assert_eq!(a.len(), 33);
        assert_eq!(a[16], 16);
        assert_eq!(parse_attachment(&a).unwrap(), (5, -3, g));
        assert!(parse_attachment(&a[..32]).is_err());
    }

    fn camera(encoding: &str, h: u32, w: u32, step: u32, data: Vec<u8>) -> Image {
        Image {
            header: Header {
                stamp: Time {
                    sec: 1_700_000_000,
                    nanosec: 5,
                },
                frame_id: "camera_optical".into(),
            },
            height: h,
            width: w,
            encoding: encoding.into(),
            is_bigendian: 0,
            step,
            data,
        }
    }

    /// Every camera encoding becomes the same RGB: pixel (y, x) is (10y + x, 100 + …, 200 + …)
    /// in its own channel order, rows padded past the pixels by 3 bytes that must be skipped.
    #[test]
    fn camera_encodings_become_rgb() {
        let (h, w) = (2usize, 3usize);
        let px = |y: usize, x: usize| [(10 * y + x) as u8, (100 + y + x) as u8, (200 + x) as u8];
        for (enc, ch) in CAMERA_ENCODINGS {
            let step = w * ch + 3;
            let mut data = vec![0xEE; h * step];
            for y in 0..h {
                for x in 0..w {
                    let [r, g, b] = px(y, x);
                    let p: Vec<u8> = match enc {
                        "rgb8" => vec![r, g, b],
                        "bgr8" => vec![b, g, r],
                        "rgba8" => vec![r, g, b, 7],
                        "bgra8" => vec![b, g, r, 7],
                        _ => vec![r],
                    };
                    data[y * step + x * ch..][..ch].copy_from_slice(&p);
                }
            }
            // The last row's padding is optional.
            data.truncate(h * step - 3);
            let (hh, ww, rgb) =
                camera_rgb(&camera(enc, h as u32, w as u32, step as u32, data)).unwrap();
            assert_eq!((hh, ww), (h, w), "{enc}");
            for y in 0..h {
                for x in 0..w {
                    let [r, g, b] = px(y, x);
                    let want = if ch == 1 { [r, r, r] } else { [r, g, b] };
                    let got = &rgb[(y * w + x) * 3..][..3];
                    for k in 0..3 {
                        assert_eq!(got[k], want[k] as f32 / 255.0, "{enc} ({y},{x})[{k}]");
                    }
                }
            }
        }
    }

    #[test]
    fn camera_images_that_do_not_describe_their_bytes_are_refused() {
        let ok = camera("rgb8", 2, 2, 6, vec![0; 12]);
        assert!(camera_rgb(&ok).is_ok());
        for enc in ["yuv422", "16UC1", "32FC1", "bayer_rggb8", ""] {
            let e = camera_rgb(&Image {
                encoding: enc.into(),
                ..ok.clone()
            })
            .unwrap_err();
            assert!(
                matches!(&e, Error::UnsupportedEncoding(x) if x == enc),
                "{e}"
            );
            assert!(e.to_string().contains("rgb8, bgr8"), "{e}");
        }
        let cases = [
            (camera("rgb8", 2, 2, 5, vec![0; 12]), "shorter than a row"),
            (camera("rgb8", 2, 2, 6, vec![0; 11]), "need 12 bytes"),
            (camera("mono8", 0, 4, 4, vec![]), "pixels"),
            (camera("mono8", 4, 0, 0, vec![]), "pixels"),
            (camera("mono8", 1 << 14, 1 << 13, 1 << 13, vec![]), "pixels"),
            (
                Image {
                    is_bigendian: 2,
                    ..ok.clone()
                },
                "is_bigendian",
            ),
            // step × height overflowing 32 bits must not wrap into a small number.
            (camera("bgra8", 3, 1, u32::MAX, vec![0; 8]), "need"),
        ];
        for (img, needle) in cases {
            let e = camera_rgb(&img).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        // 8-bit data has no byte order: is_bigendian 1 is accepted.
        assert!(
            camera_rgb(&Image {
                is_bigendian: 1,
                ..ok
            })
            .is_ok()
        );
    }

    /// A big-endian CDR body (encapsulation 00 00) parses to the same Image; other
    /// encapsulations (XCDR2, parameter lists) are refused by name.
    #[test]
    fn cdr_in_either_byte_order() {
        let img = camera("bgr8", 1, 2, 6, vec![1, 2, 3, 4, 5, 6]);
        let le = serialize_image(&img, true).unwrap();
        let be = serialize_image(&img, false).unwrap();
        assert_eq!(be[..4], [0, 0, 0, 0]);
        assert_ne!(le, be);
        assert_eq!(parse_image_cdr(&le).unwrap(), img);
        assert_eq!(parse_image_cdr(&be).unwrap(), img);
        for kind in [[0u8, 2], [0, 3], [0, 7], [1, 1]] {
            let mut b = le.clone();
            b[..2].copy_from_slice(&kind);
            let e = parse_image_cdr(&b).unwrap_err().to_string();
            assert!(e.contains("not plain CDR"), "{e}");
        }
    }

    #[test]
    fn topics_resolve_as_rcl_does() {
        let n = Ros2Names::new(3, "/vehicle1/perception", "overparam");
        let r = |t: &str| n.resolve_topic(t);
        assert_eq!(r("/camera/image_raw").unwrap(), "/camera/image_raw");
        assert_eq!(
            r("camera/image_raw").unwrap(),
            "/vehicle1/perception/camera/image_raw"
        );
        assert_eq!(
            r("~/image").unwrap(),
            "/vehicle1/perception/overparam/image"
        );
        assert_eq!(
            Ros2Names::new(0, "", "n").resolve_topic("cam").unwrap(),
            "/cam"
        );
        for bad in [
            "", "/", "/cam/", "/a//b", "/cam/*", "/cam/**", "/1cam", "/c am", "/{x}",
        ] {
            assert!(r(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            n.topic_key("/camera/image_raw"),
            format!("3/camera/image_raw/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}")
        );
        assert_eq!(
            n.subscription_token("z", 0, 100, "/camera/image_raw", &qos_string(false, 1)),
            format!(
                "@ros2_lv/3/z/0/100/MS/%/%vehicle1%perception/overparam/%camera%image_raw/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}/2::,1:,:,:,,"
            )
        );
    }
}

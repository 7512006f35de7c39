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

/// ROS image encoding and channel count for a task's tensor (H×W or H×W×C).
pub fn image_encoding(task: Task) -> (&'static str, usize, usize) {
    match task {
        Task::Camera => ("rgb8", 3, 1),
        Task::Segmentation => ("mono8", 1, 1),
        Task::Depth => ("32FC1", 1, 4),
        Task::Normals => ("32FC3", 3, 4),
    }
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
    let (enc, ch, bpc) = image_encoding(msg.task);
    let (h, w) = match shape {
        [h, w] if ch == 1 => (*h, *w),
        [h, w, c] if *c == ch => (*h, *w),
        s => {
            return Err(Error::Malformed(format!(
                "{} as {enc} needs H×W{}, got {s:?}",
                msg.task.name(),
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
        header: Header {
            stamp: Time::from_ns(msg.stamps.capture_ns),
            frame_id: frame_id.to_string(),
        },
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

/// Parses and validates a CDR Image payload.
pub fn decode_image(b: &[u8]) -> Result<Image> {
    if b.len() < 4 {
        return Err(Error::Truncated {
            got: b.len(),
            need: 4,
        });
    }
    if b[..4] != CDR_LE_HEADER {
        return Err(Error::Cdr(format!(
            "encapsulation {:02x?}, expected little-endian CDR {:02x?}",
            &b[..4],
            CDR_LE_HEADER
        )));
    }
    let (img, used): (Image, usize) =
        cdr_encoding::from_bytes::<Image, byteorder::LittleEndian>(&b[4..])
            .map_err(|e| Error::Cdr(e.to_string()))?;
    // Fast-CDR pads the end to 4 bytes at most.
    if b.len() - 4 - used > 3 {
        return Err(Error::Cdr(format!("{} trailing bytes", b.len() - 4 - used)));
    }
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
    /// Fully qualified topic: `/<ns>/<camera>/<task>`.
    pub fn topic(&self, camera: &str, task: Task) -> String {
        if self.namespace.is_empty() {
            format!("/{camera}/{}", task.name())
        } else {
            format!("/{}/{camera}/{}", self.namespace, task.name())
        }
    }
    /// The data key: `<domain>/<topic without leading slash>/<type>/<hash>`.
    pub fn data_key(&self, camera: &str, task: Task) -> String {
        format!(
            "{}/{}/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}",
            self.domain_id,
            self.topic(camera, task).trim_start_matches('/')
        )
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
    /// Publisher token `.../<eid>/MP/<enclave>/<ns>/<node>/<topic>/<type>/<hash>/<qos>`.
    pub fn publisher_token(
        &self,
        zid: &str,
        node_id: u32,
        entity_id: u32,
        camera: &str,
        task: Task,
        qos: &str,
    ) -> String {
        format!(
            "@ros2_lv/{}/{zid}/{node_id}/{entity_id}/MP/%/{}/{}/{}/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}/{qos}",
            self.domain_id,
            self.ns_mangled(),
            self.node,
            mangle(&self.topic(camera, task)),
        )
    }
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
    format!("{}::,{depth}:,:,:,,", if reliable { "" } else { "2" })
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
                let (enc, ch, bpc) = image_encoding(t);
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
        let mut rng = overparam_fuse::Rng::new(5);
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
            n.data_key("cam0", Task::Segmentation),
            format!("0/perception/cam0/segmentation/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}")
        );
        assert_eq!(
            n.node_token("abc", 0),
            "@ros2_lv/0/abc/0/0/NN/%/%perception/overparam"
        );
        assert!(
            n.publisher_token("abc", 0, 3, "cam0", Task::Depth, &qos_string(true, 10))
                .ends_with(&format!(
                    "/3/MP/%/%perception/overparam/%perception%cam0%depth/{IMAGE_TYPE_NAME}/{IMAGE_TYPE_HASH}/::,10:,:,:,,"
                ))
        );
        assert_eq!(qos_string(false, 5), "2::,5:,:,:,,");
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
}

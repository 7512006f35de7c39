//! ROS 2 message types beyond `sensor_msgs/Image`: their definitions, the RIHS01 type hash
//! computed from them, and their CDR.
//!
//! RIHS01 (REP 2011, "Evolving Message Types"; rosidl_generator_type_description) is the
//! SHA-256 of the type description as JSON: `{"type_description": T, "referenced_type_descriptions":
//! [T…]}` with the referenced types sorted by name, each `T` `{"type_name", "fields": [{"name",
//! "type": {"type_id", "capacity", "string_capacity", "nested_type_name"}}]}`, written with
//! Python's `json.dumps` separators (`", "`, `": "`). Constants are not part of it. The field
//! type ids are `type_description_interfaces/msg/FieldType`'s: a nested type 1, the primitives
//! 2–17 and 21, plus 48 for a fixed array, 96 for a bounded and 144 for an unbounded sequence.
//! `bridge/tests/rosbags_golden.rs` checks every hash here against rosbags' `hash_rihs01`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ros2::Header;

/// The element of a field.
#[derive(Clone, Copy, Debug)]
pub enum Elem {
    /// A primitive by its `.msg` name (`uint8`, `float64`, `byte`, `string`, …).
    Prim(&'static str),
    /// A message type by its full name (`std_msgs/msg/Header`).
    Msg(&'static str),
}

/// Single, fixed array of N, or unbounded sequence.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    One,
    Array(u64),
    Seq,
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub elem: Elem,
    pub shape: Shape,
}

const fn f(name: &'static str, prim: &'static str) -> Field {
    Field {
        name,
        elem: Elem::Prim(prim),
        shape: Shape::One,
    }
}

const fn m(name: &'static str, msg: &'static str) -> Field {
    Field {
        name,
        elem: Elem::Msg(msg),
        shape: Shape::One,
    }
}

const fn seq(mut fd: Field) -> Field {
    fd.shape = Shape::Seq;
    fd
}

const fn arr(mut fd: Field, n: u64) -> Field {
    fd.shape = Shape::Array(n);
    fd
}

/// A message definition: its full name and its fields in order (constants left out).
#[derive(Clone, Copy, Debug)]
pub struct MsgDef {
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// Every type the bridge publishes, with the types they reference (definitions from
/// common_interfaces and rcl_interfaces, ROS 2 Jazzy).
pub const DEFS: &[MsgDef] = &[
    MsgDef {
        name: "builtin_interfaces/msg/Time",
        fields: &[f("sec", "int32"), f("nanosec", "uint32")],
    },
    MsgDef {
        name: "std_msgs/msg/Header",
        fields: &[
            m("stamp", "builtin_interfaces/msg/Time"),
            f("frame_id", "string"),
        ],
    },
    MsgDef {
        name: "sensor_msgs/msg/Image",
        fields: &[
            m("header", "std_msgs/msg/Header"),
            f("height", "uint32"),
            f("width", "uint32"),
            f("encoding", "string"),
            f("is_bigendian", "uint8"),
            f("step", "uint32"),
            seq(f("data", "uint8")),
        ],
    },
    MsgDef {
        name: "diagnostic_msgs/msg/KeyValue",
        fields: &[f("key", "string"), f("value", "string")],
    },
    MsgDef {
        name: "diagnostic_msgs/msg/DiagnosticStatus",
        fields: &[
            f("level", "byte"),
            f("name", "string"),
            f("message", "string"),
            f("hardware_id", "string"),
            seq(m("values", "diagnostic_msgs/msg/KeyValue")),
        ],
    },
    MsgDef {
        name: "diagnostic_msgs/msg/DiagnosticArray",
        fields: &[
            m("header", "std_msgs/msg/Header"),
            seq(m("status", "diagnostic_msgs/msg/DiagnosticStatus")),
        ],
    },
    MsgDef {
        name: "sensor_msgs/msg/RegionOfInterest",
        fields: &[
            f("x_offset", "uint32"),
            f("y_offset", "uint32"),
            f("height", "uint32"),
            f("width", "uint32"),
            f("do_rectify", "bool"),
        ],
    },
    MsgDef {
        name: "sensor_msgs/msg/CameraInfo",
        fields: &[
            m("header", "std_msgs/msg/Header"),
            f("height", "uint32"),
            f("width", "uint32"),
            f("distortion_model", "string"),
            seq(f("d", "float64")),
            arr(f("k", "float64"), 9),
            arr(f("r", "float64"), 9),
            arr(f("p", "float64"), 12),
            f("binning_x", "uint32"),
            f("binning_y", "uint32"),
            m("roi", "sensor_msgs/msg/RegionOfInterest"),
        ],
    },
    // vision_msgs 4.x (ROS 2 Jazzy).
    MsgDef {
        name: "vision_msgs/msg/ObjectHypothesis",
        fields: &[f("class_id", "string"), f("score", "float64")],
    },
    MsgDef {
        name: "vision_msgs/msg/Classification",
        fields: &[
            m("header", "std_msgs/msg/Header"),
            seq(m("results", "vision_msgs/msg/ObjectHypothesis")),
        ],
    },
    MsgDef {
        name: "vision_msgs/msg/VisionClass",
        fields: &[f("class_id", "uint16"), f("class_name", "string")],
    },
    MsgDef {
        name: "vision_msgs/msg/LabelInfo",
        fields: &[
            m("header", "std_msgs/msg/Header"),
            seq(m("class_map", "vision_msgs/msg/VisionClass")),
            f("threshold", "float32"),
        ],
    },
    MsgDef {
        name: "std_msgs/msg/MultiArrayDimension",
        fields: &[
            f("label", "string"),
            f("size", "uint32"),
            f("stride", "uint32"),
        ],
    },
    MsgDef {
        name: "std_msgs/msg/MultiArrayLayout",
        fields: &[
            seq(m("dim", "std_msgs/msg/MultiArrayDimension")),
            f("data_offset", "uint32"),
        ],
    },
    MsgDef {
        name: "std_msgs/msg/Float32MultiArray",
        fields: &[
            m("layout", "std_msgs/msg/MultiArrayLayout"),
            seq(f("data", "float32")),
        ],
    },
];

fn def(name: &str) -> Result<&'static MsgDef> {
    DEFS.iter()
        .find(|d| d.name == name)
        .ok_or_else(|| Error::Malformed(format!("no definition of the ROS 2 type {name}")))
}

/// `type_description_interfaces/msg/FieldType` ids of the primitives.
fn prim_id(p: &str) -> Result<u64> {
    Ok(match p {
        "int8" => 2,
        "uint8" => 3,
        "int16" => 4,
        "uint16" => 5,
        "int32" => 6,
        "uint32" => 7,
        "int64" => 8,
        "uint64" => 9,
        "float32" => 10,
        "float64" => 11,
        "char" => 13,
        "bool" => 15,
        "byte" => 16,
        "string" => 17,
        _ => {
            return Err(Error::Malformed(format!(
                "primitive {p} has no type id here"
            )));
        }
    })
}

fn describe(d: &MsgDef) -> Result<String> {
    let mut fields = vec![];
    for fd in d.fields {
        let (base, nested) = match fd.elem {
            Elem::Prim(p) => (prim_id(p)?, ""),
            Elem::Msg(n) => (1, n),
        };
        let (inc, capacity) = match fd.shape {
            Shape::One => (0, 0),
            Shape::Array(n) => (48, n),
            Shape::Seq => (144, 0),
        };
        fields.push(format!(
            r#"{{"name": "{}", "type": {{"type_id": {}, "capacity": {capacity}, "string_capacity": 0, "nested_type_name": "{nested}"}}}}"#,
            fd.name,
            base + inc
        ));
    }
    Ok(format!(
        r#"{{"type_name": "{}", "fields": [{}]}}"#,
        d.name,
        fields.join(", ")
    ))
}

/// The RIHS01 hash of a type in [`DEFS`], `RIHS01_<64 hex>`.
pub fn rihs01(name: &str) -> Result<String> {
    let top = def(name)?;
    // Every type reachable from the top one, sorted by name.
    let mut refs = std::collections::BTreeMap::new();
    let mut todo = vec![top];
    while let Some(d) = todo.pop() {
        for fd in d.fields {
            if let Elem::Msg(n) = fd.elem
                && n != name
                && !refs.contains_key(n)
            {
                let r = def(n)?;
                refs.insert(n, r);
                todo.push(r);
            }
        }
    }
    let referenced: Vec<String> = refs.values().map(|d| describe(d)).collect::<Result<_>>()?;
    let json = format!(
        r#"{{"type_description": {}, "referenced_type_descriptions": [{}]}}"#,
        describe(top)?,
        referenced.join(", ")
    );
    let digest = Sha256::digest(json.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("RIHS01_{hex}"))
}

/// A type as rmw_zenoh names it in keys: its DDS name and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeKey {
    /// `pkg::msg::dds_::Name_`.
    pub dds_name: String,
    pub hash: String,
}

impl TypeKey {
    pub fn of(name: &str) -> Result<Self> {
        let [pkg, "msg", short] = name.split('/').collect::<Vec<_>>()[..] else {
            return Err(Error::Malformed(format!("{name}: not a pkg/msg/Name type")));
        };
        Ok(TypeKey {
            dds_name: format!("{pkg}::msg::dds_::{short}_"),
            hash: rihs01(name)?,
        })
    }
}

pub const DIAGNOSTIC_ARRAY: &str = "diagnostic_msgs/msg/DiagnosticArray";

/// `diagnostic_msgs/msg/KeyValue`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `diagnostic_msgs/msg/DiagnosticStatus`: `level` is OK 0, WARN 1, ERROR 2 or STALE 3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticStatus {
    pub level: u8,
    pub name: String,
    pub message: String,
    pub hardware_id: String,
    pub values: Vec<KeyValue>,
}

/// `diagnostic_msgs/msg/DiagnosticArray`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticArray {
    pub header: Header,
    pub status: Vec<DiagnosticStatus>,
}

pub const CLASSIFICATION: &str = "vision_msgs/msg/Classification";

/// `vision_msgs/msg/ObjectHypothesis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectHypothesis {
    pub class_id: String,
    pub score: f64,
}

/// `vision_msgs/msg/Classification`: a classifier's hypotheses for one image, best first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub header: Header,
    pub results: Vec<ObjectHypothesis>,
}

pub const LABEL_INFO: &str = "vision_msgs/msg/LabelInfo";

/// `vision_msgs/msg/VisionClass`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionClass {
    pub class_id: u16,
    pub class_name: String,
}

/// `vision_msgs/msg/LabelInfo`: the class names of a model's outputs, published once with
/// transient-local durability (vision_msgs' convention, so late subscribers get it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelInfo {
    pub header: Header,
    pub class_map: Vec<VisionClass>,
    /// The score below which a class is not reported; 0 here (the bridge reports the top k).
    pub threshold: f32,
}

pub const FLOAT32_MULTI_ARRAY: &str = "std_msgs/msg/Float32MultiArray";

/// `std_msgs/msg/MultiArrayDimension`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiArrayDimension {
    pub label: String,
    pub size: u32,
    pub stride: u32,
}

/// `std_msgs/msg/MultiArrayLayout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiArrayLayout {
    pub dim: Vec<MultiArrayDimension>,
    pub data_offset: u32,
}

/// `std_msgs/msg/Float32MultiArray`: a raw output in ROS 2 mode (the standard type for a
/// tensor; it has no header, so the frame's sequence and time travel in rmw_zenoh's
/// attachment only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Float32MultiArray {
    pub layout: MultiArrayLayout,
    pub data: Vec<f32>,
}

impl Float32MultiArray {
    /// A row-major tensor: each dimension's stride is the element count of it and those
    /// after it (std_msgs' MultiArrayLayout convention); 4-D ones are labelled n, c, h, w.
    pub fn row_major(shape: &[usize], data: Vec<f32>) -> Self {
        let labels: Vec<String> = if shape.len() == 4 {
            ["n", "c", "h", "w"].map(String::from).to_vec()
        } else {
            (0..shape.len()).map(|i| format!("dim{i}")).collect()
        };
        let dim = shape
            .iter()
            .enumerate()
            .map(|(i, &size)| MultiArrayDimension {
                label: labels[i].clone(),
                size: size as u32,
                stride: shape[i..].iter().product::<usize>() as u32,
            })
            .collect();
        Float32MultiArray {
            layout: MultiArrayLayout {
                dim,
                data_offset: 0,
            },
            data,
        }
    }
}

pub const CAMERA_INFO: &str = "sensor_msgs/msg/CameraInfo";

/// `sensor_msgs/msg/RegionOfInterest`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionOfInterest {
    pub x_offset: u32,
    pub y_offset: u32,
    pub height: u32,
    pub width: u32,
    pub do_rectify: bool,
}

/// `sensor_msgs/msg/CameraInfo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraInfo {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub distortion_model: String,
    pub d: Vec<f64>,
    pub k: [f64; 9],
    pub r: [f64; 9],
    pub p: [f64; 12],
    pub binning_x: u32,
    pub binning_y: u32,
    pub roi: RegionOfInterest,
}

impl CameraInfo {
    /// The calibration of the same camera seen at `height` × `width`, as image_proc's resize
    /// node scales it (`image_proc/src/resize.cpp`): fx, cx, P's first row and the ROI's x by
    /// width / self.width; fy, cy, P's second row and the ROI's y by height / self.height;
    /// distortion and rectification unchanged. `None` for an info of zero size.
    pub fn scaled(&self, height: usize, width: usize, header: Header) -> Option<CameraInfo> {
        if self.height == 0 || self.width == 0 {
            return None;
        }
        let sx = width as f64 / self.width as f64;
        let sy = height as f64 / self.height as f64;
        let mut c = self.clone();
        c.header = header;
        c.height = height as u32;
        c.width = width as u32;
        c.k[0] *= sx;
        c.k[2] *= sx;
        c.k[4] *= sy;
        c.k[5] *= sy;
        c.p[0] *= sx;
        c.p[2] *= sx;
        c.p[3] *= sx;
        c.p[5] *= sy;
        c.p[6] *= sy;
        let r = &mut c.roi;
        r.x_offset = (r.x_offset as f64 * sx).round() as u32;
        r.width = (r.width as f64 * sx).round() as u32;
        r.y_offset = (r.y_offset as f64 * sy).round() as u32;
        r.height = (r.height as f64 * sy).round() as u32;
        Some(c)
    }
}

/// A message as little-endian CDR with its encapsulation header.
pub fn to_cdr<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let mut out = crate::ros2::CDR_LE_HEADER.to_vec();
    out.extend(
        cdr_encoding::to_vec::<_, byteorder::LittleEndian>(msg)
            .map_err(|e| Error::Cdr(e.to_string()))?,
    );
    Ok(out)
}

/// A little-endian CDR message (with its encapsulation header) back (tests and tools).
pub fn from_cdr<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    if b.len() < 4 || b[..2] != crate::ros2::CDR_LE_HEADER[..2] {
        return Err(Error::Cdr("not little-endian CDR".into()));
    }
    let (v, _) = cdr_encoding::from_bytes::<T, byteorder::LittleEndian>(&b[4..])
        .map_err(|e| Error::Cdr(e.to_string()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_computed_image_hash_is_the_one_rmw_zenoh_uses() {
        assert_eq!(
            rihs01("sensor_msgs/msg/Image").unwrap(),
            crate::ros2::IMAGE_TYPE_HASH
        );
        let k = TypeKey::of(DIAGNOSTIC_ARRAY).unwrap();
        assert_eq!(k.dds_name, "diagnostic_msgs::msg::dds_::DiagnosticArray_");
        assert!(rihs01("nav_msgs/msg/Odometry").is_err());
    }

    #[test]
    fn a_raw_tensor_has_row_major_strides() {
        let a = Float32MultiArray::row_major(&[1, 2, 3, 4], vec![0.5; 24]);
        let d: Vec<(&str, u32, u32)> = a
            .layout
            .dim
            .iter()
            .map(|d| (d.label.as_str(), d.size, d.stride))
            .collect();
        assert_eq!(d, [("n", 1, 24), ("c", 2, 24), ("h", 3, 12), ("w", 4, 4)]);
        let b = to_cdr(&a).unwrap();
        assert_eq!(from_cdr::<Float32MultiArray>(&b).unwrap(), a);
        let v = Float32MultiArray::row_major(&[5], vec![1.0; 5]);
        assert_eq!(v.layout.dim[0].label, "dim0");
    }

    #[test]
    fn camera_info_scales_as_image_proc_resizes() {
        let h = |s| Header {
            stamp: crate::ros2::Time { sec: s, nanosec: 0 },
            frame_id: "cam".into(),
        };
        let info = CameraInfo {
            header: h(1),
            height: 480,
            width: 640,
            distortion_model: "plumb_bob".into(),
            d: vec![0.1, -0.2, 0.0, 0.0, 0.01],
            k: [500.0, 0.0, 320.0, 0.0, 480.0, 240.0, 0.0, 0.0, 1.0],
            r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p: [
                500.0, 0.0, 320.0, 10.0, 0.0, 480.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0,
            ],
            binning_x: 0,
            binning_y: 0,
            roi: RegionOfInterest {
                x_offset: 64,
                y_offset: 48,
                height: 240,
                width: 320,
                do_rectify: false,
            },
        };
        let s = info.scaled(48, 128, h(2)).unwrap();
        assert_eq!((s.height, s.width, s.header.stamp.sec), (48, 128, 2));
        assert_eq!(s.k, [100.0, 0.0, 64.0, 0.0, 48.0, 24.0, 0.0, 0.0, 1.0]);
        assert_eq!(s.p[..7], [100.0, 0.0, 64.0, 2.0, 0.0, 48.0, 24.0]);
        assert_eq!(
            (s.roi.x_offset, s.roi.width, s.roi.y_offset, s.roi.height),
            (13, 64, 5, 24)
        );
        assert_eq!((s.d.clone(), s.r), (info.d.clone(), info.r));
        let b = to_cdr(&s).unwrap();
        assert_eq!(from_cdr::<CameraInfo>(&b).unwrap(), s);
        let zero = CameraInfo { width: 0, ..info };
        assert!(zero.scaled(48, 64, h(3)).is_none());
    }

    #[test]
    fn diagnostics_round_trip_through_cdr() {
        let a = DiagnosticArray {
            header: Header {
                stamp: crate::ros2::Time { sec: 3, nanosec: 9 },
                frame_id: String::new(),
            },
            status: vec![DiagnosticStatus {
                level: 1,
                name: "n".into(),
                message: "odd length".into(),
                hardware_id: "cam".into(),
                values: vec![KeyValue {
                    key: "k".into(),
                    value: "v".into(),
                }],
            }],
        };
        let b = to_cdr(&a).unwrap();
        assert_eq!(from_cdr::<DiagnosticArray>(&b).unwrap(), a);
        assert!(from_cdr::<DiagnosticArray>(&b[..b.len() - 3]).is_err());
    }
}

//! Small constructors for ONNX protobuf messages (proto2: every scalar is optional).

use crate::pb::{
    AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};

pub const OPSET: i64 = 17;
/// IR version 8 pairs with opset 17 (onnx/docs/Versioning.md).
pub const IR_VERSION: i64 = 8;

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

pub fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

pub fn tensor_raw(name: &str, dtype: DataType, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype as i32),
        dims: dims.iter().map(|&d| d as i64).collect(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    tensor_raw(
        name,
        DataType::Float,
        dims,
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub fn tensor_f16(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let raw = data
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    tensor_raw(name, DataType::Float16, dims, raw)
}

pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    tensor_raw(
        name,
        DataType::Int64,
        dims,
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub fn tensor_i8(name: &str, dims: &[usize], data: &[i8]) -> TensorProto {
    tensor_raw(
        name,
        DataType::Int8,
        dims,
        data.iter().map(|v| *v as u8).collect(),
    )
}

pub fn tensor_u8(name: &str, dims: &[usize], data: &[u8]) -> TensorProto {
    tensor_raw(name, DataType::Uint8, dims, data.to_vec())
}

pub fn value_info(name: &str, dtype: DataType, dims: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

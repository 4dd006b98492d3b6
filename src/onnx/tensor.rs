//! Dense tensors (ndarray) and their conversion from and to `TensorProto`.
use super::TensorProto;
use crate::error::{Error, Result};
use ndarray::{ArrayD, Axis, IxDyn};

/// ONNX `TensorProto.DataType` codes the tool reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Int32 = 6,
    Int64 = 7,
    Bool = 9,
    Double = 11,
}

/// A dense constant tensor. Float types are held as f32, integer and bool types as i64.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl Tensor {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Tensor::F32(a) => a.shape().to_vec(),
            Tensor::I64(a) => a.shape().to_vec(),
        }
    }
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_i64(&self) -> Option<&ArrayD<i64>> {
        match self {
            Tensor::I64(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            Tensor::F32(a) => Some(a),
            _ => None,
        }
    }
    /// Values as i64 (floats truncated), flattened in row-major order.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self {
            Tensor::I64(a) => a.iter().copied().collect(),
            Tensor::F32(a) => a.iter().map(|&v| v as i64).collect(),
        }
    }
    /// Keeps only `indices` along `axis` (in the given order).
    pub fn select(&self, axis: usize, indices: &[usize]) -> Tensor {
        match self {
            Tensor::F32(a) => Tensor::F32(a.select(Axis(axis), indices)),
            Tensor::I64(a) => Tensor::I64(a.select(Axis(axis), indices)),
        }
    }
    pub fn scalar_i64(v: i64) -> Tensor {
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), v))
    }
    pub fn vec_i64(v: Vec<i64>) -> Tensor {
        let n = v.len();
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n]), v).expect("1-D shape matches length"))
    }
}

fn dims_of(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| Error::Tensor {
                name: t.name().into(),
                msg: format!("negative dim {d}"),
            })
        })
        .collect()
}

fn from_raw<T: Copy, const N: usize>(raw: &[u8], conv: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| conv(c.try_into().expect("chunk of N bytes")))
        .collect()
}

/// Decodes a `TensorProto` (inline data: typed fields or `raw_data`, little-endian).
///
/// Errors: [`Error::Tensor`] for an unsupported data type or a length that does not match
/// the dims.
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor> {
    let dims = dims_of(t)?;
    let n: usize = dims.iter().product();
    let raw = t.raw_data.as_deref();
    let dt = t.data_type.unwrap_or(0);
    let bad = |msg: String| Error::Tensor {
        name: t.name().into(),
        msg,
    };
    let out = match dt {
        1 => {
            let v = match raw {
                Some(r) => from_raw::<f32, 4>(r, f32::from_le_bytes),
                None => t.float_data.clone(),
            };
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&dims), v).map_err(|e| bad(e.to_string()))?)
        }
        11 => {
            let v: Vec<f32> = match raw {
                Some(r) => from_raw::<f64, 8>(r, f64::from_le_bytes)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect(),
                None => t.double_data.iter().map(|&x| x as f32).collect(),
            };
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&dims), v).map_err(|e| bad(e.to_string()))?)
        }
        7 => {
            let v = match raw {
                Some(r) => from_raw::<i64, 8>(r, i64::from_le_bytes),
                None => t.int64_data.clone(),
            };
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&dims), v).map_err(|e| bad(e.to_string()))?)
        }
        6 | 5 | 3 | 2 | 4 | 9 => {
            let v: Vec<i64> = match (raw, dt) {
                (Some(r), 6) => from_raw::<i32, 4>(r, i32::from_le_bytes)
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                (Some(r), 5) => from_raw::<i16, 2>(r, i16::from_le_bytes)
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                (Some(r), 4) => from_raw::<u16, 2>(r, u16::from_le_bytes)
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                (Some(r), 3) => r.iter().map(|&b| b as i8 as i64).collect(),
                (Some(r), _) => r.iter().map(|&b| b as i64).collect(),
                (None, _) => t.int32_data.iter().map(|&x| x as i64).collect(),
            };
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&dims), v).map_err(|e| bad(e.to_string()))?)
        }
        other => return Err(bad(format!("unsupported data type {other}"))),
    };
    if out.len() != n {
        return Err(bad("data length does not match dims".into()));
    }
    Ok(out)
}

/// Encodes a tensor as `raw_data` of the given ONNX type, keeping `like`'s name and doc string.
pub fn tensor_to_proto(t: &Tensor, like: &TensorProto) -> TensorProto {
    let shape = t.shape();
    let dt = like.data_type.unwrap_or(match t {
        Tensor::F32(_) => 1,
        Tensor::I64(_) => 7,
    });
    let raw: Vec<u8> = match (t, dt) {
        (Tensor::F32(a), 11) => a.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect(),
        (Tensor::F32(a), _) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        (Tensor::I64(a), 6) => a.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        (Tensor::I64(a), 9) | (Tensor::I64(a), 2) | (Tensor::I64(a), 3) => {
            a.iter().map(|&v| v as u8).collect()
        }
        (Tensor::I64(a), _) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    TensorProto {
        name: like.name.clone(),
        doc_string: like.doc_string.clone(),
        data_type: Some(dt),
        dims: shape.iter().map(|&d| d as i64).collect(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

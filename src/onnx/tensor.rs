//! Dense tensors (ndarray) and their conversion from and to `TensorProto`.
use super::TensorProto;
use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};

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
    /// A float tensor whose entries are all one value (an exporter's unit scale or zero
    /// bias; vacuously true when empty); never an integer tensor.
    pub fn is_filled(&self) -> bool {
        matches!(self, Tensor::F32(a) if a.iter().all(|x| Some(x) == a.first()))
    }
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
    ///
    /// Panics when `axis` is out of range or an index is out of bounds.
    pub fn select(&self, axis: usize, indices: &[usize]) -> Tensor {
        match self {
            Tensor::F32(a) => Tensor::F32(select_runs(a, axis, indices)),
            Tensor::I64(a) => Tensor::I64(select_runs(a, axis, indices)),
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

/// `a.select(Axis(axis), indices)` by copying contiguous runs: in row-major order the
/// tensor is `outer` blocks of `dim` runs of `inner` elements.
fn select_runs<T: Copy>(a: &ArrayD<T>, axis: usize, indices: &[usize]) -> ArrayD<T> {
    let a = a.as_standard_layout();
    let data = a.as_slice().expect("standard layout");
    let dim = a.shape()[axis];
    let inner: usize = a.shape()[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(data.len() / dim.max(1) * indices.len());
    for block in data.chunks(dim * inner).filter(|b| !b.is_empty()) {
        for &i in indices {
            out.extend_from_slice(&block[i * inner..(i + 1) * inner]);
        }
    }
    let mut shape = a.shape().to_vec();
    shape[axis] = indices.len();
    ArrayD::from_shape_vec(IxDyn(&shape), out).expect("selected length matches shape")
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
    let bad = |msg: String| Error::Tensor {
        name: t.name().into(),
        msg,
    };
    let n: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
    let raw = t.raw_data.as_deref();
    let dt = t.data_type.unwrap_or(0);
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

/// The elements in row-major order (a copy only when `a` is not in standard layout).
fn row_major<T: Copy>(a: &ArrayD<T>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.as_standard_layout().iter().copied().collect()),
    }
}

/// Encodes a tensor as `raw_data` of the given ONNX type, keeping `like`'s name and doc string.
pub fn tensor_to_proto(t: &Tensor, like: &TensorProto) -> TensorProto {
    let shape = t.shape();
    let dt = like.data_type.unwrap_or(match t {
        Tensor::F32(_) => 1,
        Tensor::I64(_) => 7,
    });
    let raw: Vec<u8> = match (t, dt) {
        (Tensor::F32(a), 11) => row_major(a)
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect(),
        (Tensor::F32(a), _) => row_major(a).iter().flat_map(|v| v.to_le_bytes()).collect(),
        (Tensor::I64(a), 6) => row_major(a)
            .iter()
            .flat_map(|&v| (v as i32).to_le_bytes())
            .collect(),
        (Tensor::I64(a), 9) | (Tensor::I64(a), 2) | (Tensor::I64(a), 3) => {
            row_major(a).iter().map(|&v| v as u8).collect()
        }
        (Tensor::I64(a), _) => row_major(a).iter().flat_map(|v| v.to_le_bytes()).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    #[test]
    fn select_matches_ndarray_on_every_axis() {
        let a = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as f32
        });
        let t = Tensor::F32(a.clone());
        for axis in 0..3 {
            let idx: Vec<usize> = (0..a.shape()[axis]).rev().step_by(2).collect();
            assert_eq!(
                t.select(axis, &idx),
                Tensor::F32(a.select(Axis(axis), &idx))
            );
            // a transposed (non-standard) view selects the same
            let tt = Tensor::F32(a.t().to_owned().into_dyn());
            let at = a.t().to_owned();
            let ax = 2 - axis;
            assert_eq!(tt.select(ax, &idx), Tensor::F32(at.select(Axis(ax), &idx)));
        }
    }
}

//! ONNX protobuf (prost), loading, atomic saving and tensor conversion.
//!
//! The [`ModelProto`] is kept whole: the tool edits only the initializers and nodes it
//! prunes, so metadata, opset imports, doc strings, value_info and unknown attributes pass
//! through unchanged. Initializers stored as external data are read in at load time and
//! written back as external data (`OUT.onnx.data`), as is a model too large for one
//! protobuf message (2 GiB).
mod tensor;

pub use tensor::{tensor_from_proto, tensor_to_proto, DataType, Tensor};

#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
pub use pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use crate::error::{Error, Result};
use prost::Message;
use std::io::Write;
use std::path::Path;

/// Reads and decodes an ONNX file. External-data initializers are loaded from files next
/// to the model and turned into inline `raw_data`.
///
/// Errors: [`Error::Io`] when the file or an external data file cannot be read,
/// [`Error::Decode`] when the bytes are not a `ModelProto` or it has no graph.
pub fn load(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| Error::Decode {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let graph = model.graph.as_mut().ok_or_else(|| Error::Decode {
        path: path.into(),
        msg: "model has no graph".into(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = std::collections::HashMap::new();
    let mut external = false;
    for init in graph.initializer.iter_mut() {
        external |= load_external(init, dir, &mut files)?;
    }
    if external {
        // written back the same way ([`save`])
        model.metadata_props.push(pb::StringStringEntryProto {
            key: Some(EXTERNAL_KEY.into()),
            value: Some("1".into()),
        });
    }
    Ok(model)
}

/// `model` with the named initializers replaced by `values` (same names; each keeps its
/// data type, the shape is the new value's); everything else unchanged.
///
/// Errors: a name in `values` that is not an initializer of the graph.
pub fn replace_initializers(
    model: &ModelProto,
    values: &std::collections::HashMap<String, Tensor>,
) -> Result<ModelProto> {
    let mut out = model.clone();
    let graph = out
        .graph
        .as_mut()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let mut done = 0;
    for init in graph.initializer.iter_mut() {
        if let Some(t) = values.get(init.name()) {
            *init = tensor_to_proto(t, init);
            done += 1;
        }
    }
    if done != values.len() {
        let missing = values
            .keys()
            .find(|k| !graph.initializer.iter().any(|i| i.name() == k.as_str()));
        return Err(Error::Tensor {
            name: missing.cloned().unwrap_or_default(),
            msg: "not an initializer of the graph".into(),
        });
    }
    Ok(out)
}

/// Encodes a model to bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// then rename. A failure leaves no partial file behind. The file gets the permissions of
/// any new file (0666 less the process umask, e.g. 0644), not a temporary file's 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // open(2) applies the umask to this mode, as for any new file
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Saves a model atomically. Refuses to overwrite `input` unless `allow_overwrite`.
pub fn save(
    model: &ModelProto,
    path: &Path,
    input: Option<&Path>,
    allow_overwrite: bool,
) -> Result<()> {
    if let Some(inp) = input {
        let same = match (std::fs::canonicalize(inp), std::fs::canonicalize(path)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same && !allow_overwrite {
            return Err(Error::Overwrite(path.to_path_buf()));
        }
    }
    // an input read from external data, or a model too large for one protobuf message, is
    // written with external data
    let external = model
        .metadata_props
        .iter()
        .any(|p| p.key.as_deref() == Some(EXTERNAL_KEY));
    // the analysis' input declarations are not part of the user's model
    let m = undeclared(model);
    if external || m.encoded_len() as u64 >= INLINE_LIMIT {
        write_external(m, path)
    } else {
        write_atomic(path, &encode(&m))
    }
}

/// Metadata key prefix of a user's input declaration (`--input NAME=1,T,80`,
/// [`crate::ir::declare_inputs`]): the value is the dims, an integer per fixed axis and `T`
/// for the time axis. Stripped on save.
pub const INPUT_KEY: &str = "sepprune.input.";
/// Metadata key of the time axis' rate for declared inputs (`--frame-rate`), per second.
pub const FRAME_RATE_KEY: &str = "sepprune.frame_rate";

/// `model` without the input declarations of the analysis (what is written).
pub fn undeclared(model: &ModelProto) -> ModelProto {
    let mut m = model.clone();
    m.metadata_props.retain(|p| {
        let k = p.key.as_deref().unwrap_or("");
        !(k.starts_with(INPUT_KEY) || k == FRAME_RATE_KEY || k == EXTERNAL_KEY)
    });
    m
}

/// Reads an external-data initializer's bytes into `raw_data` (a range of a file next to
/// the model, each file opened once); true when the tensor was external.
fn load_external(
    t: &mut TensorProto,
    dir: &Path,
    files: &mut std::collections::HashMap<std::path::PathBuf, std::fs::File>,
) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    // data_location == EXTERNAL (1)
    if t.data_location != Some(1) {
        return Ok(false);
    }
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(k))
            .and_then(|e| e.value.clone())
    };
    let location = get("location").ok_or_else(|| Error::Tensor {
        name: t.name().to_string(),
        msg: "external data without a location".into(),
    })?;
    let offset: u64 = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let length: Option<u64> = get("length").and_then(|v| v.parse().ok());
    let path = dir.join(&location);
    if !files.contains_key(&path) {
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        files.insert(path.clone(), f);
    }
    let file = files.get_mut(&path).expect("opened above");
    let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    let end = length.map_or(size, |l| offset.saturating_add(l));
    if end > size || offset > end {
        return Err(Error::Tensor {
            name: t.name().to_string(),
            msg: format!("external data range out of bounds in {}", path.display()),
        });
    }
    let mut bytes = vec![0u8; (end - offset) as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| Error::io(&path, e))?;
    t.raw_data = Some(bytes);
    t.data_location = Some(0);
    t.external_data.clear();
    Ok(true)
}

/// Metadata key [`load`] sets on a model whose initializers were external data, so that
/// [`save`] writes them back as external data; stripped on save.
pub const EXTERNAL_KEY: &str = "sepprune.external_data";

/// Protobuf cannot encode a message of 2 GiB or more: a model at least this large is
/// written with its initializers as external data.
pub const INLINE_LIMIT: u64 = (1 << 31) - 1;

/// Initializers of at least this many bytes go to the external data file (ONNX's default
/// `size_threshold`).
const EXTERNAL_MIN_BYTES: usize = 1024;

/// Writes `model` to `path` with its initializers of 1 KiB or more in `path` + `.data`
/// (same directory; ONNX external data: `location`, `offset`, `length`), both atomically:
/// the data file first, then the model; if the model cannot be written, the data file is
/// removed.
///
/// Errors: [`Error::Io`] naming the file that could not be written.
pub fn save_external(model: &ModelProto, path: &Path) -> Result<()> {
    write_external(model.clone(), path)
}

/// [`save_external`] of a model this function may take apart (no copy of its weights).
fn write_external(mut m: ModelProto, path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| format!("{}.data", n.to_string_lossy()))
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    let data_path = path.with_file_name(&name);
    let mut data: Vec<u8> = vec![];
    if let Some(g) = m.graph.as_mut() {
        for t in g.initializer.iter_mut() {
            // raw bytes, little-endian; other typed fields stay inline
            let raw = match (t.raw_data.take(), t.data_type) {
                (Some(r), _) => r,
                (None, Some(1)) => t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                (None, Some(7)) => t.int64_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                _ => continue,
            };
            if raw.len() < EXTERNAL_MIN_BYTES {
                t.raw_data = Some(raw);
                continue;
            }
            t.float_data.clear();
            t.int64_data.clear();
            t.data_location = Some(1);
            let entry = |k: &str, v: String| pb::StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            };
            t.external_data = vec![
                entry("location", name.clone()),
                entry("offset", data.len().to_string()),
                entry("length", raw.len().to_string()),
            ];
            data.extend_from_slice(&raw);
        }
    }
    write_atomic(&data_path, &data)?;
    write_atomic(path, &encode(&m)).inspect_err(|_| {
        let _ = std::fs::remove_file(&data_path);
    })
}

/// Attribute lookup helpers on a node.
pub fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}
/// Values a node's subgraphs (an `If`'s branches, a `Loop` or `Scan` body) read from the
/// enclosing scope: names used inside that no subgraph node, input or initializer defines.
pub fn captured(node: &NodeProto) -> Vec<String> {
    fn walk(g: &GraphProto, out: &mut Vec<String>) {
        let mut defined: std::collections::HashSet<&str> = g
            .input
            .iter()
            .map(|v| v.name())
            .chain(g.initializer.iter().map(|t| t.name()))
            .collect();
        for n in &g.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                if !defined.contains(i.as_str()) && !out.contains(i) {
                    out.push(i.clone());
                }
            }
            for sub in n
                .attribute
                .iter()
                .flat_map(|a| a.g.iter().chain(a.graphs.iter()))
            {
                let mut inner = vec![];
                walk(sub, &mut inner);
                for i in inner {
                    if !defined.contains(i.as_str()) && !out.contains(&i) {
                        out.push(i);
                    }
                }
            }
            defined.extend(n.output.iter().map(String::as_str));
        }
    }
    let mut out = vec![];
    for g in node
        .attribute
        .iter()
        .flat_map(|a| a.g.iter().chain(a.graphs.iter()))
    {
        walk(g, &mut out);
    }
    out
}

pub fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}
pub fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).and_then(|a| a.f)
}
pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}
pub fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}
pub fn attr_t<'a>(node: &'a NodeProto, name: &str) -> Option<&'a TensorProto> {
    attr(node, name).and_then(|a| a.t.as_ref())
}

/// Sets (or adds) an integer attribute.
pub fn set_attr_i(node: &mut NodeProto, name: &str, value: i64) {
    if let Some(a) = node.attribute.iter_mut().find(|a| a.name() == name) {
        a.i = Some(value);
    } else {
        node.attribute.push(AttributeProto {
            name: Some(name.into()),
            r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
            i: Some(value),
            ..Default::default()
        });
    }
}

/// Builds an integer-list attribute.
pub fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// Builds an integer attribute.
pub fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

/// A float32 initializer named `name` of shape `dims` holding `values` (row-major).
///
/// Panics when `values` does not fill `dims` (a caller bug, never user input).
/// The declared dims of a tensor value (`None` for another type or no shape).
pub fn dims_mut(v: &mut ValueInfoProto) -> Option<&mut Vec<pb::tensor_shape_proto::Dimension>> {
    v.r#type
        .as_mut()
        .and_then(|t| t.value.as_mut())
        .and_then(|t| match t {
            pb::type_proto::Value::TensorType(t) => t.shape.as_mut(),
            _ => None,
        })
        .map(|s| &mut s.dim)
}

pub fn f32_initializer(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    let a =
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(dims), values).expect("values fill dims");
    named(&Tensor::F32(a), name, 1)
}

/// A 1-D int64 initializer named `name` (shape vectors, axes, split sizes).
pub fn i64_initializer(name: &str, values: Vec<i64>) -> TensorProto {
    named(&Tensor::vec_i64(values), name, 7)
}

fn named(t: &Tensor, name: &str, data_type: i32) -> TensorProto {
    tensor_to_proto(
        t,
        &TensorProto {
            name: Some(name.into()),
            data_type: Some(data_type),
            ..Default::default()
        },
    )
}

/// Builds a float attribute.
pub fn float_attr(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

/// Opset version of the default ("" / "ai.onnx") domain.
pub fn opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
        .unwrap_or(1)
}

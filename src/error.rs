//! Library error type. Every error names the file, node and op it concerns where one exists.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model: {msg}")]
    Decode { path: PathBuf, msg: String },
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("masks: {0}")]
    Masks(String),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error("audio {path}: {msg}")]
    Audio { path: PathBuf, msg: String },
    /// A model the tool declines to prune, with why and what to do instead.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn node(node: &crate::onnx::NodeProto, msg: impl Into<String>) -> Self {
        Error::Node {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

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
    /// A shape rule needs a constant that depends on the data here (a Range over a
    /// sequence length, axes computed at run time): the op's shapes come from elsewhere.
    #[error("node '{node}' ({op}): {msg}")]
    NotConstant {
        node: String,
        op: String,
        msg: String,
    },
    /// An op whose rule covers only some of its forms (an Einsum with an ellipsis): the
    /// op's shapes come from elsewhere and the node is opaque.
    #[error("node '{node}' ({op}): {msg}")]
    Uncovered {
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
    /// A tensor computation in Candle failed (`stage`: finetune, learner, taylor, refit,
    /// hints).
    #[error("{stage}: {msg}")]
    Candle { stage: &'static str, msg: String },
    /// The model's graph is malformed (no graph, no input, an output never produced).
    #[error("{0}")]
    Graph(String),
    /// A slimmed model failed its own verification: nothing was written.
    #[error("verification failed: nothing written{0}")]
    Verification(String),
    /// An option value out of its range.
    #[error("{option} {value}: {msg}")]
    Option {
        option: &'static str,
        value: String,
        msg: String,
    },
    /// Training or evaluation data that cannot serve (too few mixtures, no references for a
    /// loss that needs them, silent corpora).
    #[error("{0}")]
    Data(String),
    /// A learner checkpoint that cannot be resumed.
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// A model the tool declines to prune, with why and what to do instead.
    #[error("refused: {0}")]
    Refused(String),
    /// A plot that could not be drawn (`what`: its file or title).
    #[error("plot {what}: {msg}")]
    Plot { what: String, msg: String },
    /// A JSON file (a report, a split, a corpus manifest) that could not be read or written.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Writing would replace the input model.
    #[error("{0}: refusing to overwrite the input model (pass --force to allow)")]
    Overwrite(PathBuf),
    /// Depth pruning on blocks that cannot be removed that way.
    #[error("depth pruning: {0}")]
    Blocks(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A Candle error at `stage`.
    pub fn candle(stage: &'static str) -> impl Fn(candle_core::Error) -> Error + Copy {
        move |e| Error::Candle {
            stage,
            msg: e.to_string(),
        }
    }
    pub fn node(node: &crate::onnx::NodeProto, msg: impl Into<String>) -> Self {
        Error::Node {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            msg: msg.into(),
        }
    }
    /// [`Error::NotConstant`] naming `node`.
    pub fn not_constant(node: &crate::onnx::NodeProto, msg: impl Into<String>) -> Self {
        Error::NotConstant {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            msg: msg.into(),
        }
    }
    /// [`Error::Uncovered`] naming `node`.
    pub fn uncovered(node: &crate::onnx::NodeProto, msg: impl Into<String>) -> Self {
        Error::Uncovered {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            msg: msg.into(),
        }
    }
    /// [`Error::Json`] for the file at `path`.
    pub fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> Error {
        let path = path.into();
        move |source| Error::Json { path, source }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

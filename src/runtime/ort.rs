//! ONNX Runtime through the `ort` crate with `load-dynamic`. The shared library comes from
//! the PyPI wheel `onnxruntime==1.31.1`: `ORT_DYLIB_PATH`, else the Python environment's
//! `onnxruntime/capi/`, else a clear error saying how to install it.
use crate::error::{Error, Result};
use crate::onnx::{self, ModelProto};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::PathBuf;
use std::sync::OnceLock;

fn find_library() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u, os; s = u.find_spec('onnxruntime'); print(os.path.join(list(s.submodule_search_locations)[0], 'capi'))"])
        .output();
    if let Ok(o) = out {
        let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut libs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
                        .unwrap_or(false)
                })
                .collect();
            libs.sort();
            if let Some(l) = libs.pop() {
                return Ok(l);
            }
        }
    }
    Err(Error::Runtime("ONNX Runtime not found: set ORT_DYLIB_PATH to libonnxruntime.so, or `pip install onnxruntime==1.31.1`".into()))
}

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process-wide ORT environment (created once).
fn env() -> Result<&'static ort::environment::Environment> {
    ENV.get_or_init(|| {
        let lib = find_library().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&lib).map_err(|e| format!("loading {}: {e}", lib.display()))?;
        builder
            .build()
            .map_err(|e| format!("loading {}: {e}", lib.display()))
    })
    .as_ref()
    .map_err(|e| Error::Runtime(e.clone()))
}

/// Whether the ONNX Runtime library can be found and loaded.
pub fn available() -> bool {
    env().is_ok()
}

pub struct OrtModel {
    session: Session,
    input: String,
    shape: Vec<usize>,
}

impl OrtModel {
    /// A CPU session with `threads` intra-op threads (inter-op 1), full graph optimization.
    pub fn new(model: &ModelProto, shape: &[usize], threads: usize) -> Result<OrtModel> {
        let env = env()?;
        let e = |e: ort::Error| Error::Runtime(format!("ort: {e}"));
        let input = model
            .graph
            .as_ref()
            .and_then(|g| g.input.first())
            .map(|i| i.name().to_string())
            .unwrap_or_default();
        let session = Session::builder(env)
            .map_err(e)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|x| e(x.into()))?
            .with_intra_threads(threads)
            .map_err(|x| e(x.into()))?
            .with_inter_threads(1)
            .map_err(|x| e(x.into()))?
            .commit_from_memory(&onnx::encode(model))
            .map_err(e)?;
        Ok(OrtModel {
            session,
            input,
            shape: shape.to_vec(),
        })
    }

    pub fn run(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let e = |e: ort::Error| Error::Runtime(format!("ort: {e}"));
        let arr = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(&self.shape), x)
            .map_err(|x| Error::Runtime(x.to_string()))?;
        let t = TensorRef::from_array_view(arr).map_err(e)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => t])
            .map_err(e)?;
        let y = outputs[0].try_extract_array::<f32>().map_err(e)?;
        Ok(y.iter().copied().collect())
    }
}

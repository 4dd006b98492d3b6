//! ONNX Runtime through the `ort` crate with `load-dynamic`.
//!
//! The shared library comes from the PyPI wheel `onnxruntime==1.31.1` (CPU) or
//! `onnxruntime-gpu==1.31.1` (CUDA 13, cuDNN 9): `ORT_DYLIB_PATH`, else the Python
//! environment's `onnxruntime/capi/`, else a clear error saying how to install it. For the
//! CUDA execution provider, `libonnxruntime_providers_cuda.so` must sit beside the library,
//! and the CUDA and cuDNN libraries are preloaded from the Python environment's `nvidia`
//! wheels (as `onnxruntime.preload_dlls()` does) or found on `LD_LIBRARY_PATH`.
use crate::error::{Error, Result};
use crate::onnx::{self, ModelProto};
use ort::ep::{self, ExecutionProvider};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
pub use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, Session};
use ort::value::{Tensor, TensorRef, TensorValueType};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

/// Where an ORT session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// The CPU execution provider with this many intra-op threads (inter-op 1).
    Cpu { threads: usize },
    /// The CUDA execution provider on GPU 0, cuDNN convolution search HEURISTIC (`docs/notes.md`:
    /// EXHAUSTIVE measured 5x slower on the real Conv-TasNet), TF32 off (full f32, so that
    /// verification holds to the CPU's tolerances). With `graph`, ORT captures the run in a
    /// CUDA graph and replays it, which removes the per-kernel launch cost.
    Cuda { graph: bool },
}

/// Python one-liner printing a package's directory (empty when it is not installed).
fn python_package_dir(package: &str) -> Option<PathBuf> {
    let code = format!(
        "import importlib.util as u\ns = u.find_spec('{package}')\nprint(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &code])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (!dir.as_os_str().is_empty() && dir.is_dir()).then_some(dir)
}

fn find_library() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = python_package_dir("onnxruntime").map(|d| d.join("capi")) {
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
    Err(Error::Runtime("ONNX Runtime not found: set ORT_DYLIB_PATH to libonnxruntime.so, or `pip install onnxruntime==1.31.1` (`onnxruntime-gpu==1.31.1` for CUDA)".into()))
}

static ENV: OnceLock<std::result::Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// The process-wide ORT environment (created once) and the library it loaded.
fn env() -> Result<&'static (ort::environment::Environment, PathBuf)> {
    ENV.get_or_init(|| {
        let lib = find_library().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&lib).map_err(|e| format!("loading {}: {e}", lib.display()))?;
        let env = builder
            .build()
            .map_err(|e| format!("loading {}: {e}", lib.display()))?;
        Ok((env, lib))
    })
    .as_ref()
    .map_err(|e| Error::Runtime(e.clone()))
}

/// Whether the ONNX Runtime library can be found and loaded.
pub fn available() -> bool {
    env().is_ok()
}

static CUDA_LIBS: OnceLock<()> = OnceLock::new();

/// Loads the CUDA and cuDNN libraries the CUDA execution provider links against from the
/// directories of the Python environment's `nvidia` wheels (`nvidia/cu13/lib`,
/// `nvidia/cudnn/lib`, ...), where present; a library found nowhere is left to the dynamic
/// loader (`LD_LIBRARY_PATH`), and the provider's registration names what is missing.
fn preload_cuda_libraries() {
    CUDA_LIBS.get_or_init(|| {
        let Some(nvidia) = python_package_dir("nvidia") else {
            return;
        };
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&nvidia)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("lib")))
            .filter(|d| d.is_dir())
            .collect();
        dirs.sort();
        for lib in ep::cuda::CUDA_DYLIBS.iter().chain(ep::cuda::CUDNN_DYLIBS) {
            if let Some(path) = dirs.iter().map(|d| d.join(lib)).find(|p| p.exists()) {
                // a failure here shows again, with its reason, when the provider registers
                let _ = ort::util::preload_dylib(&path);
            }
        }
    });
}

fn ort_err(e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("ort: {e}"))
}

/// A model in one ORT session, for one f32 input shape.
pub struct OrtModel {
    session: Session,
    input: String,
    output: String,
    shape: Vec<usize>,
    provider: Provider,
    /// GPU sessions: the input in device memory and the binding of input and output.
    device: Option<Device>,
    /// CPU sessions: the staged input of timed runs.
    staged: Vec<f32>,
    /// The other graph inputs, fed on every run ([`super::side_inputs`]).
    side: Vec<super::SideInput>,
}

struct Device {
    input: Tensor<f32>,
    binding: IoBinding,
}

impl OrtModel {
    /// A session for a single f32 input of `shape` (e.g. `[batch, 1, T]`) on `provider`,
    /// full graph optimization.
    ///
    /// Errors: no ORT library; a CUDA provider that does not register (a CPU-only
    /// library, no GPU, missing CUDA/cuDNN libraries): never a silent fall-back to the CPU.
    pub fn new(model: &ModelProto, shape: &[usize], provider: Provider) -> Result<OrtModel> {
        OrtModel::with_level(model, shape, provider, GraphOptimizationLevel::Level3)
    }

    /// [`OrtModel::new`] at graph optimization `level`. Verification compares two graphs
    /// that differ by gate multiplications, which change what Level 3 fuses (attention,
    /// MatMul + Add): unoptimized, both run the same kernels, so the comparison sees the
    /// function, not the fusions' rounding.
    pub fn with_level(
        model: &ModelProto,
        shape: &[usize],
        provider: Provider,
        level: GraphOptimizationLevel,
    ) -> Result<OrtModel> {
        let (env, lib) = env()?;
        let graph = model.graph.as_ref();
        let name = |v: Option<&crate::onnx::ValueInfoProto>| {
            v.map(|i| i.name().to_string()).unwrap_or_default()
        };
        let input = name(graph.and_then(|g| g.input.first()));
        let output = name(graph.and_then(|g| g.output.first()));
        let mut builder = Session::builder(env)
            .map_err(ort_err)?
            .with_optimization_level(level)
            .map_err(ort_err)?
            .with_inter_threads(1)
            .map_err(ort_err)?;
        match provider {
            Provider::Cpu { threads } => {
                builder = builder.with_intra_threads(threads).map_err(ort_err)?;
            }
            Provider::Cuda { graph } => {
                preload_cuda_libraries();
                let cuda = ep::CUDA::default()
                    .with_conv_algorithm_search(ep::cuda::ConvAlgorithmSearch::Heuristic)
                    .with_tf32(false)
                    .with_cuda_graph(graph);
                cuda.register(&mut builder).map_err(|e| {
                    Error::Runtime(format!(
                        "the CUDA execution provider did not register with {}: {e} (it needs \
                         `onnxruntime-gpu==1.31.1`, libonnxruntime_providers_cuda.so beside the \
                         library, CUDA 13 and cuDNN 9 libraries, and a GPU)",
                        lib.display()
                    ))
                })?;
            }
        }
        let session = builder
            .commit_from_memory(&onnx::encode(model))
            .map_err(ort_err)?;
        Ok(OrtModel {
            session,
            input,
            output,
            shape: shape.to_vec(),
            provider,
            device: None,
            staged: vec![],
            side: super::side_inputs(model, shape),
        })
    }

    /// Runs on `x` (row-major, `shape`); returns every float output, flattened and
    /// concatenated in order, on the host (a GPU session: its first output).
    pub fn run(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        if matches!(self.provider, Provider::Cuda { .. }) {
            self.stage(x)?;
            let d = self.device.as_ref().expect("staged");
            let out = self.session.run_binding(&d.binding).map_err(ort_err)?;
            let y = out[0]
                .view()
                .downcast::<TensorValueType<f32>>()
                .map_err(ort_err)?
                .to(AllocationDevice::CPU, 0)
                .map_err(ort_err)?
                .try_extract_array::<f32>()
                .map_err(ort_err)?
                .iter()
                .copied()
                .collect();
            return Ok(y);
        }
        let arr = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(&self.shape), x)
            .map_err(|x| Error::Runtime(x.to_string()))?;
        let t = TensorRef::from_array_view(arr).map_err(ort_err)?;
        let mut inputs = ort::inputs![self.input.as_str() => t];
        for s in &self.side {
            let n: usize = s.shape.iter().product();
            let v: ort::value::DynValue = match s.elem_type {
                7 => Tensor::from_array((s.shape.clone(), vec![s.fill; n]))
                    .map_err(ort_err)?
                    .into_dyn(),
                6 => Tensor::from_array((s.shape.clone(), vec![s.fill as i32; n]))
                    .map_err(ort_err)?
                    .into_dyn(),
                9 => Tensor::from_array((s.shape.clone(), vec![s.fill != 0; n]))
                    .map_err(ort_err)?
                    .into_dyn(),
                _ => Tensor::from_array((s.shape.clone(), s.floats()))
                    .map_err(ort_err)?
                    .into_dyn(),
            };
            inputs.push((s.name.clone().into(), v.into()));
        }
        let outputs = self.session.run(inputs).map_err(ort_err)?;
        // every float output, in order (a model with several outputs is checked on all)
        let mut y = vec![];
        for (_, v) in outputs.iter() {
            if let Ok(a) = v.try_extract_array::<f32>() {
                y.extend(a.iter().copied());
            }
        }
        Ok(y)
    }

    /// Makes `x` the input of [`OrtModel::timed_run`]: on a GPU it is copied to device memory
    /// once and bound with the output, which stays on the device.
    pub fn stage(&mut self, x: &[f32]) -> Result<()> {
        if !matches!(self.provider, Provider::Cuda { .. }) {
            self.staged = x.to_vec();
            return Ok(());
        }
        let host = Tensor::from_array((self.shape.clone(), x.to_vec())).map_err(ort_err)?;
        if self.device.is_none() {
            let cuda = MemoryInfo::new(
                AllocationDevice::CUDA,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(ort_err)?;
            let alloc = Allocator::new(&self.session, cuda.clone()).map_err(ort_err)?;
            let input = Tensor::<f32>::new(&alloc, self.shape.clone()).map_err(ort_err)?;
            let mut binding = self.session.create_binding().map_err(ort_err)?;
            binding.bind_input(&self.input, &input).map_err(ort_err)?;
            binding
                .bind_output_to_device(&self.output, &cuda)
                .map_err(ort_err)?;
            self.device = Some(Device { input, binding });
        }
        let d = self.device.as_mut().expect("just made");
        host.copy_into(&mut d.input).map_err(ort_err)?;
        Ok(())
    }

    /// One run on the staged input, in seconds, timed as a benchmark wants it: on a GPU
    /// the input is already in device memory, the output stays there, and the clock stops
    /// when the device has finished (the output's stream synchronised).
    pub fn timed_run(&mut self) -> Result<f64> {
        if let Some(d) = self.device.as_ref() {
            let t = Instant::now();
            drop(self.session.run_binding(&d.binding).map_err(ort_err)?);
            d.binding.synchronize_outputs().map_err(ort_err)?;
            return Ok(t.elapsed().as_secs_f64());
        }
        let x = std::mem::take(&mut self.staged);
        let t = Instant::now();
        let r = self.run(&x);
        let s = t.elapsed().as_secs_f64();
        self.staged = x;
        r.map(|_| s)
    }
}

/// The ORT library this process loaded, for reports (`None` when none loads).
pub fn library() -> Option<&'static Path> {
    env().ok().map(|(_, p)| p.as_path())
}

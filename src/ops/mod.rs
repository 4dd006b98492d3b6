//! Per-op rules: everything the compiler knows about one ONNX op lives in its rule —
//! shape inference and constant folding, ptflops-convention MACs, channel coupling, how a
//! consumer reads a channel axis (which decides where gates go), and attribute/constant
//! patching after slicing, and the op's Candle lowering with its fused CPU kernels
//! ([`kernels`]). Adding an op is adding one [`OpRule`] impl and one line in [`rule`].
mod conv;
mod einsum;
mod elementwise;
mod infer;
pub mod kernels;
pub use layout::{batch_following_target, widen_batch};

/// Whether the constant `name` (an initializer or a folded value) is an f32 tensor with
/// every entry equal to `v` (a unit scale, a zero bias).
pub(crate) fn filled_with(ir: &Ir, name: &str, v: f32) -> bool {
    let t = ir
        .initializer(name)
        .ok()
        .or_else(|| ir.fact(name).and_then(|f| f.value.clone()));
    matches!(t, Some(crate::onnx::Tensor::F32(a)) if a.iter().all(|&x| x == v))
}
mod layout;
pub(crate) use layout::perm_of as transpose_perm;
mod matmul;
mod norm;
mod pool;
mod reduce;
pub(crate) use reduce::axes_in_ir as reduce_axes;
mod resize;
mod rnn;
mod shape;
mod shape_vec;
mod softmax;
mod split;

use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{NodeProto, Tensor};
use candle_core::Tensor as CTensor;
pub(crate) use shape_vec::shape_vector_edits;

/// A channel slot: one axis of one value (activation or initializer).
pub type Slot = (String, usize);

/// How a consumer reads one axis of one of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Each channel is used on its own (elementwise, depthwise): no gate needed.
    Pointwise,
    /// Channels are mixed (a Conv/MatMul contraction): the input must be gated.
    Mix,
    /// A mean across the axis (ReduceMean): gated, and rescaled so that the statistic is
    /// taken over kept channels only: `mean = sum(g*x) / (sum(g) * rest)`.
    Mean,
    /// A weight initializer whose axis is contracted with the op's own state (an RNN's
    /// recurrent weight R against the hidden state): the weight itself is gated, since no
    /// activation outside the op carries that state.
    Weight,
}

/// Channel coupling facts emitted by a rule; the group analysis unions them.
#[derive(Default, Debug)]
pub struct Links {
    /// Pairs of slots that must keep the same channels (identity index map).
    pub links: Vec<(Slot, Slot)>,
    /// Slots that define channels (a producer's weight output axis): a union-find class
    /// is a channel group only if it holds a source.
    pub sources: Vec<Slot>,
    /// Slots that must not change, with the reason.
    pub frozen: Vec<(Slot, String)>,
    /// `(parts, whole)`: the channels of slot `whole` are those of the `parts` slots, in
    /// order (a Concat along a channel axis): an offset map, not an identity.
    pub concats: Vec<(Vec<Slot>, Slot)>,
    /// `(unit, width, whole)`: channel `i` of slot `unit` is channels `i * width ..
    /// (i + 1) * width` of slot `whole` (GroupNorm's `[C] -> [G, C / G]` layout): removing a
    /// unit removes its whole run of channels.
    pub expands: Vec<(Slot, usize, Slot)>,
    /// `(outer, whole)`: the outer axis of a block layout that [`Links::concats`] holds
    /// for `whole` (attention heads: `[E] -> [H, d]`): unit `i` of `outer` is block `i`,
    /// so removing a unit removes its whole block.
    pub outers: Vec<(Slot, Slot)>,
    /// Axes that belong to no value, with their sizes: a grouped Conv's groups
    /// (`("{weight}#groups", 0)`), the units its input and output channels expand.
    pub units: Vec<(Slot, usize)>,
}

impl Links {
    pub fn link(&mut self, a: (&str, usize), b: (&str, usize)) {
        self.links
            .push(((a.0.to_string(), a.1), (b.0.to_string(), b.1)));
    }
    pub fn source(&mut self, s: (&str, usize)) {
        self.sources.push((s.0.to_string(), s.1));
    }
    pub fn concat(&mut self, parts: &[(&str, usize)], whole: (&str, usize)) {
        self.concats.push((
            parts.iter().map(|p| (p.0.to_string(), p.1)).collect(),
            (whole.0.to_string(), whole.1),
        ));
    }
    pub fn expand(&mut self, unit: (&str, usize), width: usize, whole: (&str, usize)) {
        self.expands.push((
            (unit.0.to_string(), unit.1),
            width,
            (whole.0.to_string(), whole.1),
        ));
    }
    /// `whole` is `n` copies of `inner` laid out along `outer` (`[n, inner] <-> [n inner]`):
    /// the copies are pruned alike, and whole copies along `outer`.
    pub fn blocks(
        &mut self,
        outer: (&str, usize),
        n: usize,
        inner: (&str, usize),
        whole: (&str, usize),
    ) {
        self.concat(&vec![inner; n], whole);
        self.outers.push((
            (outer.0.to_string(), outer.1),
            (whole.0.to_string(), whole.1),
        ));
    }
    /// Declares the axis `s` that belongs to no value, with `size` entries.
    pub fn unit(&mut self, s: (&str, usize), size: usize) {
        self.units.push(((s.0.to_string(), s.1), size));
    }
    pub fn freeze(&mut self, s: (&str, usize), why: impl Into<String>) {
        self.frozen.push(((s.0.to_string(), s.1), why.into()));
    }
    /// Axis `a` of input 0 passes to axis `a` of output 0 when `pass`, else both are frozen.
    pub fn pass_or_freeze(&mut self, node: &NodeProto, a: usize, pass: bool, why: &str) {
        if pass {
            self.link((&node.input[0], a), (&node.output[0], a));
        } else {
            self.freeze((&node.input[0], a), why);
            self.freeze((&node.output[0], a), why);
        }
    }
    /// Freezes every axis of every input and output of `node`, and of the values its
    /// subgraphs read from the enclosing scope (an `If` branch's weights).
    pub fn freeze_node(&mut self, node: &NodeProto, ir: &Ir, why: &str) {
        let captured = crate::onnx::captured(node);
        for v in node
            .input
            .iter()
            .chain(node.output.iter())
            .chain(captured.iter())
            .filter(|v| !v.is_empty())
        {
            if let Some(f) = ir.fact(v) {
                for ax in 0..f.rank() {
                    self.freeze((v, ax), why);
                }
            }
        }
    }
}

/// A constant input rewritten by [`OpRule::patch`] (e.g. a Reshape target).
pub struct ConstEdit {
    pub input: usize,
    /// When set, the edit is to input `via` of the Concat that produces input `input` (a
    /// shape vector assembled from literal pieces and `Shape` slices).
    pub via: Option<usize>,
    pub value: Tensor,
}

/// A node computing `y = W x (+ b)` at every position (or, depthwise, a per-channel FIR
/// filter), mixing only channels and taps: the input `x` has its channels on `axis` of the
/// activation `input`, the output its channels on the same axis. `weight` (an initializer)
/// holds W in `layout`; `bias` (an initializer, `[c_out]`) is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub input: String,
    pub axis: usize,
    pub weight: String,
    pub layout: WeightLayout,
    pub bias: Option<String>,
}

/// How a [`Linear`]'s weight initializer stores W.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[c_out, c_in, 1, ...]` (a 1x1 Conv) or `[c_out, c_in]` (Gemm with `transB = 1`).
    OutIn,
    /// `[c_in, c_out]` (MatMul, Gemm with `transB = 0`).
    InOut,
    /// `[C, 1, K]`, a depthwise 1-D conv with stride 1 on `x [N, C, T]`:
    /// `y[:, c, t] = sum_k W[c, 0, k] x_pad[:, c, t + k dilation] + b[c]`, with `x_pad` the
    /// input zero-padded by `pads` (begin, end) on the time axis.
    Depthwise {
        dilation: usize,
        pads: (usize, usize),
    },
}

/// Which ptflops release's conventions MACs follow (they differ on ConvTranspose).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Ptflops {
    /// ptflops 0.7.5 and later: ConvTranspose over its input positions.
    #[default]
    #[value(name = "0.7.5")]
    #[serde(rename = "0.7.5")]
    V075,
    /// ptflops 0.7.4 and earlier: ConvTranspose over its output positions.
    #[value(name = "0.7.4")]
    #[serde(rename = "0.7.4")]
    V074,
}

/// Shape lookup after pruning: value name -> new shape.
pub type ShapeOf<'a> = &'a dyn Fn(&str) -> Vec<usize>;

/// What [`OpRule::patch`] knows once channels are removed: every value's new shape, which
/// axes carry channels, and which axes are static (channels, and axes of the same size at
/// another input length: a batch axis of 1, a head count), unlike a time axis.
pub struct Sliced<'a> {
    pub shape: ShapeOf<'a>,
    pub is_channel: &'a dyn Fn(&str, usize) -> bool,
    pub is_static: &'a dyn Fn(&str, usize) -> bool,
}

impl Sliced<'_> {
    /// The new shape of `value`.
    pub fn of(&self, value: &str) -> Vec<usize> {
        (self.shape)(value)
    }
}

pub trait OpRule: Sync {
    /// Output facts from input facts (`None` for an omitted optional input). Folds the
    /// outputs when all inputs are constant and small.
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>>;

    /// MACs under the conventions of ptflops release `ptflops`, from the shapes.
    fn macs(&self, _node: &NodeProto, _shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        0
    }

    /// Channel coupling. The default freezes every axis of every input and output.
    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        links.freeze_node(
            node,
            ir,
            &format!("op {} has no channel rule", node.op_type()),
        );
    }

    /// How input `input` is read along `axis` (only asked for axes in a channel group).
    fn read(&self, _node: &NodeProto, _ir: &Ir, _input: usize, _axis: usize) -> Read {
        Read::Pointwise
    }

    /// Whether the op adds its inputs elementwise (`Add`, `Sum`): when two of them are
    /// computed values of one channel group, that group is a residual or skip stream.
    fn sums_branches(&self, _node: &NodeProto) -> bool {
        false
    }

    /// Which inputs are learnable parameters when they are initializers (fine-tuning trains
    /// these, and nothing else): weights and biases, affine scales, activation slopes. The
    /// default: none (shapes, axes, exponents, epsilons and other structural constants).
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![]
    }

    /// The parameter inputs that count in the model's params (PyTorch's count): [`Self::params`]
    /// less the constants an exporter makes where the module has no parameter (a unit scale
    /// for a LayerNorm without an affine map). Training still reaches every [`Self::params`].
    fn counted_params(&self, node: &NodeProto, ir: &Ir) -> Vec<usize> {
        self.params(node, ir)
    }

    /// Inputs that hold state, not parameters, even when they are initializers (an RNN's
    /// initial hidden state): not counted as params.
    fn state_inputs(&self, _node: &NodeProto) -> Vec<usize> {
        vec![]
    }

    /// Candle lowering, for the mask learner and fine-tuning: the outputs from the inputs
    /// (`None` for an omitted optional input), in the shapes the IR inferred for them. Folded
    /// constants (shapes, axes) are read from the IR's facts. Must be differentiable in every
    /// float input.
    ///
    /// Errors: [`Error::Node`] for an op or attribute combination without a lowering.
    fn lower(&self, node: &NodeProto, _ir: &Ir, _x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        Err(Error::node(
            node,
            format!("op {} has no Candle lowering", node.op_type()),
        ))
    }

    /// When the node is a per-position linear map across channels with initializer weights
    /// (a 1x1 Conv, a linear layer), how to read it, so that a least-squares refit
    /// ([`crate::learn::refit`]) can re-solve its weights. The default: not linear.
    fn linear(&self, _node: &NodeProto, _ir: &Ir) -> Option<Linear> {
        None
    }

    /// Attribute and constant-input patches once inputs have their pruned shapes.
    fn patch(&self, _node: &mut NodeProto, _ir: &Ir, _new: &Sliced) -> Result<Vec<ConstEdit>> {
        Ok(vec![])
    }
}

/// The rule for a node's op, or `None` when the op is unknown (or from another domain).
pub fn rule(node: &NodeProto) -> Option<&'static dyn OpRule> {
    let domain = node.domain();
    if !(domain.is_empty() || domain == "ai.onnx") {
        return None;
    }
    Some(match node.op_type() {
        "Conv" => &conv::Conv,
        "ConvTranspose" => &conv::ConvTranspose,
        "Relu" | "Sigmoid" | "Tanh" | "Sqrt" | "Exp" | "Log" | "Neg" | "Abs" | "Erf"
        | "Reciprocal" | "Floor" | "Ceil" | "Identity" | "Cast" | "LeakyRelu" | "Elu"
        | "Softplus" | "HardSigmoid" | "Not" | "Sign" | "Round" | "Sin" | "Cos" | "IsNaN"
        | "IsInf" => &elementwise::Unary,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Equal" | "Less" | "Greater"
        | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Where" | "PRelu" | "Clip" | "Mod" => {
            &elementwise::Broadcast
        }
        "BatchNormalization" => &norm::BatchNorm,
        "InstanceNormalization" => &norm::InstanceNorm,
        "LayerNormalization" => &norm::LayerNorm,
        "GroupNormalization" => &norm::GroupNorm,
        "AveragePool" | "MaxPool" => &pool::Pool,
        "GlobalAveragePool" | "GlobalMaxPool" => &pool::GlobalPool,
        "Resize" | "Upsample" => &resize::Resize,
        "Softmax" | "LogSoftmax" => &softmax::Softmax,
        "LSTM" | "GRU" | "RNN" => &rnn::Rnn,
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
        | "ReduceSumSquare" => &reduce::Reduce,
        "Shape" => &shape::ShapeOp,
        "Constant" => &shape::Constant,
        "ConstantOfShape" => &shape::ConstantOfShape,
        "Range" => &shape::Range,
        "Gather" => &shape::Gather,
        "Reshape" => &layout::Reshape,
        "Transpose" => &layout::Transpose,
        "Squeeze" | "Unsqueeze" => &layout::SqueezeUnsqueeze,
        "Slice" => &layout::Slice,
        "Concat" => &layout::Concat,
        "Split" => &split::Split,
        "Pad" => &layout::Pad,
        "Expand" => &layout::Expand,
        "Tile" => &layout::Tile,
        "MatMul" => &matmul::MatMul,
        "Einsum" => &einsum::Einsum,
        "Gemm" => &matmul::Gemm,
        _ => return None,
    })
}

// ---- helpers shared by the rules ----

/// Maps a Candle error to an error naming the node.
pub(crate) fn ce(node: &NodeProto) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::node(node, format!("candle: {e}"))
}

/// Candle input `i` of a lowering.
pub(crate) fn cin<'a>(node: &NodeProto, x: &'a [Option<CTensor>], i: usize) -> Result<&'a CTensor> {
    x.get(i)
        .and_then(|t| t.as_ref())
        .ok_or_else(|| Error::node(node, format!("missing input {i}")))
}

/// The inferred shape of output `i` (lowerings reshape to it).
pub(crate) fn out_shape(node: &NodeProto, ir: &Ir, i: usize) -> Result<Vec<usize>> {
    node.output
        .get(i)
        .and_then(|o| ir.fact(o))
        .map(|f| f.shape.clone())
        .ok_or_else(|| Error::node(node, format!("output {i} has no inferred shape")))
}

/// The inferred shape of input `i`.
pub(crate) fn in_shape(node: &NodeProto, ir: &Ir, i: usize) -> Result<Vec<usize>> {
    node.input
        .get(i)
        .and_then(|o| ir.fact(o))
        .map(|f| f.shape.clone())
        .ok_or_else(|| Error::node(node, format!("input {i} has no inferred shape")))
}

pub(crate) fn need<'a>(
    node: &NodeProto,
    inputs: &[Option<&'a Fact>],
    i: usize,
) -> Result<&'a Fact> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| Error::node(node, format!("missing input {i}")))
}

pub(crate) fn need_const<'a>(
    node: &NodeProto,
    inputs: &[Option<&'a Fact>],
    i: usize,
) -> Result<&'a Tensor> {
    need(node, inputs, i)?.value.as_ref().ok_or_else(|| {
        Error::not_constant(
            node,
            format!("input {i} must be a static constant (it depends on data)"),
        )
    })
}

/// Normalises a possibly negative axis against `rank`.
pub(crate) fn norm_axis(node: &NodeProto, axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank.max(1) {
        return Err(Error::node(
            node,
            format!("axis {axis} out of range for rank {rank}"),
        ));
    }
    Ok(a as usize)
}

/// Numpy-style broadcast of several shapes.
pub(crate) fn broadcast(node: &NodeProto, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(Error::node(
                    node,
                    format!("shapes {shapes:?} do not broadcast"),
                ));
            }
        }
    }
    Ok(out)
}

/// True when optional input `i` is present.
pub(crate) fn has_input(node: &NodeProto, i: usize) -> bool {
    node.input.get(i).map(|v| !v.is_empty()).unwrap_or(false)
}

/// True when the fact is a small constant worth folding.
pub(crate) fn foldable(f: Option<&Fact>) -> bool {
    f.map(|f| f.value.is_some() && f.numel() <= crate::ir::FOLD_LIMIT)
        .unwrap_or(true)
}

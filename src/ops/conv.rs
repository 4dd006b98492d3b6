//! Conv and ConvTranspose (1-D and 2-D, explicit pads; `auto_pad` SAME_* and VALID too).
//!
//! Channels: Conv weight `[Cout, Cin/g, k...]`; ConvTranspose weight `[Cin, Cout/g, k...]`
//! (the output channel axis is weight axis 1). Depthwise (`g == Cin == Cout`, one filter
//! per channel) couples input and output channels; other grouped convs are pruned by whole
//! groups (their groups are one unit axis that their input and output channels expand).
use super::{
    ce, cin, has_input, in_shape, need, ConstEdit, Linear, Links, OpRule, Ptflops, Read, ShapeOf,
    Sliced, WeightLayout,
};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_i, attr_ints, attr_s, set_attr_i, NodeProto};
use crate::ops::kernels;
use candle_core::Tensor as CTensor;

pub struct Conv;
pub struct ConvTranspose;

/// Window geometry of a Conv or pool: strides, dilations and explicit pads (`auto_pad`
/// resolved against the input `x`).
pub(crate) struct Geometry {
    pub group: usize,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>, // begins then ends
}

pub(crate) fn geometry(
    node: &NodeProto,
    x: &[usize],
    kernel: &[usize],
    transpose: bool,
) -> Result<Geometry> {
    let nd = kernel.len();
    let get = |name: &str, default: usize| -> Vec<usize> {
        attr_ints(node, name)
            .filter(|v| !v.is_empty())
            .map(|v| v.iter().map(|&d| d as usize).collect())
            .unwrap_or(vec![default; nd])
    };
    let strides = get("strides", 1);
    let dilations = get("dilations", 1);
    let mut pads = attr_ints(node, "pads")
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(|&d| d as usize).collect())
        .unwrap_or(vec![0; 2 * nd]);
    let auto_pad = attr_s(node, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    if auto_pad.starts_with("SAME") && !transpose {
        for i in 0..nd {
            let inp = x[2 + i];
            let out = inp.div_ceil(strides[i]);
            let eff = (kernel[i] - 1) * dilations[i] + 1;
            let total = ((out - 1) * strides[i] + eff).saturating_sub(inp);
            let (a, b) = if auto_pad == "SAME_UPPER" {
                (total / 2, total - total / 2)
            } else {
                (total - total / 2, total / 2)
            };
            pads[i] = a;
            pads[nd + i] = b;
        }
    } else if auto_pad == "VALID" {
        pads = vec![0; 2 * nd];
    } else if auto_pad != "NOTSET" {
        return Err(Error::node(
            node,
            format!("auto_pad {auto_pad} is not supported for this op"),
        ));
    }
    if strides.len() != nd || dilations.len() != nd || pads.len() != 2 * nd {
        return Err(Error::node(
            node,
            "strides/dilations/pads do not match the kernel rank",
        ));
    }
    if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
        return Err(Error::node(
            node,
            format!(
                "zero stride, dilation or kernel size ({strides:?}, {dilations:?}, {kernel:?})"
            ),
        ));
    }
    let group = attr_i(node, "group").unwrap_or(1).max(1) as usize;
    Ok(Geometry {
        group,
        strides,
        dilations,
        pads,
    })
}

/// Spatial axes (2..) of a Conv or ConvTranspose: an axis the window spans with one tap,
/// stride 1 and no padding maps position `i` to position `i`, so a channel group reaching it
/// (channels reshaped into a 2-D conv's height) passes through; any other spatial axis mixes
/// positions and freezes whatever group reaches it (asteroid's SuDoRM-RF mask conv runs a
/// `[n_src, C + 1]` kernel across the channels).
fn couple_spatial(node: &NodeProto, ir: &Ir, links: &mut Links, kernel_in_w: usize) {
    let (x, w, y) = (
        node.input[0].as_str(),
        node.input[1].as_str(),
        node.output[0].as_str(),
    );
    let (Some(xf), Some(wf)) = (ir.fact(x), ir.fact(w)) else {
        return;
    };
    let kernel = &wf.shape[kernel_in_w..];
    let transpose = node.op_type() == "ConvTranspose";
    let Ok(g) = geometry(node, &xf.shape, kernel, transpose) else {
        return links.freeze_node(node, ir, "unreadable Conv geometry");
    };
    let nd = kernel.len();
    let out_pad = attr_ints(node, "output_padding").unwrap_or_default();
    for i in 0..nd {
        let a = 2 + i;
        let identity = kernel[i] == 1
            && g.strides[i] == 1
            && g.pads[i] == 0
            && g.pads[nd + i] == 0
            && out_pad.get(i).copied().unwrap_or(0) == 0;
        if identity && xf.shape.get(a) == ir.fact(y).and_then(|f| f.shape.get(a)) {
            links.link((x, a), (y, a));
        } else {
            let why = format!("{} mixes positions along axis {a}", node.op_type());
            links.freeze((x, a), &why);
            links.freeze((y, a), &why);
        }
    }
}

/// The groups of a grouped (not depthwise) Conv or ConvTranspose as one unit axis,
/// `("{weight}#groups", 0)` of size `group`: unit `u` spans input channels
/// `u Cin/group .. (u + 1) Cin/group` and output channels `u per_out .. (u + 1) per_out`,
/// so channels are pruned a whole group at a time (a group's filters read only its own
/// input channels; dropping part of one would leave groups of unequal size).
fn grouped_units(
    node: &NodeProto,
    ir: &Ir,
    links: &mut Links,
    w: &str,
    group: usize,
    (x, y): (&str, &str),
    per_out: usize,
) {
    let cin = ir
        .fact(x)
        .and_then(|f| f.shape.get(1))
        .copied()
        .unwrap_or(0);
    if cin % group != 0 || per_out == 0 {
        return links.freeze_node(node, ir, "group does not divide the channels");
    }
    let unit = format!("{w}#groups");
    links.unit((&unit, 0), group);
    links.expand((&unit, 0), cin / group, (x, 1));
    links.expand((&unit, 0), per_out, (y, 1));
}

/// True for a depthwise Conv: weight `[C, 1, k...]` with `group == C` (one filter per channel).
fn depthwise(w: &[usize], group: usize) -> bool {
    group > 1 && w[1] == 1 && w[0] == group
}

impl OpRule for Conv {
    /// W and B.
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![1, 2]
    }

    /// A pointwise Conv (every kernel dim 1, group 1, stride 1, no padding) with initializer
    /// W `[Cout, Cin, 1...]` and B: `y[:, o, s] = sum_c W[o, c] x[:, c, s] + B[o]`; or a
    /// depthwise 1-D Conv with stride 1 (one FIR filter per channel).
    fn linear(&self, node: &NodeProto, ir: &Ir) -> Option<Linear> {
        let (x, w) = (in_shape(node, ir, 0).ok()?, in_shape(node, ir, 1).ok()?);
        let g = geometry(node, &x, w.get(2..)?, false).ok()?;
        let stride1 = g.strides.iter().all(|&s| s == 1);
        let layout = if w[2..].iter().all(|&k| k == 1)
            && g.group == 1
            && stride1
            && g.pads.iter().all(|&p| p == 0)
        {
            WeightLayout::OutIn
        } else if w.len() == 3 && depthwise(&w, g.group) && stride1 {
            WeightLayout::Depthwise {
                dilation: g.dilations[0],
                pads: (g.pads[0], g.pads[1]),
            }
        } else {
            return None;
        };
        let bias = node.input.get(2).filter(|b| !b.is_empty());
        (!ir.is_const(&node.input[0])
            && ir.is_initializer(&node.input[1])
            && bias.is_none_or(|b| ir.is_initializer(b)))
        .then(|| Linear {
            input: node.input[0].clone(),
            axis: 1,
            weight: node.input[1].clone(),
            layout,
            bias: bias.cloned(),
        })
    }

    /// X `[N, Cin, *S]`, W `[Cout, Cin/g, *K]`, B `[Cout]` -> Y `[N, Cout, *S']` with
    /// `S' = floor((S + pads - dil*(K-1) - 1) / stride) + 1`.
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = &need(node, inputs, 0)?.shape;
        let w = &need(node, inputs, 1)?.shape;
        if x.len() < 3 || w.len() != x.len() {
            return Err(Error::node(
                node,
                format!(
                    "input rank {} and weight rank {} do not fit a Conv",
                    x.len(),
                    w.len()
                ),
            ));
        }
        let g = geometry(node, x, &w[2..], false)?;
        if x[1] != w[1] * g.group {
            return Err(Error::node(
                node,
                format!(
                    "input has {} channels but weight expects {} x group {}",
                    x[1], w[1], g.group
                ),
            ));
        }
        let nd = w.len() - 2;
        let mut y = vec![x[0], w[0]];
        for i in 0..nd {
            let eff = g.dilations[i] * (w[2 + i] - 1) + 1;
            let padded = x[2 + i] + g.pads[i] + g.pads[nd + i];
            if padded < eff {
                return Err(Error::node(
                    node,
                    format!("input length {} is shorter than the kernel", x[2 + i]),
                ));
            }
            y.push((padded - eff) / g.strides[i] + 1);
        }
        Ok(vec![Fact::shape(y)])
    }

    /// ptflops: `prod(K) * Cin/g * Cout * prod(S')` per batch, plus `Cout * prod(S')` for the bias.
    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        let w = shape(&node.input[1]);
        let y = shape(&node.output[0]);
        let positions: usize = y[0] * y[2..].iter().product::<usize>();
        let per: usize = w.iter().product();
        let bias = if has_input(node, 2) {
            w[0] * positions
        } else {
            0
        };
        (per * positions + bias) as u64
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (x, w, y) = (
            node.input[0].as_str(),
            node.input[1].as_str(),
            node.output[0].as_str(),
        );
        let ws = &ir.fact(w).expect("inferred").shape;
        let group = attr_i(node, "group").unwrap_or(1).max(1) as usize;
        if !ir.is_initializer(w) {
            links.freeze_node(node, ir, "Conv with a computed (non-initializer) weight");
            return;
        }
        couple_spatial(node, ir, links, 2);
        let bias = node.input.get(2).filter(|b| !b.is_empty());
        if let Some(b) = bias {
            links.link((b, 0), (y, 1));
        }
        links.link((w, 0), (y, 1));
        if group == 1 {
            links.source((w, 0));
            links.link((x, 1), (w, 1));
        } else if depthwise(ws, group) {
            // Passes its input's channels through: it defines no channels of its own (so a
            // sum of depthwise branches of one layer is not a multi-layer stream).
            links.link((x, 1), (y, 1));
        } else {
            // Whole groups: unit `u` is input channels `u Cin/g ..` and output channels
            // `u Cout/g ..` (the `[Cin/g]` weight axis stays whole).
            links.source((w, 0));
            grouped_units(node, ir, links, w, group, (x, y), ws[0] / group);
        }
    }

    fn read(&self, node: &NodeProto, ir: &Ir, input: usize, axis: usize) -> Read {
        let ws = &ir.fact(&node.input[1]).expect("inferred").shape;
        let group = attr_i(node, "group").unwrap_or(1).max(1) as usize;
        if input == 0 && axis == 1 && !depthwise(ws, group) {
            Read::Mix
        } else {
            Read::Pointwise
        }
    }

    /// 1-D and 2-D. Pads are applied with `pad_with_zeros` (ONNX pads may be asymmetric).
    /// Depthwise 1-D convs with stride 1 run as K shifted multiply-adds (candle runs a grouped
    /// conv as one GEMM per group, slow forward and backward); pointwise 1-D convs as one
    /// matmul; other convs use candle's conv.
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let (xs, w) = (cin(node, x, 0)?, cin(node, x, 1)?);
        let (xsh, wsh) = (in_shape(node, ir, 0)?, in_shape(node, ir, 1)?);
        let g = geometry(node, &xsh, &wsh[2..], false)?;
        let nd = wsh.len() - 2;
        let bias = x.get(2).and_then(|b| b.as_ref());
        if nd == 1 && depthwise(&wsh, g.group) && g.strides[0] == 1 {
            let pads = (g.pads[0], g.pads[1]);
            if let Some(y) = kernels::depthwise_conv1d(xs, w, pads, g.dilations[0]).map_err(&e)? {
                return Ok(vec![add_bias(node, y, bias)?]);
            }
        }
        let mut xp = xs.clone();
        for i in 0..nd {
            if g.pads[i] + g.pads[nd + i] > 0 {
                xp = xp
                    .pad_with_zeros(2 + i, g.pads[i], g.pads[nd + i])
                    .map_err(&e)?;
            }
        }
        let y =
            match nd {
                1 if depthwise(&wsh, g.group) && g.strides[0] == 1 => {
                    // (off the CPU) y[:, c, t] = sum_k w[c, 0, k] * xp[:, c, t + k*dil]
                    let (k, dil) = (wsh[2], g.dilations[0]);
                    let len = xp.dim(2).map_err(&e)? - dil * (k - 1);
                    let mut acc: Option<CTensor> = None;
                    for j in 0..k {
                        let wk = w
                            .narrow(2, j, 1)
                            .and_then(|t| t.reshape((1, wsh[0], 1)))
                            .map_err(&e)?; // [1, C, 1]
                        let term = xp
                            .narrow(2, j * dil, len)
                            .and_then(|t| t.broadcast_mul(&wk))
                            .map_err(&e)?;
                        acc = Some(match acc {
                            None => term,
                            Some(a) => (a + term).map_err(&e)?,
                        });
                    }
                    acc.expect("kernel has at least one tap")
                }
                1 if wsh[2] == 1 && g.group == 1 && g.strides[0] == 1 => {
                    // pointwise: W [Cout, Cin] @ x [N, Cin, T] (one GEMM forward and two
                    // backward, where candle's conv1d runs im2col and conv_transpose)
                    let w2 = w.reshape((wsh[0], wsh[1])).map_err(&e)?;
                    w2.broadcast_matmul(&xp).map_err(&e)?
                }
                1 if g.group == 1 && g.dilations[0] == 1 && framed(wsh[2], g.strides[0]) => {
                    strided_conv1d(&xp, w, g.strides[0]).map_err(&e)?
                }
                1 => per_item(&xp, |x| {
                    x.conv1d(w, 0, g.strides[0], g.dilations[0], g.group)
                })
                .map_err(&e)?,
                2 if g.strides[0] == g.strides[1] && g.dilations[0] == g.dilations[1] => {
                    per_item(&xp, |x| {
                        x.conv2d(w, 0, g.strides[0], g.dilations[0], g.group)
                    })
                    .map_err(&e)?
                }
                _ => return Err(Error::node(
                    node,
                    "Candle lowering covers 1-D convs and 2-D convs with equal strides/dilations",
                )),
            };
        Ok(vec![add_bias(node, y, bias)?])
    }

    /// Depthwise: `group` follows the (pruned) channel count.
    fn patch(&self, node: &mut NodeProto, _ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let x = new.of(&node.input[0]);
        let w = new.of(&node.input[1]);
        let group = attr_i(node, "group").unwrap_or(1);
        if group > 1 && w[1] > 0 {
            set_attr_i(node, "group", (x[1] / w[1]) as i64);
        }
        Ok(vec![])
    }
}

/// Whether a 1-D (transposed) convolution with `k` taps and stride `s` runs on frames of
/// `s` samples ([`strided_conv1d`], [`strided_conv_transpose1d`]): a stride above 1 that
/// divides the kernel (a speech model's learned filterbank: 2 s taps at stride s).
fn framed(k: usize, s: usize) -> bool {
    s > 1 && k >= s && k.is_multiple_of(s)
}

/// A strided 1-D convolution `x [N, C, T]` (padded), `w [O, C, m s]`, stride `s` ->
/// `[N, O, L]`, `L = (T - m s) / s + 1`, as one matrix product over frames: `x` cut into
/// frames of `s` samples, `m` consecutive frames side by side make each output's input
/// window (`[N, L, C m s]`), times `w` as `[O, C m s]`. Candle's conv1d runs the strided
/// case as im2col per call and its kernel gradient is wrong above batch 1; this form is a
/// few copies and one GEMM forward, two backward.
fn strided_conv1d(x: &CTensor, w: &CTensor, s: usize) -> candle_core::Result<CTensor> {
    let (n, c, t) = x.dims3()?;
    let (o, _, k) = w.dims3()?;
    let m = k / s;
    let l = (t - k) / s + 1;
    let frames = x
        .narrow(2, 0, (l + m - 1) * s)?
        .reshape((n, c, l + m - 1, s))?;
    // [N, C, L, m s]: window l holds frames l..l+m, tap q s + r at frame q, sample r
    let windows = (0..m)
        .map(|q| frames.narrow(2, q, l))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let windows = CTensor::cat(&windows, 3)?;
    let cols = windows.permute((0, 2, 1, 3))?.reshape((n, l, c * k))?; // [N, L, C K]
    let y = cols.broadcast_matmul(&w.reshape((o, c * k))?.t()?)?; // [N, L, O]
    y.transpose(1, 2)?.contiguous()
}

/// The transposed convolution `x [N, C, J]`, `w [C, O, m s]`, stride `s` -> the full
/// output `[N, O, (J + m - 1) s]` (before pads), as one matrix product and an overlap-add
/// of frames: `z = w^T x` holds, for input frame `j`, the `m s` output samples it writes;
/// tap `q s + r` lands at frame `j + q`, sample `r`. Candle's conv_transpose runs one
/// thread per output sample over every input channel and tap.
fn strided_conv_transpose1d(x: &CTensor, w: &CTensor, s: usize) -> candle_core::Result<CTensor> {
    let (n, c, j) = x.dims3()?;
    let (_, o, k) = w.dims3()?;
    let m = k / s;
    let z = w.reshape((c, o * k))?.t()?.broadcast_matmul(x)?; // [N, O K, J]
    let z = z.reshape((n, o, m, s, j))?;
    let mut acc: Option<CTensor> = None;
    for q in 0..m {
        // [N, O, J, s] placed at frames q..q+J of J + m - 1
        let part = z
            .narrow(2, q, 1)?
            .squeeze(2)?
            .transpose(2, 3)?
            .pad_with_zeros(2, q, m - 1 - q)?;
        acc = Some(match acc {
            Some(a) => (a + part)?,
            None => part,
        });
    }
    let full = acc.expect("m >= 1");
    full.reshape((n, o, (j + m - 1) * s))
}

/// `f` on each item of the batch `x` (axis 0) on its own, the results concatenated: candle
/// 0.11's gradient of a convolution's kernel is wrong for batches of more than one item (it
/// convolves the batch-transposed input, measured off by the gradient's own size on a
/// strided encoder), right for one. A batch of one runs `f` as it is.
fn per_item(
    x: &CTensor,
    f: impl Fn(&CTensor) -> candle_core::Result<CTensor>,
) -> candle_core::Result<CTensor> {
    let n = x.dim(0)?;
    if n == 1 {
        return f(x);
    }
    let ys = (0..n)
        .map(|i| f(&x.narrow(0, i, 1)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    CTensor::cat(&ys, 0)
}

impl OpRule for ConvTranspose {
    /// W and B.
    fn params(&self, _node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        vec![1, 2]
    }

    /// X `[N, Cin, *S]`, W `[Cin, Cout/g, *K]` -> Y `[N, Cout, *S']` with
    /// `S' = stride*(S-1) + output_padding + dil*(K-1) + 1 - pads`.
    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = &need(node, inputs, 0)?.shape;
        let w = &need(node, inputs, 1)?.shape;
        if x.len() < 3 || w.len() != x.len() {
            return Err(Error::node(
                node,
                "input and weight ranks do not fit a ConvTranspose",
            ));
        }
        if attr_ints(node, "output_shape")
            .map(|v| !v.is_empty())
            .unwrap_or(false)
        {
            return Err(Error::node(
                node,
                "ConvTranspose with output_shape is not supported",
            ));
        }
        let g = geometry(node, x, &w[2..], true)?;
        if x[1] != w[0] {
            return Err(Error::node(
                node,
                format!("input has {} channels but weight has {}", x[1], w[0]),
            ));
        }
        let nd = w.len() - 2;
        let out_pad = attr_ints(node, "output_padding")
            .filter(|v| !v.is_empty())
            .unwrap_or(vec![0; nd]);
        let mut y = vec![x[0], w[1] * g.group];
        for i in 0..nd {
            let full = g.strides[i] * (x[2 + i] - 1)
                + out_pad[i] as usize
                + g.dilations[i] * (w[2 + i] - 1)
                + 1;
            y.push(
                full.checked_sub(g.pads[i] + g.pads[nd + i])
                    .ok_or_else(|| Error::node(node, "pads exceed output"))?,
            );
        }
        Ok(vec![Fact::shape(y)])
    }

    /// ptflops 0.7.5 counts ConvTranspose over input positions S:
    /// `prod(K) * Cin * Cout/g * prod(S)`, plus `Cout * prod(S)` for the bias; 0.7.4 and
    /// earlier the same over the output positions S'.
    fn macs(&self, node: &NodeProto, shape: ShapeOf, ptflops: Ptflops) -> u64 {
        let w = shape(&node.input[1]);
        let x = match ptflops {
            Ptflops::V075 => shape(&node.input[0]),
            Ptflops::V074 => shape(&node.output[0]),
        };
        let positions: usize = x[0] * x[2..].iter().product::<usize>();
        let per: usize = w.iter().product();
        let bias = if has_input(node, 2) {
            shape(&node.output[0])[1] * positions
        } else {
            0
        };
        (per * positions + bias) as u64
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let (x, w, y) = (
            node.input[0].as_str(),
            node.input[1].as_str(),
            node.output[0].as_str(),
        );
        let group = attr_i(node, "group").unwrap_or(1).max(1) as usize;
        if !ir.is_initializer(w) {
            links.freeze_node(node, ir, "ConvTranspose with a computed weight");
            return;
        }
        couple_spatial(node, ir, links, 2);
        links.link((x, 1), (w, 0));
        if group == 1 {
            links.source((w, 1));
            links.link((w, 1), (y, 1));
            if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
                links.link((b, 0), (y, 1));
            }
        } else {
            if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
                links.link((b, 0), (y, 1));
            }
            let ws = &ir.fact(w).expect("inferred").shape;
            grouped_units(node, ir, links, w, group, (x, y), ws[1]);
        }
    }

    /// Grouped: `group` follows the number of groups kept.
    fn patch(&self, node: &mut NodeProto, _ir: &Ir, new: &Sliced) -> Result<Vec<ConstEdit>> {
        let y = new.of(&node.output[0]);
        let w = new.of(&node.input[1]);
        let group = attr_i(node, "group").unwrap_or(1);
        if group > 1 && w[1] > 0 {
            set_attr_i(node, "group", (y[1] / w[1]) as i64);
        }
        Ok(vec![])
    }

    fn read(&self, _node: &NodeProto, _ir: &Ir, input: usize, axis: usize) -> Read {
        if input == 0 && axis == 1 {
            Read::Mix
        } else {
            Read::Pointwise
        }
    }

    /// 1-D: through `conv_transpose2d` on `[N, C, 1, T]` with no padding (one call per
    /// group: input channels `[k*Cin/g, (k+1)*Cin/g)` give outputs `[k*Cout/g, ..)`), then
    /// cropped by the pads and extended by `output_padding` (candle's `conv_transpose1d` has
    /// no backward and a wrong CPU forward for batch > 1; `docs/notes.md`).
    fn lower(&self, node: &NodeProto, ir: &Ir, x: &[Option<CTensor>]) -> Result<Vec<CTensor>> {
        let e = ce(node);
        let (xs, w) = (cin(node, x, 0)?, cin(node, x, 1)?);
        let (xsh, wsh) = (in_shape(node, ir, 0)?, in_shape(node, ir, 1)?);
        let g = geometry(node, &xsh, &wsh[2..], true)?;
        if wsh.len() != 3 {
            return Err(Error::node(
                node,
                "Candle lowering covers 1-D ConvTranspose",
            ));
        }
        let out_pad = attr_ints(node, "output_padding")
            .filter(|v| !v.is_empty())
            .map(|v| v[0] as usize)
            .unwrap_or(0);
        let per = wsh[0] / g.group; // input channels per group
        let (st, dil) = (g.strides[0], g.dilations[0]);
        let parts = if g.group == 1 && dil == 1 && framed(wsh[2], st) {
            vec![strided_conv_transpose1d(xs, w, st).map_err(&e)?]
        } else {
            (0..g.group)
                .map(|k| {
                    let xk = xs.narrow(1, k * per, per)?.unsqueeze(2)?;
                    let wk = w.narrow(0, k * per, per)?.unsqueeze(2)?;
                    xk.conv_transpose2d(&wk, 0, 0, st, dil)?.squeeze(2)
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(&e)?
        };
        let full = CTensor::cat(&parts, 1).map_err(&e)?;
        // output_padding extends the full output at the end; the pads crop both ends
        let full = full.pad_with_zeros(2, 0, out_pad).map_err(&e)?;
        let len = full.dim(2).map_err(&e)?;
        let (a, b) = (g.pads[0], g.pads[1]);
        let y = full.narrow(2, a, len - a - b).map_err(&e)?;
        Ok(vec![add_bias(node, y, x.get(2).and_then(|b| b.as_ref()))?])
    }
}

/// `y + b` with `b` `[C]` broadcast over `y` `[N, C, *S]`.
fn add_bias(node: &NodeProto, y: CTensor, b: Option<&CTensor>) -> Result<CTensor> {
    let Some(b) = b else { return Ok(y) };
    let e = ce(node);
    if let Some(y) = kernels::channel_bias(&y, b, 1).map_err(&e)? {
        return Ok(y);
    }
    let mut shape = vec![1usize; y.rank()];
    shape[1] = b.elem_count();
    b.reshape(shape)
        .and_then(|b| y.broadcast_add(&b))
        .map_err(e)
}

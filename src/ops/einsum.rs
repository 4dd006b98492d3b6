//! Einsum with an explicit output (`"btgi,gih->btgh"`, DeepFilterNet's grouped linear; a
//! MatMul written as `"bti,io->bto"`), without ellipsis or repeated letters in one operand.
//!
//! Channels, per letter: a letter in the output and in inputs links all its axes (the
//! identity map: a batch, a time or a group axis passes through); a contracted letter (in
//! inputs only) links its input axes (they must keep the same channels, and the computed
//! operand is gated there: [`Read::Mix`]); a letter of the output that only an initializer
//! carries is a channel source (a linear layer's output features). MACs: the product of
//! every letter's size (one multiply-add per term of the sum).
use super::{need, Links, OpRule, Ptflops, Read, ShapeOf};
use crate::error::{Error, Result};
use crate::ir::{Fact, Ir};
use crate::onnx::{attr_s, NodeProto};
use std::collections::BTreeMap;

pub struct Einsum;

/// The operands' and the output's letters of an explicit equation.
///
/// Errors: [`Error::Uncovered`] (the node is then opaque, its shapes from tract) for no
/// `->`, an ellipsis, a letter repeated in one operand (a diagonal), an output letter no
/// input has.
fn equation(node: &NodeProto) -> Result<(Vec<Vec<char>>, Vec<char>)> {
    let eq = attr_s(node, "equation")
        .ok_or_else(|| Error::uncovered(node, "Einsum without an equation"))?
        .replace(' ', "");
    let (lhs, rhs) = eq
        .split_once("->")
        .ok_or_else(|| Error::uncovered(node, format!("equation '{eq}' has no explicit output")))?;
    if eq.contains("...") {
        return Err(Error::uncovered(
            node,
            format!("equation '{eq}' has an ellipsis"),
        ));
    }
    let ins: Vec<Vec<char>> = lhs.split(',').map(|s| s.chars().collect()).collect();
    let out: Vec<char> = rhs.chars().collect();
    for term in ins.iter().chain([&out]) {
        let mut seen = term.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != term.len() || term.iter().any(|c| !c.is_ascii_alphabetic()) {
            return Err(Error::uncovered(
                node,
                format!("equation '{eq}': unsupported term"),
            ));
        }
    }
    if out.iter().any(|c| !ins.iter().any(|t| t.contains(c))) {
        return Err(Error::uncovered(
            node,
            format!("equation '{eq}': an output letter no input has"),
        ));
    }
    Ok((ins, out))
}

/// Each letter's size, checked across operands (a size-1 axis broadcasts).
fn sizes(
    node: &NodeProto,
    ins: &[Vec<char>],
    shapes: &[&[usize]],
) -> Result<BTreeMap<char, usize>> {
    let mut size: BTreeMap<char, usize> = BTreeMap::new();
    for (term, shape) in ins.iter().zip(shapes) {
        if term.len() != shape.len() {
            return Err(Error::node(
                node,
                format!(
                    "operand of rank {} for term '{}'",
                    shape.len(),
                    term.iter().collect::<String>()
                ),
            ));
        }
        for (&c, &d) in term.iter().zip(shape.iter()) {
            match size.get(&c).copied() {
                Some(s) if s != d && s != 1 && d != 1 => {
                    return Err(Error::node(
                        node,
                        format!("letter '{c}' has sizes {s} and {d}"),
                    ))
                }
                Some(s) if s >= d => {}
                _ => {
                    size.insert(c, d);
                }
            }
        }
    }
    Ok(size)
}

impl OpRule for Einsum {
    /// Initializer operands (a grouped linear's weight).
    fn params(&self, node: &NodeProto, _ir: &Ir) -> Vec<usize> {
        (0..node.input.len()).collect()
    }

    fn infer(&self, node: &NodeProto, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (ins, out) = equation(node)?;
        if ins.len() != node.input.len() {
            return Err(Error::node(node, "equation and inputs differ in number"));
        }
        let shapes: Vec<&[usize]> = (0..ins.len())
            .map(|i| need(node, inputs, i).map(|f| f.shape.as_slice()))
            .collect::<Result<_>>()?;
        let size = sizes(node, &ins, &shapes)?;
        Ok(vec![Fact::shape(out.iter().map(|c| size[c]).collect())])
    }

    fn macs(&self, node: &NodeProto, shape: ShapeOf, _ptflops: Ptflops) -> u64 {
        let Ok((ins, _)) = equation(node) else {
            return 0;
        };
        let shapes: Vec<Vec<usize>> = node.input.iter().map(|v| shape(v)).collect();
        let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        match sizes(node, &ins, &refs) {
            Ok(s) => s.values().map(|&d| d as u64).product(),
            Err(_) => 0,
        }
    }

    fn couple(&self, node: &NodeProto, ir: &Ir, links: &mut Links) {
        let Ok((ins, out)) = equation(node) else {
            return links.freeze_node(node, ir, "unreadable Einsum equation");
        };
        let y = node.output[0].as_str();
        let size = |v: &str, a: usize| ir.fact(v).and_then(|f| f.shape.get(a)).copied();
        let letters: std::collections::BTreeSet<char> = ins.iter().flatten().copied().collect();
        for c in letters {
            // every (operand, axis) with this letter, size > 1 (a broadcast axis carries
            // nothing)
            let slots: Vec<(&str, usize)> = ins
                .iter()
                .zip(&node.input)
                .filter_map(|(t, v)| t.iter().position(|&l| l == c).map(|a| (v.as_str(), a)))
                .filter(|&(v, a)| size(v, a).is_some_and(|d| d > 1))
                .collect();
            let at_out = out.iter().position(|&l| l == c);
            for w in slots.windows(2) {
                links.link(w[0], w[1]);
            }
            if let (Some(a), Some(&first)) = (at_out, slots.first()) {
                links.link(first, (y, a));
                // only initializers carry it: a linear layer's output features
                if slots.iter().all(|(v, _)| ir.is_initializer(v)) {
                    links.source(first);
                }
            }
        }
    }

    fn read(&self, node: &NodeProto, _ir: &Ir, input: usize, axis: usize) -> Read {
        match equation(node) {
            Ok((ins, out)) => match ins.get(input).and_then(|t| t.get(axis)) {
                Some(c) if !out.contains(c) => Read::Mix,
                _ => Read::Pointwise,
            },
            Err(_) => Read::Mix,
        }
    }
}

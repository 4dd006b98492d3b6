//! The masks file: kept channel indices per channel group.
//!
//! ```json
//! { "format": "sepprune-masks/1",
//!   "model": "fnv1a64:5e1c...",
//!   "groups": { "3": { "size": 128, "keep": [0, 2, 5, ...], "key": "conv3.weight:0" } } }
//! ```
//! Group ids are those of `sepprune inspect` for the same model. Indices are 0-based,
//! sorted, unique and `< size`; a group absent from the file keeps all its channels.
//! `sepprune learn`, `prune --save-masks` and `compress` write this format, stamped with
//! the model's [`fingerprint`] and each group's stable `key` (the first initializer it
//! slices, and the axis); `sepprune prune --masks` reads it ([`Masks::read_for`]): masks
//! stamped for another model are refused, and keys find their groups even where ids differ
//! (another sepprune version numbering groups differently). Unstamped files are taken by id.
use crate::analysis::Groups;
use crate::error::{Error, Result};
use crate::ir::Ir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupMask {
    pub size: usize,
    pub keep: Vec<usize>,
    /// The group's stable name ([`group_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Masks {
    pub format: String,
    /// The [`fingerprint`] of the model the masks were made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The fingerprint of that model's canonical form ([`canonical_fingerprint`]): what a
    /// model written from the IR (trained weights, `learn --model-out`) shares with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    pub groups: BTreeMap<usize, GroupMask>,
}

/// The fingerprint masks are stamped with: the model's as the user gave it
/// ([`crate::ir::fingerprint`], before canonical rewrites), so that a canonical rewrite
/// added in a later version does not disown masks files.
pub fn fingerprint(ir: &Ir) -> String {
    ir.fingerprint.clone()
}

/// The fingerprint of the canonical graph: the same for a model and for one written from
/// its IR (the exporter's norm forms restored, the other canonical rewrites kept), as
/// `learn --model-out` writes a model with trained weights. Files written before
/// 2026-11-26 carry it as their `model`.
pub fn canonical_fingerprint(ir: &Ir) -> String {
    crate::ir::fingerprint_of(
        ir.nodes().iter(),
        ir.graph()
            .initializer
            .iter()
            .map(|t| (t.name(), t.dims.as_slice())),
    )
}

/// A group's stable name: its first sliced initializer and axis (`conv3.weight:0`), or its
/// first member when it slices none.
pub fn group_key(g: &crate::analysis::Group) -> String {
    let (v, a) = g
        .params
        .first()
        .or(g.members.first())
        .cloned()
        .unwrap_or_default();
    format!("{v}:{a}")
}

impl Masks {
    pub fn new() -> Masks {
        Masks {
            format: "sepprune-masks/1".into(),
            model: None,
            canonical: None,
            groups: BTreeMap::new(),
        }
    }

    /// These masks stamped for `ir`: its [`fingerprint`] and each group's [`group_key`].
    pub fn stamped(&self, ir: &Ir, groups: &Groups) -> Masks {
        let mut m = self.clone();
        m.model = Some(fingerprint(ir));
        m.canonical = Some(canonical_fingerprint(ir));
        for (id, gm) in m.groups.iter_mut() {
            gm.key = groups.groups.get(*id).map(group_key);
        }
        m
    }

    /// These masks for `ir`'s groups: refused when stamped for another model (neither the
    /// model as given nor its canonical form match); groups found by key where the file has
    /// keys.
    ///
    /// Errors: [`Error::Masks`] for another model's masks or a key no group has.
    pub fn resolved(self, ir: &Ir, groups: &Groups) -> Result<Masks> {
        if let Some(m) = &self.model {
            let here = fingerprint(ir);
            let canonical = canonical_fingerprint(ir);
            let same = *m == here
                || *m == canonical
                || self.canonical.as_deref() == Some(canonical.as_str());
            if !same {
                return Err(Error::Masks(format!(
                    "made for another model (fingerprint {m}; this model is {here}): masks \
                     index the channel groups of one model"
                )));
            }
        }
        let by_key: BTreeMap<String, usize> =
            groups.groups.iter().map(|g| (group_key(g), g.id)).collect();
        let mut out = Masks {
            groups: BTreeMap::new(),
            ..self.clone()
        };
        for (id, gm) in self.groups {
            let id = match &gm.key {
                Some(k) => *by_key.get(k).ok_or_else(|| {
                    Error::Masks(format!("group {id}: no group of this model is '{k}'"))
                })?,
                None => id,
            };
            out.groups.insert(id, gm);
        }
        Ok(out)
    }

    /// [`Masks::read`] then [`Masks::resolved`] for `ir`.
    pub fn read_for(path: &Path, ir: &Ir, groups: &Groups) -> Result<Masks> {
        Masks::read(path)?
            .resolved(ir, groups)
            .map_err(|e| match e {
                Error::Masks(m) => Error::Masks(format!("{}: {m}", path.display())),
                e => e,
            })
    }
    pub fn insert(&mut self, group: usize, size: usize, mut keep: Vec<usize>) {
        keep.sort_unstable();
        keep.dedup();
        self.groups.insert(
            group,
            GroupMask {
                size,
                keep,
                key: None,
            },
        );
    }
    /// Kept indices of a group, when it is masked.
    pub fn keep(&self, group: usize) -> Option<&[usize]> {
        self.groups.get(&group).map(|m| m.keep.as_slice())
    }

    /// Checks the masks against a model's groups.
    ///
    /// Errors: [`Error::Masks`] for an unknown or frozen group, a size mismatch, an empty,
    /// unsorted, duplicate or out-of-range index list.
    pub fn validate(&self, groups: &Groups) -> Result<()> {
        for (&id, m) in &self.groups {
            let g = groups.groups.get(id).ok_or_else(|| {
                Error::Masks(format!(
                    "group {id} does not exist ({} groups)",
                    groups.groups.len()
                ))
            })?;
            if let Some(why) = &g.frozen {
                if m.keep.len() != g.size {
                    return Err(Error::Masks(format!("group {id} is frozen ({why})")));
                }
            }
            if m.size != g.size {
                return Err(Error::Masks(format!(
                    "group {id} has {} channels, the mask says {}",
                    g.size, m.size
                )));
            }
            if m.keep.is_empty() {
                return Err(Error::Masks(format!(
                    "group {id}: at least one channel must be kept"
                )));
            }
            if m.keep.windows(2).any(|w| w[0] >= w[1])
                || m.keep.last().map(|&l| l >= g.size).unwrap_or(false)
            {
                return Err(Error::Masks(format!(
                    "group {id}: indices must be sorted, unique and < {}",
                    g.size
                )));
            }
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Masks> {
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&s).map_err(|e| Error::Masks(format!("{}: {e}", path.display())))
    }
    pub fn write(&self, path: &Path) -> Result<()> {
        let s = serde_json::to_string_pretty(self).map_err(|e| Error::Masks(e.to_string()))?;
        crate::onnx::write_atomic(path, s.as_bytes())
    }
}

//! The masks file: kept channel indices per channel group.
//!
//! ```json
//! { "format": "sepprune-masks/1",
//!   "groups": { "3": { "size": 128, "keep": [0, 2, 5, ...] } } }
//! ```
//! Group ids are those of `sepprune inspect` for the same model. Indices are 0-based,
//! sorted, unique and `< size`; a group absent from the file keeps all its channels.
//! `sepprune learn` writes this format; `sepprune prune --masks` reads it.
use crate::analysis::Groups;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupMask {
    pub size: usize,
    pub keep: Vec<usize>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Masks {
    pub format: String,
    pub groups: BTreeMap<usize, GroupMask>,
}

impl Masks {
    pub fn new() -> Masks {
        Masks {
            format: "sepprune-masks/1".into(),
            groups: BTreeMap::new(),
        }
    }
    pub fn insert(&mut self, group: usize, size: usize, mut keep: Vec<usize>) {
        keep.sort_unstable();
        keep.dedup();
        self.groups.insert(group, GroupMask { size, keep });
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

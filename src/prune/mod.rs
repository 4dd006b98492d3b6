//! Masks, importance criteria, MACs budgets, physical slicing of channels and depth
//! pruning (whole residual blocks).
mod budget;
pub mod depth;
mod slice;

pub use budget::{
    candidates, channel_scores, masks_for_ratio, masks_from_scores, Budget, Budgeted, Cost,
    Criterion, Measure, Residual, Scope,
};
// masks are the selection's output and slicing's input; they live with the groups they index
pub use crate::analysis::Masks;
pub use slice::{pruned_shape, slim};

//! Masks, importance criteria, MACs budgets, physical slicing of channels and depth
//! pruning (whole residual blocks).
mod budget;
pub mod depth;
mod masks;
mod slice;

pub use budget::{
    candidates, masks_for_ratio, masks_from_scores, Budget, Budgeted, Cost, Criterion, Residual,
    Scope,
};
pub use masks::Masks;
pub use slice::{pruned_shape, slim};

//! Masks, importance criteria, MACs budgets and physical slicing.
mod budget;
mod masks;
mod slice;

pub use budget::{
    candidates, masks_for_ratio, masks_from_scores, Budget, Budgeted, Cost, Criterion, Residual,
    Scope,
};
pub use masks::Masks;
pub use slice::{pruned_shape, slim};

//! Masks, importance criteria, MACs budgets and physical slicing.
mod budget;
mod masks;
mod slice;

pub use budget::{masks_for_ratio, Budget, Budgeted, Criterion, Scope};
pub use masks::Masks;
pub use slice::{pruned_shape, slim};

//! Structural analysis: cost profile (params, MACs per node and per region), channel
//! groups and residual blocks.
pub mod blocks;
pub mod cost;
pub mod groups;
pub mod masks;
pub mod regions;

pub use blocks::find_blocks;
pub use cost::{profile, NodeCost, Profile};
pub use groups::{analyze_groups, Group, Groups};
pub use masks::Masks;
pub use regions::{find_regions, Region};

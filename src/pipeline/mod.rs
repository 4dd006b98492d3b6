//! Commands that chain several passes: `compress` (structure selection, pruning,
//! verification, recovery, evaluation, benchmark and a report with plots).
pub mod compress;
pub mod latency;

pub use compress::{
    compress, Compressed, Method, Options, Structure, DEFAULT_METHOD, LABEL_FREE_KEEP,
    LABEL_FREE_LR, LABEL_FREE_MIN_TEACHER_GAIN, REFERENCES_LR,
};

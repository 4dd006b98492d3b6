//! Audio: WAV input/output, LibriMix-style datasets, enhancement/separation set
//! building, and separation metrics.
pub mod dataset;
pub mod metrics;
pub mod wav;

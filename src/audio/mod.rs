//! Audio: WAV and FLAC input, WAV output, speech and noise corpora split by speaker and
//! noise category, LibriMix-style datasets, enhancement set building, and separation
//! metrics.
pub mod corpus;
pub mod dataset;
pub mod metrics;
pub mod wav;

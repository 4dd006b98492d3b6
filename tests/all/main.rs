//! The integration tests, in one binary: one link of tract, ORT and Candle instead of one
//! per file (minutes on 2 cores). Each module tests one part; `common` builds the tiny
//! models and sets, and finds the real Conv-TasNet.
mod common;

mod audio;
mod bad_input;
mod candle_fixtures;
mod cli;
mod corpus;
mod depth;
mod exactness;
mod finetune;
mod fixtures;
mod kernels;
mod layering;
mod learn;
mod op_rules;
mod real_model;
mod refit;
mod runtime;

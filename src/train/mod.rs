//! Trainers (issue 5): thin loops over the runtime, the loss library and the
//! rollout engine; and the built-in demo (`engine train` alone).

pub mod checkpoint;
pub mod common;
pub mod config;
pub mod data;
pub mod demo;
pub mod distill;
pub mod dpo;
pub mod eval;
pub mod grpo;
pub mod plot;
pub mod rft;
pub mod sft;

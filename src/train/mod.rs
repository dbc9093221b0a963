//! Trainers (issue 5): thin loops over the runtime, the loss library and the
//! rollout engine. What exists so far: the configuration system.

pub mod checkpoint;
pub mod common;
pub mod config;
pub mod data;
pub mod distill;
pub mod dpo;
pub mod grpo;
pub mod rft;
pub mod sft;

//! `engine`: trains reasoning language models. A transformer runtime with
//! explicit forward and backward passes over a backend trait (CPU reference
//! today, CUDA next), Hugging Face checkpoints in and out, and the CLI.

pub mod backend;
pub mod cli;
pub mod data;
pub mod loss;
pub mod model;
pub mod optim;
pub mod reward;
pub mod rollout;
pub mod train;

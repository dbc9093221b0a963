//! Rollouts: batched generation on the model runtime (the same weights and
//! kernels as training), with a KV cache, continuous batching, seeded
//! per-sequence sampling, and the sampler's log-probabilities.

pub mod engine;
pub mod sampler;

pub use engine::{DecodeStats, FinishReason, GenerateConfig, Generator, Sample};
pub use sampler::{sample, Draw, KernelSettings, Sampled, SamplingParams, Stream};

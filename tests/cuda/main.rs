//! Each CUDA kernel against the CPU reference, on random inputs of odd
//! sizes (DESIGN.md §6): inputs are rounded to bf16 first, so the only error
//! left is the kernel's own (bf16 outputs, fp32 arithmetic). Without a GPU
//! every test prints one line saying it skipped; with ENGINE_REQUIRE_CUDA=1
//! a missing GPU is a failure. One test binary for all kernels, so the GPU
//! check carries the fatbins once (DESIGN.md §7); one module per kernel file.

#![cfg(feature = "cuda")]

mod adamw;
mod attention;
mod bench;
mod cast;
#[path = "../common/mod.rs"]
mod common;
mod distill;
mod elementwise;
mod embedding;
mod flash_attention;
mod gemm;
mod indices;
mod logprob;
mod logprob_f32;
mod model;
mod policy;
mod rmsnorm;
mod rope;
mod rows;
mod sample;
mod swiglu;
mod train;
mod train_bench;
mod util;

//! Data: batches of packed sequences and the tokenizer.

pub mod batch;
pub mod chat;
pub mod jsonl;
pub mod tokenizer;

pub use batch::Batch;

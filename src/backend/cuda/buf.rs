//! Device buffers of the CUDA backend: one type for the [`Backend`]'s
//! `Buf`, tagged with its element type, since parameters, activations and
//! gradients are bf16 while per-row statistics, RoPE tables and optimizer
//! state are fp32 (DESIGN.md §3). Views are a buffer and a span (plain
//! `Copy` data, as the trait wants); each op turns them into cudarc views of
//! the type it expects, and a view of the wrong type is a bug in the caller
//! that panics with the op's name.
//!
//! [`Backend`]: crate::backend::Backend

use super::Bf16;
use crate::backend::Span;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

/// The element type of a [`DBuf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    Bf16,
    F32,
}

/// An owned device buffer.
#[derive(Debug)]
pub enum DBuf {
    Bf16(CudaSlice<Bf16>),
    F32(CudaSlice<f32>),
}

impl DBuf {
    pub fn len(&self) -> usize {
        match self {
            DBuf::Bf16(s) => s.len(),
            DBuf::F32(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            DBuf::Bf16(_) => DType::Bf16,
            DBuf::F32(_) => DType::F32,
        }
    }
}

fn check_span(what: &str, span: Span, len: usize) {
    assert!(span.end() <= len, "{what}: span {}..{} outside a buffer of {len}", span.off, span.end());
}

/// A read-only view: part of a [`DBuf`].
#[derive(Clone, Copy, Debug)]
pub struct DRef<'a> {
    buf: &'a DBuf,
    span: Span,
}

impl<'a> DRef<'a> {
    pub fn new(buf: &'a DBuf, span: Span) -> Self {
        check_span("view", span, buf.len());
        DRef { buf, span }
    }
    pub fn len(&self) -> usize {
        self.span.len
    }
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
    /// The view as bf16; `op` names the caller in the panic for an fp32 view.
    pub fn bf16(&self, op: &str) -> CudaView<'a, Bf16> {
        match self.buf {
            DBuf::Bf16(s) => s.slice(self.span.off..self.span.end()),
            DBuf::F32(_) => panic!("{op}: expected a bf16 buffer, got fp32"),
        }
    }
    /// The view as fp32; `op` names the caller in the panic for a bf16 view.
    pub fn f32(&self, op: &str) -> CudaView<'a, f32> {
        match self.buf {
            DBuf::F32(s) => s.slice(self.span.off..self.span.end()),
            DBuf::Bf16(_) => panic!("{op}: expected an fp32 buffer, got bf16"),
        }
    }
}

/// A writable view: part of a [`DBuf`].
#[derive(Debug)]
pub struct DMut<'a> {
    buf: &'a mut DBuf,
    span: Span,
}

impl<'a> DMut<'a> {
    pub fn new(buf: &'a mut DBuf, span: Span) -> Self {
        check_span("view_mut", span, buf.len());
        DMut { buf, span }
    }
    pub fn len(&self) -> usize {
        self.span.len
    }
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
    pub fn bf16(self, op: &str) -> CudaViewMut<'a, Bf16> {
        let Span { off, len } = self.span;
        match self.buf {
            DBuf::Bf16(s) => s.slice_mut(off..off + len),
            DBuf::F32(_) => panic!("{op}: expected a bf16 buffer, got fp32"),
        }
    }
    pub fn f32(self, op: &str) -> CudaViewMut<'a, f32> {
        let Span { off, len } = self.span;
        match self.buf {
            DBuf::F32(s) => s.slice_mut(off..off + len),
            DBuf::Bf16(_) => panic!("{op}: expected an fp32 buffer, got bf16"),
        }
    }
}

/// A view of part of an index buffer.
#[derive(Clone, Copy, Debug)]
pub struct IdxRef<'a> {
    buf: &'a CudaSlice<u32>,
    span: Span,
}

impl<'a> IdxRef<'a> {
    pub fn new(buf: &'a CudaSlice<u32>, span: Span) -> Self {
        check_span("idx_view", span, buf.len());
        IdxRef { buf, span }
    }
    pub fn len(&self) -> usize {
        self.span.len
    }
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }
    pub fn view(&self) -> CudaView<'a, u32> {
        self.buf.slice(self.span.off..self.span.end())
    }
}

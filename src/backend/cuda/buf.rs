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
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceSlice, SyncOnDrop};
use std::sync::Arc;

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

/// An index buffer of the backend: the device array, and a host copy of
/// what was last written to it. `write_idx` is the only way an index buffer
/// changes, so the copy is always current, and the ops that plan on the host
/// (attention's tile table and bounds, decode attention's lengths, the
/// embedding backward's plan) read it instead of copying back and waiting.
#[derive(Debug)]
pub struct DIdx {
    pub(crate) dev: CudaSlice<u32>,
    pub(crate) host: Vec<u32>,
}

impl DIdx {
    pub fn len(&self) -> usize {
        self.host.len()
    }
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }
}

/// A view of part of an index buffer.
#[derive(Clone, Copy, Debug)]
pub struct IdxRef<'a> {
    buf: &'a DIdx,
    span: Span,
}

impl<'a> IdxRef<'a> {
    pub fn new(buf: &'a DIdx, span: Span) -> Self {
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
        self.buf.dev.slice(self.span.off..self.span.end())
    }
    /// The host copy of the view.
    pub fn host(&self) -> &'a [u32] {
        &self.buf.host[self.span.off..self.span.end()]
    }
    /// The device view with its host copy, for launchers that take an [`IndexArg`].
    pub fn mirrored(&self) -> Mirrored<'a> {
        Mirrored { view: self.view(), host: self.host() }
    }
}

/// An index array as a launcher that plans on the host takes it: any device
/// array, with its contents on the host where the caller has them (else the
/// launcher copies them back and waits).
pub trait IndexArg: DevicePtr<u32> {
    fn host(&self) -> Option<&[u32]> {
        None
    }
}
impl IndexArg for CudaSlice<u32> {}
impl IndexArg for CudaView<'_, u32> {}

/// A device view of indices with their host copy.
pub struct Mirrored<'a> {
    view: CudaView<'a, u32>,
    host: &'a [u32],
}

impl<'a> Mirrored<'a> {
    /// `host` must hold what `view` holds (the launchers plan from it).
    pub fn new(view: CudaView<'a, u32>, host: &'a [u32]) -> Self {
        assert_eq!(view.len(), host.len(), "Mirrored: device and host lengths differ");
        Mirrored { view, host }
    }
}

impl DeviceSlice<u32> for Mirrored<'_> {
    fn len(&self) -> usize {
        self.view.len()
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.view.stream()
    }
}

impl DevicePtr<u32> for Mirrored<'_> {
    fn device_ptr<'b>(&'b self, stream: &'b CudaStream) -> (CUdeviceptr, SyncOnDrop<'b>) {
        self.view.device_ptr(stream)
    }
}

impl IndexArg for Mirrored<'_> {
    fn host(&self) -> Option<&[u32]> {
        Some(self.host)
    }
}

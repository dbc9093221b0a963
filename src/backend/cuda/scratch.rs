//! fp32 device scratch kept between calls: a kernel's intermediate buffer
//! (the flash backward's `delta` and dk/dv parts, split decode attention's
//! partial states) allocated once and grown to the largest request, instead
//! of allocated (and zero-filled) on every call.

use super::Gpu;
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Scratch(Mutex<Option<CudaSlice<f32>>>);

impl Scratch {
    /// The address of at least `n` floats (at least one), **uninitialised**:
    /// the caller's kernels must write every element they read. A buffer
    /// replaced while a kernel may still use it is freed in stream order (and
    /// the buffer epoch moves: captured graphs hold the old address).
    /// The address outlives the lock: two threads launching on one `Gpu` at
    /// once could replace the buffer under the other's kernel; the backend's
    /// ops run from one thread.
    pub fn get(&self, gpu: &Gpu, what: &str, n: usize) -> Result<u64> {
        let stream = &gpu.stream;
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if buf.as_ref().is_none_or(|b| b.len() < n) {
            gpu.check_not_capturing(what)?;
            let n = n.max(buf.as_ref().map_or(1, |b| b.len()));
            *buf = None; // the old buffer goes first, so the peak is the new size
                         // SAFETY: uninitialised device memory; see the contract above.
            let fresh = unsafe { stream.alloc::<f32>(n) }.map_err(|e| anyhow!("{what} ({n} floats): {e}"))?;
            *buf = Some(fresh);
            gpu.buffer_epoch.fetch_add(1, Ordering::SeqCst);
        }
        let b = buf.as_ref().expect("allocated above");
        let (p, _sync) = b.device_ptr(stream);
        Ok(p)
    }

    /// [`get`](Self::get), with the first `n` floats set to zero bits (in
    /// stream order) for kernels that count in them.
    pub fn get_zeroed(&self, gpu: &Gpu, what: &str, n: usize) -> Result<u64> {
        self.get_zeroed_prefix(gpu, what, n, n)
    }

    /// [`get`](Self::get) of `n` floats with the first `zeroed` (≤ `n`) set
    /// to zero bits: counters ahead of uninitialised space.
    pub fn get_zeroed_prefix(&self, gpu: &Gpu, what: &str, n: usize, zeroed: usize) -> Result<u64> {
        assert!(zeroed <= n, "{what}: {zeroed} zeroed of {n}");
        let p = self.get(gpu, what, n)?;
        let stream = &gpu.stream;
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let b = buf.as_mut().expect("allocated by get");
        stream.memset_zeros(&mut b.slice_mut(0..zeroed)).map_err(|e| anyhow!("{what}: clearing: {e}"))?;
        Ok(p)
    }
}

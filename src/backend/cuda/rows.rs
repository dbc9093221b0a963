//! Row moves and row sums on the GPU (kernels/rows.cu): `copy_rows` (writes
//! keys and values into a KV cache, gathers rows) and the bias gradient.
//! Also the reading of the device-side index flag that `copy_rows` and
//! `rope` set when an index is outside its buffer.

use super::buf::IndexArg;
use super::params::{BiasGradParams, CopyRowsParams, ENGINE_COLSUM_CHUNKS, ROW_THREADS};
use super::{check_len, grid_1d, grid_rows, Bf16, Gpu, Modules};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(CopyRowsParams, BiasGradParams);

pub struct Fns {
    copy_rows: CudaFunction,
    bias_grad: CudaFunction,
    bias_grad_reference: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns {
        copy_rows: m.get("rows", "copy_rows")?,
        bias_grad: m.get("rows", "bias_grad")?,
        bias_grad_reference: m.get("rows", "bias_grad_reference")?,
    })
}

impl Gpu {
    /// `dst[dst_rows[i]] = src[src_rows[i]]` for rows of `width` bf16 (bits
    /// moved as they are). Row indices live on the device and are checked
    /// there: a copy with a row outside its buffer is skipped and sets `bad`
    /// (one u32) to at least `1 + index`; read it with
    /// [`Gpu::take_bad_index`]. Where several valid copies name the same
    /// destination row, the last wins: the CPU's sequential loop. One block
    /// per copy; each scans the later destination indices (O(n²) index
    /// reads, fine for the KV-cache writes and gathers it serves).
    pub fn copy_rows(
        &self,
        src: &impl DevicePtr<Bf16>,
        dst: &mut impl DevicePtrMut<Bf16>,
        width: usize,
        src_rows: &impl DevicePtr<u32>,
        dst_rows: &impl IndexArg,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        self.copy_rows_units(
            "copy_rows",
            1,
            src,
            dst,
            None::<(&CudaSlice<Bf16>, &mut CudaSlice<Bf16>)>,
            width,
            src_rows,
            dst_rows,
            bad,
        )
    }

    /// [`Gpu::copy_rows`] of two pairs of buffers (`src` → `dst`, `src2` →
    /// `dst2`, each pair of the same shapes) with the same row indices, in
    /// one launch: a KV cache's keys and values.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_rows2(
        &self,
        src: &impl DevicePtr<Bf16>,
        dst: &mut impl DevicePtrMut<Bf16>,
        src2: &impl DevicePtr<Bf16>,
        dst2: &mut impl DevicePtrMut<Bf16>,
        width: usize,
        src_rows: &impl DevicePtr<u32>,
        dst_rows: &impl IndexArg,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        self.copy_rows_units("copy_rows2", 1, src, dst, Some((src2, dst2)), width, src_rows, dst_rows, bad)
    }

    /// [`Gpu::copy_rows`] for rows of fp32.
    pub fn copy_rows_f32(
        &self,
        src: &impl DevicePtr<f32>,
        dst: &mut impl DevicePtrMut<f32>,
        width: usize,
        src_rows: &impl DevicePtr<u32>,
        dst_rows: &impl IndexArg,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        self.copy_rows_units(
            "copy_rows_f32",
            2,
            src,
            dst,
            None::<(&CudaSlice<f32>, &mut CudaSlice<f32>)>,
            width,
            src_rows,
            dst_rows,
            bad,
        )
    }

    /// The launch of both: rows of `width` elements of `units` 16-bit units each.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows_units<T, S2: DevicePtr<T>, D2: DevicePtrMut<T>>(
        &self,
        what: &str,
        units: usize,
        src: &impl DevicePtr<T>,
        dst: &mut impl DevicePtrMut<T>,
        pair2: Option<(&S2, &mut D2)>,
        width: usize,
        src_rows: &impl DevicePtr<u32>,
        dst_rows: &impl IndexArg,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        debug_assert_eq!(std::mem::size_of::<T>(), 2 * units);
        if width == 0 {
            bail!("{what}: rows of width 0");
        }
        if !src.len().is_multiple_of(width) || !dst.len().is_multiple_of(width) {
            bail!("{what}: src ({}) or dst ({}) is not made of rows of {width}", src.len(), dst.len());
        }
        let (src_count, dst_count) = (src.len() / width, dst.len() / width);
        let n = src_rows.len();
        check_len(&format!("{what}: dst_rows"), dst_rows.len(), n)?;
        check_len(&format!("{what}: bad"), bad.len(), 1)?;
        if let Some((s2, d2)) = &pair2 {
            check_len(&format!("{what}: src2"), s2.len(), src.len())?;
            check_len(&format!("{what}: dst2"), d2.len(), dst.len())?;
        }
        // Row counts and the row width in units are 32-bit in the kernel; one
        // block per copy (grid x ≤ 2^31 − 1).
        if src_count > u32::MAX as usize || dst_count > u32::MAX as usize || width * units > u32::MAX as usize {
            bail!("{what}: {src_count} / {dst_count} rows of {width} do not fit one launch");
        }
        let blocks = if pair2.is_some() { 2 * n } else { n };
        if blocks > i32::MAX as usize {
            bail!("{what}: {n} rows to copy do not fit one launch");
        }
        if n == 0 {
            return Ok(());
        }
        let (sp, _g1) = src.device_ptr(&self.stream);
        let (dp, _g2) = dst.device_ptr_mut(&self.stream);
        let (srp, _g3) = src_rows.device_ptr(&self.stream);
        let (drp, _g4) = dst_rows.device_ptr(&self.stream);
        let (bp, _g5) = bad.device_ptr_mut(&self.stream);
        let (s2p, d2p, _g6) = match pair2 {
            Some((s2, d2)) => {
                let (a, ga) = s2.device_ptr(&self.stream);
                let (b, gb) = d2.device_ptr_mut(&self.stream);
                (a, b, Some((ga, gb)))
            }
            None => (0, 0, None),
        };
        let p = CopyRowsParams {
            src: sp,
            dst: dp,
            src_rows: srp,
            dst_rows: drp,
            bad: bp,
            n: n as u32,
            width: (width * units) as u32,
            src_count: src_count as u32,
            dst_count: dst_count as u32,
            unique: dst_rows.host().is_some_and(|h| self.all_distinct(h)) as u32,
            src2: s2p,
            dst2: d2p,
        };
        // SAFETY: src (and src2) hold src_count rows and dst (and dst2)
        // dst_count rows of `width` elements (width·units 16-bit units),
        // src_rows and dst_rows n indices, bad one (checked above); the
        // kernel checks every row index against its buffer's row count
        // before touching the row.
        unsafe { self.stream.launch_builder(&self.k.rows.copy_rows).arg(&p).launch(grid_rows(blocks, ROW_THREADS)) }
            .map_err(|e| anyhow!("{what}: {e}"))?;
        Ok(())
    }

    /// Whether no two entries of `rows` are equal (so copy_rows need not
    /// look for a later copy into the same row). The answer for the last
    /// list is kept: the KV cache's writes of a step repeat for every layer.
    fn all_distinct(&self, rows: &[u32]) -> bool {
        let mut last = self.distinct_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((key, answer)) = last.as_ref() {
            if key.as_slice() == rows {
                return *answer;
            }
        }
        let mut sorted = rows.to_vec();
        sorted.sort_unstable();
        let answer = sorted.windows(2).all(|w| w[0] != w[1]);
        *last = Some((rows.to_vec(), answer));
        answer
    }

    /// Accumulates a bias gradient: `db[j] += Σ_rows dy[r, j]`, with
    /// `dy [rows, db.len()]`. Deterministic: the fp32 sum in the fixed
    /// ENGINE_COLSUM order of kernels/include/rows.h (chunks of 16 rows, then
    /// runs and spans of chunks, each in order), from `db[j]`, rounded once;
    /// a block of 256 threads per 8 columns.
    pub fn bias_grad(&self, dy: &impl DevicePtr<Bf16>, db: &mut impl DevicePtrMut<Bf16>) -> Result<()> {
        self.bias_grad_with(true, dy, db)
    }

    /// [`Gpu::bias_grad`] by the simple kernel: one thread per column adds
    /// the rows in order from `db[j]` (the CPU's order, bit for bit). For tests.
    pub fn bias_grad_reference(&self, dy: &impl DevicePtr<Bf16>, db: &mut impl DevicePtrMut<Bf16>) -> Result<()> {
        self.bias_grad_with(false, dy, db)
    }

    fn bias_grad_with(&self, fast: bool, dy: &impl DevicePtr<Bf16>, db: &mut impl DevicePtrMut<Bf16>) -> Result<()> {
        let cols = db.len();
        if cols == 0 {
            bail!("bias_grad: db is empty");
        }
        if !dy.len().is_multiple_of(cols) {
            bail!("bias_grad: dy ({} elements) is not made of rows of {cols}", dy.len());
        }
        let rows = dy.len() / cols;
        check_len("bias_grad: dy", dy.len(), rows * cols)?;
        let (a, _g1) = dy.device_ptr(&self.stream);
        let (b, _g2) = db.device_ptr_mut(&self.stream);
        let p = BiasGradParams { dy: a, db: b, rows: rows as u32, cols: cols as u32 };
        let (f, cfg) = if fast {
            // One block per 8 columns (cols ≤ u32::MAX, so the grid fits).
            (&self.k.rows.bias_grad, grid_rows(cols.div_ceil(8), ENGINE_COLSUM_CHUNKS))
        } else {
            (&self.k.rows.bias_grad_reference, grid_1d(cols))
        };
        // SAFETY: dy holds rows × cols elements, db cols (checked above); the
        // kernels check every column against cols and every row against rows,
        // and use 16-byte loads only when dy and its rows are 16-byte aligned.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(cfg) }.map_err(|e| anyhow!("bias_grad: {e}"))?;
        Ok(())
    }

    /// Reads the index flag that [`Gpu::rope`] and [`Gpu::copy_rows`] set
    /// (waiting for the stream), and zeroes it. `Some(i)`: some launch since
    /// the flag was last zeroed met index `i` (the largest such) outside its
    /// buffer and skipped that work; `None`: every index was in bounds. Any
    /// non-zero flag is an error, so one flag may be shared with kernels that
    /// only set it to 1 (the index then reads as 0 or as a mix).
    pub fn take_bad_index(&self, bad: &mut CudaSlice<u32>) -> Result<Option<u32>> {
        check_len("take_bad_index: bad", bad.len(), 1)?;
        let v = self.stream.clone_dtoh(bad).map_err(|e| anyhow!("take_bad_index: {e}"))?[0];
        if v == 0 {
            return Ok(None);
        }
        self.stream.memset_zeros(bad).map_err(|e| anyhow!("take_bad_index: {e}"))?;
        Ok(Some(v - 1))
    }
}

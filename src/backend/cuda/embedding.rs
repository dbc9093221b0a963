//! Token embedding on the GPU (kernels/embedding.cu): the gather and a
//! deterministic scatter-add. The kernels never touch the table at an id
//! outside it: they set a device error flag instead, which
//! [`Gpu::embedding_check`] reads back.

use super::params::{EmbeddingBwdParams, EmbeddingBwdSortedParams, EmbeddingFwdParams, ROW_THREADS};
use super::{check_len, grid_1d, Bf16, Gpu, Modules};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

super::params::device_repr!(EmbeddingFwdParams, EmbeddingBwdParams, EmbeddingBwdSortedParams);

pub struct Fns {
    fwd: CudaFunction,
    fwd8: CudaFunction,
    bwd_reference: CudaFunction,
    bwd_sorted: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns {
        fwd: m.get("embedding", "embedding_fwd")?,
        fwd8: m.get("embedding", "embedding_fwd8")?,
        bwd_reference: m.get("embedding", "embedding_bwd_reference")?,
        bwd_sorted: m.get("embedding", "embedding_bwd_sorted")?,
    })
}

/// The backward's plan for `ids` (see `EmbeddingBwdSortedParams` in
/// kernels/include/embedding.h): token indices stably sorted by id, then the
/// segment starts (one segment per distinct id, and the end), then each
/// segment's id. Returns the plan and the number of segments; fails on an
/// id outside a table of `vocab` rows.
fn embedding_bwd_plan(ids: &[u32], vocab: usize) -> Result<(Vec<u32>, usize)> {
    if let Some((t, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        bail!("embedding_bwd: token {t} has id {id}, outside the table ({vocab} rows)");
    }
    let n = ids.len();
    // (id, token) pairs in one u64 each: sorted, they give the tokens stably
    // sorted by id (each id keeps token order), faster than a stable sort.
    let mut keys: Vec<u64> = ids.iter().enumerate().map(|(t, &id)| (u64::from(id) << 32) | t as u64).collect();
    keys.sort_unstable();
    let order: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    let mut starts = Vec::new();
    let mut seg_ids: Vec<u32> = Vec::new();
    for (k, &t) in order.iter().enumerate() {
        let id = ids[t as usize];
        if seg_ids.last() != Some(&id) {
            starts.push(k as u32);
            seg_ids.push(id);
        }
    }
    starts.push(n as u32);
    let segments = seg_ids.len();
    let mut plan = order;
    plan.extend_from_slice(&starts);
    plan.extend_from_slice(&seg_ids);
    debug_assert_eq!(plan.len(), n + 2 * segments + 1);
    Ok((plan, segments))
}

/// `vocab` of a table of `len` elements in rows of `dim`.
fn table_rows(what: &str, len: usize, dim: usize) -> Result<usize> {
    if dim == 0 || !len.is_multiple_of(dim) {
        bail!("{what}: a table of {len} elements is not made of rows of {dim}");
    }
    check_len(what, len, len)?;
    Ok(len / dim)
}

fn check_flag(what: &str, error: &CudaSlice<u32>) -> Result<()> {
    if error.is_empty() {
        bail!("{what}: the error flag needs one u32");
    }
    Ok(())
}

impl Gpu {
    /// The length of the u32 plan buffer [`Gpu::embedding_bwd`] needs for
    /// `tokens` tokens (enough for any ids).
    pub fn embedding_bwd_plan_len(tokens: usize) -> usize {
        3 * tokens + 1
    }

    /// `out[t] = table[ids[t]]`, rows of `dim`. A row whose id is outside the
    /// table is written with zeros and sets `error[0]` to 1 (see
    /// [`Gpu::embedding_check`]); the launch does not wait for the stream.
    pub fn embedding_fwd(
        &self,
        table: &impl DevicePtr<Bf16>,
        ids: &impl DevicePtr<u32>,
        dim: usize,
        out: &mut impl DevicePtrMut<Bf16>,
        error: &mut CudaSlice<u32>,
    ) -> Result<()> {
        self.embedding_fwd_with(true, table, ids, dim, out, error)
    }

    /// [`Gpu::embedding_fwd`] by the simple kernel (one thread per element):
    /// the obviously correct version, for tests.
    pub fn embedding_fwd_reference(
        &self,
        table: &impl DevicePtr<Bf16>,
        ids: &impl DevicePtr<u32>,
        dim: usize,
        out: &mut impl DevicePtrMut<Bf16>,
        error: &mut CudaSlice<u32>,
    ) -> Result<()> {
        self.embedding_fwd_with(false, table, ids, dim, out, error)
    }

    fn embedding_fwd_with(
        &self,
        fast: bool,
        table: &impl DevicePtr<Bf16>,
        ids: &impl DevicePtr<u32>,
        dim: usize,
        out: &mut impl DevicePtrMut<Bf16>,
        error: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let vocab = table_rows("embedding_fwd: table", table.len(), dim)?;
        let tokens = ids.len();
        check_len("embedding_fwd: out", out.len(), tokens * dim)?;
        check_flag("embedding_fwd", error)?;
        if tokens == 0 {
            return Ok(());
        }
        let (a, _g1) = table.device_ptr(&self.stream);
        let (b, _g2) = ids.device_ptr(&self.stream);
        let (c, _g3) = out.device_ptr_mut(&self.stream);
        let (d, _g4) = error.device_ptr_mut(&self.stream);
        let p = EmbeddingFwdParams {
            table: a,
            ids: b,
            out: c,
            error: d,
            tokens: tokens as u32,
            vocab: vocab as u32,
            dim: dim as u32,
        };
        let (f, cfg) = if fast {
            (&self.k.embedding.fwd8, grid_1d(tokens * dim.div_ceil(8)))
        } else {
            (&self.k.embedding.fwd, grid_1d(tokens * dim))
        };
        // SAFETY: out holds tokens × dim (checked, ≤ u32::MAX), ids holds
        // tokens, table vocab × dim; the kernels check every id against vocab,
        // and embedding_fwd8 uses 16-byte accesses only when dim % 8 = 0 and
        // table and out are 16-byte aligned.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(cfg) }.map_err(|e| anyhow!("embedding_fwd: {e}"))?;
        Ok(())
    }

    /// `dtable[ids[t]] += dout[t]`, deterministic: the plan is built on the
    /// host from `ids` (the same ids as the forward's, on the host) and
    /// uploaded into `plan` (at least [`Gpu::embedding_bwd_plan_len`]`(tokens)`
    /// u32); each distinct id's row is then summed by its own threads in
    /// fp32, starting from the stored value and adding its tokens in token
    /// order, and rounded to bf16 once. Fails, before any launch, on an id
    /// outside the table; `error` catches a bad plan (it cannot happen).
    pub fn embedding_bwd(
        &self,
        dout: &impl DevicePtr<Bf16>,
        ids: &[u32],
        dim: usize,
        dtable: &mut impl DevicePtrMut<Bf16>,
        plan: &mut CudaSlice<u32>,
        error: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let vocab = table_rows("embedding_bwd: dtable", dtable.len(), dim)?;
        let tokens = ids.len();
        check_len("embedding_bwd: dout", dout.len(), tokens * dim)?;
        check_flag("embedding_bwd", error)?;
        if plan.len() < Self::embedding_bwd_plan_len(tokens) {
            bail!("embedding_bwd: plan of {} u32, needs {}", plan.len(), Self::embedding_bwd_plan_len(tokens));
        }
        let (host_plan, segments) = embedding_bwd_plan(ids, vocab)?;
        if segments == 0 {
            return Ok(());
        }
        let col_blocks = dim.div_ceil(ROW_THREADS as usize);
        if segments > i32::MAX as usize || col_blocks > 65535 {
            bail!("embedding_bwd: {segments} ids × {dim} columns exceed one launch's grid");
        }
        self.stream
            .memcpy_htod(&host_plan, &mut plan.slice_mut(0..host_plan.len()))
            .map_err(|e| anyhow!("embedding_bwd: plan upload: {e}"))?;
        let (a, _g1) = dout.device_ptr(&self.stream);
        let (b, _g2) = plan.device_ptr(&self.stream);
        let (c, _g3) = dtable.device_ptr_mut(&self.stream);
        let (d, _g4) = error.device_ptr_mut(&self.stream);
        let p = EmbeddingBwdSortedParams {
            dout: a,
            plan: b,
            dtable: c,
            error: d,
            tokens: tokens as u32,
            vocab: vocab as u32,
            dim: dim as u32,
            segments: segments as u32,
        };
        let cfg = LaunchConfig {
            grid_dim: (segments as u32, col_blocks as u32, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: dout holds tokens × dim, dtable vocab × dim, plan
        // tokens + 2·segments + 1 (uploaded above); the kernel checks every
        // plan entry against tokens and vocab.
        unsafe { self.stream.launch_builder(&self.k.embedding.bwd_sorted).arg(&p).launch(cfg) }
            .map_err(|e| anyhow!("embedding_bwd_sorted: {e}"))?;
        Ok(())
    }

    /// The same sums as [`Gpu::embedding_bwd`] by the obviously correct
    /// kernel: one thread per column, O(tokens²) id reads, no host work. For
    /// tests. Ids outside the table are skipped and set `error[0]`.
    pub fn embedding_bwd_reference(
        &self,
        dout: &impl DevicePtr<Bf16>,
        ids: &impl DevicePtr<u32>,
        dim: usize,
        dtable: &mut impl DevicePtrMut<Bf16>,
        error: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let vocab = table_rows("embedding_bwd_reference: dtable", dtable.len(), dim)?;
        let tokens = ids.len();
        check_len("embedding_bwd_reference: dout", dout.len(), tokens * dim)?;
        check_flag("embedding_bwd_reference", error)?;
        if tokens == 0 {
            return Ok(());
        }
        let (a, _g1) = dout.device_ptr(&self.stream);
        let (b, _g2) = ids.device_ptr(&self.stream);
        let (c, _g3) = dtable.device_ptr_mut(&self.stream);
        let (d, _g4) = error.device_ptr_mut(&self.stream);
        let p = EmbeddingBwdParams {
            dout: a,
            ids: b,
            dtable: c,
            error: d,
            tokens: tokens as u32,
            vocab: vocab as u32,
            dim: dim as u32,
        };
        // SAFETY: dout holds tokens × dim, ids tokens, dtable vocab × dim; the
        // kernel checks every id against vocab and every column against dim.
        unsafe { self.stream.launch_builder(&self.k.embedding.bwd_reference).arg(&p).launch(grid_1d(dim)) }
            .map_err(|e| anyhow!("embedding_bwd_reference: {e}"))?;
        Ok(())
    }

    /// Fails if an embedding kernel saw an id outside its table since the
    /// flag was last cleared, and clears it. Waits for the stream.
    pub fn embedding_check(&self, error: &mut CudaSlice<u32>) -> Result<()> {
        check_flag("embedding_check", error)?;
        let flag = self.stream.clone_dtoh(&error.slice(0..1)).map_err(|e| anyhow!("embedding_check: {e}"))?[0];
        if flag != 0 {
            self.stream.memset_zeros(error).map_err(|e| anyhow!("embedding_check: clear: {e}"))?;
            bail!("embedding: a token id outside the embedding table");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::embedding_bwd_plan;
    use half::bf16;

    #[test]
    fn the_plan_groups_tokens_by_id_in_token_order() {
        let ids = [5u32, 2, 5, 0, 2, 5];
        let (plan, segments) = embedding_bwd_plan(&ids, 6).unwrap();
        assert_eq!(segments, 3);
        // order, then starts (segments + 1), then the segments' ids.
        assert_eq!(plan, [3, 1, 4, 0, 2, 5, 0, 1, 3, 6, 0, 2, 5]);
        assert!(embedding_bwd_plan(&ids, 5).is_err(), "id 5 is outside a table of 5 rows");
        assert_eq!(embedding_bwd_plan(&[], 5).unwrap(), (vec![0], 0));
    }

    /// embedding_bwd_sorted's loops, on the host, against the CPU reference:
    /// checks the plan's layout as the kernel reads it.
    #[test]
    fn the_sorted_kernel_logic_matches_the_cpu() {
        let (vocab, dim) = (23usize, 5usize);
        let ids: Vec<u32> = (0..200u32).map(|t| if t % 4 == 0 { (t * 7) % 23 } else { t % 3 }).collect();
        let tokens = ids.len();
        let val =
            |i: usize, s: u32| bf16::from_f32((((i as u32).wrapping_mul(2654435761) ^ s) % 1000) as f32 / 500.0 - 1.0);
        let dout: Vec<bf16> = (0..tokens * dim).map(|i| val(i, 1)).collect();
        let table: Vec<bf16> = (0..vocab * dim).map(|i| val(i, 2)).collect();

        let mut want: Vec<f32> = table.iter().map(|v| v.to_f32()).collect();
        let dout32: Vec<f32> = dout.iter().map(|v| v.to_f32()).collect();
        crate::backend::cpu::elementwise::embedding_bwd(&dout32, &ids, dim, &mut want);

        let (plan, segments) = embedding_bwd_plan(&ids, vocab).unwrap();
        let mut got = table.clone();
        let (order, starts) = plan.split_at(tokens);
        let seg_ids = &starts[segments + 1..];
        for s in 0..segments {
            for j in 0..dim {
                let id = seg_ids[s] as usize;
                let (k0, k1) = (starts[s] as usize, starts[s + 1] as usize);
                assert!(id < vocab && k0 <= k1 && k1 <= tokens);
                let at = id * dim + j;
                let mut acc = got[at].to_f32();
                for &t in &order[k0..k1] {
                    acc += dout[t as usize * dim + j].to_f32();
                }
                got[at] = bf16::from_f32(acc);
            }
        }
        let want: Vec<bf16> = want.iter().map(|&v| bf16::from_f32(v)).collect();
        assert_eq!(got, want);
    }
}

//! Run folders and resumable checkpoints. A checkpoint is a Hugging Face
//! model folder (loadable by transformers and by `engine`) plus
//! `optimizer.safetensors` (f32 parameters and AdamW moments, so a resume is
//! exact even when the model is saved in bf16) and `trainer_state.json`. It is
//! written under a temporary name and renamed, so a crash never leaves a
//! half-written checkpoint; `keep_last` prunes the oldest.

use crate::backend::{Backend, Span};
use crate::model::checkpoint::{save, write_atomic, SaveDtype};
use crate::model::Model;
use crate::optim::AdamW;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The weights as the optimizer holds them, on the host: the fp32 master
/// weights where the backend keeps them (CUDA), else the parameters.
pub fn host_params<B: Backend>(be: &B, model: &Model<B>, opt: &AdamW<B>) -> Vec<f32> {
    let all = Span::new(0, model.layout.total);
    be.read(B::view(opt.master.as_ref().unwrap_or(&model.params), all))
}

/// Sets the weights from the host: the parameters, and the master weights
/// where the optimizer keeps them.
pub fn set_params<B: Backend>(be: &B, model: &mut Model<B>, opt: &mut AdamW<B>, host: &[f32]) {
    let all = Span::new(0, model.layout.total);
    be.write(host, B::view_mut(&mut model.params, all));
    if let Some(m) = opt.master.as_mut() {
        be.write(host, B::view_mut(m, all));
    }
}

/// The files of a checkpoint, written into `tmp`.
#[allow(clippy::too_many_arguments)]
fn write_checkpoint_files<B: Backend>(
    be: &B,
    tmp: &Path,
    model_src: &Path,
    model: &Model<B>,
    opt: &AdamW<B>,
    state: &serde_json::Value,
    step: u64,
    dtype: SaveDtype,
) -> Result<()> {
    let all = Span::new(0, model.layout.total);
    let params = host_params(be, model, opt);
    let (m, v) = (be.read(B::view(&opt.m, all)), be.read(B::view(&opt.v, all)));
    save(tmp, model_src, &model.layout, &params, dtype, 4 << 30)?;
    // Parameters and moments under the parameters' names.
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for e in &model.layout.entries {
        let s = e.span.off..e.span.end();
        tensors.push((format!("param.{}", e.name), e.shape.clone(), f32_bytes(&params[s.clone()])));
        tensors.push((format!("m.{}", e.name), e.shape.clone(), f32_bytes(&m[s.clone()])));
        tensors.push((format!("v.{}", e.name), e.shape.clone(), f32_bytes(&v[s])));
    }
    let views = tensors
        .iter()
        .map(|(n, shape, b)| Ok((n.clone(), TensorView::new(Dtype::F32, shape.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
    write_atomic(&tmp.join(OPTIMIZER_FILE), &safetensors::serialize(views, None)?)?;
    let mut state = state.clone();
    state["step"] = step.into();
    state["adam_step"] = opt.step.into();
    write_atomic(&tmp.join(STATE_FILE), serde_json::to_string_pretty(&state)?.as_bytes())?;
    Ok(())
}

/// Saves `checkpoint-{step}` in `run_dir`; returns its path.
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint<B: Backend>(
    be: &B,
    run_dir: &Path,
    model_src: &Path,
    model: &Model<B>,
    opt: &AdamW<B>,
    state: &serde_json::Value,
    step: u64,
    dtype: SaveDtype,
    keep_last: usize,
) -> Result<PathBuf> {
    let name = format!("checkpoint-{step}");
    let final_dir = run_dir.join(&name);
    let tmp = run_dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: cannot remove", tmp.display()))?;
    }
    // On failure (a full disk, say) the partial folder goes; nothing else was touched.
    if let Err(e) = write_checkpoint_files(be, &tmp, model_src, model, opt, state, step, dtype) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).with_context(|| format!("{}: cannot replace", final_dir.display()))?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("{}: cannot rename into place", final_dir.display()))?;
    prune(run_dir, keep_last)?;
    Ok(final_dir)
}

/// Checkpoint folders of a run, oldest first.
pub fn checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(run_dir).with_context(|| format!("{}: cannot list", run_dir.display()))? {
        let e = e?;
        if let Some(step) =
            e.file_name().to_str().and_then(|n| n.strip_prefix("checkpoint-")).and_then(|s| s.parse().ok())
        {
            out.push((step, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn prune(run_dir: &Path, keep_last: usize) -> Result<()> {
    if keep_last == 0 {
        return Ok(());
    }
    let all = checkpoints(run_dir)?;
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep_last)) {
        std::fs::remove_dir_all(dir).with_context(|| format!("{}: cannot remove", dir.display()))?;
    }
    Ok(())
}

/// Restores parameters, moments and the trainer state from a checkpoint
/// into `model` and `opt` (which must have the checkpoint's layout).
pub fn load_checkpoint<B: Backend>(
    be: &B,
    dir: &Path,
    model: &mut Model<B>,
    opt: &mut AdamW<B>,
) -> Result<serde_json::Value> {
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("{}: cannot read (is this a checkpoint folder?)", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let total = model.layout.total;
    let (mut p, mut m, mut v) = (vec![0f32; total], vec![0f32; total], vec![0f32; total]);
    for e in &model.layout.entries {
        let s = e.span.off..e.span.end();
        for (prefix, dst) in [("param", &mut p[s.clone()]), ("m", &mut m[s.clone()]), ("v", &mut v[s.clone()])] {
            let name = format!("{prefix}.{}", e.name);
            let t = st.tensor(&name).map_err(|_| anyhow!("{}: tensor `{name}` is missing", path.display()))?;
            if t.dtype() != Dtype::F32 || t.shape() != e.shape.as_slice() {
                bail!("{}: tensor `{name}` is not f32 of shape {:?}", path.display(), e.shape);
            }
            for (d, b) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
    let all = Span::new(0, total);
    be.write(&p, B::view_mut(&mut model.params, all));
    if be.keeps_master() {
        // The exact fp32 weights, not the rounded parameters.
        let mut master = be.alloc_f32(total);
        be.write(&p, B::view_mut(&mut master, all));
        opt.master = Some(master);
    }
    be.write(&m, B::view_mut(&mut opt.m, all));
    be.write(&v, B::view_mut(&mut opt.v, all));
    let spath = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&spath).with_context(|| format!("{}: cannot read", spath.display()))?;
    let state: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", spath.display()))?;
    opt.step = state["adam_step"].as_u64().ok_or_else(|| anyhow!("{}: missing `adam_step`", spath.display()))?;
    Ok(state)
}

//! Hugging Face checkpoints: safetensors in (single file or sharded, f32 /
//! bf16 / f16, memory-mapped, each file read once) and out (same names, so
//! `transformers` loads the result; written to a temporary name and renamed).

use super::config::ModelConfig;
use super::params::ParamLayout;
use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors files of a model folder, in the order to read them.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("{}: cannot read", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: missing key `weight_map`", index.display()))?;
        let mut files: Vec<String> = Vec::new();
        for (name, f) in map {
            let f =
                f.as_str().ok_or_else(|| anyhow!("{}: `weight_map.{name}` should be a file name", index.display()))?;
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
        files.sort();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!("{}: no {SINGLE_FILE} or {INDEX_FILE} in the model folder", dir.display())
}

struct Mapped {
    path: PathBuf,
    map: memmap2::Mmap,
}

fn map_file(path: &Path) -> Result<Mapped> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: the mapping is read-only and lives only while we copy out of it;
    // a checkpoint changed underneath us by another process is not supported.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
    Ok(Mapped { path: path.to_path_buf(), map })
}

fn parse<'a>(m: &'a Mapped) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(&m.map)
        .map_err(|e| anyhow!("{}: not a valid safetensors file (truncated or corrupt?): {e}", m.path.display()))
}

/// Converts one tensor to f32 into `dst`.
fn to_f32(view: &TensorView, dst: &mut [f32], path: &Path, name: &str) -> Result<()> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::BF16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        Dtype::F16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        other => bail!("{}: tensor `{name}` has dtype {other:?} (supported: F32, BF16, F16)", path.display()),
    }
    Ok(())
}

/// Tensors a checkpoint may carry that this runtime derives itself.
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

/// Loads every parameter of `layout` from the model folder into a host f32
/// buffer laid out as `layout`. Returns it with the dtypes found on disk.
pub fn load_params(dir: &Path, cfg: &ModelConfig, layout: &ParamLayout) -> Result<(Vec<f32>, Vec<String>)> {
    let files = weight_files(dir)?;
    let mut params = vec![0.0f32; layout.total];
    let mut loaded = vec![false; layout.entries.len()];
    let by_name: HashMap<&str, usize> = layout.entries.iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect();
    let mut dtypes: Vec<String> = Vec::new();
    for path in &files {
        let mapped = map_file(path)?;
        let st = parse(&mapped)?;
        for (name, view) in st.iter() {
            let Some(&i) = by_name.get(name) else {
                if ignorable(name, cfg) {
                    continue;
                }
                bail!("{}: unexpected tensor `{name}` for a {} model", path.display(), cfg.arch.hf_name());
            };
            let e = &layout.entries[i];
            if loaded[i] {
                bail!("{}: tensor `{name}` appears in more than one file", path.display());
            }
            if view.shape() != e.shape.as_slice() {
                bail!("{}: tensor `{name}` has shape {:?}, expected {:?}", path.display(), view.shape(), e.shape);
            }
            let dtype = format!("{:?}", view.dtype());
            if !dtypes.contains(&dtype) {
                dtypes.push(dtype);
            }
            to_f32(&view, &mut params[e.span.off..e.span.end()], path, name)?;
            loaded[i] = true;
        }
    }
    if let Some(i) = loaded.iter().position(|l| !l) {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        bail!("{}: tensor `{}` is missing (looked in {})", dir.display(), layout.entries[i].name, names.join(", "));
    }
    Ok((params, dtypes))
}

/// Dtypes and element count of the checkpoint, from the headers only.
pub fn inspect(dir: &Path) -> Result<(Vec<String>, usize)> {
    let mut dtypes = Vec::new();
    let mut count = 0usize;
    for path in weight_files(dir)? {
        let mapped = map_file(&path)?;
        let (_, meta) = SafeTensors::read_metadata(&mapped.map)
            .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        for info in meta.tensors().values() {
            let d = format!("{:?}", info.dtype);
            if !dtypes.contains(&d) {
                dtypes.push(d);
            }
            count += info.shape.iter().product::<usize>();
        }
    }
    Ok((dtypes, count))
}

/// On-disk dtype for saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    BF16,
}

impl SaveDtype {
    fn bytes(self) -> usize {
        match self {
            SaveDtype::F32 => 4,
            SaveDtype::BF16 => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::BF16 => "bfloat16",
        }
    }
}

fn encode(values: &[f32], dtype: SaveDtype) -> Vec<u8> {
    match dtype {
        SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        SaveDtype::BF16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp-write");
    let tmp = path.with_file_name(name);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Saves `params` (laid out as `layout`) into `out_dir` as a Hugging Face
/// checkpoint: safetensors shards of at most `max_shard_bytes` (with an
/// index when there are several), `config.json` with the dtype updated, and
/// the tokenizer / generation files copied from `src_dir`. Every file is
/// written under a temporary name and renamed, so a crash never leaves a
/// half-written tensor file behind.
pub fn save(
    out_dir: &Path,
    src_dir: &Path,
    layout: &ParamLayout,
    params: &[f32],
    dtype: SaveDtype,
    max_shard_bytes: usize,
) -> Result<()> {
    assert_eq!(params.len(), layout.total, "save: parameter buffer does not match the layout");
    std::fs::create_dir_all(out_dir).with_context(|| format!("{}: cannot create", out_dir.display()))?;
    // Group tensors into shards in layout order.
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0usize;
    for (i, e) in layout.entries.iter().enumerate() {
        let bytes = e.span.len * dtype.bytes();
        if size > 0 && size + bytes > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().unwrap().push(i);
        size += bytes;
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (s, members) in shards.iter().enumerate() {
        let file = if n == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", s + 1) };
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = members
            .iter()
            .map(|&i| {
                let e = &layout.entries[i];
                (e.name.clone(), e.shape.clone(), encode(&params[e.span.off..e.span.end()], dtype))
            })
            .collect();
        let st_dtype = match dtype {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::BF16 => Dtype::BF16,
        };
        let views = encoded
            .iter()
            .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(st_dtype, shape.clone(), bytes)?)))
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(meta))?;
        write_atomic(&out_dir.join(&file), &bytes)?;
        for &i in members {
            weight_map.insert(layout.entries[i].name.clone(), file.clone());
        }
    }
    if n > 1 {
        let total: usize = layout.entries.iter().map(|e| e.span.len * dtype.bytes()).sum();
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(&out_dir.join(INDEX_FILE), serde_json::to_string_pretty(&index)?.as_bytes())?;
    } else if out_dir.join(INDEX_FILE).exists() {
        std::fs::remove_file(out_dir.join(INDEX_FILE))?;
    }
    save_config(out_dir, src_dir, dtype)?;
    for f in ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        let src = src_dir.join(f);
        if src.exists() && src_dir != out_dir {
            let bytes = std::fs::read(&src).with_context(|| format!("{}: cannot read", src.display()))?;
            write_atomic(&out_dir.join(f), &bytes)?;
        }
    }
    Ok(())
}

fn save_config(out_dir: &Path, src_dir: &Path, dtype: SaveDtype) -> Result<()> {
    let src = src_dir.join("config.json");
    let text = std::fs::read_to_string(&src).with_context(|| format!("{}: cannot read", src.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", src.display()))?;
    if let Some(m) = v.as_object_mut() {
        // Keep whichever dtype key the source used; write `dtype` if neither.
        let key = if m.contains_key("torch_dtype") { "torch_dtype" } else { "dtype" };
        m.insert(key.to_string(), dtype.name().into());
    }
    write_atomic(&out_dir.join("config.json"), serde_json::to_string_pretty(&v)?.as_bytes())
}

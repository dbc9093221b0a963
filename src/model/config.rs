//! Model configuration from a Hugging Face `config.json`.
//!
//! Two forms exist in the wild and both are accepted: the legacy one that hub
//! checkpoints carry (`rope_theta` and `rope_scaling` at the top level,
//! `torch_dtype`) and the one recent transformers writes (`rope_parameters`,
//! `dtype`). Anything this runtime does not implement is an error naming the
//! key, never a silent approximation.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn hf_name(&self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k, v projections (Qwen2).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The dtype the checkpoint declares (`torch_dtype` / `dtype`), if any.
    pub dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Reads one key, with an error that names the file and the key.
struct Keys<'a> {
    file: &'a str,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| anyhow!("{}: missing key `{key}`", self.file))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| anyhow!("{}: key `{key}` should be a non-negative integer, found {v}", self.file)),
        }
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| anyhow!("{}: key `{key}` should be a number, found {v}", self.file))
            }
        }
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| anyhow!("{}: key `{key}` should be true or false, found {v}", self.file)),
        }
    }
    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_str().map(Some).ok_or_else(|| anyhow!("{}: key `{key}` should be a string, found {v}", self.file))
            }
        }
    }
}

/// `eos_token_id` may be one id or a list (instruct models list several).
pub fn token_ids(v: Option<&Value>, file: &str, key: &str) -> Result<Vec<u32>> {
    let bad = || anyhow!("{file}: key `{key}` should be a token id or a list of them");
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Number(n)) => Ok(vec![n.as_u64().ok_or_else(bad)? as u32]),
        Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().map(|i| i as u32).ok_or_else(bad)).collect(),
        Some(_) => Err(bad()),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json`; `file` names it in errors.
    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| anyhow!("{file}: invalid JSON: {e}"))?;
        let map = value.as_object().ok_or_else(|| anyhow!("{file}: expected a JSON object"))?;
        let k = Keys { file, map };

        let arch = parse_arch(&k)?;
        if let Some(act) = k.opt_str("hidden_act")? {
            if act != "silu" {
                bail!("{file}: key `hidden_act`: unsupported activation `{act}` (supported: silu)");
            }
        }
        if k.opt_bool("mlp_bias")? == Some(true) {
            bail!("{file}: key `mlp_bias`: MLP biases are not supported");
        }
        check_no_sliding_window(&k)?;

        let hidden_size = k.usize("hidden_size")?;
        let n_heads = k.usize("num_attention_heads")?;
        let n_kv_heads = k.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            bail!("{file}: key `num_key_value_heads`: {n_kv_heads} does not divide num_attention_heads {n_heads}");
        }
        let head_dim = match k.opt_usize("head_dim")? {
            Some(d) => d,
            None if hidden_size % n_heads == 0 => hidden_size / n_heads,
            None => bail!(
                "{file}: key `head_dim` missing and hidden_size {hidden_size} is not a multiple of {n_heads} heads"
            ),
        };
        if head_dim % 2 != 0 {
            bail!("{file}: key `head_dim`: RoPE needs an even head dimension, found {head_dim}");
        }
        let (rope_theta, rope_scaling) = parse_rope(&k)?;
        // Qwen2 always has q/k/v biases (and no key for them). In Llama and
        // Qwen3, `attention_bias` also puts a bias on o_proj, which this
        // runtime does not implement yet.
        let qkv_bias = arch == Arch::Qwen2;
        if arch != Arch::Qwen2 && k.opt_bool("attention_bias")? == Some(true) {
            bail!("{file}: key `attention_bias`: attention biases are not supported for {}", arch.hf_name());
        }
        let dtype = match k.opt_str("dtype")? {
            Some(d) => Some(d.to_string()),
            None => k.opt_str("torch_dtype")?.map(str::to_string),
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: k.usize("vocab_size")?,
            hidden_size,
            intermediate_size: k.usize("intermediate_size")?,
            n_layers: k.usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: k.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: k.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            // transformers' Llama / Qwen2 / Qwen3 configs all default to untied.
            tie_word_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            qk_norm: arch == Arch::Qwen3,
            dtype,
            bos_token_id: k.opt_usize("bos_token_id")?.map(|b| b as u32),
            eos_token_ids: token_ids(k.get("eos_token_id"), file, "eos_token_id")?,
        };
        for (key, v) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("num_hidden_layers", cfg.n_layers),
        ] {
            if v == 0 {
                bail!("{file}: key `{key}` must be positive");
            }
        }
        Ok(cfg)
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// RoPE inverse frequencies (length `head_dim / 2`), in f64, with the
    /// configured scaling applied, exactly as transformers computes them.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d)).collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

fn parse_arch(k: &Keys) -> Result<Arch> {
    let file = k.file;
    if let Some(archs) = k.get("architectures") {
        let name = archs
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{file}: key `architectures` should be a list of names"))?;
        return match name {
            "LlamaForCausalLM" => Ok(Arch::Llama),
            "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            "Qwen3ForCausalLM" => Ok(Arch::Qwen3),
            other => bail!(
                "{file}: key `architectures`: unsupported architecture `{other}` \
                 (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)"
            ),
        };
    }
    match k.opt_str("model_type")? {
        Some("llama") => Ok(Arch::Llama),
        Some("qwen2") => Ok(Arch::Qwen2),
        Some("qwen3") => Ok(Arch::Qwen3),
        Some(other) => {
            bail!("{file}: key `model_type`: unsupported model type `{other}` (supported: llama, qwen2, qwen3)")
        }
        None => bail!("{file}: missing key `architectures` (and no `model_type`)"),
    }
}

/// Sliding-window attention is an error only when it is switched on: Qwen2.5
/// configs carry a `sliding_window` value with `use_sliding_window: false`.
fn check_no_sliding_window(k: &Keys) -> Result<()> {
    let file = k.file;
    if k.opt_bool("use_sliding_window")? == Some(true) {
        bail!("{file}: key `use_sliding_window`: sliding-window attention is not supported");
    }
    if let Some(types) = k.get("layer_types") {
        let types = types.as_array().ok_or_else(|| anyhow!("{file}: key `layer_types` should be a list"))?;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                Some("full_attention") => {}
                Some(other) => {
                    bail!("{file}: key `layer_types[{i}]`: `{other}` is not supported (only full_attention)")
                }
                None => bail!("{file}: key `layer_types[{i}]` should be a string"),
            }
        }
    }
    Ok(())
}

/// Returns (theta, scaling) from either `rope_parameters` (new form) or
/// `rope_theta` + `rope_scaling` (legacy form).
fn parse_rope(k: &Keys) -> Result<(f64, RopeScaling)> {
    let file = k.file;
    let (params, prefix) = if let Some(p) = k.get("rope_parameters") {
        let p = p.as_object().ok_or_else(|| anyhow!("{file}: key `rope_parameters` should be an object"))?;
        (Some(p), "rope_parameters")
    } else if let Some(p) = k.get("rope_scaling") {
        let p = p.as_object().ok_or_else(|| anyhow!("{file}: key `rope_scaling` should be an object or null"))?;
        (Some(p), "rope_scaling")
    } else {
        (None, "")
    };
    let sub = params.map(|map| Keys { file, map });
    let theta = match sub.as_ref().and_then(|s| s.get("rope_theta")) {
        Some(_) => sub.as_ref().unwrap().opt_f64("rope_theta")?,
        None => k.opt_f64("rope_theta")?,
    }
    .unwrap_or(10000.0);
    let Some(s) = sub else {
        return Ok((theta, RopeScaling::None));
    };
    let rope_type = match s.opt_str("rope_type")? {
        Some(t) => t,
        None => s.opt_str("type")?.unwrap_or("default"),
    };
    let need = |key: &str| -> Result<f64> {
        s.opt_f64(key)?.ok_or_else(|| anyhow!("{file}: missing key `{prefix}.{key}` for rope type `{rope_type}`"))
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => bail!(
            "{file}: key `{prefix}.rope_type`: unsupported rope type `{other}` (supported: default, linear, llama3)"
        ),
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "vocab_size": 100, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "sliding_window": 4096, "use_sliding_window": false, "eos_token_id": [5, 6]
        })
    }

    fn parse(v: &Value) -> Result<ModelConfig> {
        ModelConfig::from_json_str(&v.to_string(), "config.json")
    }

    #[test]
    fn qwen2_defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!((c.head_dim, c.qkv_bias, c.qk_norm, c.tie_word_embeddings), (8, true, false, false));
        assert_eq!(c.eos_token_ids, vec![5, 6]);
        assert_eq!(c.rope_theta, 1e6);
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = base();
        v["use_sliding_window"] = true.into();
        assert!(parse(&v).unwrap_err().to_string().contains("`use_sliding_window`"));
        let mut v = base();
        v["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
        assert!(parse(&v).unwrap_err().to_string().contains("`layer_types[1]`"));
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        assert!(parse(&v).unwrap_err().to_string().contains("`rope_scaling.rope_type`"));
        let mut v = base();
        v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        v["attention_bias"] = true.into();
        assert!(parse(&v).unwrap_err().to_string().contains("`attention_bias`"));
        let mut v = base();
        v["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        assert!(parse(&v).unwrap_err().to_string().contains("`architectures`"));
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(&v).unwrap_err().to_string().contains("missing key `hidden_size`"));
    }

    #[test]
    fn both_rope_forms_agree() {
        let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut legacy = base();
        legacy["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        legacy["rope_theta"] = 500000.0.into();
        legacy["rope_scaling"] = scaling.clone();
        let mut new = legacy.clone();
        let m = new.as_object_mut().unwrap();
        m.remove("rope_theta");
        m.remove("rope_scaling");
        let mut params = scaling;
        params["rope_theta"] = 500000.0.into();
        m.insert("rope_parameters".into(), params);
        let (a, b) = (parse(&legacy).unwrap(), parse(&new).unwrap());
        assert_eq!(a, b);
        assert!(matches!(a.rope_scaling, RopeScaling::Llama3 { .. }));
        assert_eq!(a.rope_theta, 500000.0);
    }

    #[test]
    fn llama3_scaling_closed_form() {
        // head_dim 16, theta 10000: wavelengths 2π·10000^(i/8). With an original
        // context of 64, low/high factors 1/4: wavelength > 64 is divided by
        // the factor, < 16 is kept, in between is interpolated.
        let mut v = base();
        v["head_dim"] = 16.into();
        v["rope_theta"] = 10000.0.into();
        v["rope_scaling"] = serde_json::json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let c = parse(&v).unwrap();
        let f = c.rope_inv_freq();
        let raw = |i: usize| 1.0 / 10000f64.powf(i as f64 / 8.0);
        assert_eq!(f[0], raw(0)); // wavelength 6.28 < 16
        assert!((f[5] - raw(5) / 8.0).abs() < 1e-18); // wavelength 1987 > 64
        let wl = 2.0 * std::f64::consts::PI / raw(1); // 19.9: interpolated
        let s = (64.0 / wl - 1.0) / 3.0;
        assert!((f[1] - ((1.0 - s) * raw(1) / 8.0 + s * raw(1))).abs() < 1e-15);
    }
}

//! The model: configuration, parameter layout, checkpoints, activation
//! arena, and the transformer's forward and backward.

pub mod activations;
pub mod checkpoint;
pub mod config;
pub mod head;
pub mod kv_cache;
pub mod params;
pub mod rope;
pub mod transformer;

pub use activations::Activations;
pub use config::{Arch, ModelConfig};
pub use kv_cache::{CacheShape, KvCache};
pub use params::ParamLayout;
pub use transformer::Attend;

use crate::backend::{Backend, Span};
use anyhow::{bail, Result};
use std::path::Path;

/// A decoder-only transformer's parameters on a backend, in one buffer.
pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    pub params: B::Buf,
}

/// What [`Model::load`] found on disk.
pub struct LoadInfo {
    pub dtypes: Vec<String>,
}

impl<B: Backend> Model<B> {
    /// A model from parameters already laid out as `ParamLayout::new(&cfg)`.
    pub fn from_host(be: &B, cfg: ModelConfig, host: Vec<f32>) -> Self {
        let layout = ParamLayout::new(&cfg);
        assert_eq!(host.len(), layout.total, "from_host: parameter count");
        let params = be.upload(host);
        Model { cfg, layout, params }
    }

    /// Loads `config.json` and the safetensors weights of a Hugging Face model folder.
    pub fn load(be: &B, dir: &Path) -> Result<(Self, LoadInfo)> {
        if !dir.is_dir() {
            bail!("{}: model folder not found", dir.display());
        }
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let layout = ParamLayout::new(&cfg);
        let (host, dtypes) = checkpoint::load_params(dir, &cfg, &layout)?;
        Ok((Self::from_host(be, cfg, host), LoadInfo { dtypes }))
    }

    /// A zeroed gradient buffer with the parameters' layout.
    pub fn zero_grads(&self, be: &B) -> B::Buf {
        be.alloc(self.layout.total)
    }

    /// The parameters, copied to the host.
    pub fn params_to_host(&self, be: &B) -> Vec<f32> {
        be.read(B::view(&self.params, Span::new(0, self.layout.total)))
    }
}

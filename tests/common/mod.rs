//! Shared helpers for the integration tests: fixture reading and error norms.
#![allow(dead_code)]

pub mod decode_cases;
pub mod loss_fixtures;
pub mod policy_cases;
pub mod runs;
pub mod sampling;

use engine::backend::IGNORE;
use engine::data::Batch;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::PathBuf;

pub const FAMILIES: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// `tests/fixtures`, or `ENGINE_FIXTURES` where set (a test binary carried
/// to another machine, as the GPU check does, finds them there).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("ENGINE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// A reference file (`<name>.ref.safetensors`) read whole into memory.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Self {
        Self::open_path(&fixtures().join(format!("{name}.ref.safetensors")))
    }

    pub fn open_path(path: &std::path::Path) -> Self {
        Reference { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    pub fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.f64(name).into_iter().map(|x| x as f32).collect()
    }

    pub fn u32(&self, name: &str) -> Vec<u32> {
        self.i64(name).into_iter().map(|x| u32::try_from(x).expect("non-negative")).collect()
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid reference file")
    }

    pub fn names(&self) -> Vec<String> {
        self.st().names().into_iter().map(str::to_string).collect()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.st().tensor(name).unwrap_or_else(|_| panic!("reference lacks {name}")).shape().to_vec()
    }

    /// Any float tensor, as f64.
    pub fn f64(&self, name: &str) -> Vec<f64> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("reference lacks {name}"));
        let d = t.data();
        match t.dtype() {
            Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("reference lacks {name}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    /// The packed batch of the reference (rows split where position_ids restart).
    pub fn batch(&self) -> Batch {
        let shape = self.shape("input_ids");
        let (ids, pos) = (self.i64("input_ids"), self.i64("position_ids"));
        let rows =
            |v: &[i64]| v.chunks(shape[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect::<Vec<Vec<u32>>>();
        Batch::from_packed_rows(&rows(&ids), &rows(&pos))
    }

    /// Loss targets: labels with -100 mapped to IGNORE.
    pub fn loss_targets(&self) -> Vec<u32> {
        self.i64("labels").iter().map(|&l| if l < 0 { IGNORE } else { l as u32 }).collect()
    }
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "NaN or infinity in the output");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

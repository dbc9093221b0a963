//! What every CUDA test shares: the GPU or a printed skip, bf16 data, error norms.

use engine::backend::cuda::{Bf16, Gpu};
use std::io::Write;

/// The GPU, or `None` after printing why the test skips.
pub fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("ENGINE_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("{test}: ENGINE_REQUIRE_CUDA=1 but {e}")
        }
        Err(e) => {
            // Straight to stderr: libtest captures println!, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "skip {test}: {e}");
            None
        }
    }
}

/// A linear congruential generator: uniform values in [0, 1).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A model of this config.json on `be` with random weights: norms 1, every
/// other parameter uniform in ±scale/2, from `Lcg(seed)`, which comes back
/// for the caller's further draws.
pub fn random_model(
    be: &engine::backend::cuda::Cuda,
    config: &str,
    seed: u64,
    scale: f32,
) -> (engine::model::Model<engine::backend::cuda::Cuda>, Lcg) {
    use engine::model::{Model, ModelConfig, ParamLayout};
    let cfg = ModelConfig::from_json_str(config, "test config").unwrap();
    let layout = ParamLayout::new(&cfg);
    let mut rng = Lcg(seed);
    let mut host = vec![0.0f32; layout.total];
    for e in &layout.entries {
        let norm = e.shape.len() == 1 && !e.name.ends_with("bias");
        for v in &mut host[e.span.off..e.span.end()] {
            *v = if norm { 1.0 } else { scale * (rng.next() - 0.5) };
        }
    }
    (Model::from_host(be, cfg, host), rng)
}

/// Deterministic values in [-1, 1), already representable in bf16.
pub fn random_bf16(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            Bf16::from_f32(2.0 * u - 1.0).to_f32()
        })
        .collect()
}

pub fn up(g: &Gpu, x: &[f32]) -> cudarc::driver::CudaSlice<Bf16> {
    let h: Vec<Bf16> = x.iter().map(|&v| Bf16::from_f32(v)).collect();
    g.stream.clone_htod(&h).unwrap()
}

pub fn down(g: &Gpu, x: &cudarc::driver::CudaSlice<Bf16>) -> Vec<f32> {
    g.stream.clone_dtoh(x).unwrap().iter().map(|v| v.to_f32()).collect()
}

/// ‖a − b‖ / ‖b‖, with NaN never passing.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    let e = (num / den.max(1e-30)).sqrt();
    assert!(e.is_finite(), "NaN or infinity in the output");
    e
}

/// bf16 keeps 8 bits of mantissa: one rounding is at most 2^-9 relative.
pub const BF16_TOL: f64 = 1e-2;

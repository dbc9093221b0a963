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

// The loss fixtures (shared with the CPU's tests/losses.rs).
pub use super::common::loss_fixtures::{case as loss_fixture, num, opt_num, Layout as LossLayout};

/// `v` in a new f32 buffer of `be` (fp32 on every backend: the per-token
/// arrays and coefficients).
pub fn put_f32<B: engine::backend::Backend>(be: &B, v: &[f32]) -> B::Buf {
    let mut b = be.alloc_f32(v.len());
    be.write(v, B::view_mut(&mut b, engine::backend::Span::new(0, v.len())));
    b
}

/// `v` in a new index buffer of `be`.
pub fn put_idx<B: engine::backend::Backend>(be: &B, v: &[u32]) -> B::Idx {
    let mut b = be.alloc_idx(v.len());
    be.write_idx(v, &mut b);
    b
}

/// All of a buffer of `be`, on the host.
pub fn read_all<B: engine::backend::Backend>(be: &B, b: &B::Buf) -> Vec<f32> {
    be.read(B::view(b, engine::backend::Span::new(0, B::len(b))))
}

/// `log Σ exp(z/t)` of each row of `vocab` logits, in f64: the fixtures
/// store no lse, so phase 1's is checked against this.
pub fn lse_f64(logits: &[f64], vocab: usize, t: f64) -> Vec<f64> {
    logits
        .chunks(vocab)
        .map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z / t));
            m + row.iter().map(|&z| (z / t - m).exp()).sum::<f64>().ln()
        })
        .collect()
}

/// Comparisons with reference values, each printed; [`Checks::finish`]
/// fails listing every one over its tolerance (so one GPU run shows all).
#[derive(Default)]
pub struct Checks(pub Vec<String>);

impl Checks {
    /// ‖got − want‖ / ‖want‖ ≤ tol (NaN never passes).
    pub fn rel(&mut self, what: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
        let den: f64 = want.iter().map(|b| b * b).sum();
        let e = (num / den.max(1e-300)).sqrt();
        println!("{what}: rel {e:.2e} (tolerance {tol:.0e})");
        if e.is_nan() || e > tol {
            self.0.push(format!("{what}: relative error {e:.2e} > {tol:.0e}"));
        }
    }

    /// |got − want| ≤ tol · scale.
    pub fn scalar(&mut self, what: &str, got: f64, want: f64, scale: f64, tol: f64) {
        let e = (got - want).abs() / scale;
        println!("{what}: {got} vs {want} (error {e:.2e} of {scale:.3e}, tolerance {tol:.0e})");
        if e.is_nan() || e > tol {
            self.0.push(format!("{what}: {got} vs {want}, error {e:.2e} of {scale:.3e} > {tol:.0e}"));
        }
    }

    pub fn finish(self, test: &str) {
        assert!(self.0.is_empty(), "{test}: {} comparisons failed:\n{}", self.0.len(), self.0.join("\n"));
    }
}

/// Tolerances of the PyTorch-fixture checks: `data` for what passes through
/// bf16 data on the GPU (phase 1 from rounded logits, dz, dh, dW, a loss
/// from rounded logits), `fp32` for the coefficient passes on fp32 inputs
/// (DESIGN.md §6: 1e-5). On the CPU backend both are 1e-5.
#[derive(Clone, Copy, Debug)]
pub struct FixtureTol {
    pub data: f64,
    pub fp32: f64,
}

/// The CPU backend's: DESIGN.md §6's f32 rule.
pub const CPU_FIXTURE_TOL: FixtureTol = FixtureTol { data: 1e-5, fp32: 1e-5 };

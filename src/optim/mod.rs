//! Optimisation: AdamW over the model's one parameter buffer (weight decay
//! on 2-D tensors only, DESIGN.md §5), learning-rate schedules, and
//! gradient-norm clipping. On the CPU the f32 parameters are the master
//! weights; the CUDA backend keeps fp32 masters beside bf16 copies.

pub mod schedule;

pub use schedule::{LrSchedule, ScheduleKind};

use crate::backend::{AdamWStep, Backend, Span};
use crate::model::ParamLayout;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW state: first and second moments laid out as the parameters (fp32
/// on every backend), and fp32 master weights where the backend stores
/// parameters narrower ([`Backend::keeps_master`]).
pub struct AdamW<B: Backend> {
    pub cfg: AdamWConfig,
    pub m: B::Buf,
    pub v: B::Buf,
    /// Made from the parameters at the first step (so a model loaded or
    /// resumed after the optimizer was built is picked up).
    pub master: Option<B::Buf>,
    /// Steps taken.
    pub step: u64,
}

impl<B: Backend> AdamW<B> {
    pub fn new(be: &B, layout: &ParamLayout, cfg: AdamWConfig) -> Self {
        AdamW { cfg, m: be.alloc_f32(layout.total), v: be.alloc_f32(layout.total), master: None, step: 0 }
    }

    /// One step at learning rate `lr` on every tensor of `layout`.
    pub fn step(&mut self, be: &B, layout: &ParamLayout, params: &mut B::Buf, grads: &B::Buf, lr: f32) {
        self.step += 1;
        if be.keeps_master() && self.master.is_none() {
            let all = Span::new(0, layout.total);
            let mut master = be.alloc_f32(layout.total);
            be.copy(B::view(params, all), B::view_mut(&mut master, all));
            self.master = Some(master);
        }
        for e in &layout.entries {
            let h = AdamWStep {
                lr,
                beta1: self.cfg.beta1,
                beta2: self.cfg.beta2,
                eps: self.cfg.eps,
                weight_decay: if e.shape.len() == 2 { self.cfg.weight_decay } else { 0.0 },
                step: self.step,
            };
            let s = e.span;
            be.adamw(
                B::view_mut(params, s),
                self.master.as_mut().map(|m| B::view_mut(m, s)),
                B::view(grads, s),
                B::view_mut(&mut self.m, s),
                B::view_mut(&mut self.v, s),
                &h,
            );
        }
    }
}

/// Scales the gradients so their global L2 norm is at most `max_norm`;
/// returns the norm before clipping (as `torch.nn.utils.clip_grad_norm_`,
/// which scales by `max_norm / (norm + 1e-6)` when the norm exceeds it).
pub fn clip_grad_norm<B: Backend>(be: &B, grads: &mut B::Buf, max_norm: f64) -> f64 {
    let all = Span::new(0, B::len(grads));
    let norm = be.sum_squares(B::view(grads, all)).sqrt();
    if max_norm > 0.0 && norm > max_norm {
        be.scale(B::view_mut(grads, all), (max_norm / (norm + 1e-6)) as f32);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::model::ModelConfig;

    /// AdamW against its definition written out in f64 (PyTorch's
    /// algorithm), over three steps, with decay only on matrices.
    #[test]
    fn adamw_matches_the_definition() {
        let cfg = ModelConfig::from_json_str(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":7,"hidden_size":4,"intermediate_size":6,
               "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1}"#,
            "test",
        )
        .unwrap();
        let layout = ParamLayout::new(&cfg);
        let n = layout.total;
        let p0: Vec<f32> = (0..n).map(|i| ((i * 37 % 19) as f32 - 9.0) / 10.0).collect();
        let grads: Vec<Vec<f32>> =
            (0..3).map(|s| (0..n).map(|i| ((i * 13 + s * 7) % 23) as f32 / 10.0 - 1.1).collect()).collect();
        let oc = AdamWConfig { beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };
        let (lr, be) = (0.05f32, Cpu);
        let mut opt = AdamW::new(&be, &layout, oc);
        let mut p = p0.clone();
        for g in &grads {
            opt.step(&be, &layout, &mut p, g, lr);
        }
        // The definition, element by element, in f64.
        for e in &layout.entries {
            let wd = if e.shape.len() == 2 { 0.1 } else { 0.0 };
            for i in e.span.off..e.span.end() {
                let (mut x, mut m, mut v) = (p0[i] as f64, 0.0f64, 0.0f64);
                for (t, g) in grads.iter().enumerate() {
                    let (g, t) = (g[i] as f64, t as i32 + 1);
                    x *= 1.0 - lr as f64 * wd;
                    m = 0.8 * m + 0.2 * g;
                    v = 0.95 * v + 0.05 * g * g;
                    let (mh, vh) = (m / (1.0 - 0.8f64.powi(t)), v / (1.0 - 0.95f64.powi(t)));
                    x -= lr as f64 * mh / (vh.sqrt() + 1e-6);
                }
                assert!((p[i] as f64 - x).abs() < 1e-5, "{} element {i}: {} vs {x}", e.name, p[i]);
            }
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let be = Cpu;
        let mut g: Vec<f32> = (0..50_000).map(|i| (i % 7) as f32 - 3.0).collect();
        let norm0 = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        let before = clip_grad_norm(&be, &mut g, 10.0);
        assert!((before - norm0).abs() < 1e-9 * norm0);
        let after = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        assert!((after - 10.0).abs() < 1e-4, "{after}");
        // Below the threshold nothing changes.
        let mut small = vec![0.1f32; 10];
        clip_grad_norm(&be, &mut small, 10.0);
        assert_eq!(small, vec![0.1f32; 10]);
    }
}

//! Training building blocks end to end: AdamW on the fixture models drives
//! the SFT loss of a fixed batch down (the pieces `engine train` will loop
//! over: forward, phase 1, loss, phase 2 + backward, clipping, AdamW).

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::loss::masked_mean_ce;
use engine::model::{Activations, Model};
use engine::optim::{clip_grad_norm, AdamW, AdamWConfig};

#[test]
fn sft_loss_falls_with_adamw() {
    for name in FAMILIES {
        let be = Cpu;
        let (mut model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
        let r = Reference::open(name);
        let (batch, targets) = (r.batch(), r.loss_targets());
        let mut acts = Activations::new(&be, &model.cfg, batch.len(), 16, true);
        let mut opt = AdamW::new(&be, &model.layout, AdamWConfig::default());
        let mut losses = Vec::new();
        for _ in 0..25 {
            model.forward(&be, &mut acts, &batch).unwrap();
            model.head_fwd(&be, &mut acts, &targets, 1.0, false);
            let (loss, coef) = masked_mean_ce(&acts.head.read_logp(&be, batch.len()), &targets);
            let mut grads = model.zero_grads(&be);
            model.backward(&be, &mut acts, &coef.into(), 1.0, &mut grads);
            clip_grad_norm(&be, &mut grads, 1.0);
            let layout = model.layout.clone();
            opt.step(&be, &layout, &mut model.params, &grads, 3e-3);
            losses.push(loss);
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        println!("{name}: SFT loss {first:.4} → {last:.4}");
        assert!((first - r.f64("loss")[0]).abs() < 1e-4, "{name}: first loss is the reference's");
        assert!(last < 0.5 * first, "{name}: loss {first} → {last} did not fall by half");
    }
}

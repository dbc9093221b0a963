//! Bitwise reproducibility: a forward and backward gives the same bits
//! whatever the number of threads (DESIGN.md §6: fixed reduction orders).

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::loss::masked_mean_ce;
use engine::model::{Activations, Model};

fn step(threads: usize, name: &str) -> (Vec<f32>, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let be = Cpu;
        let (model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
        let r = Reference::open(name);
        let (batch, targets) = (r.batch(), r.loss_targets());
        let mut acts = Activations::new(&be, &model.cfg, batch.len(), 5, true);
        model.forward(&be, &mut acts, &batch).unwrap();
        model.head_fwd(&be, &mut acts, &targets, 1.0, true);
        let logp = acts.head.read_logp(&be, batch.len());
        let (_, coef) = masked_mean_ce(&logp, &targets);
        let mut grads = model.zero_grads(&be);
        model.backward(&be, &mut acts, &coef.into(), 1.0, &mut grads);
        (logp, grads)
    })
}

#[test]
fn independent_of_thread_count() {
    for name in FAMILIES {
        let one = step(1, name);
        for threads in [2, 3] {
            let other = step(threads, name);
            assert!(one.0 == other.0, "{name}: log-probs differ between 1 and {threads} threads");
            assert!(one.1 == other.1, "{name}: gradients differ between 1 and {threads} threads");
        }
    }
}

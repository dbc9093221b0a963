//! Distillation from a teacher's distribution (DESIGN.md §4.6): forward KL,
//! reverse KL and TRL's generalised JSD, per token, at temperature T, with
//! the gradient into the student's logits only. Token-local, so the lm_head
//! path does it in one pass per chunk, with the teacher's logits beside the
//! student's ([`crate::model::head::distill`]); the per-row kernel is the
//! backend's `distill` op (CPU: [`crate::backend::cpu::distill::distill_row`]).

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DistillMode {
    /// KL(p_teacher ‖ p_student).
    Forward,
    /// KL(p_student ‖ p_teacher).
    Reverse,
    /// `β·KL(p_t‖m) + (1−β)·KL(p_s‖m)`, `m = β·p_t + (1−β)·p_s`; as in TRL,
    /// β = 0 is the forward KL and β = 1 the reverse KL.
    Jsd { beta: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Distillation {
    pub mode: DistillMode,
    pub temperature: f64,
}

//! Learning-rate schedules: linear warm-up, then cosine, linear or constant.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
}

impl ScheduleKind {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "cosine" => Ok(ScheduleKind::Cosine),
            "linear" => Ok(ScheduleKind::Linear),
            "constant" => Ok(ScheduleKind::Constant),
            other => Err(format!("unknown schedule `{other}` (cosine, linear, constant)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The decayed floor, as a fraction of `peak`.
    pub min_ratio: f64,
}

impl LrSchedule {
    /// The learning rate of (0-based) step `step`: `peak·(step+1)/warmup`
    /// during warm-up, then the decay from `peak` to `min_ratio·peak` at
    /// `total_steps`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.min_ratio * self.peak;
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Linear => floor + (self.peak - floor) * (1.0 - progress),
            ScheduleKind::Cosine => floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s =
            LrSchedule { kind: ScheduleKind::Cosine, peak: 1e-3, warmup_steps: 10, total_steps: 110, min_ratio: 0.1 };
        assert!((s.lr(0) - 1e-4).abs() < 1e-15);
        assert!((s.lr(9) - 1e-3).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15);
        assert!((s.lr(60) - (1e-4 + 0.9e-3 * 0.5)).abs() < 1e-12); // half way: cos = 0
        assert!((s.lr(110) - 1e-4).abs() < 1e-15);
        assert!((s.lr(500) - 1e-4).abs() < 1e-15);
        let l = LrSchedule { kind: ScheduleKind::Linear, ..s };
        assert!((l.lr(60) - (1e-4 + 0.9e-3 * 0.5)).abs() < 1e-12);
        let c = LrSchedule { kind: ScheduleKind::Constant, ..s };
        assert_eq!(c.lr(100), 1e-3);
    }
}

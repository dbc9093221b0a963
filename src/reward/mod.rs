//! Verifiable rewards for GRPO-style RL on math reasoning: each function
//! scores one response, and the trainer adds up the parts it wants.
//!
//! - [`math`]: correctness. [`extract_answer`] finds the final answer
//!   (last `\boxed{}`, else GSM8K's `####`, else "the answer is …", else
//!   the last number), [`normalize_answer`] canonicalises LaTeX, units and
//!   number formats, [`answers_match`] compares as strings or numbers, and
//!   [`math_reward`] gives 1.0 for a correct answer, else 0.0.
//! - [`format`](mod@format): [`format_reward`], 1.0 for `<think>…</think>answer`.
//! - [`shaping`]: length shaping, [`overlong_penalty`] (DAPO's soft
//!   overlong punishment) and [`length_penalty`] (linear past a target).
//! - [`command`]: [`CommandReward`], any reward an external program
//!   computes, fed JSON lines on stdin, answering one number per line.
//!
//! All are plain functions of text and lengths: no model, no network.

pub mod command;
pub mod format;
pub mod math;
pub mod shaping;

pub use command::CommandReward;
pub use format::format_reward;
pub use math::{answers_match, extract_answer, math_reward, normalize_answer};
pub use shaping::{length_penalty, overlong_penalty};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_compose_into_one_reward() {
        let response = "<think>6 * 7 = 42</think>The answer is \\boxed{42}.";
        let total = math_reward(response, "42") + 0.1 * format_reward(response) + overlong_penalty(10, 100, 20, 1.0);
        assert_eq!(total, 1.1);
        let wrong = "<think>6 * 7 = 48</think>\\boxed{48}";
        assert_eq!(math_reward(wrong, "42") + overlong_penalty(90, 100, 20, 1.0), -0.5);
        assert_eq!(length_penalty(150, 100, 1.0), -0.5);
    }
}

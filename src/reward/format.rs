//! The format reward of R1-style reasoning: think first, inside one
//! `<think>` block, then answer.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// 1.0 when the response is one `<think>…</think>` block followed by a
/// non-empty answer, else 0.0.
///
/// Whitespace is allowed before `<think>` and between `</think>` and the
/// answer. Each tag must appear exactly once (no second `<think>`, no
/// stray `</think>` in the answer). The thinking must be non-empty too:
/// rewarding `<think></think>` would pay the policy for skipping reasoning.
pub fn format_reward(response: &str) -> f64 {
    let well_formed = (|| {
        let body = response.trim_start().strip_prefix(OPEN)?;
        let (thinking, answer) = body.split_once(CLOSE)?;
        let single_tags = !thinking.contains(OPEN) && !answer.contains(OPEN) && !answer.contains(CLOSE);
        Some(single_tags && !thinking.trim().is_empty() && !answer.trim().is_empty())
    })();
    if well_formed == Some(true) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_responses_score_one() {
        for response in [
            "<think>2+2 is 4</think>The answer is 4.",
            "<think>\nstep 1\nstep 2\n</think>\n\n\\boxed{4}",
            "  \n<think>hmm</think> 4",
            "<think>a < b and b > c</think>yes",
        ] {
            assert_eq!(format_reward(response), 1.0, "{response:?}");
        }
    }

    #[test]
    fn malformed_responses_score_zero() {
        for response in [
            "",
            "The answer is 4.",
            "<think>no closing tag, answer 4",
            "</think>4",
            "<think>thinking</think>",
            "<think>thinking</think>   \n ",
            "<think></think>4",
            "<think>  \n</think>4",
            "prefix <think>thinking</think>4",
            "<think>one</think><think>two</think>4",
            "<think>one<think>nested</think>4",
            "<think>thinking</think>4</think>",
            "<THINK>thinking</THINK>4",
        ] {
            assert_eq!(format_reward(response), 0.0, "{response:?}");
        }
    }
}

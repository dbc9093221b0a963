//! Math answer verification: pull the final answer out of a response
//! ([`extract_answer`]), bring it and the reference to one canonical form
//! ([`normalize_answer`]), and compare them as strings or as numbers
//! ([`answers_match`]). Plain string scanning, no regex, no symbolic algebra:
//! `\frac{\sqrt2}{2}` and `\sqrt2/2` are different answers here.

use std::borrow::Cow;

/// Relative tolerance of the numeric comparison.
const REL_TOL: f64 = 1e-6;

/// Words dropped from the end of an answer when they follow a non-letter
/// ("12 cm", "5\text{ dollars}", "4 square units"). Single-letter units
/// ("m", "s", "g") are missing on purpose: they read as variables.
const UNITS: &[&str] = &[
    "dollars", "dollar", "cents", "cent", "percent", "degrees", "degree", "units", "unit", "square", "sq", "cubic",
    "mm", "cm", "km", "meters", "meter", "metres", "metre", "inches", "inch", "feet", "foot", "ft", "yards", "yard",
    "miles", "mile", "mph", "kg", "grams", "gram", "pounds", "pound", "lbs", "lb", "ounces", "ounce", "oz", "liters",
    "liter", "litres", "litre", "ml", "gallons", "gallon", "seconds", "second", "sec", "minutes", "minute", "min",
    "mins", "hours", "hour", "hrs", "days", "day", "weeks", "week", "months", "month", "years", "year",
];

/// The final answer of a model response, or `None` when it has none.
///
/// In priority order:
/// 1. the content of the last complete `\boxed{...}` / `\fbox{...}` (nested
///    braces handled; an empty or unclosed box is skipped);
/// 2. GSM8K's `#### <answer>`: the rest of the last such line that holds a
///    digit and does not start with a letter (so Markdown headings like
///    `#### Final Answer` or `#### Step 2: add 5+3` are skipped);
/// 3. the last "answer is X" / "answer: X" (case-insensitive), X running to
///    the end of its line or sentence, trailing period and `**` stripped;
/// 4. the last number in the text: integer, decimal, negative, with
///    thousands commas (`1,234`), or a simple fraction `a/b` or
///    `\frac{a}{b}`. Digits glued to a letter (`x2`, `H2O`) are skipped.
pub fn extract_answer(text: &str) -> Option<String> {
    last_boxed(text).or_else(|| gsm8k_answer(text)).or_else(|| answer_phrase(text)).or_else(|| last_number(text))
}

/// The canonical form of an answer, for string comparison.
///
/// Steps, in order (each one a decision, kept simple on purpose):
/// - trim; strip surrounding `\( \)` / `\[ \]` and every `$`, `\$`;
/// - unwrap `\text{..}`, `\textbf{..}`, `\textrm{..}`, `\mathrm{..}`,
///   `\mathbf{..}`, `\mbox{..}` to their content;
/// - `\dfrac`/`\tfrac` → `\frac`; `−` → `-`, `√` → `\sqrt`, `π` → `\pi`;
///   drop `\left`, `\right`, `\displaystyle` and the spacing commands
///   `\!`, `\,`, `\;`, `\:`, `\ `;
/// - drop degrees (`^\circ`, `^{\circ}`, `\degree`, `°`; a bare `\circ` is
///   composition and stays) and percent signs
///   (`\%`, `%`): **"50%" equals "50", not "0.5"**;
/// - drop a trailing period;
/// - drop a leading variable assignment when the answer holds exactly one
///   `=` and its left side is one variable (`x`, `y_1`, `\theta`):
///   **"x = 3" equals "3"**; "x = 1, y = 2" and "f(x) = 2x" are kept whole;
/// - drop trailing unit words (see `UNITS`, case-insensitive, with an
///   optional `^2`/`^3`), and any trailing words of two or more letters
///   after a plain number ("5 apples" → "5"; not when a word is "and"/"or");
/// - brace the arguments of `\frac` and `\sqrt` (`\frac12` →
///   `\frac{1}{2}`, `\sqrt2` → `\sqrt{2}`);
/// - remove thousands commas outside brackets ("1,000" and LaTeX's
///   "1{,}000" → "1000"; `(1,234)` stays a pair, `(1, 2]` an interval,
///   "1, 234" a list);
/// - remove all whitespace, then braces around the whole;
/// - tidy decimals: `.5` → `0.5`, `2.50` → `2.5`, `3.0` → `3`;
/// - a whole plain fraction `a/b` → `\frac{a}{b}`.
///
/// Case is kept (`A` and `a` differ).
pub fn normalize_answer(s: &str) -> String {
    let s = strip_math_delimiters(s.trim());
    let mut s = unwrap_text_commands(s);
    for (from, to) in [
        ("{,}", ","),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("−", "-"),
        ("√", "\\sqrt"),
        ("π", "\\pi"),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\degree", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
    ] {
        s = s.replace(from, to);
    }
    let s = remove_command(&remove_command(&s, "\\left"), "\\right");
    let s = s.trim().trim_end_matches('.').trim_end();
    let s = drop_words_after_number(strip_units(strip_assignment(s)));
    let s = brace_args(&brace_args(s, "\\frac", 2), "\\sqrt", 1);
    let s = remove_thousands_commas(&s);
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = tidy_decimals(strip_outer_braces(&s));
    plain_fraction_to_frac(&s).unwrap_or(s)
}

/// Whether two answers agree: their [`normalize_answer`] forms are equal
/// and non-empty, or both parse as numbers (integer, decimal, `a/b`,
/// `\frac{a}{b}`, negative; percent already dropped) equal within 1e-6
/// relative. So "0.5", "\frac{1}{2}" and "1/2" agree, as do "3.0" and "3".
pub fn answers_match(predicted: &str, reference: &str) -> bool {
    let (p, r) = (normalize_answer(predicted), normalize_answer(reference));
    if p.is_empty() || r.is_empty() {
        return false;
    }
    if p == r {
        return true;
    }
    match (parse_number(&p), parse_number(&r)) {
        (Some(a), Some(b)) => (a - b).abs() <= REL_TOL * a.abs().max(b.abs()),
        _ => false,
    }
}

/// The verifiable reward of one response: 1.0 when its extracted answer
/// [`answers_match`] the reference, else 0.0 (no answer found is 0.0).
///
/// The reference may be a bare answer ("72", `\frac{1}{2}`) or a full
/// solution: when it holds a `\boxed{}` (MATH) or a `#### ` line (GSM8K),
/// that part is the answer.
pub fn math_reward(response: &str, reference: &str) -> f64 {
    let reference: Cow<str> = match last_boxed(reference).or_else(|| gsm8k_answer(reference)) {
        Some(answer) => Cow::Owned(answer),
        None => Cow::Borrowed(reference),
    };
    match extract_answer(response) {
        Some(answer) if answers_match(&answer, &reference) => 1.0,
        _ => 0.0,
    }
}

// ---- extraction ----

fn last_boxed(text: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for cmd in ["\\boxed", "\\fbox"] {
        for (pos, _) in text.match_indices(cmd) {
            if best.as_ref().is_some_and(|(p, _)| *p > pos) {
                continue;
            }
            if let Some(inner) = boxed_argument(&text[pos + cmd.len()..]) {
                best = Some((pos, inner));
            }
        }
    }
    best.map(|(_, inner)| inner)
}

/// The argument of `\boxed`: a braced group, or (`\boxed 5`) the next word.
fn boxed_argument(rest: &str) -> Option<String> {
    let trimmed = rest.trim_start();
    let arg = if trimmed.starts_with('{') {
        braced_group(trimmed)?.0.trim()
    } else if rest.starts_with(' ') {
        trimmed.split(|c: char| c.is_whitespace() || c == '$').next().unwrap_or("")
    } else {
        return None;
    };
    non_empty(arg)
}

/// Splits `{inner}rest` at its matching close brace; `\{` and `\}` are
/// literal braces and do not count.
fn braced_group(s: &str) -> Option<(&str, &str)> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let (mut depth, mut i) = (0usize, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[1..i], &s[i + 1..]));
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn gsm8k_answer(text: &str) -> Option<String> {
    text.rmatch_indices("####").find_map(|(pos, _)| {
        let line = text[pos..].trim_start_matches('#').lines().next().unwrap_or("");
        let answer = line.trim().trim_end_matches('.');
        // "#### 72", not a Markdown heading ("#### Step 2: add 5+3").
        if answer.contains(|c: char| c.is_ascii_digit()) && !answer.starts_with(|c: char| c.is_alphabetic()) {
            non_empty(answer)
        } else {
            None
        }
    })
}

fn answer_phrase(text: &str) -> Option<String> {
    // ASCII lowercasing keeps byte offsets, so positions carry over to `text`.
    let lower = text.to_ascii_lowercase();
    lower.rmatch_indices("answer").find_map(|(pos, word)| {
        let after = pos + word.len();
        let spaces = lower[after..].len() - lower[after..].trim_start().len();
        let tail = &lower[after + spaces..];
        let marker = if tail.starts_with("is") && !tail[2..].starts_with(|c: char| c.is_alphanumeric()) {
            if tail[2..].trim_start().starts_with(':') {
                tail.find(':')? + 1
            } else {
                2
            }
        } else if tail.starts_with(':') {
            1
        } else {
            return None;
        };
        let clause = first_sentence(&text[after + spaces + marker..]);
        non_empty(clause.trim_matches(|c: char| c == '*' || c.is_whitespace()).trim_end_matches('.'))
    })
}

/// Text up to the end of its line or sentence (a period followed by
/// whitespace or the end; "3.5" keeps its point).
fn first_sentence(s: &str) -> &str {
    let s = s.trim_start();
    let line = s.lines().next().unwrap_or("");
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'.' && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn last_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let (mut i, mut last) = (0, None);
    while i < bytes.len() {
        // Digits glued to a letter ("x2", "H2O") are names, not numbers.
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_alphabetic()) {
            i += 1;
            continue;
        }
        if let Some((start, end)) = latex_fraction_at(text, i) {
            let sign = if is_negative_sign(&text[..start]) { "-" } else { "" };
            last = Some(format!("{sign}{}", &text[start..end]));
            i = end;
            continue;
        }
        // A leading point (".5") belongs to the number.
        let start = if i > 0 && bytes[i - 1] == b'.' { i - 1 } else { i };
        let int_start = i;
        i = digits_end(bytes, i);
        if start == int_start && i - start <= 3 {
            while let Some(next) = thousands_group(bytes, i) {
                i = next;
            }
        }
        for sep in [b'.', b'/'] {
            if bytes.get(i) == Some(&sep) && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i = digits_end(bytes, i + 1);
            }
        }
        let sign = if is_negative_sign(&text[..start]) { "-" } else { "" };
        last = Some(format!("{sign}{}", &text[start..i]));
    }
    last
}

/// If the digit at `i` opens the numerator of `\frac{a}{b}` (or `\dfrac`,
/// `\tfrac`) with plain-number arguments, that fraction's byte range: the
/// last number of "the probability is $\frac{3}{8}$" is 3/8, not 8.
fn latex_fraction_at(text: &str, i: usize) -> Option<(usize, usize)> {
    let before = text[..i].strip_suffix('{')?;
    let start = ["\\frac", "\\dfrac", "\\tfrac"].iter().find_map(|cmd| before.strip_suffix(cmd))?.len();
    let (num, rest) = braced_group(&text[i - 1..])?;
    let (den, rest) = braced_group(rest)?;
    (parse_decimal(num).is_some() && parse_decimal(den).is_some()).then(|| (start, text.len() - rest.len()))
}

/// Whether the text before a number ends in a minus sign that is not a
/// subtraction ("-5", "is −5", but not "10-5").
fn is_negative_sign(before: &str) -> bool {
    let Some(rest) = before.strip_suffix('-').or_else(|| before.strip_suffix('−')) else {
        return false;
    };
    !rest.ends_with(|c: char| c.is_alphanumeric() || matches!(c, ')' | ']' | '}'))
}

fn digits_end(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// If `,ddd` (exactly three digits) starts at `i`, the index after it.
fn thousands_group(bytes: &[u8], i: usize) -> Option<usize> {
    let group_ok = bytes.get(i) == Some(&b',')
        && bytes.len() >= i + 4
        && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        && !bytes.get(i + 4).is_some_and(u8::is_ascii_digit);
    group_ok.then_some(i + 4)
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

// ---- normalisation steps ----

fn strip_math_delimiters(mut s: &str) -> &str {
    for (open, close) in [("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = s.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            s = inner.trim();
        }
    }
    s
}

fn unwrap_text_commands(s: &str) -> String {
    let mut s = s.to_string();
    for cmd in ["\\text{", "\\textbf{", "\\textrm{", "\\mathrm{", "\\mathbf{", "\\mbox{"] {
        while let Some(pos) = s.find(cmd) {
            let group_start = pos + cmd.len() - 1;
            let Some((inner, rest)) = braced_group(&s[group_start..]) else { break };
            s = format!("{}{inner}{rest}", &s[..pos]);
        }
    }
    s
}

/// Removes `cmd` where it is a whole control word (`\left(`, not `\leftarrow`).
fn remove_command(s: &str, cmd: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(cmd) {
        let after = &rest[pos + cmd.len()..];
        let whole_word = !after.starts_with(|c: char| c.is_ascii_alphabetic());
        out.push_str(&rest[..pos]);
        if !whole_word {
            out.push_str(cmd);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn strip_assignment(s: &str) -> &str {
    let Some((lhs, rhs)) = s.split_once('=') else { return s };
    if rhs.contains('=') || rhs.trim().is_empty() || !is_variable(lhs.trim()) {
        return s;
    }
    rhs.trim()
}

/// `x`, `y_1`, `a_{n}`, `\theta`: one letter or one command, optional subscript.
fn is_variable(s: &str) -> bool {
    let (name, sub) = match s.split_once('_') {
        Some((name, sub)) => (name, Some(sub.trim_start_matches('{').trim_end_matches('}'))),
        None => (s, None),
    };
    let name_ok = match name.strip_prefix('\\') {
        Some(cmd) => !cmd.is_empty() && cmd.chars().all(|c| c.is_ascii_alphabetic()),
        None => name.len() == 1 && name.chars().all(|c| c.is_ascii_alphabetic()),
    };
    name_ok && sub.is_none_or(|sub| !sub.is_empty() && sub.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn strip_units(mut s: &str) -> &str {
    loop {
        let base = ["^{2}", "^{3}", "^2", "^3"].iter().find_map(|e| s.strip_suffix(e)).unwrap_or(s);
        let head = base.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let word = &base[head.len()..];
        let is_unit = UNITS.iter().any(|u| u.eq_ignore_ascii_case(word));
        // Keep commands (`\min`) and answers that are nothing but a unit.
        if !is_unit || head.ends_with('\\') || head.trim().is_empty() {
            return s;
        }
        s = head.trim_end();
    }
}

fn drop_words_after_number(s: &str) -> &str {
    let Some((number, words)) = s.split_once(char::is_whitespace) else { return s };
    let number_ok = number.contains(|c: char| c.is_ascii_digit())
        && number.chars().all(|c| c.is_ascii_digit() || matches!(c, ',' | '.' | '-' | '/'));
    let words_ok = words.split_whitespace().all(|w| {
        w.len() >= 2 && w.chars().all(|c| c.is_ascii_alphabetic()) && !matches!(w, "and" | "or" | "AND" | "OR")
    });
    if number_ok && words_ok {
        number
    } else {
        s
    }
}

/// Braces the first `nargs` arguments of `cmd` where LaTeX lets them be
/// single tokens (`\frac12`, `\frac\pi2`, `\sqrt 3`).
fn brace_args(s: &str, cmd: &str, nargs: usize) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(pos) = rest.find(cmd) {
        out.push_str(&rest[..pos + cmd.len()]);
        rest = &rest[pos + cmd.len()..];
        if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue; // a longer control word
        }
        for _ in 0..nargs {
            let arg = rest.trim_start();
            let (inner, after) = if let Some((inner, after)) = braced_group(arg) {
                (brace_args(inner, cmd, nargs), after)
            } else if let Some(cmd_tail) = arg.strip_prefix('\\') {
                let letters = cmd_tail.len() - cmd_tail.trim_start_matches(|c: char| c.is_ascii_alphabetic()).len();
                if letters == 0 {
                    break;
                }
                (arg[..1 + letters].to_string(), &arg[1 + letters..])
            } else if arg.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                (arg[..1].to_string(), &arg[1..])
            } else {
                break;
            };
            out.push('{');
            out.push_str(&inner);
            out.push('}');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn strip_outer_braces(mut s: &str) -> &str {
    while let Some((inner, "")) = braced_group(s) {
        s = inner;
    }
    s
}

fn remove_thousands_commas(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut drop = Vec::new();
    let (mut depth, mut i) = (0i32, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'0'..=b'9' if depth == 0 && (i == 0 || !matches!(bytes[i - 1], b'0'..=b'9' | b'.')) => {
                let start = i;
                i = digits_end(bytes, i);
                if i - start <= 3 {
                    while let Some(next) = thousands_group(bytes, i) {
                        drop.push(i);
                        i = next;
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    s.char_indices().filter(|(i, _)| !drop.contains(i)).map(|(_, c)| c).collect()
}

fn tidy_decimals(s: &str) -> String {
    let bytes = s.as_bytes();
    let (mut out, mut copied, mut i) = (String::with_capacity(s.len() + 1), 0, 0);
    while i < bytes.len() {
        if bytes[i] != b'.' || !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i += 1;
            continue;
        }
        let end = digits_end(bytes, i + 1);
        out.push_str(&s[copied..i]);
        if i == 0 || !bytes[i - 1].is_ascii_digit() {
            out.push('0');
        }
        let fraction = s[i + 1..end].trim_end_matches('0');
        if !fraction.is_empty() {
            out.push('.');
            out.push_str(fraction);
        }
        copied = end;
        i = end;
    }
    out.push_str(&s[copied..]);
    out
}

fn plain_fraction_to_frac(s: &str) -> Option<String> {
    let (sign, body) = s.strip_prefix('-').map_or(("", s), |rest| ("-", rest));
    let (num, den) = body.split_once('/')?;
    let is_int = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    (is_int(num) && is_int(den)).then(|| format!("{sign}\\frac{{{num}}}{{{den}}}"))
}

/// A normalised answer's value: a decimal, `a/b` or `\frac{a}{b}`,
/// optionally negative. `None` for anything else or a zero denominator.
fn parse_number(s: &str) -> Option<f64> {
    let (negative, body) = s.strip_prefix('-').map_or((false, s), |rest| (true, rest));
    let value = if let Some(args) = body.strip_prefix("\\frac") {
        let (num, rest) = braced_group(args)?;
        let (den, rest) = braced_group(rest)?;
        if !rest.is_empty() {
            return None;
        }
        ratio(parse_number(num)?, parse_number(den)?)?
    } else if let Some((num, den)) = body.split_once('/') {
        ratio(parse_decimal(num)?, parse_decimal(den)?)?
    } else {
        parse_decimal(body)?
    };
    Some(if negative { -value } else { value })
}

/// Unsigned `123`, `1.5`, `.5` only: `str::parse` would also take "inf",
/// "NaN" and "1e5".
fn parse_decimal(s: &str) -> Option<f64> {
    let well_formed = s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().filter(|&b| b == b'.').count() <= 1;
    well_formed.then(|| s.parse().ok()).flatten()
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den != 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (response, reference, should match).
    const CASES: &[(&str, &str, bool)] = &[
        // GSM8K-style `####`.
        ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips in total.\n#### 72", "72", true),
        ("Total: 500 + 500 = 1000\n#### 1,000", "1000", true),
        ("He earns $18 a day.\n#### $18", "18", true),
        ("So the total is 10.\n#### 10.00", "10", true),
        ("#### 25%", "25", true),
        ("#### 18 dollars", "18", true),
        ("#### 1,200.50", "1200.5", true),
        ("#### 72", "She sold 48/2 = 24 clips in May.\n#### 72", true),
        ("#### Final Answer\nThe total is 8", "8", true),
        // "answer is" / "Answer:".
        ("The answer is 5.", "5", true),
        ("Answer: 42", "42", true),
        ("ANSWER: -7", "-7", true),
        ("Therefore, the final answer is $\\frac{3}{4}$.", "\\frac{3}{4}", true),
        ("So the answer is: 17", "17", true),
        ("**Answer:** 64", "64", true),
        ("The answer is **64**. Done.", "64", true),
        ("Answer: 3 apples", "3", true),
        ("The answer is 1/3.", "\\frac{1}{3}", true),
        ("The answer is 5. Let me double-check: 2+3 = 5, and 5 < 6.", "5", true),
        // MATH-style boxed answers.
        ("so $x = \\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", true),
        ("$\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}", true),
        ("\\boxed{\\frac12}", "\\frac{1}{2}", true),
        ("\\boxed{0.5}", "\\frac{1}{2}", true),
        ("\\boxed{1/2}", "\\frac{1}{2}", true),
        ("\\boxed{.5}", "1/2", true),
        ("\\boxed{3.0}", "3", true),
        ("\\boxed{100}", "100.0", true),
        ("\\boxed{2.50}", "2.5", true),
        ("\\boxed{\\tfrac{3}{4}}", "0.75", true),
        ("$$\\boxed{\\dfrac{5}{8}}$$", "0.625", true),
        ("\\boxed{-\\frac{2}{3}}", "\\frac{-2}{3}", true),
        ("\\boxed{\\frac{-2}{3}}", "-2/3", true),
        ("\\boxed{2\\sqrt{2}}", "2\\sqrt{2}", true),
        ("\\boxed{2\\sqrt2}", "2\\sqrt{2}", true),
        ("\\boxed{\\sqrt{3}}", "√3", true),
        ("\\boxed{2\\pi}", "2\\pi", true),
        ("\\boxed{2 \\pi}", "2\\pi", true),
        ("\\boxed{\\pi}", "π", true),
        ("\\boxed{\\frac{\\pi}{2}}", "\\frac\\pi2", true),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", true),
        ("\\boxed{\\frac{1}{\\frac{1}{2}}}", "\\frac{1}{\\frac{1}{2}}", true),
        ("\\boxed{(1, 2]}", "(1,2]", true),
        ("\\boxed{[-2, 5)}", "[-2,5)", true),
        ("\\boxed{\\left( -\\infty, 3 \\right)}", "(-\\infty,3)", true),
        ("\\boxed{\\left(1, \\frac{1}{2}\\right)}", "(1,\\frac{1}{2})", true),
        ("\\boxed{(2,3)}", "(2, 3)", true),
        ("\\boxed{\\{1, 2, 3\\}}", "\\{1,2,3\\}", true),
        ("\\boxed{x^2 + 2x + 1}", "x^2+2x+1", true),
        ("\\boxed{3\\!\\times\\!10^{5}}", "3\\times 10^{5}", true),
        ("\\boxed{-3}", "-3", true),
        ("final: \\boxed{−4}", "-4", true),
        ("\\boxed{1,000,000}", "1000000", true),
        ("\\boxed{\\$1,250}", "1250", true),
        ("\\boxed{50\\%}", "50", true),
        ("\\boxed{30^\\circ}", "30", true),
        ("\\boxed{45^{\\circ}}", "45", true),
        ("\\boxed{12 \\text{ cm}}", "12", true),
        ("\\boxed{\\text{5 dollars}}", "5", true),
        ("\\boxed{5\\text{ square units}}", "5", true),
        ("\\boxed{9 \\text{cm}^2}", "9", true),
        ("\\boxed{\\text{(B)}}", "(B)", true),
        ("\\boxed{ 7 }", "7", true),
        ("\\fbox{9}", "9", true),
        ("\\(\\boxed{12}\\)", "12", true),
        ("\\boxed{x = 3}", "3", true),
        ("\\boxed{y=-2}", "-2", true),
        ("\\boxed{\\theta = 30^\\circ}", "30", true),
        ("First I got \\boxed{3}, but that is wrong. Corrected: \\boxed{4}", "4", true),
        ("The answer is $\\boxed{5}$. Actually wait, 5 + 1 = 6.", "5", true),
        ("\\boxed{5}", "\\boxed{5}", true),
        // Last number in the text.
        ("The total is 3 apples and 5 oranges, so 8 fruits.", "8", true),
        ("She paid 1,234 dollars.", "1234", true),
        ("The temperature dropped to -12 degrees.", "-12", true),
        ("It takes 2.5 hours.", "5/2", true),
        ("I computed 100 - 58 = 42", "42", true),
        ("Half of it: 3/4 of the cake", "0.75", true),
        ("Thus the probability is $\\frac{3}{8}$.", "3/8", true),
        ("so the slope is $-\\dfrac{1}{2}$", "-0.5", true),
        ("#### Step 2: add 5+3\nSo we have 8.", "8", true),
        ("\\boxed{10{,}000}", "10000", true),
        // Must NOT match.
        ("\\boxed{12}", "1.2", false),
        ("\\boxed{1/2}", "2/1", false),
        ("\\boxed{\\frac{1}{2}}", "\\frac{2}{1}", false),
        ("The answer is \\boxed{7}. Check: 2 + 3 = 5", "5", false),
        ("I don't know.", "5", false),
        ("", "0", false),
        ("\\boxed{}", "0", false),
        ("\\boxed{\\sqrt{2}}", "2", false),
        ("The answer is √2.", "2", false),
        ("\\boxed{2}", "\\sqrt{2}", false),
        ("\\boxed{(1, 2]}", "(1, 2)", false),
        ("\\boxed{[1, 2]}", "(1, 2)", false),
        ("\\boxed{-3}", "3", false),
        ("#### 72", "27", false),
        ("\\boxed{50\\%}", "0.5", false),
        ("\\boxed{x = 3}", "4", false),
        ("\\boxed{x = 1, y = 2}", "1", false),
        ("\\boxed{2\\pi}", "\\pi", false),
        ("\\boxed{1,000}", "100", false),
        ("The answer is 0.33.", "\\frac{1}{3}", false),
        ("\\boxed{x^2+1}", "x^2-1", false),
        ("\\boxed{0.5}", "5", false),
        ("\\boxed{3.14}", "\\pi", false),
        ("\\boxed{A}", "B", false),
        ("\\boxed{1000}", "1,000,001", false),
        ("\\boxed{10}", "1/10", false),
        ("Answer: 5 apples and 3 pears", "5", false),
        ("The total is 3 apples and 5 oranges, so 8 fruits.", "5", false),
        ("\\boxed{1/0}", "1/0", true), // equal strings; never parsed as a number
        ("\\boxed{1/0}", "2/0", false),
    ];

    #[test]
    fn verifier_table() {
        let failures: Vec<String> = CASES
            .iter()
            .filter(|(response, reference, want)| (math_reward(response, reference) == 1.0) != *want)
            .map(|(response, reference, want)| {
                let got = extract_answer(response);
                format!("{response:?} vs {reference:?}: want {want}, extracted {got:?}")
            })
            .collect();
        assert!(failures.is_empty(), "{} of {} rows wrong:\n{}", failures.len(), CASES.len(), failures.join("\n"));
        let matching = CASES.iter().filter(|c| c.2).count();
        assert!(matching >= 60 && CASES.len() - matching >= 20, "keep the table large");
    }

    #[test]
    fn extraction_priority() {
        assert_eq!(extract_answer("\\boxed{\\frac{1}{2}}").as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(extract_answer("\\boxed{1} and \\fbox{2}").as_deref(), Some("2"));
        assert_eq!(extract_answer("\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(extract_answer("\\boxed{3} then \\boxed{4").as_deref(), Some("3"));
        assert_eq!(extract_answer("#### 72\nThe answer is 5").as_deref(), Some("72"));
        assert_eq!(extract_answer("The answer is 3.5. Then 7").as_deref(), Some("3.5"));
        assert_eq!(extract_answer("answer: 1\nAnswer: 2\n9").as_deref(), Some("2"));
        assert_eq!(extract_answer("the answers are many, 4").as_deref(), Some("4"));
        assert_eq!(extract_answer("from 10-5 we get 1,000, 2").as_deref(), Some("2"));
        assert_eq!(extract_answer("10-5").as_deref(), Some("5"));
        assert_eq!(extract_answer("owes -1,234.5 now").as_deref(), Some("-1,234.5"));
        assert_eq!(extract_answer("H2O"), None);
        assert_eq!(extract_answer("no digits here"), None);
    }

    #[test]
    fn normalisation() {
        for (raw, want) in [
            ("  $\\frac12$ ", "\\frac{1}{2}"),
            ("\\dfrac{3}{4}", "\\frac{3}{4}"),
            ("1,000", "1000"),
            ("(1,234)", "(1,234)"),
            ("1, 234", "1,234"),
            ("x = 3", "3"),
            ("f(x) = 2x", "f(x)=2x"),
            ("50\\%", "50"),
            ("3.0", "3"),
            ("\\left[ 1, 2 \\right)", "[1,2)"),
            ("\\leftarrow", "\\leftarrow"),
            ("{5}", "5"),
            ("5.", "5"),
            ("\\text{Yes}", "Yes"),
            ("\\min", "\\min"),
            ("\\sqrt[3]{2}", "\\sqrt[3]{2}"),
            ("-3/4", "-\\frac{3}{4}"),
        ] {
            assert_eq!(normalize_answer(raw), want, "normalize_answer({raw:?})");
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        // Multi-byte characters next to the ASCII the scanners slice at.
        let alphabet: Vec<char> = "0123456789.,-−/{}\\$%#: xX=()[]^_boxedfracnswerisπ√°é\n".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let len = (state >> 59) as usize;
            let text: String = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect();
            let answer = extract_answer(&text).unwrap_or_default();
            let _ = answers_match(&answer, &text);
            let _ = math_reward(&text, &answer);
        }
    }

    #[test]
    fn numeric_comparison() {
        assert!(answers_match("0.5", "\\frac{1}{2}"));
        assert!(answers_match("1/3", "0.3333333333"));
        assert!(!answers_match("1/3", "0.3333"));
        assert!(answers_match("0", "-0"));
        assert!(!answers_match("1e3", "1000"), "no scientific notation");
        assert!(!answers_match("", ""), "an empty answer never matches");
        assert!(answers_match("inf", "inf"), "equal strings match without being numbers");
        assert!(!answers_match("NaN", "nan"));
    }
}

//! A custom reward computed by an external program, for checks the
//! built-in verifiers don't cover (code execution, a judge script).
//!
//! Protocol: the program is started once per batch, reads one JSON object
//! per line on stdin until EOF, and prints one number per input line, in
//! order, on stdout. Anything on stderr is ignored unless it fails.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often a running child is polled for exit.
const POLL: Duration = Duration::from_millis(5);
/// Longest excerpt of program output quoted in an error.
const QUOTE_CHARS: usize = 200;

/// An external reward program: `program args…`, fed JSON lines, answering
/// one number per line within `timeout`.
#[derive(Clone, Debug)]
pub struct CommandReward {
    /// The executable, looked up on `PATH` like a shell would.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Wall-clock limit for the whole batch, from spawn to the last byte
    /// of output; past it the child is killed.
    pub timeout: Duration,
}

impl CommandReward {
    /// Scores `items` with one run of the program: writes each item as one
    /// JSON line to its stdin, then closes stdin, and reads one finite
    /// number per line from its stdout (trailing blank lines ignored).
    ///
    /// An empty batch returns an empty vector without starting anything.
    /// Errors are one line and name the command: it cannot start, exits
    /// non-zero (first line of stderr quoted), runs past the timeout (it is
    /// killed), prints the wrong number of lines, or prints a line that is
    /// not a finite number.
    pub fn score(&self, items: &[serde_json::Value]) -> Result<Vec<f64>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut input = String::new();
        for item in items {
            // `Value`'s Display is compact JSON, which never holds a raw
            // newline: one item, one line.
            input.push_str(&item.to_string());
            input.push('\n');
        }
        let name = self.display_name();
        // A timeout too large to add (`Duration::MAX`) means a year.
        let start = Instant::now();
        let deadline = start.checked_add(self.timeout).unwrap_or(start + Duration::from_secs(365 * 24 * 3600));
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("reward command `{name}`: cannot start: {e}"))?;

        // Feed stdin and drain both outputs on their own threads: a child
        // that writes before it has read everything would otherwise block on
        // a full pipe while we block writing to it.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        thread::spawn(move || {
            // A child that exits without reading closes the pipe (EPIPE);
            // its exit status or output count reports the real problem.
            let _ = stdin.write_all(input.as_bytes());
        });
        let stdout = read_on_thread(child.stdout.take().expect("stdout is piped"));
        let stderr = read_on_thread(child.stderr.take().expect("stderr is piped"));

        let status = wait_until(&mut child, deadline).map_err(|e| anyhow::anyhow!("reward command `{name}`: {e}"))?;
        let timed_out = || anyhow::anyhow!("reward command `{name}`: timed out after {}s", self.timeout.as_secs_f64());
        let Some(status) = status else {
            // Kill and reap. The pipe threads end when the pipes close, or
            // later if a grandchild keeps them open: they are not waited for.
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        };
        // The child is gone, but a process it started may still hold the
        // pipes open: wait for them no later than the deadline.
        let remaining = || deadline.saturating_duration_since(Instant::now());
        if !status.success() {
            let stderr = stderr.recv_timeout(remaining().max(Duration::from_millis(50))).unwrap_or_default();
            let first = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no stderr)");
            bail!("reward command `{name}`: failed ({status}): {}", quote(first));
        }
        let stdout = stdout.recv_timeout(remaining()).map_err(|_| timed_out())?;
        parse_scores(&stdout, items.len()).map_err(|e| anyhow::anyhow!("reward command `{name}`: {e}"))
    }

    /// `program arg…` on one line, arguments with spaces or newlines quoted
    /// and escaped, shortened to stay readable in a log line.
    fn display_name(&self) -> String {
        let mut name = self.program.clone();
        for arg in &self.args {
            name.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"') {
                name.push_str(&format!("{arg:?}"));
            } else {
                name.push_str(arg);
            }
        }
        quote(&name)
    }
}

fn read_on_thread(mut pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// The child's exit status, or `None` if it is still running at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

fn parse_scores(stdout: &str, expected: usize) -> Result<Vec<f64>> {
    let lines: Vec<&str> = stdout.trim_end().lines().collect();
    // An empty stdout is zero lines, not one empty line.
    let got = if stdout.trim().is_empty() { 0 } else { lines.len() };
    if got != expected {
        bail!("expected {expected} numbers, got {got}");
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| match line.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            Ok(_) => bail!("line {}: `{}` is not a finite number", i + 1, quote(line.trim())),
            Err(_) => bail!("line {}: `{}` is not a number", i + 1, quote(line.trim())),
        })
        .collect()
}

/// At most `QUOTE_CHARS` characters of one line, so errors stay one line.
fn quote(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sh(script: &str, timeout_ms: u64) -> CommandReward {
        CommandReward {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn items(n: usize) -> Vec<serde_json::Value> {
        (0..n).map(|i| json!({"id": i, "response": format!("line\nbreak {i}"), "reference": "42"})).collect()
    }

    fn err(cmd: &CommandReward, n: usize) -> String {
        let e = cmd.score(&items(n)).expect_err("should fail").to_string();
        assert!(!e.contains('\n'), "error must be one line: {e:?}");
        assert!(e.contains(&cmd.program), "error must name the command: {e}");
        e
    }

    #[test]
    fn python_scorer_reads_json_lines() {
        let script = "import sys, json\nfor line in sys.stdin:\n    d = json.loads(line)\n    print(d['id'] * 0.5)";
        let cmd = CommandReward { program: "python3".into(), args: vec!["-c".into(), script.into()], ..sh("", 10_000) };
        assert_eq!(cmd.score(&items(3)).unwrap(), vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn shell_scorer_one_line_per_item() {
        // Each item is one line, even with a newline inside a string.
        let cmd = sh("while read -r line; do echo 1.5; done; echo", 10_000);
        assert_eq!(cmd.score(&items(4)).unwrap(), vec![1.5; 4]);
        assert_eq!(cmd.score(&[]).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn large_batch_does_not_deadlock() {
        // Output is written before input is fully read: needs the writer thread.
        let big: Vec<_> = (0..20_000).map(|i| json!({"id": i, "pad": "x".repeat(100)})).collect();
        let cmd = sh("awk '{ print 1 }'", 20_000);
        assert_eq!(cmd.score(&big).unwrap().len(), big.len());
    }

    #[test]
    fn crash_reports_status_and_stderr() {
        let e = err(&sh("cat >/dev/null; echo 'boom: bad input' >&2; echo more >&2; exit 3", 10_000), 2);
        assert!(e.contains("exit status: 3") && e.ends_with(": boom: bad input"), "{e}");
    }

    #[test]
    fn bad_output_names_the_line() {
        let e = err(&sh("cat >/dev/null; echo 1; echo oops; echo 3", 10_000), 3);
        assert!(e.contains("line 2: `oops` is not a number"), "{e}");
        let e = err(&sh("cat >/dev/null; echo 1; echo NaN", 10_000), 2);
        assert!(e.contains("line 2: `NaN` is not a finite number"), "{e}");
        let e = err(&sh("cat >/dev/null; echo inf", 10_000), 1);
        assert!(e.contains("line 1: `inf` is not a finite number"), "{e}");
    }

    #[test]
    fn wrong_line_count() {
        let e = err(&sh("cat >/dev/null; echo 1", 10_000), 3);
        assert!(e.contains("expected 3 numbers, got 1"), "{e}");
        let e = err(&sh("cat >/dev/null", 10_000), 2);
        assert!(e.contains("expected 2 numbers, got 0"), "{e}");
        let e = err(&sh("echo 1; echo 2; echo 3", 10_000), 2);
        assert!(e.contains("expected 2 numbers, got 3"), "{e}");
    }

    #[test]
    fn timeout_kills_fast() {
        for cmd in [
            CommandReward { program: "sleep".into(), args: vec!["5".into()], timeout: Duration::from_millis(300) },
            // A grandchild keeps the pipes open after `sh` is killed.
            sh("sleep 5; echo 1", 300),
            sh("sleep 5 & echo 1", 300),
        ] {
            let start = Instant::now();
            let e = err(&cmd, 1);
            assert!(e.contains("timed out after 0.3s"), "{e}");
            assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
        }
    }

    #[test]
    fn missing_program() {
        let cmd =
            CommandReward { program: "no-such-reward-program".into(), args: vec![], timeout: Duration::from_secs(1) };
        let e = err(&cmd, 1);
        assert!(e.contains("cannot start"), "{e}");
    }

    #[test]
    fn long_scripts_are_shortened_in_errors() {
        let script = format!("exit 1 # {}\n{}", "x".repeat(500), "y");
        let e = err(&sh(&script, 10_000), 1);
        assert!(e.len() < 600 && e.contains('…'), "{e}");
    }
}

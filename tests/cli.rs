//! The `engine` binary end to end: `score` against PyTorch's float64
//! log-probabilities, `info`, and a clear one-line error with exit code 2
//! for each kind of bad input.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn engine(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engine")).args(args).output().expect("engine runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn write_lines(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn score(model: &str, input: &Path, output: &Path, extra: &[&str]) {
    let model = fixtures().join(model);
    let mut args = vec!["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()];
    args.extend(["--output", output.to_str().unwrap(), "--device", "cpu"]);
    args.extend(extra);
    let (code, _, err) = engine(&args);
    assert_eq!(code, 0, "engine score failed: {err}");
}

/// Text and token inputs, several batches: tokens match the Python
/// tokenizer, log-probs match float64 PyTorch to 1e-4 absolute.
#[test]
fn score_matches_pytorch_float64() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("{name}.score.json"))).unwrap())
                .unwrap();
        let mut lines = Vec::new();
        for (i, c) in cases.iter().enumerate() {
            lines.push(json!({"id": format!("text-{i}"), "text": c["text"]}));
            lines.push(json!({"id": format!("tokens-{i}"), "tokens": c["tokens"]}));
        }
        let input = write_lines(tmp.path(), &format!("{name}.in.jsonl"), &lines);
        let output = tmp.path().join(format!("{name}.out.jsonl"));
        score(name, &input, &output, &["--batch-tokens", "50"]);
        let out = read_lines(&output);
        assert_eq!(out.len(), lines.len());
        for (i, o) in out.iter().enumerate() {
            let c = &cases[i / 2];
            assert_eq!(o["id"], lines[i]["id"], "{name}: output order");
            assert_eq!(o["tokens"], c["tokens"], "{name}: tokenization of {:?}", c["text"]);
            let (got, want) = (floats(&o["logprobs"]), floats(&c["logprobs"]));
            assert_eq!(got.len(), want.len());
            let err = max_abs(&got, &want);
            assert!(err <= 1e-4, "{name} line {i}: max abs error {err:.2e}");
            let sum_err = (o["sum_logprob"].as_f64().unwrap() - c["sum_logprob"].as_f64().unwrap()).abs();
            assert!(sum_err <= 1e-4, "{name} line {i}: sum_logprob off by {sum_err:.2e}");
        }
    }
}

/// The packed reference sequences, scored one line each, at T = 1 and 0.7.
#[test]
fn score_reference_sequences_with_temperature() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let r = Reference::open(name);
        let batch = r.batch();
        let lines: Vec<Value> = (0..batch.n_seqs()).map(|s| json!({"tokens": batch.tokens[batch.seq(s)]})).collect();
        let input = write_lines(tmp.path(), "seqs.jsonl", &lines);
        for (t, key) in [("1", "logprobs"), ("0.7", "logprobs_t07")] {
            let output = tmp.path().join("seqs.out.jsonl");
            score(name, &input, &output, &["--temperature", t]);
            let want = r.f64(key);
            for (s, o) in read_lines(&output).iter().enumerate() {
                let range = batch.seq(s);
                let err = max_abs(&floats(&o["logprobs"]), &want[range.start..range.end - 1]);
                assert!(err <= 1e-4, "{name} T={t} sequence {s}: max abs error {err:.2e}");
            }
        }
    }
}

#[test]
fn info_reports_sizes() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap()).unwrap();
    for name in FAMILIES {
        let dir = fixtures().join(name);
        let (code, out, err) = engine(&["info", "--model", dir.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let params = manifest["models"][name]["num_parameters"].as_u64().unwrap();
        assert_eq!(v["parameters"].as_u64().unwrap(), params, "{name}");
        assert_eq!(v["elements_on_disk"].as_u64().unwrap(), params, "{name}");
        let cuda = &v["memory_bytes"]["cuda"];
        assert_eq!(
            cuda["weights"].as_u64().unwrap()
                + cuda["grads"].as_u64().unwrap()
                + cuda["master"].as_u64().unwrap()
                + cuda["adam"].as_u64().unwrap(),
            16 * params
        );
        assert!(cuda["activations"].as_u64().unwrap() > 0);
        let (code, text, _) = engine(&["info", "--model", dir.to_str().unwrap()]);
        assert_eq!(code, 0);
        assert!(text.contains(manifest["models"][name]["architecture"].as_str().unwrap()));
    }
}

// ---- bad input: exit code 2, one line naming the culprit, nothing written ----

fn expect_error(args: &[&str], needles: &[&str]) {
    let (code, out, err) = engine(args);
    assert_eq!(code, 2, "expected exit code 2 for {args:?}; stdout {out} stderr {err}");
    let err = err.trim_end();
    assert_eq!(err.lines().count(), 1, "error should be one line: {err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error `{err}` should mention `{n}`");
    }
}

/// A copy of a fixture model folder, to break.
fn copy_model(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// Rewrites qwen3's model.safetensors through `edit(name, shape, bytes)`.
fn rewrite_weights(dir: &Path, edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .iter()
        .filter_map(|(n, t)| {
            edit(n, t.shape().to_vec(), t.data().to_vec()).map(|(s, d)| (n.to_string(), t.dtype(), s, d))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, dt, s, d)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Case { tmp: tempfile::tempdir().unwrap() }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn input(&self, text: &str) -> PathBuf {
        let p = self.path("in.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Runs score and checks the error; the output file must not exist.
    fn score_error(&self, model: &Path, input: &Path, needles: &[&str]) {
        let out = self.path("out.jsonl");
        expect_error(
            &[
                "score",
                "--model",
                model.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
            needles,
        );
        assert!(!out.exists(), "no output may be written on error");
    }
}

const GOOD_LINE: &str = "{\"tokens\": [1, 2, 3]}\n";

#[test]
fn error_missing_model_folder() {
    let c = Case::new();
    let missing = c.path("no-such-model");
    c.score_error(&missing, &c.input(GOOD_LINE), &["no-such-model", "not found"]);
    expect_error(&["info", "--model", missing.to_str().unwrap()], &["no-such-model"]);
}

#[test]
fn error_missing_safetensors() {
    let c = Case::new();
    let m = copy_model("qwen3", c.tmp.path());
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    c.score_error(&m, &c.input(GOOD_LINE), &["model.safetensors", "qwen3"]);
}

#[test]
fn error_truncated_safetensors() {
    let c = Case::new();
    let m = copy_model("qwen3", c.tmp.path());
    let f = m.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 2).unwrap();
    c.score_error(&m, &c.input(GOOD_LINE), &["model.safetensors", "truncated"]);
}

#[test]
fn error_missing_shard() {
    let c = Case::new();
    let m = copy_model("llama", c.tmp.path());
    std::fs::remove_file(m.join("model-00003-of-00005.safetensors")).unwrap();
    c.score_error(&m, &c.input(GOOD_LINE), &["model-00003-of-00005.safetensors"]);
}

#[test]
fn error_tensor_missing() {
    let c = Case::new();
    let m = copy_model("qwen3", c.tmp.path());
    rewrite_weights(&m, |n, s, d| (n != "model.layers.1.mlp.up_proj.weight").then_some((s, d)));
    c.score_error(&m, &c.input(GOOD_LINE), &["model.layers.1.mlp.up_proj.weight", "missing"]);
}

#[test]
fn error_tensor_wrong_shape() {
    let c = Case::new();
    let m = copy_model("qwen3", c.tmp.path());
    rewrite_weights(&m, |n, s, d| {
        if n == "model.norm.weight" {
            Some((vec![s[0] / 2], d[..d.len() / 2].to_vec()))
        } else {
            Some((s, d))
        }
    });
    c.score_error(&m, &c.input(GOOD_LINE), &["model.norm.weight", "shape [32]", "[64]"]);
}

#[test]
fn error_unknown_architecture() {
    let c = Case::new();
    let m = copy_model("qwen3", c.tmp.path());
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap().replace("Qwen3ForCausalLM", "GPT2LMHeadModel");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    c.score_error(&m, &c.input(GOOD_LINE), &["config.json", "`architectures`", "GPT2LMHeadModel"]);
    expect_error(&["info", "--model", m.to_str().unwrap()], &["GPT2LMHeadModel"]);
}

#[test]
fn error_sliding_window_switched_on() {
    let c = Case::new();
    let m = copy_model("qwen2", c.tmp.path());
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"use_sliding_window\": false", "\"use_sliding_window\": true");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    c.score_error(&m, &c.input(GOOD_LINE), &["config.json", "`use_sliding_window`"]);
}

#[test]
fn error_malformed_jsonl_names_the_line() {
    let c = Case::new();
    let input = c.input("{\"tokens\": [1, 2]}\n{\"tokens\": [1, 2\n");
    c.score_error(&fixtures().join("qwen3"), &input, &["in.jsonl:2", "invalid JSON"]);
    let input = c.input("{\"tokens\": [1]}\n\n{\"prompt\": \"x\"}\n");
    c.score_error(&fixtures().join("qwen3"), &input, &["in.jsonl:3", "\"tokens\" or a \"text\""]);
}

#[test]
fn error_token_outside_vocabulary() {
    let c = Case::new();
    let input = c.input("{\"tokens\": [1, 2]}\n{\"tokens\": [5, 777]}\n");
    c.score_error(&fixtures().join("qwen3"), &input, &["in.jsonl:2", "777", "vocabulary (777)"]);
}

#[test]
fn error_empty_input() {
    let c = Case::new();
    c.score_error(&fixtures().join("qwen3"), &c.input(""), &["in.jsonl", "empty input"]);
    c.score_error(&fixtures().join("qwen3"), &c.input("{\"tokens\": []}\n"), &["in.jsonl:1", "no tokens"]);
}

#[test]
fn error_missing_input_file() {
    let c = Case::new();
    c.score_error(&fixtures().join("qwen3"), &c.path("absent.jsonl"), &["absent.jsonl", "cannot read"]);
}

// ---- engine generate ----

fn generate(model: &Path, prompts: &Path, out: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()];
    args.extend(["--output", out.to_str().unwrap(), "--device", "cpu"]);
    args.extend(extra);
    let (code, _, err) = engine(&args);
    assert_eq!(code, 0, "engine generate failed: {err}");
    read_lines(out)
}

#[test]
fn generate_writes_one_line_per_sample() {
    let c = Case::new();
    let input = c.input("{\"tokens\": [5, 6, 7]}\n{\"prompt\": \"The answer is\"}\n");
    let out = c.path("g.jsonl");
    let lines =
        generate(&fixtures().join("qwen3"), &input, &out, &["--n", "3", "--max-new-tokens", "6", "--seed", "4"]);
    assert_eq!(lines.len(), 6);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            (l["prompt_index"].as_u64().unwrap(), l["sample_index"].as_u64().unwrap()),
            ((i / 3) as u64, (i % 3) as u64)
        );
        let n = l["tokens"].as_array().unwrap().len();
        assert!((1..=6).contains(&n) && l["logprobs"].as_array().unwrap().len() == n);
        assert!(l["text"].is_string());
        let reason = l["finish_reason"].as_str().unwrap();
        assert!(reason == "length" || (reason == "stop" && n <= 6), "{reason}");
    }
    // Seeded: the same again.
    let again = generate(
        &fixtures().join("qwen3"),
        &input,
        &c.path("g2.jsonl"),
        &["--n", "3", "--max-new-tokens", "6", "--seed", "4"],
    );
    assert_eq!(lines, again);
    // --cuda-graphs on the CPU: the decode steps padded (6 sequences to 8)
    // and run as they are; the same tokens.
    let padded = generate(
        &fixtures().join("qwen3"),
        &input,
        &c.path("g3.jsonl"),
        &["--n", "3", "--max-new-tokens", "6", "--seed", "4", "--cuda-graphs"],
    );
    let tokens = |v: &[Value]| v.iter().map(|l| l["tokens"].clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&lines), tokens(&padded));
}

#[test]
fn generate_with_chat_template() {
    let c = Case::new();
    let m = copy_model("qwen2", c.tmp.path());
    std::fs::copy(fixtures().join("rollout/chat_qwen/tokenizer_config.json"), m.join("tokenizer_config.json")).unwrap();
    let input =
        c.input("{\"prompt\": \"What is 2 + 3?\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n");
    let lines = generate(&m, &input, &c.path("g.jsonl"), &["--chat", "--temperature", "0", "--max-new-tokens", "4"]);
    assert_eq!(lines.len(), 2);
    // Without a template, --chat is a clear error.
    let out = c.path("g3.jsonl");
    expect_error(
        &[
            "generate",
            "--model",
            fixtures().join("qwen3").to_str().unwrap(),
            "--prompts",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--chat",
        ],
        &["no chat template"],
    );
    let bad = c.input("{\"tokens\": [1]}\n{\"question\": \"x\"}\n");
    expect_error(
        &[
            "generate",
            "--model",
            fixtures().join("qwen3").to_str().unwrap(),
            "--prompts",
            bad.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &["in.jsonl:2", "\"prompt\""],
    );
    assert!(!out.exists());
}

// ---- engine eval ----

#[test]
fn eval_reports_pass_and_majority() {
    use engine::cli::eval::pass_at_k;
    use engine::reward::math::answers_match;
    let c = Case::new();
    let data =
        c.input("{\"prompt\": \"What is 2 + 3?\", \"answer\": \"5\"}\n{\"prompt\": \"12*7 =\", \"answer\": 84}\n");
    let out = c.path("eval.json");
    let model = fixtures().join("qwen3");
    let (code, _, err) = engine(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--n",
        "4",
        "--k",
        "2",
        "--max-new-tokens",
        "12",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("pass@1") && err.contains("maj@2"), "table on stderr: {err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!((r["prompts"].as_u64(), r["n"].as_u64(), r["k"].as_u64()), (Some(2), Some(4), Some(2)));
    let mut p1 = 0.0;
    for line in r["per_line"].as_array().unwrap() {
        let reference = line["answer"].as_str().unwrap();
        let answers = line["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 4);
        let correct = answers.iter().filter(|a| a.as_str().is_some_and(|a| answers_match(a, reference))).count();
        assert_eq!(line["correct"].as_u64().unwrap() as usize, correct);
        assert!((line["pass@2"].as_f64().unwrap() - pass_at_k(4, correct, 2)).abs() < 1e-12);
        p1 += correct as f64 / 4.0;
    }
    assert!((r["pass@1"].as_f64().unwrap() - p1 / 2.0).abs() < 1e-12);
    // A line without an answer is an error before any sampling.
    let bad = c.input("{\"prompt\": \"x\"}\n");
    expect_error(
        &["eval", "--model", model.to_str().unwrap(), "--data", bad.to_str().unwrap()],
        &["in.jsonl:1", "\"answer\""],
    );
}

//! Chat templates: the model's Jinja template (`chat_template.jinja`, or
//! `chat_template` in `tokenizer_config.json`) rendered with minijinja the
//! way transformers' `apply_chat_template(..., add_generation_prompt=True)`
//! renders it: `trim_blocks` and `lstrip_blocks`, loop controls, Python's
//! string methods, `raise_exception`, and the tokenizer's special tokens.

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Where the template came from, for error messages.
    source: String,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template of a model folder: `chat_template.jinja` when present,
    /// else `tokenizer_config.json`'s `chat_template` (a string, or a list
    /// of named templates, of which `default` is used).
    pub fn load(model_dir: &Path) -> Result<Self> {
        let cfg_path = model_dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text =
                std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", cfg_path.display()))?
        } else {
            serde_json::Value::Null
        };
        let jinja = model_dir.join("chat_template.jinja");
        let (template, source) = if jinja.exists() {
            (
                std::fs::read_to_string(&jinja).with_context(|| format!("{}: cannot read", jinja.display()))?,
                jinja.display().to_string(),
            )
        } else {
            let src = format!("{} (key `chat_template`)", cfg_path.display());
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(t)) => (t.clone(), src),
                Some(serde_json::Value::Array(list)) => {
                    let t = list
                        .iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                        .and_then(|t| t.get("template"))
                        .and_then(|t| t.as_str())
                        .ok_or_else(|| anyhow!("{src}: no template named `default`"))?;
                    (t.to_string(), src)
                }
                _ => bail!("{}: the model has no chat template (no chat_template.jinja, no `chat_template` in tokenizer_config.json)", model_dir.display()),
            }
        };
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        env.add_template_owned("chat", template).map_err(|e| anyhow!("{source}: invalid chat template: {e}"))?;
        Ok(ChatTemplate {
            env,
            bos_token: token_text(cfg.get("bos_token")),
            eos_token: token_text(cfg.get("eos_token")),
            source,
        })
    }

    /// The prompt text for `messages`, ending with the assistant's turn
    /// opened when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").expect("added at load");
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| anyhow!("{}: rendering the chat template failed: {e}", self.source))
    }
}

/// Today's date for templates that print it (Llama 3.1): `%d %b %Y` and the
/// few other fields such templates use, from the system clock in UTC.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    fmt.replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%b", MONTHS[(month - 1) as usize])
        .replace("%Y", &year.to_string())
}

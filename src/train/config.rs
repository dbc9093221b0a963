//! Trainer configuration: a TOML file (sections flatten to dotted keys,
//! `[optim] lr = 1e-5` is `optim.lr`) plus `--set key=value` overrides, checked
//! against the trainer's list of known keys. An unknown or mistyped key is an
//! error that names it and suggests the closest known one.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The type a key's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
}

/// One known key: its name, type, default (as TOML text) and meaning.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    pub key: &'static str,
    pub kind: Kind,
    /// `None`: required.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// Checked values of every known key.
#[derive(Clone, Debug)]
pub struct Config {
    values: BTreeMap<String, toml::Value>,
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + (ca != cb) as usize).min(row[j] + 1).min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn closest<'a>(key: &str, known: &'a [KeySpec]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (distance(key, k.key), k.key))
        .filter(|(d, _)| *d <= 3.max(key.len() / 3))
        .min()
        .map(|(_, k)| k)
}

/// Parses one value given as text (`--set lr=1e-5`, `--set chat=true`,
/// `--set model=./dir` — bare words are strings).
fn parse_value(text: &str) -> toml::Value {
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

fn check_kind(key: &str, v: &toml::Value, kind: Kind, origin: &str) -> Result<toml::Value> {
    let ok = match (kind, v) {
        (Kind::Str, toml::Value::String(_))
        | (Kind::Int, toml::Value::Integer(_))
        | (Kind::Bool, toml::Value::Boolean(_)) => true,
        (Kind::Float, toml::Value::Float(_)) => true,
        // An integer where a float is expected is fine (`lr = 1`).
        (Kind::Float, toml::Value::Integer(i)) => return Ok(toml::Value::Float(*i as f64)),
        _ => false,
    };
    if !ok {
        bail!(
            "{origin}: key `{key}` should be {}, found {v}",
            match kind {
                Kind::Str => "a string",
                Kind::Int => "an integer",
                Kind::Float => "a number",
                Kind::Bool => "true or false",
            }
        );
    }
    Ok(v.clone())
}

impl Config {
    /// Reads `path` (if any), applies `sets` (`key=value`), checks every key
    /// against `known`, fills defaults, and requires the keys without one.
    pub fn load(path: Option<&Path>, sets: &[String], known: &[KeySpec]) -> Result<Self> {
        let mut given: Vec<(String, toml::Value, String)> = Vec::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let table: toml::Table = text.parse().map_err(|e| anyhow!("{}: invalid TOML: {e}", path.display()))?;
            let mut flat = BTreeMap::new();
            flatten("", &table, &mut flat);
            given.extend(flat.into_iter().map(|(k, v)| (k, v, path.display().to_string())));
        }
        for s in sets {
            let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("--set {s}: expected key=value"))?;
            given.push((k.trim().to_string(), parse_value(v.trim()), format!("--set {s}")));
        }
        let mut values = BTreeMap::new();
        for (key, v, origin) in given {
            let Some(spec) = known.iter().find(|k| k.key == key) else {
                let hint = closest(&key, known).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
                bail!("{origin}: unknown key `{key}`{hint}");
            };
            values.insert(key.clone(), check_kind(&key, &v, spec.kind, &origin)?);
        }
        for spec in known {
            if values.contains_key(spec.key) {
                continue;
            }
            match spec.default {
                Some(d) => {
                    values.insert(spec.key.to_string(), check_kind(spec.key, &parse_value(d), spec.kind, "default")?);
                }
                None => bail!(
                    "missing key `{}` ({}): set it in the config or with --set {}=...",
                    spec.key,
                    spec.help,
                    spec.key
                ),
            }
        }
        Ok(Config { values })
    }

    fn get(&self, key: &str) -> &toml::Value {
        self.values.get(key).unwrap_or_else(|| panic!("config key `{key}` is not in the trainer's key list"))
    }
    pub fn str(&self, key: &str) -> String {
        self.get(key).as_str().expect("checked").to_string()
    }
    pub fn int(&self, key: &str) -> i64 {
        self.get(key).as_integer().expect("checked")
    }
    pub fn float(&self, key: &str) -> f64 {
        self.get(key).as_float().expect("checked")
    }
    pub fn bool(&self, key: &str) -> bool {
        self.get(key).as_bool().expect("checked")
    }
    /// Every key and value, for the run folder's record of the config.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.values).expect("TOML values serialise")
    }
}

/// A complete, commented TOML config of `known`: every key with its default
/// (a required key with a placeholder to replace), top-level keys first,
/// then one `[section]` per dotted prefix, in the order the keys are listed.
pub fn template(known: &[KeySpec]) -> String {
    let mut out = String::new();
    let line = |out: &mut String, name: &str, k: &KeySpec| {
        let (value, note) = match k.default {
            Some(d) => (d.to_string(), String::new()),
            None => ("\"...\"".to_string(), "required: ".to_string()),
        };
        out.push_str(&format!("{:<36}# {note}{}\n", format!("{name} = {value}"), k.help));
    };
    for k in known.iter().filter(|k| !k.key.contains('.')) {
        line(&mut out, k.key, k);
    }
    let mut sections: Vec<&str> = Vec::new();
    for k in known {
        if let Some((s, _)) = k.key.split_once('.') {
            if !sections.contains(&s) {
                sections.push(s);
            }
        }
    }
    for s in sections {
        out.push_str(&format!("\n[{s}]\n"));
        for k in known.iter().filter(|k| k.key.split_once('.').is_some_and(|(p, _)| p == s)) {
            line(&mut out, &k.key[s.len() + 1..], k);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[KeySpec] = &[
        KeySpec { key: "model", kind: Kind::Str, default: None, help: "model folder" },
        KeySpec { key: "optim.lr", kind: Kind::Float, default: Some("1e-5"), help: "peak learning rate" },
        KeySpec { key: "optim.warmup_steps", kind: Kind::Int, default: Some("0"), help: "warm-up steps" },
        KeySpec { key: "chat", kind: Kind::Bool, default: Some("false"), help: "chat template" },
    ];

    fn write(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn file_sets_and_defaults() {
        let f = write("model = \"m\"\n[optim]\nlr = 3e-4\n");
        let c = Config::load(Some(f.path()), &["optim.warmup_steps=5".into(), "chat=true".into()], KEYS).unwrap();
        assert_eq!(
            (c.str("model"), c.float("optim.lr"), c.int("optim.warmup_steps"), c.bool("chat")),
            ("m".into(), 3e-4, 5, true)
        );
        let c = Config::load(None, &["model=./dir".into(), "optim.lr=1".into()], KEYS).unwrap();
        assert_eq!((c.str("model"), c.float("optim.lr"), c.int("optim.warmup_steps")), ("./dir".into(), 1.0, 0));
    }

    #[test]
    fn the_template_parses_back_to_the_defaults() {
        let f = write(&template(KEYS));
        let c = Config::load(Some(f.path()), &[], KEYS).unwrap();
        assert_eq!((c.str("model"), c.float("optim.lr"), c.int("optim.warmup_steps")), ("...".into(), 1e-5, 0));
        assert!(template(KEYS).contains("[optim]\nlr = 1e-5"), "{}", template(KEYS));
    }

    #[test]
    fn mistakes_are_named() {
        let f = write("model = \"m\"\n[optim]\nlrr = 3e-4\n");
        let e = Config::load(Some(f.path()), &[], KEYS).unwrap_err().to_string();
        assert!(e.contains("unknown key `optim.lrr`") && e.contains("did you mean `optim.lr`"), "{e}");
        let e = Config::load(None, &["model=m".into(), "chat=yes".into()], KEYS).unwrap_err().to_string();
        assert!(e.contains("--set chat=yes") && e.contains("true or false"), "{e}");
        let e = Config::load(None, &[], KEYS).unwrap_err().to_string();
        assert!(e.contains("missing key `model`"), "{e}");
        let e = Config::load(None, &["nonsense_entirely=1".into()], KEYS).unwrap_err().to_string();
        assert!(e.contains("unknown key `nonsense_entirely`") && !e.contains("did you mean"), "{e}");
    }
}

//! Values of the profile: `${VAR}` expansion, TOML to the JSON plugins get, paths relative
//! to the profile.

use super::{env, Problems};
use std::path::{Path, PathBuf};
use toml::Value;

/// Expands `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
pub(super) fn expand(text: &str, key: &str, lookup: env::Lookup<'_>, p: &mut Problems) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            p.push(key, "unclosed `${`: write ${VAR} or ${VAR:-default}");
            return out;
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            p.push(key, &format!("`${{{body}}}` is not a variable reference; use ${{NAME}} or ${{NAME:-default}}"));
        } else {
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => p.push(
                    key,
                    &format!("environment variable {name} is not set; set it, or write ${{{name}:-default}}"),
                ),
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    out
}

pub(super) fn expand_value(v: &mut Value, key: &str, lookup: env::Lookup<'_>, p: &mut Problems) {
    match v {
        Value::String(s) => *s = expand(s, key, lookup, p),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{key}[{i}]"), lookup, p);
            }
        }
        Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                expand_value(item, &format!("{key}.{k}"), lookup, p);
            }
        }
        _ => {}
    }
}

pub(super) fn toml_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Integer(n) => serde_json::Value::from(*n),
        Value::Float(f) => serde_json::Value::from(*f),
        Value::Boolean(b) => serde_json::Value::Bool(*b),
        Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(toml_to_json).collect()),
        Value::Table(t) => serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

/// `~/x` -> `$HOME/x`; relative paths are relative to the profile's directory.
pub(super) fn resolve(base: &Path, text: &str, lookup: env::Lookup<'_>) -> PathBuf {
    let path = match text.strip_prefix("~/").or((text == "~").then_some("")) {
        Some(rest) => PathBuf::from(lookup(env::HOME).unwrap_or_else(|| "/".to_owned())).join(rest),
        None => PathBuf::from(text),
    };
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

//! Layering: normalising the parsed file against the schema (canonical key
//! spelling, nulls, quoted scalars) and applying `REPLICATOR_…` environment
//! overrides on top.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{ConfigError, Node, ENV_PREFIX, SCHEMA};

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Canonical key spelling, dropped nulls and typed scalars, per the schema.
/// Unknown keys are kept as they are: deserialization rejects them with their
/// path. The error is `(key path, message)`.
pub(super) fn normalize(value: Value, node: Node, path: &str) -> Result<Value, (String, String)> {
    match (node, value) {
        (Node::Map(fields), Value::Object(map)) => {
            let mut out = Map::new();
            for (key, value) in map {
                if value.is_null() {
                    continue;
                }
                let (name, node) = match fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(&key)) {
                    Some(&(name, node)) => (name.to_owned(), node),
                    None => (key, Node::Any),
                };
                let full = join(path, &name);
                if out.contains_key(&name) {
                    return Err((full, "given twice (keys are case-insensitive)".into()));
                }
                let value = normalize(value, node, &full)?;
                out.insert(name, value);
            }
            Ok(Value::Object(out))
        }
        (Node::List(fields), Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| normalize(item, Node::Map(fields), &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (Node::List(_), other) => Err((
            path.to_owned(),
            format!("expected a list, found {}", describe(&other)),
        )),
        // An empty section (`reader:` with nothing under it) is an empty map.
        (Node::Map(_), Value::Null) => Ok(Value::Object(Map::new())),
        (Node::Map(_), other) => Err((
            path.to_owned(),
            format!("expected a section of keys, found {}", describe(&other)),
        )),
        (Node::Str | Node::Int | Node::Bool, Value::String(s)) => {
            scalar(&s, node).map_err(|m| (path.to_owned(), m))
        }
        (Node::Str, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (Node::Str, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (_, other) => Ok(other),
    }
}

/// A string (from an environment variable or a quoted YAML scalar) as the kind
/// of value the schema expects.
fn scalar(s: &str, node: Node) -> Result<Value, String> {
    match node {
        Node::Int => s
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("expected a whole number, found {s:?}")),
        Node::Bool => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, found {s:?}")),
        },
        // An empty environment variable unsets an optional section or list.
        Node::Any | Node::List(_) if s.is_empty() => Ok(Value::Null),
        Node::List(_) => Err(format!(
            "expected a list; set its entries one key at a time (…_0_TYPE), found {s:?}"
        )),
        Node::Str | Node::Any | Node::Map(_) => Ok(Value::String(s.to_owned())),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a section",
    }
}

/// Applies `REPLICATOR_SECTION_KEY=value` overrides (`_` or `__` between
/// levels, names case-insensitive). Returns which variable set which key.
pub(super) fn apply_env(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut origins = BTreeMap::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.to_ascii_uppercase().starts_with(ENV_PREFIX))
        .collect();
    // Deterministic: the environment's order is not.
    vars.sort();
    for (var, value) in vars {
        let env_err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let segments: Vec<&str> = var[ENV_PREFIX.len()..]
            .split('_')
            .filter(|s| !s.is_empty())
            .collect();
        if segments.is_empty() {
            return Err(env_err("names no configuration key".into()));
        }
        // Resolve each segment against the schema, below `replicator`.
        let Node::Map(root) = SCHEMA else {
            unreachable!("the schema's root is a section")
        };
        let mut node = root[0].1;
        let mut names = vec![Seg::Key("replicator")];
        for (i, seg) in segments.iter().enumerate() {
            if let Node::List(fields) = node {
                let Ok(index) = seg.parse::<usize>() else {
                    return Err(env_err(format!(
                        "{} is a list: name an entry by its index (…_0_…), not {seg:?}",
                        show(&names)
                    )));
                };
                names.push(Seg::Index(index));
                node = Node::Map(fields);
                if i + 1 == segments.len() {
                    break;
                }
                continue;
            }
            let Node::Map(fields) = node else {
                return Err(env_err(format!(
                    "{} has no key {seg:?} (it is not a section)",
                    show(&names)
                )));
            };
            let Some(&(name, child)) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(seg))
            else {
                let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                return Err(env_err(format!(
                    "{} has no key {seg:?}; known keys: {}",
                    show(&names),
                    known.join(", ")
                )));
            };
            names.push(Seg::Key(name));
            node = child;
            if matches!(node, Node::Any) && i + 1 < segments.len() {
                return Err(env_err(format!(
                    "{} cannot be set piecewise from the environment",
                    show(&names)
                )));
            }
        }
        if let Node::Map(_) = node {
            return Err(env_err(format!(
                "{} is a section; name one of its keys",
                show(&names)
            )));
        }
        let typed = scalar(&value, node).map_err(env_err)?;
        insert(tree, &names, typed);
        origins.insert(show(&names), var.clone());
    }
    Ok(origins)
}

/// One step of a key path: a section's key or a list's index.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

/// `replicator.filters[0].type`, as serde_path_to_error writes paths.
fn show(names: &[Seg]) -> String {
    let mut out = String::new();
    for seg in names {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn insert(tree: &mut Value, names: &[Seg], value: Value) {
    let mut cur = tree;
    for (n, seg) in names.iter().enumerate() {
        let last = n + 1 == names.len();
        match *seg {
            Seg::Key(name) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                let map = cur.as_object_mut().expect("made an object above");
                if last {
                    if value.is_null() {
                        map.remove(name);
                    } else {
                        map.insert(name.to_owned(), value);
                    }
                    return;
                }
                cur = map
                    .entry(name.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
            }
            Seg::Index(i) => {
                if !cur.is_array() {
                    *cur = Value::Array(Vec::new());
                }
                let list = cur.as_array_mut().expect("made a list above");
                while list.len() <= i {
                    list.push(Value::Object(Map::new()));
                }
                if last {
                    list[i] = value;
                    return;
                }
                cur = &mut list[i];
            }
        }
    }
}

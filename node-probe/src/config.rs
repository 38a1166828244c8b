//! node-probe's optional configuration file (`--config FILE`): a JSON object whose keys are
//! node-probe's long options and whose values are theirs, e.g.
//!
//! ```json
//! { "cmdline": ["vllm serve"], "metrics-listen": "127.0.0.1:9465", "requests": true }
//! ```
//!
//! The file becomes command-line arguments placed *before* the real ones, so a flag given on the
//! command line overrides the file (options that repeat, like `pid`, add to it). An unknown key,
//! a value of the wrong shape, or unreadable JSON is an error naming the file and the key.
use std::path::Path;

use serde_json::Value;

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {path}: {reason}")]
    Read {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// A key that is no option.
    #[error("config {path}: unknown key {key:?} (keys are node-probe's long options, e.g. \"metrics-listen\")")]
    UnknownKey {
        /// File.
        path: String,
        /// Key.
        key: String,
    },
    /// A value of the wrong shape for its option.
    #[error("config {path}: {key:?}: {reason}")]
    BadValue {
        /// File.
        path: String,
        /// Key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// One option as the file may set it.
#[derive(Debug, Clone)]
pub struct OptionSpec {
    /// Long name (`metrics-listen`).
    pub long: String,
    /// Takes a value (else a flag: `true` sets it, `false` leaves it unset).
    pub takes_value: bool,
}

/// The command-line arguments a configuration file stands for.
pub fn args_from_file(path: &Path, options: &[OptionSpec]) -> Result<Vec<String>, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    args_from_str(&p, &text, options)
}

/// [`args_from_file`] on text (`path` names it in errors).
pub fn args_from_str(
    path: &str,
    text: &str,
    options: &[OptionSpec],
) -> Result<Vec<String>, ConfigError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Read {
        path: path.into(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let Value::Object(map) = v else {
        return Err(ConfigError::Read {
            path: path.into(),
            reason: "not a JSON object".into(),
        });
    };
    let mut args = Vec::new();
    for (key, value) in map {
        let long = key.replace('_', "-");
        let bad = |reason: &str| ConfigError::BadValue {
            path: path.into(),
            key: key.clone(),
            reason: reason.into(),
        };
        let Some(spec) = options.iter().find(|o| o.long == long && long != "config") else {
            return Err(ConfigError::UnknownKey {
                path: path.into(),
                key,
            });
        };
        if !spec.takes_value {
            match value {
                Value::Bool(true) => args.push(format!("--{long}")),
                Value::Bool(false) => {}
                _ => return Err(bad("a flag: true or false")),
            }
            continue;
        }
        let items = match value {
            Value::Array(a) => a,
            other => vec![other],
        };
        for item in items {
            let s = match item {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(bad("a string, a number, or a list of them")),
            };
            args.push(format!("--{long}={s}"));
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<OptionSpec> {
        [
            ("pid", true),
            ("requests", true),
            ("metrics-listen", true),
            ("no-children", false),
        ]
        .into_iter()
        .map(|(l, v)| OptionSpec {
            long: l.into(),
            takes_value: v,
        })
        .collect()
    }

    #[test]
    fn file_to_args() {
        let mut s = specs();
        s[1].takes_value = false;
        let a = args_from_str(
            "f",
            r#"{"pid": [1, 2], "requests": true, "metrics_listen": "127.0.0.1:9", "no-children": false}"#,
            &s,
        )
        .unwrap();
        assert_eq!(
            a,
            // Keys in name order (the order of options does not matter to the parser).
            [
                "--metrics-listen=127.0.0.1:9",
                "--pid=1",
                "--pid=2",
                "--requests"
            ]
        );
        let e = args_from_str("f", r#"{"bogus": 1}"#, &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key \"bogus\""), "{e}");
        let e = args_from_str("f", r#"{"requests": 3}"#, &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"requests\": a flag"), "{e}");
        let e = args_from_str("f", r#"{"pid": {"x": 1}}"#, &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"pid\""), "{e}");
        assert!(args_from_str("f", "[1]", &s).is_err());
        assert!(args_from_str("f", "{", &s)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
    }
}

//! The optional configuration file of inferscope's daemons (`node-probe --config FILE`,
//! `aggregator --config FILE`): **one format for both**, a JSON object whose keys are the
//! program's long options and whose values are theirs, e.g.
//!
//! ```json
//! { "cmdline": ["vllm serve"], "metrics-listen": "127.0.0.1:9465", "requests": true }
//! ```
//!
//! The file becomes command-line arguments placed *before* the real ones, so a flag given on the
//! command line overrides the file (options that repeat, like `pid`, add to it). An unknown key,
//! a value of the wrong shape, or unreadable JSON is an error naming the file and the key.
//! Programs call [`argv_with_config`] with their clap command (built with
//! `args_override_self = true`, so that a later flag replaces an earlier one).
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
    #[error("config {path}: unknown key {key:?} (keys are the long options, as in --help)")]
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

/// `argv` with the options of its `--config FILE` (if any) placed right after the program name,
/// for the options of `cmd`.
pub fn argv_with_config(
    cmd: &clap::Command,
    argv: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    let path = argv.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--config=").map(str::to_string).or_else(|| {
            (a == "--config")
                .then(|| argv.get(i + 1).cloned())
                .flatten()
        })
    });
    let Some(path) = path else {
        return Ok(argv);
    };
    let file = args_from_file(Path::new(&path), &option_specs(cmd))?;
    Ok(argv[..1.min(argv.len())]
        .iter()
        .cloned()
        .chain(file)
        .chain(argv.iter().skip(1).cloned())
        .collect())
}

/// The long options of `cmd` as a file may set them.
pub fn option_specs(cmd: &clap::Command) -> Vec<OptionSpec> {
    cmd.get_arguments()
        .filter_map(|a| {
            Some(OptionSpec {
                long: a.get_long()?.to_string(),
                takes_value: a.get_action().takes_values(),
            })
        })
        .collect()
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

    #[test]
    fn command_line_after_file() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser, Debug)]
        #[command(args_override_self = true)]
        struct C {
            #[arg(long)]
            config: Option<String>,
            #[arg(long, default_value = "a")]
            listen: String,
            #[arg(long)]
            verbose: bool,
        }
        let dir = std::env::temp_dir().join(format!("inferscope-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.json");
        std::fs::write(&f, r#"{"listen": "file", "verbose": true}"#).unwrap();
        let argv = |extra: &[&str]| {
            let mut v = vec!["p".to_string(), format!("--config={}", f.display())];
            v.extend(extra.iter().map(|s| s.to_string()));
            argv_with_config(&C::command(), v).unwrap()
        };
        let c = C::parse_from(argv(&[]));
        assert_eq!((c.listen.as_str(), c.verbose), ("file", true));
        let c = C::parse_from(argv(&["--listen", "flag"]));
        assert_eq!(c.listen, "flag");
        std::fs::write(&f, r#"{"config": "x"}"#).unwrap();
        let e = argv_with_config(
            &C::command(),
            vec!["p".into(), "--config".into(), f.display().to_string()],
        );
        assert!(matches!(e, Err(ConfigError::UnknownKey { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

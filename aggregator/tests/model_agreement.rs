//! The request model is declared once (`inferscope_proto::PHASES`); every other place that
//! names the phases must agree with it: the protobuf `Request`, the OpenAPI description, the
//! UI's types and the CLI's tables. Adding a phase in one place only fails here.
use std::collections::BTreeSet;
use std::path::PathBuf;

use inferscope_proto::PHASES;

fn repo_file(rel: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn declared() -> BTreeSet<String> {
    PHASES.iter().map(|p| p.to_string()).collect()
}

/// The `{name}_ns` fields of `message Request` in the .proto file.
fn proto_request_fields() -> Vec<String> {
    let proto = repo_file("proto/proto/inferscope/v1/inferscope.proto");
    let body = proto
        .split("message Request {")
        .nth(1)
        .and_then(|b| b.split("\n}").next())
        .expect("message Request");
    body.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let first = w.next()?;
            let name = if first == "optional" {
                w.nth(1)?
            } else {
                w.next()?
            };
            Some(name.to_string())
        })
        .collect()
}

#[test]
fn proto_has_every_phase() {
    let fields = proto_request_fields();
    for p in PHASES {
        assert!(
            fields.contains(&format!("{p}_ns")),
            "Request lacks {p}_ns: {fields:?}"
        );
    }
}

/// The property names of an OpenAPI schema object that reference `target`.
fn openapi_refs(yaml: &str, schema: &str, target: &str) -> BTreeSet<String> {
    let block = yaml
        .split(&format!("\n    {schema}:\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("schema {schema}"));
    block
        .lines()
        .skip(2) // type: object / properties:
        .take_while(|l| l.starts_with("        "))
        .filter(|l| l.contains(target))
        .filter_map(|l| l.trim().split(':').next().map(str::to_string))
        .collect()
}

#[test]
fn openapi_agrees() {
    let yaml = repo_file("aggregator/openapi.yaml");
    assert_eq!(
        openapi_refs(&yaml, "Phases", "PhaseMean"),
        declared(),
        "openapi Phases"
    );
    assert_eq!(
        openapi_refs(&yaml, "PhaseDiffs", "PhaseDiff"),
        declared(),
        "openapi PhaseDiffs"
    );
    for p in PHASES {
        assert!(yaml.contains(&format!("{p}_ms:")), "openapi lacks {p}_ms");
    }
}

#[test]
fn ui_agrees() {
    let ts = repo_file("query-ui/src/api.ts");
    let line = ts
        .lines()
        .find(|l| l.starts_with("export const PHASES"))
        .expect("PHASES in query-ui/src/api.ts");
    let list = line
        .split('[')
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap();
    let ui: Vec<String> = list
        .split(',')
        .map(|s| s.trim().trim_matches('\'').trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(ui, PHASES.map(String::from).to_vec(), "UI PHASES, in order");
    for p in PHASES {
        assert!(ts.contains(&format!("{p}_ms")), "UI types lack {p}_ms");
    }
}

#[test]
fn cli_agrees() {
    let cli = repo_file("cli/src/print.rs");
    for p in PHASES {
        let quoted = format!("\"{p}\"");
        assert!(
            cli.matches(&quoted).count() >= 2,
            "the CLI's breakdown and requests tables both show {p}"
        );
        assert!(cli.contains(&format!("{p}_ms")), "the CLI reads {p}_ms");
    }
}

//! The Grafana dashboards under `deploy/grafana/`: every SQL query of the ClickHouse dashboard
//! (panels and variables, with the plugin's macros expanded as the plugin does) runs on the local
//! ClickHouse against stored rows and returns some, with the filter variables at "All" and at a
//! selection; every metric and label of the Prometheus dashboard is one the aggregator exports.
use std::collections::BTreeSet;

use inferscope_aggregator::latency::Sample;
use inferscope_aggregator::metrics::Metrics;
use inferscope_aggregator::store::rows::{RequestRow, StepRow};
use serde_json::Value;

mod common;
use common::{clickhouse_url, insert, now_s, open_store, request, step_row, with_db, MS, S};

fn dashboard(name: &str) -> Value {
    let path = format!(
        "{}/../deploy/grafana/dashboards/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(title, SQL)` of every panel target and query variable.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let sql = t["rawSql"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no rawSql", p["title"]));
            out.push((p["title"].as_str().unwrap().to_string(), sql.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            out.push((
                format!("variable {}", v["name"]),
                v["query"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// The filter variables: `None` is "All".
struct Selection<'a> {
    model: Option<&'a str>,
    node: Option<&'a str>,
    tag: &'a str,
}

/// Expands the ClickHouse plugin's macros and the dashboard's variables.
fn expand(sql: &str, db: &str, from: u64, to: u64, sel: &Selection) -> String {
    let mut s = sql
        .replace("${database}", db)
        .replace("$__interval_s", "60")
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
        .replace("${tag}", sel.tag);
    while let Some(i) = s.find("$__timeFilter(") {
        let end = i + s[i..].find(')').unwrap();
        let col = s[i + "$__timeFilter(".len()..end].trim().to_string();
        s.replace_range(
            i..=end,
            &format!("{col} >= toDateTime({from}) AND {col} <= toDateTime({to})"),
        );
    }
    for (var, value) in [("model", sel.model), ("node", sel.node)] {
        let pattern = format!("$__conditionalAll({var} IN (${{{var}:singlequote}}), ${var})");
        let with = match value {
            None => "1=1".to_string(),
            Some(v) => format!("{var} IN ('{v}')"),
        };
        s = s.replace(&pattern, &with);
    }
    assert!(!s.contains('$'), "unexpanded macro or variable in {s}");
    s
}

/// Runs `sql` over HTTP; returns its rows.
fn run(sql: &str) -> Vec<Value> {
    let url = clickhouse_url();
    let body = format!("{sql} FORMAT JSON");
    let resp = match ureq::post(&url).send_string(&body) {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(c, r)) => {
            panic!("HTTP {c}: {}\n{sql}", r.into_string().unwrap_or_default())
        }
        Err(e) => panic!("{e}\n{sql}"),
    };
    let v: Value = serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp}"));
    v["data"].as_array().cloned().unwrap_or_default()
}

fn rows(t0: u64) -> Vec<RequestRow> {
    (0..300u64)
        .map(|i| {
            let ph = [
                MS + i * 1000,
                5 * MS + i * 7000,
                20 * MS,
                80 * MS + i * 90_000,
                MS,
            ];
            let mut r = request(
                format!("{:032x}", 0xabc000 + i),
                t0 + i * 400 * MS,
                ["node-a", "node-b"][(i % 2) as usize],
                "vllm",
                ["m1", "m2"][(i % 3 == 0) as usize],
                200,
                ["complete", "client_abort"][(i % 17 == 0) as usize],
                Some(ph),
                0,
                true,
                vec![i],
            );
            r.tags = vec![format!("run={}", i % 2)];
            r
        })
        .collect()
}

fn step(t0: u64, i: u64) -> StepRow {
    let node = ["node-a", "node-b"][(i % 2) as usize];
    step_row(
        node,
        "1",
        i,
        t0 + i * 400 * MS,
        20 * MS + i * 10_000,
        1 + (i % 8) as u32,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_dashboard_queries_run() {
    let Some(store) = open_store("clickhouse_dashboard_queries_run").await else {
        return;
    };
    with_db(store, |store| async move {
        let now = now_s();
        let t0 = (now - 1800) * S;
        insert(&store, "requests", &rows(t0)).await;
        let steps: Vec<StepRow> = (0..300).map(|i| step(t0, i)).collect();
        insert(&store, "engine_steps", &steps).await;
        let db = store.database.clone();
        tokio::task::spawn_blocking(move || {
            let d = dashboard("inferscope-clickhouse.json");
            let qs = queries(&d);
            assert!(qs.len() >= 8, "{} queries", qs.len());
            let all = Selection {
                model: None,
                node: None,
                tag: "",
            };
            let some = Selection {
                model: Some("m1"),
                node: Some("node-a"),
                tag: "run=0",
            };
            for sel in [&all, &some] {
                for (title, sql) in &qs {
                    let sql = expand(sql, &db, now - 3600, now, sel);
                    let rows = run(&sql);
                    assert!(!rows.is_empty(), "{title}: no rows\n{sql}");
                }
            }
            // The selection filters: the slowest-requests table holds only the chosen model/node/run.
            let slowest = qs.iter().find(|(t, _)| t == "Slowest requests").unwrap();
            for r in run(&expand(&slowest.1, &db, now - 3600, now, &some)) {
                assert_eq!(
                    (r["model"].as_str(), r["node"].as_str()),
                    (Some("m1"), Some("node-a"))
                );
            }
            // The trace link opens the UI's trace route.
            let text = d.to_string();
            assert!(text.contains("${ui_url}/#/trace/${__data.fields.trace_id}"));
        })
        .await
        .unwrap();
    })
    .await;
}

#[test]
fn prometheus_dashboard_uses_exported_names() {
    let d = dashboard("inferscope-prometheus.json");
    let m = Metrics::default();
    let mut row = request(
        "0".repeat(32),
        S,
        "n",
        "vllm",
        "m",
        200,
        "complete",
        Some([MS; 5]),
        0,
        true,
        vec![],
    );
    row.tpot_ns = Some(MS);
    m.latency.observe(&[Sample::of(&row)]);
    let text = m.render();
    let mut exprs: Vec<String> = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    let word = regex_lite_words(&exprs.join(" "));
    let names: BTreeSet<&String> = word
        .iter()
        .filter(|w| w.starts_with("gen_ai_server_") || w.starts_with("inferscope_"))
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for n in names {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .unwrap_or(n);
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "{n} is not exported"
        );
    }
    for label in ["gen_ai_request_model", "node", "phase", "le"] {
        assert!(
            text.contains(&format!("{label}=\"")),
            "label {label} is not exported"
        );
    }
}

/// The identifiers of a PromQL text.
fn regex_lite_words(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

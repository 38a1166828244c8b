//! Tenant labels from ingest to every query: stored with the request, listed by
//! `/api/v1/filters`, a filter of the breakdown, the request list and the samples (what the gate
//! reads), and a dimension of `/api/v1/groups`; a bad `by` is a clear 400.
use inferscope_proto::v1::ack::Status as AckStatus;

mod common;
use common::cli;
use common::ingest::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_is_a_filter_and_a_dimension() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start("tenant").await;
    let mut b = batch(1, 30, 5);
    for (i, r) in b.resources[0].requests.iter_mut().enumerate() {
        // 15 acme (slow), 10 beta, 5 without a label.
        r.tenant = match i % 6 {
            0..=2 => "acme",
            3 | 4 => "beta",
            _ => "",
        }
        .into();
        if r.tenant == "acme" {
            r.e2e_ns = 4_000_000;
            r.ttft_ns = 3_000_000;
        }
        if i == 3 {
            r.status = 503;
        }
    }
    let acks = send(agg.grpc, Some("s3cret"), vec![b]).await.unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32, "{acks:?}");
    let now = now_ns() / 1_000_000_000;
    let w = format!("from={}&to={}", now - 3600, now + 60);

    let (code, f) = agg.get(&format!("/api/v1/filters?{w}"));
    assert_eq!(code, 200, "{f}");
    assert_eq!(f["tenants"], serde_json::json!(["acme", "beta"]));

    let (_, bd) = agg.get(&format!("/api/v1/breakdown?{w}&tenant=acme"));
    assert_eq!(bd["samples"]["e2e"], 15, "{bd}");
    let (_, rq) = agg.get(&format!("/api/v1/requests?{w}&tenant=beta&limit=100"));
    assert_eq!(rq["requests"].as_array().map(Vec::len), Some(10), "{rq}");
    let (_, sm) = agg.get(&format!("/api/v1/samples?{w}&tenant=beta"));
    assert_eq!(sm["count"], 10, "{sm}");

    let (code, g) = agg.get(&format!("/api/v1/groups?{w}&by=tenant"));
    assert_eq!(code, 200, "{g}");
    assert_eq!(
        (g["by"].as_str(), g["count"].as_u64()),
        (Some("tenant"), Some(30))
    );
    let groups = g["groups"].as_array().unwrap();
    let row = |v: &str| groups.iter().find(|x| x["value"] == v).unwrap();
    assert_eq!(groups[0]["value"], "acme", "busiest first: {g}");
    assert_eq!(
        (row("acme")["count"].as_u64(), row("beta")["count"].as_u64()),
        (Some(15), Some(10))
    );
    assert_eq!(row("")["count"], 5);
    assert_eq!(row("beta")["errors"], 1);
    assert_eq!(row("acme")["e2e_ms"], serde_json::json!([4.0, 4.0, 4.0]));
    assert_eq!(row("beta")["e2e_ms"][0], 5.0);
    assert_eq!(
        row("acme")["tpot_ms"],
        serde_json::json!([null, null, null])
    );
    // Filters and a limit apply to groups too.
    let (_, g) = agg.get(&format!("/api/v1/groups?{w}&by=tenant&status=5xx"));
    assert_eq!(g["groups"].as_array().unwrap().len(), 1, "{g}");
    let (_, g) = agg.get(&format!("/api/v1/groups?{w}&by=model&limit=1&tenant=acme"));
    assert_eq!(
        (g["groups"][0]["count"].as_u64(), g["truncated"].as_bool()),
        (Some(15), Some(false))
    );
    let (_, g) = agg.get(&format!("/api/v1/groups?{w}&by=tenant&limit=1"));
    assert_eq!(
        (g["count"].as_u64(), g["truncated"].as_bool()),
        (Some(30), Some(true))
    );

    // The CLI: a table per tenant, and the tenant filter of every command.
    let api = format!("http://{}", agg.http);
    let (from, to) = ((now - 3600).to_string(), (now + 60).to_string());
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = ["--api", &api, "--from", &from, "--to", &to]
            .map(String::from)
            .to_vec();
        a.splice(0..0, extra.iter().map(|s| s.to_string()));
        a
    };
    let (rc, out, _) = cli(args(&["groups", "--by", "tenant"])).await;
    assert_eq!(rc, 0);
    let acme = out
        .lines()
        .find(|l| l.starts_with("acme"))
        .expect("acme row");
    assert!(acme.split_whitespace().nth(1) == Some("15"), "{out}");
    assert!(
        out.contains("(none)") && out.contains("30 requests by tenant"),
        "{out}"
    );
    let (rc, out, _) = cli(args(&["breakdown", "--tenant", "beta"])).await;
    assert_eq!(rc, 0, "{out}");

    let (code, e) = agg.get(&format!("/api/v1/groups?{w}&by=path"));
    assert_eq!(code, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("tenant"),
        "{e}"
    );
    agg.stop().await;
}

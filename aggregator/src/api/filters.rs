//! `GET /api/v1/filters`: the distinct models, nodes, engines, statuses, outcomes, run tags and
//! tenants of a window, for UI dropdowns and CLI completion.
use axum::extract::State;
use axum::Json;
use clickhouse::Row;
use serde::Deserialize;

use super::params::{Window, WindowExt as _};
use super::sql::Sql;
use super::{params_of, ApiState, QueryPairs};
use crate::error::ApiError;
use crate::store::Store;

pub use inferscope_api::filters::FilterValues;

/// Most values returned per list.
pub const MAX_VALUES: usize = 1000;

#[derive(Row, Deserialize)]
struct Row5 {
    count: u64,
    models: Vec<String>,
    nodes: Vec<String>,
    engines: Vec<String>,
    statuses: Vec<u16>,
    outcomes: Vec<String>,
    tags: Vec<String>,
    tenants: Vec<String>,
}

/// Handler.
pub async fn handler(
    State(s): State<ApiState>,
    q: QueryPairs,
) -> Result<Json<FilterValues>, ApiError> {
    let p = params_of(q, &["from", "to"])?;
    let w = Window::from_params(&p)?;
    Ok(Json(filter_values(&s.store, &w).await?))
}

/// Distinct values in `w`.
pub async fn filter_values(store: &Store, w: &Window) -> Result<FilterValues, ApiError> {
    // groupUniqArray(N)(x) is not available on 18.16; these columns have few distinct values.
    let mut sql = Sql::new(
        "SELECT count(), groupUniqArray(model), groupUniqArray(node), groupUniqArray(engine), \
         groupUniqArray(status), groupUniqArray(outcome), groupUniqArrayArray(tags), \
         groupUniqArray(tenant) FROM ",
    );
    sql.push(&store.table("requests")).push(" WHERE ");
    w.push_where(&mut sql);
    let r: Row5 = sql.fetch_one(store.client(), "filters").await?;
    let mut truncated = false;
    let mut clean = |mut v: Vec<String>| {
        v.retain(|s| !s.is_empty());
        v.sort();
        truncated |= v.len() > MAX_VALUES;
        v.truncate(MAX_VALUES);
        v
    };
    let models = clean(r.models);
    let nodes = clean(r.nodes);
    let engines = clean(r.engines);
    let outcomes = clean(r.outcomes);
    let tags = clean(r.tags);
    let tenants = clean(r.tenants);
    let mut statuses = r.statuses;
    statuses.sort_unstable();
    Ok(FilterValues {
        window: w.clone(),
        count: r.count,
        models,
        nodes,
        engines,
        statuses,
        outcomes,
        tags,
        tenants,
        truncated,
    })
}

//! `/traces`: traces with a span matching service, name or route, duration,
//! errors and an attribute, newest or slowest first.

use axum::extract::{Query, State};
use maud::html;

use super::layout::{self, Nav, Page};
use super::params::{self, Params, TimeRange};
use super::queries::{self, TraceFilter};
use super::{PageError, PageResult, Ui};

const LIMIT: u32 = 100;

pub async fn page(State(ui): State<Ui>, Query(p): Query<Params>) -> PageResult {
    let range = TimeRange::parse(&p)?;
    let filter = filter(&p)?;
    let c = &ui.client;
    let (hits, services, names) = tokio::try_join!(
        queries::search_traces(c, &range, &filter, LIMIT),
        queries::service_names(c, &range, false),
        queries::span_names(c, &range, &filter.service),
    )?;
    let rq = range.query();
    let attr = p.get("attr").to_string();
    let body = html! {
        form.filters method="get" id="search" {
            (layout::range_inputs(&range))
            (layout::service_select(&services, &filter.service))
            label { "span name or route"
                input name="name" list="span-names" value=(filter.name) placeholder="GET /orders/{id}";
                datalist id="span-names" { @for n in &names { option value=(n) {} } }
            }
            label { "min duration (ms)" input name="min_ms" value=(p.get("min_ms")) size="6"; }
            label { "max duration (ms)" input name="max_ms" value=(p.get("max_ms")) size="6"; }
            label { "attribute key=value" input name="attr" value=(attr) placeholder="http.response.status_code=500"; }
            label.check { input type="checkbox" name="errors" value="1" checked[filter.errors_only]; "errors only" }
            label { "order"
                select name="sort" {
                    option value="newest" selected[!filter.slowest_first] { "newest first" }
                    option value="slowest" selected[filter.slowest_first] { "slowest first" }
                }
            }
            button type="submit" { "Search" }
        }
        @if hits.is_empty() {
            @if services.is_empty() {
                (layout::no_data(&ui.endpoints, "traces"))
            } @else {
                (layout::none_matched("traces"))
            }
        } @else {
            table #traces {
                thead { tr {
                    th { "start" } th { "trace" } th { "root service" } th { "root span" }
                    th.num { "duration" } th.num { "spans" } th.num { "services" } th.num { "errors" } th { "" }
                } }
                tbody {
                    @for h in &hits {
                        tr {
                            td.mono { (params::timestamp(h.start)) }
                            td { (layout::trace_link(&h.trace_id, layout::short_id(&h.trace_id))) }
                            td { (layout::service_link(&h.service, &rq)) }
                            td { (h.name) }
                            td.num { (params::duration(h.duration as f64)) }
                            td.num { (h.spans) }
                            td.num { (h.services) }
                            td.num.bad[h.errors > 0] { (h.errors) }
                            td { a href={"/logs?" (rq) "&trace_id=" (params::enc(&h.trace_id))} { "logs" } }
                        }
                    }
                }
            }
            p.muted { (hits.len()) " traces" @if hits.len() as u32 == LIMIT { " (the first " (LIMIT) ")" } "; a trace is listed when one of its spans matches every filter." }
        }
    };
    Ok(layout::render(
        Page {
            title: "Traces".into(),
            nav: Nav::Traces,
            range: &range,
            keep: vec![
                ("service", filter.service.clone()),
                ("name", filter.name.clone()),
                ("min_ms", p.get("min_ms").into()),
                ("max_ms", p.get("max_ms").into()),
                ("attr", attr.clone()),
                (
                    "errors",
                    if filter.errors_only {
                        "1".into()
                    } else {
                        String::new()
                    },
                ),
                ("sort", p.get("sort").into()),
            ],
        },
        body,
    ))
}

fn filter(p: &Params) -> Result<TraceFilter, PageError> {
    let (attr_key, attr_value) = match p.get("attr") {
        "" => (String::new(), String::new()),
        a => match a.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => (k.trim().to_string(), v.trim().to_string()),
            _ => {
                return Err(PageError::bad_input(format!(
                    "attribute filter {a:?}: write key=value"
                )))
            }
        },
    };
    let sort = p.get("sort");
    if !matches!(sort, "" | "newest" | "slowest") {
        return Err(PageError::bad_input(format!(
            "order {sort:?}: newest or slowest"
        )));
    }
    let f = TraceFilter {
        service: p.get("service").into(),
        name: p.get("name").into(),
        min_ns: p.millis_as_nanos("min_ms", "min duration")?,
        max_ns: p.millis_as_nanos("max_ms", "max duration")?,
        errors_only: p.flag("errors"),
        attr_key,
        attr_value,
        slowest_first: sort == "slowest",
    };
    if f.max_ns > 0 && f.max_ns < f.min_ns {
        return Err(PageError::bad_input(
            "the max duration is below the min duration",
        ));
    }
    Ok(f)
}

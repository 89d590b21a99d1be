//! `/service/{name}`: one service's routes, latency and errors over time, its
//! slowest requests, recent errors and what it calls.

use axum::extract::{Path, Query, State};
use maud::{html, Markup};

use super::charts::{line_chart, zero_filled, Series, Unit, PALETTE};
use super::layout::{self, Nav, Page};
use super::params::{self, enc, Params, TimeRange};
use super::queries::{self, EdgesOf, RedBy, SpanList, SpanSummary};
use super::services::group_series;
use super::{PageResult, Ui};

pub async fn page(
    State(ui): State<Ui>,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> PageResult {
    let range = TimeRange::parse(&p)?;
    let (_, grain) = queries::rollup(&range);
    let step = range.step(grain);
    let c = &ui.client;
    let (routes, versions, series, slowest, errors, downstream, upstream, outgoing) = tokio::try_join!(
        queries::red(c, &range, RedBy::Route, &name),
        queries::red(c, &range, RedBy::ServiceVersion, &name),
        queries::red_series(c, &range, RedBy::Service, &name, step),
        queries::service_spans(c, &range, &name, SpanList::SlowestRequests, 15),
        queries::service_spans(c, &range, &name, SpanList::RecentErrors, 15),
        queries::edges(c, &range, EdgesOf::From(&name)),
        queries::edges(c, &range, EdgesOf::To(&name)),
        queries::outgoing(c, &range, &name),
    )?;
    let rq = range.query();
    let grouped = group_series(&series);
    let points = grouped.get(name.as_str()).cloned().unwrap_or_default();
    let pts = |f: &dyn Fn(&queries::RedPoint) -> f64| -> Vec<(u32, f64)> {
        points.iter().map(|p| (p.t, f(p))).collect()
    };
    let nothing =
        routes.is_empty() && slowest.is_empty() && errors.is_empty() && outgoing.is_empty();
    let body = html! {
        p {
            a href={"/traces?" (rq) "&service=" (enc(&name))} { "Search its traces" } " · "
            a href={"/logs?" (rq) "&service=" (enc(&name))} { "its logs" } " · "
            a href={"/map?" (rq)} { "the service map" }
        }
        @if nothing {
            (layout::no_data(&ui.endpoints, &format!("spans of {name}")))
        } @else {
            div.grid2 {
                (line_chart("Latency p50 / p99", Unit::Nanos, &range, &[
                    Series { label: "p50".into(), color: PALETTE[0], points: pts(&|p| p.q.first().copied().unwrap_or(f64::NAN)) },
                    Series { label: "p99".into(), color: PALETTE[1], points: pts(&|p| p.q.get(2).copied().unwrap_or(f64::NAN)) },
                ]))
                (line_chart("Requests and errors per second", Unit::PerSecond, &range, &[
                    Series { label: "requests".into(), color: PALETTE[2], points: zero_filled(&pts(&|p| p.requests as f64 / f64::from(step)), &range, step) },
                    Series { label: "errors".into(), color: PALETTE[1], points: zero_filled(&pts(&|p| p.errors as f64 / f64::from(step)), &range, step) },
                ]))
            }
            h2 { "Routes and operations" }
            @if routes.is_empty() {
                p.muted { "No SERVER spans of this service in the range." }
            } @else {
                table #routes {
                    thead { tr { th { "route" } (layout::red_heads()) th { "" } } }
                    tbody {
                        @for r in &routes {
                            tr {
                                td { (r.key) }
                                (layout::red_cells(r, &range))
                                td { a href={"/traces?" (rq) "&service=" (enc(&name)) "&name=" (enc(&r.key)) "&sort=slowest"} { "traces" } }
                            }
                        }
                    }
                }
            }
            @if versions.len() > 1 {
                h2 { "Versions" }
                table #versions {
                    thead { tr { th { "service.version" } (layout::red_heads()) } }
                    tbody {
                        @for v in &versions {
                            tr { td { (if v.sub.is_empty() { "(none)" } else { &v.sub }) } (layout::red_cells(v, &range)) }
                        }
                    }
                }
            }
            h2 { "Downstream calls" }
            @if downstream.is_empty() && outgoing.is_empty() {
                p.muted { "It called no other service in this range." }
            } @else {
                @if !downstream.is_empty() {
                    table #downstream {
                        thead { tr { th { "calls" } th { "via" } th.num { "rate" } th.num { "error %" } th.num { "p99 (callee)" } } }
                        tbody {
                            @for e in &downstream {
                                tr {
                                    td { (layout::service_link(&e.child, &rq)) }
                                    td { (e.via) }
                                    td.num { (Unit::PerSecond.format(e.calls as f64 / f64::from(range.seconds()))) }
                                    td.num { (format!("{:.2}", 100.0 * e.errors as f64 / e.calls.max(1) as f64)) }
                                    td.num { (params::duration(e.p99)) }
                                }
                            }
                        }
                    }
                }
                @if !outgoing.is_empty() {
                    h2 { "Outgoing spans" }
                    table #outgoing {
                        thead { tr { th { "span" } th { "kind" } th.num { "calls" } th.num { "error %" } th.num { "p99" } } }
                        tbody {
                            @for o in &outgoing {
                                tr {
                                    td { (o.name) }
                                    td { (layout::kind_badge(&o.kind)) }
                                    td.num { (o.calls) }
                                    td.num { (format!("{:.2}", 100.0 * o.errors as f64 / o.calls.max(1) as f64)) }
                                    td.num { (params::duration(o.p99)) }
                                }
                            }
                        }
                    }
                }
            }
            @if !upstream.is_empty() {
                h2 { "Called by" }
                p { @for e in &upstream { (layout::service_link(&e.parent, &rq)) " " } }
            }
            h2 { "Slowest requests" }
            (span_table("slowest", &slowest))
            h2 { "Recent errors" }
            (span_table("errors", &errors))
        }
    };
    Ok(layout::render(
        Page {
            title: format!("Service {name}"),
            nav: Nav::Services,
            range: &range,
            keep: vec![],
        },
        body,
    ))
}

fn span_table(id: &str, spans: &[SpanSummary]) -> Markup {
    html! {
        @if spans.is_empty() {
            p.muted { "None in this range." }
        } @else {
            table id=(id) {
                thead { tr { th { "time" } th { "trace" } th { "kind" } th { "route / span" } th { "status" } th.num { "duration" } } }
                tbody {
                    @for s in spans {
                        tr {
                            td.mono { (params::timestamp(s.ts)) }
                            td { (layout::trace_link(&s.trace_id, layout::short_id(&s.trace_id))) }
                            td { (layout::kind_badge(&s.kind)) }
                            td { (s.route) }
                            td.bad[layout::is_error(&s.status, &s.http_status)] {
                                (if s.http_status.is_empty() { &s.status } else { &s.http_status })
                                @if !s.message.is_empty() { " " span.muted { (s.message) } }
                            }
                            td.num { (params::duration(s.duration as f64)) }
                        }
                    }
                }
            }
        }
    }
}

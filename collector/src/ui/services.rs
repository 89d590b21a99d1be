//! `/`: every service (and each `service.version` of it) with rate, errors and
//! latency from the rollups, sparklines, and charts over the range.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use maud::html;

use super::charts::{self, color_of, line_chart, sparkline, Series, Unit};
use super::layout::{self, Nav, Page};
use super::params::{Params, TimeRange};
use super::queries::{self, RedBy, RedPoint};
use super::{PageResult, Ui};

pub async fn page(State(ui): State<Ui>, Query(p): Query<Params>) -> PageResult {
    let range = TimeRange::parse(&p)?;
    let (_, grain) = queries::rollup(&range);
    let step = range.step(grain);
    let (services, versions, series, spans) = tokio::try_join!(
        queries::red(&ui.client, &range, RedBy::Service, ""),
        queries::red(&ui.client, &range, RedBy::ServiceVersion, ""),
        queries::red_series(&ui.client, &range, RedBy::Service, "", step),
        queries::services_with_spans(&ui.client, &range),
    )?;
    let rq = range.query();
    let by_service = group_series(&series);
    let without_server: Vec<_> = spans
        .iter()
        .filter(|s| !services.iter().any(|r| r.key == s.service))
        .collect();
    let body = html! {
        @if services.is_empty() && spans.is_empty() {
            (layout::no_data(&ui.endpoints, "spans"))
        } @else {
            @if services.is_empty() {
                p.muted { "No SERVER spans in this range: the figures below count requests a service served." }
            } @else {
                table #services {
                    thead { tr {
                        th { "service / version" } (layout::red_heads())
                        th { "rate over time" } th { "p99 over time" }
                    } }
                    tbody {
                        @for s in &services {
                            @let points = by_service.get(s.key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
                            @let own: Vec<_> = versions.iter().filter(|v| v.key == s.key).collect();
                            tr.service {
                                td {
                                    (layout::service_link(&s.key, &rq))
                                    // One version: its name is enough; several get a row each.
                                    @if let [only] = own.as_slice() { " " span.muted { (only.sub) } }
                                }
                                (layout::red_cells(s, &range))
                                td { (sparkline(&rate_values(points, &range, step), color_of(&s.key))) }
                                td { (sparkline(&quantile_values(points, 2), color_of(&s.key))) }
                            }
                            @for v in own.iter().filter(|_| own.len() > 1) {
                                tr.sub {
                                    td { "version " (if v.sub.is_empty() { "(none)" } else { &v.sub }) }
                                    (layout::red_cells(v, &range))
                                    td {} td {}
                                }
                            }
                        }
                    }
                }
                div.grid2 style="margin-top:14px" {
                    (line_chart("Requests per second", Unit::PerSecond, &range,
                        &by_service.iter().map(|(name, pts)| Series {
                            label: name.to_string(), color: color_of(name),
                            points: charts::zero_filled(&pts.iter().map(|p| (p.t, p.requests as f64 / f64::from(step))).collect::<Vec<_>>(), &range, step),
                        }).collect::<Vec<_>>()))
                    (line_chart("p99 latency", Unit::Nanos, &range,
                        &by_service.iter().map(|(name, pts)| Series {
                            label: name.to_string(), color: color_of(name),
                            points: pts.iter().map(|p| (p.t, p.q.get(2).copied().unwrap_or(f64::NAN))).collect(),
                        }).collect::<Vec<_>>()))
                }
            }
            @if !without_server.is_empty() {
                h2 { "Services without SERVER spans" }
                p.muted { "Workers and clients: their spans are searchable, the rollups count only requests served." }
                table #other-services {
                    thead { tr { th { "service" } th.num { "spans" } th { "" } } }
                    tbody {
                        @for s in &without_server {
                            tr {
                                td { (layout::service_link(&s.service, &rq)) }
                                td.num { (s.spans) }
                                td { a href={"/traces?" (rq) "&service=" (super::params::enc(&s.service))} { "traces" } }
                            }
                        }
                    }
                }
            }
            p.muted { "Rate, errors and latency of SERVER spans from the "
                code { (queries::rollup(&range).0) } " rollup (quantiles within 1 %)." }
        }
    };
    Ok(layout::render(
        Page {
            title: "Services".into(),
            nav: Nav::Services,
            range: &range,
            keep: vec![],
        },
        body,
    ))
}

/// Points per key, in time order.
pub fn group_series(points: &[RedPoint]) -> BTreeMap<&str, Vec<&RedPoint>> {
    let mut out: BTreeMap<&str, Vec<&RedPoint>> = BTreeMap::new();
    for p in points {
        out.entry(p.key.as_str()).or_default().push(p);
    }
    out
}

pub fn rate_values(points: &[&RedPoint], range: &TimeRange, step: u32) -> Vec<f64> {
    let given: Vec<(u32, f64)> = points
        .iter()
        .map(|p| (p.t, p.requests as f64 / f64::from(step)))
        .collect();
    charts::zero_filled(&given, range, step)
        .into_iter()
        .map(|p| p.1)
        .collect()
}

pub fn quantile_values(points: &[&RedPoint], i: usize) -> Vec<f64> {
    points
        .iter()
        .map(|p| p.q.get(i).copied().unwrap_or(f64::NAN))
        .collect()
}

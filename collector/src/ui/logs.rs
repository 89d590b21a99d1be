//! `/logs`: log lines by service, minimum severity, text (through the body
//! index) and trace id, newest first; each line links to its trace.

use axum::extract::{Query, State};
use maud::html;

use super::layout::{self, Nav, Page};
use super::params::{self, Params, TimeRange};
use super::queries::{self, LogFilter};
use super::{PageError, PageResult, Ui};

const LIMIT: u32 = 300;

/// OTLP severity numbers where each level starts.
const SEVERITIES: [(&str, u8); 6] = [
    ("trace", 1),
    ("debug", 5),
    ("info", 9),
    ("warn", 13),
    ("error", 17),
    ("fatal", 21),
];

pub async fn page(State(ui): State<Ui>, Query(p): Query<Params>) -> PageResult {
    let range = TimeRange::parse(&p)?;
    let severity = p.get("severity");
    let min_severity = match severity {
        "" => 0,
        s => SEVERITIES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, n)| *n)
            .ok_or_else(|| {
                PageError::bad_input(format!(
                    "severity {s:?}: one of trace, debug, info, warn, error, fatal"
                ))
            })?,
    };
    let filter = LogFilter {
        service: p.get("service").into(),
        min_severity,
        text: p.get("q").into(),
        trace_id: p.get("trace_id").to_ascii_lowercase(),
    };
    let (lines, services) = tokio::try_join!(
        queries::logs(&ui.client, &range, &filter, LIMIT),
        queries::service_names(&ui.client, &range, true),
    )?;
    let rq = range.query();
    let body = html! {
        form.filters method="get" id="log-search" {
            (layout::range_inputs(&range))
            (layout::service_select(&services, &filter.service))
            label { "severity at least"
                select name="severity" {
                    option value="" { "any" }
                    @for (name, _) in SEVERITIES { option value=(name) selected[name.eq_ignore_ascii_case(severity)] { (name) } }
                }
            }
            label { "text" input name="q" value=(filter.text) size="30" placeholder="connection refused"; }
            label { "trace id" input name="trace_id" value=(filter.trace_id) size="34" class="mono"; }
            button type="submit" { "Search" }
        }
        @if lines.is_empty() {
            @if services.is_empty() {
                (layout::no_data(&ui.endpoints, "log lines"))
            } @else {
                (layout::none_matched("log lines"))
            }
        } @else {
            table #logs {
                thead { tr { th { "time" } th { "service" } th { "severity" } th { "message" } th { "trace" } } }
                tbody {
                    @for l in &lines {
                        tr {
                            td.mono { (params::timestamp(l.ts)) }
                            td { (layout::service_link(&l.service, &rq)) }
                            td { span class={"sev " (l.severity.to_ascii_lowercase())} { (l.severity) } }
                            td.body { (l.body) }
                            td {
                                @if !l.trace_id.is_empty() {
                                    a.mono href={"/trace/" (params::enc(&l.trace_id)) "#span-" (params::enc(&l.span_id))} { (layout::short_id(&l.trace_id)) }
                                }
                            }
                        }
                    }
                }
            }
            p.muted {
                (lines.len()) " lines" @if lines.len() as u32 == LIMIT { " (the newest " (LIMIT) ")" }
                @if !filter.text.is_empty() { "; the text matches whole words, case-insensitively" }
            }
        }
    };
    Ok(layout::render(
        Page {
            title: "Logs".into(),
            nav: Nav::Logs,
            range: &range,
            keep: vec![
                ("service", filter.service.clone()),
                ("severity", severity.into()),
                ("q", filter.text.clone()),
                ("trace_id", filter.trace_id.clone()),
            ],
        },
        body,
    ))
}

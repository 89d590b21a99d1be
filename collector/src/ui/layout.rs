//! The page shell every page shares: navigation, the time-range picker, styles,
//! and the small pieces several pages show (RED cells, empty states, badges).

use axum::http::StatusCode;
use axum::response::Html;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::charts::color_of;
use super::params::{self, enc, TimeRange, PRESETS};
use super::queries::RedRow;
use super::Endpoints;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Services,
    Traces,
    Logs,
    Map,
    Collector,
}

const NAV: [(Nav, &str, &str); 5] = [
    (Nav::Services, "/", "Services"),
    (Nav::Traces, "/traces", "Traces"),
    (Nav::Logs, "/logs", "Logs"),
    (Nav::Map, "/map", "Service map"),
    (Nav::Collector, "/collector", "Collector"),
];

pub struct Page<'a> {
    pub title: String,
    pub nav: Nav,
    pub range: &'a TimeRange,
    /// The page's own query parameters, kept when the range changes.
    pub keep: Vec<(&'static str, String)>,
}

pub fn render(page: Page<'_>, body: Markup) -> Html<String> {
    let range = page.range;
    let rq = range.query();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title) " · collector" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header.top {
                    a.brand href={"/?" (rq)} { "collector" }
                    nav {
                        @for (nav, href, label) in NAV {
                            a.active[nav == page.nav] href={(href) "?" (rq)} { (label) }
                        }
                    }
                    form.picker method="get" {
                        @for (name, value) in &page.keep {
                            @if !value.is_empty() {
                                input type="hidden" name=(name) value=(value);
                            }
                        }
                        select name="range" id="range" onchange="pickRange(this)" {
                            @for (value, label, _) in PRESETS {
                                option value=(value) selected[range.preset == value] { (label) }
                            }
                            option value="" selected[range.preset.is_empty()] { "custom…" }
                        }
                        span.custom.hidden[!range.preset.is_empty()] {
                            input type="datetime-local" name="from" value=(params::datetime_local(range.from)) title="from (UTC)";
                            " – "
                            input type="datetime-local" name="to" value=(params::datetime_local(range.to)) title="to (UTC)";
                            button type="submit" { "Apply" }
                        }
                        span.muted.when { "UTC" }
                    }
                }
                main {
                    h1 { (page.title) }
                    (body)
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    Html(markup.into_string())
}

pub fn error_page(status: StatusCode, message: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " · collector" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header.top { a.brand href="/" { "collector" } }
                main {
                    h1 { (status.canonical_reason().unwrap_or("Error")) }
                    p.problem { (message) }
                    p { a href="/" { "Back to the services" } }
                }
            }
        }
    }
    .into_string()
}

/// The range as hidden fields of a filter form, so searching keeps it.
pub fn range_inputs(range: &TimeRange) -> Markup {
    html! {
        input type="hidden" name="range" value=(range.preset);
        @if range.preset.is_empty() {
            input type="hidden" name="from" value=(range.from);
            input type="hidden" name="to" value=(range.to);
        }
    }
}

/// A filter form's service choice: any, or one of `services`.
pub fn service_select(services: &[String], selected: &str) -> Markup {
    html! {
        label { "service"
            select name="service" {
                option value="" { "any" }
                @for s in services { option value=(s) selected[s == selected] { (s) } }
            }
        }
    }
}

/// "No data yet": what to do to get some.
pub fn no_data(endpoints: &Endpoints, what: &str) -> Markup {
    html! {
        div.empty {
            p { strong { "No " (what) " in this time range yet." } }
            p {
                "Point an OTLP exporter at this collector: gRPC "
                code { "http://" (endpoints.grpc) }
                " or HTTP "
                code { "http://" (endpoints.http) "/v1/traces" }
                " (" code { "/v1/logs" } ", " code { "/v1/metrics" } "), e.g. "
                code { "OTEL_EXPORTER_OTLP_ENDPOINT=http://" (endpoints.grpc) }
                ". Or widen the time range above."
            }
        }
    }
}

/// A nothing-matched note for filtered lists.
pub fn none_matched(what: &str) -> Markup {
    html! { p.muted.none { "No " (what) " match these filters in this time range." } }
}

pub fn service_link(name: &str, rq: &str) -> Markup {
    html! {
        a.service href={"/service/" (enc(name)) "?" (rq)} {
            span.dot style={"background:" (color_of(name))} {} (name)
        }
    }
}

pub fn trace_link(trace_id: &str, text: &str) -> Markup {
    html! { a.mono href={"/trace/" (enc(trace_id))} { (text) } }
}

pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The column heads matching [`red_cells`].
pub fn red_heads() -> Markup {
    html! {
        th.num { "rate" } th.num { "error %" } th.num { "p50" } th.num { "p95" }
        th.num { "p99" } th.num { "p99.9" } th.num { "requests" }
    }
}

pub fn red_cells(r: &RedRow, range: &TimeRange) -> Markup {
    let rate = r.requests as f64 / f64::from(range.seconds());
    let err = r.error_pct();
    html! {
        td.num { (super::charts::Unit::PerSecond.format(rate)) }
        td.num.bad[err >= 1.0] { (format!("{err:.2}")) }
        @for i in 0..4 {
            td.num { (params::duration(r.quantile(i))) }
        }
        td.num { (r.requests) }
    }
}

pub fn kind_badge(kind: &str) -> Markup {
    html! { span.kind.{(kind.to_ascii_lowercase())} { (kind) } }
}

pub fn is_error(status: &str, http_status: &str) -> bool {
    status == "Error" || http_status.parse::<u16>().is_ok_and(|s| s >= 500)
}

const SCRIPT: &str = r#"
function pickRange(sel) {
  var custom = sel.form.querySelector('.custom');
  if (sel.value === '') { custom.classList.remove('hidden'); return; }
  custom.querySelectorAll('input').forEach(function (i) { i.disabled = true; });
  sel.form.submit();
}
"#;

const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2937;background:#f6f7f9}
a{color:#1d4ed8;text-decoration:none}a:hover{text-decoration:underline}
header.top{display:flex;align-items:center;gap:18px;flex-wrap:wrap;padding:8px 20px;background:#111827;color:#e5e7eb}
header.top a{color:#d1d5db}header.top a.active{color:#fff;border-bottom:2px solid #60a5fa}
.brand{font-weight:700;color:#fff!important;margin-right:6px}
nav{display:flex;gap:14px}
.picker{margin-left:auto;display:flex;gap:6px;align-items:center}
.picker select,.picker input,.picker button{font:inherit;font-size:13px;padding:2px 4px}
.hidden{display:none}.when{color:#9ca3af;font-size:12px}
main{padding:14px 20px 40px;max-width:1500px}
h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #e5e7eb}
th,td{padding:5px 8px;border-bottom:1px solid #eef0f3;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600;font-size:12px;color:#4b5563;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.sub td{background:#fafafa;font-size:13px}tr.sub td:first-child{padding-left:28px}
.bad{color:#b91c1c;font-weight:600}.muted{color:#6b7280}
.mono,code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px}
figure.chart{margin:0;background:#fff;border:1px solid #e5e7eb;padding:8px 10px}
figure.chart figcaption{font-weight:600;font-size:13px;margin-bottom:4px}
figure.chart svg{width:100%;height:auto}
line.grid{stroke:#e5e7eb}text.axis{font-size:10px;fill:#6b7280}
ul.legend{list-style:none;margin:4px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:10px;font-size:12px}
.swatch{display:inline-block;width:10px;height:3px;margin-right:4px;vertical-align:middle}
svg.spark{vertical-align:middle}
.empty{background:#fff;border:1px dashed #9ca3af;padding:14px 18px;margin:10px 0}
.problem{background:#fef2f2;border:1px solid #fecaca;padding:10px 14px;white-space:pre-wrap}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:end;background:#fff;border:1px solid #e5e7eb;padding:10px 12px;margin-bottom:12px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#4b5563;gap:2px}
form.filters label.check{flex-direction:row;align-items:center;gap:4px;padding-bottom:6px}
form.filters label.check input{min-width:0}
form.filters input,form.filters select{font:inherit;padding:3px 5px;min-width:90px}
form.filters button{font:inherit;padding:4px 14px}
.kind{font-size:11px;padding:0 5px;border-radius:3px;background:#e5e7eb;color:#374151}
.kind.server{background:#dbeafe;color:#1e40af}.kind.client{background:#fef3c7;color:#92400e}
.kind.producer{background:#ede9fe;color:#5b21b6}.kind.consumer{background:#d1fae5;color:#065f46}
.sev{font-size:11px;font-weight:600;padding:0 5px;border-radius:3px;background:#e5e7eb}
.sev.warn{background:#fef3c7;color:#92400e}.sev.error,.sev.fatal{background:#fee2e2;color:#991b1b}
.sev.debug,.sev.trace{color:#6b7280}
td.body{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
.summary{display:flex;gap:22px;flex-wrap:wrap;margin:0 0 12px}
.summary div{background:#fff;border:1px solid #e5e7eb;padding:6px 12px}
.summary b{display:block;font-size:16px}
.wf{background:#fff;border:1px solid #e5e7eb}
.wf-head,.wf-row>summary{display:grid;grid-template-columns:minmax(280px,38%) 1fr;align-items:center}
.wf-head{font-size:12px;color:#6b7280;border-bottom:1px solid #e5e7eb;padding:3px 0}
.wf-row>summary{list-style:none;cursor:pointer;padding:1px 0;border-bottom:1px solid #f3f4f6}
.wf-row>summary::-webkit-details-marker{display:none}
.wf-row>summary:hover{background:#f9fafb}
.wf-name{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;font-size:12.5px;padding-right:6px}
.wf-name .svc{color:#6b7280;font-size:11.5px;margin-left:4px}
.wf-track{position:relative;height:16px;margin-right:10px}
.wf-bar{position:absolute;top:3px;height:10px;min-width:1px;border-radius:2px;opacity:.75}
.wf-row.crit .wf-bar{opacity:1;outline:2px solid #111827;outline-offset:0}
.wf-row.err .wf-name{color:#b91c1c}
.wf-dur{position:absolute;top:0;font-size:10.5px;color:#374151;white-space:nowrap;padding-left:4px}
.wf-detail{padding:8px 14px 12px;background:#f9fafb;border-bottom:1px solid #e5e7eb;font-size:13px}
.wf-detail table{width:auto;min-width:50%;margin:4px 0 8px}
.wf-detail td{padding:2px 8px}
.exception{background:#fef2f2;border:1px solid #fecaca;padding:6px 10px;margin:4px 0}
.exception pre{margin:4px 0 0;white-space:pre-wrap;font-size:12px}
.legend-crit{display:inline-block;width:18px;height:8px;outline:2px solid #111827;background:#60a5fa;margin:0 4px 0 10px}
svg.map{background:#fff;border:1px solid #e5e7eb;width:100%;height:auto}
svg.map text{font-size:12px}svg.map .edge-label{font-size:10.5px;fill:#374151}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:10px;margin-bottom:10px}
.card{background:#fff;border:1px solid #e5e7eb;padding:8px 12px}.card b{display:block;font-size:18px}
"#;

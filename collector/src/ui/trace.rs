//! `/trace/{trace_id}`: the waterfall (tree, kinds, services, bars relative to
//! the trace, the critical path outlined), every span's attributes, resource,
//! events and links in a fold-out, and the trace's log lines.
//!
//! The span rows come from one query bounded by the trace-id lookup table, so a
//! trace of thousands of spans reads only the parts that hold it; the tree and the
//! critical path are built here in O(n log n).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use maud::{html, Markup};

use super::charts::color_of;
use super::layout::{self, Nav, Page};
use super::params::{self, enc, Params, TimeRange};
use super::queries::{self, LogRow, SpanRow};
use super::{PageError, PageResult, Ui};

pub async fn page(
    State(ui): State<Ui>,
    Path(trace_id): Path<String>,
    Query(p): Query<Params>,
) -> PageResult {
    let range = TimeRange::parse(&p)?;
    let trace_id = trace_id.trim().to_ascii_lowercase();
    let Some(bounds) = queries::trace_bounds(&ui.client, &trace_id).await? else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!(
                "No trace {trace_id} is stored (yet). Spans become visible a second or two \
                 after they were sent; search the traces at /traces."
            ),
        ));
    };
    let (spans, logs) = tokio::try_join!(
        queries::trace_spans(&ui.client, &trace_id, bounds),
        queries::trace_logs(&ui.client, &trace_id, bounds),
    )?;
    let tree = Tree::build(&spans);
    let rq = range.query();
    let body = html! {
        (summary(&spans, &tree, &rq, &trace_id))
        (waterfall(&spans, &tree))
        (resources(&spans, &tree, &rq))
        h2 #logs { "Log lines (" (logs.len()) ")" }
        (log_table(&logs, &tree, &spans))
    };
    Ok(layout::render(
        Page {
            title: format!("Trace {trace_id}"),
            nav: Nav::Traces,
            range: &range,
            keep: vec![],
        },
        body,
    ))
}

/// The spans as a tree: display order (depth first, children by start), depths,
/// and which spans lie on the critical path.
pub struct Tree {
    pub order: Vec<usize>,
    /// Per span, which distinct resource it came from (index of its first span).
    pub resource: Vec<usize>,
    pub depth: Vec<usize>,
    pub critical: Vec<bool>,
    pub start: i64,
    pub end: i64,
    index: HashMap<String, usize>,
}

impl Tree {
    pub fn build(spans: &[SpanRow]) -> Tree {
        let n = spans.len();
        let mut first_of: HashMap<(&str, &[String], &[String]), usize> = HashMap::new();
        let resource = spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                *first_of
                    .entry((s.service.as_str(), &s.res_keys[..], &s.res_values[..]))
                    .or_insert(i)
            })
            .collect();
        let index: HashMap<String, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id.clone(), i))
            .collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            match index.get(&s.parent_id) {
                Some(&p) if p != i && !s.parent_id.is_empty() => children[p].push(i),
                // Roots, and spans whose parent was not exported (or not yet stored).
                _ => roots.push(i),
            }
        }
        let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].ts, i));
        by_start(&mut roots);
        children.iter_mut().for_each(by_start);

        let mut order = Vec::with_capacity(n);
        let mut depth = vec![0; n];
        let mut seen = vec![false; n];
        let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&r| (r, 0)).collect();
        while let Some((i, d)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push(i);
            depth[i] = d;
            stack.extend(children[i].iter().rev().map(|&c| (c, d + 1)));
        }
        // Parent cycles (malformed ids) leave spans unvisited: show them at the end.
        order.extend((0..n).filter(|&i| !seen[i]));

        let end_of = |i: usize| spans[i].ts + spans[i].duration as i64;
        let start = spans.iter().map(|s| s.ts).min().unwrap_or(0);
        let end = (0..n).map(end_of).max().unwrap_or(start);
        let mut critical = vec![false; n];
        if let Some(&main) = roots
            .iter()
            .max_by_key(|&&r| (end_of(r), std::cmp::Reverse(r)))
        {
            // From the end of the main root backwards: the child that finished last
            // before the current point is what the parent waited for; before that
            // child started, the one that finished last before it; and so on.
            let mut work = vec![(main, end_of(main))];
            let mut by_end: Vec<Vec<usize>> = children.clone();
            for c in &mut by_end {
                c.sort_by_key(|&i| std::cmp::Reverse(end_of(i)));
            }
            while let Some((i, limit)) = work.pop() {
                if critical[i] {
                    continue;
                }
                critical[i] = true;
                let mut t = limit.min(end_of(i));
                for &c in &by_end[i] {
                    if spans[c].ts < t && !critical[c] {
                        work.push((c, t));
                        t = spans[c].ts;
                    }
                }
            }
        }
        Tree {
            order,
            resource,
            depth,
            critical,
            start,
            end,
            index,
        }
    }

    fn span(&self, span_id: &str) -> Option<usize> {
        self.index.get(span_id).copied()
    }
}

fn summary(spans: &[SpanRow], tree: &Tree, rq: &str, trace_id: &str) -> Markup {
    let mut services: BTreeMap<&str, usize> = BTreeMap::new();
    for s in spans {
        *services.entry(s.service.as_str()).or_default() += 1;
    }
    let errors = spans.iter().filter(|s| s.status == "Error").count();
    let root = tree.order.first().map(|&i| &spans[i]);
    html! {
        div.summary {
            div { "duration" b { (params::duration((tree.end - tree.start) as f64)) } }
            div { "spans" b #span-count { (spans.len()) } }
            div { "services" b { (services.len()) } }
            div { "errors" b.bad[errors > 0] { (errors) } }
            div { "started" b { (params::timestamp(tree.start)) } }
            @if let Some(r) = root { div { "root" b { (r.service) ": " (r.name) } } }
        }
        p {
            @for (name, count) in &services {
                (layout::service_link(name, rq)) span.muted { " " (count) " spans" } "   "
            }
            " · " a href={"/logs?" (rq) "&trace_id=" (enc(trace_id))} { "logs of this trace" }
            span.legend-crit {} span.muted { "critical path" }
        }
    }
}

fn waterfall(spans: &[SpanRow], tree: &Tree) -> Markup {
    let total = (tree.end - tree.start).max(1) as f64;
    let pct = |ns: i64| 100.0 * ns as f64 / total;
    html! {
        div.wf #waterfall {
            div.wf-head {
                div { "span" }
                div style="display:flex;justify-content:space-between;margin-right:10px" {
                    @for k in 0..=4 { span { (params::duration(total * f64::from(k) / 4.0)) } }
                }
            }
            @for &i in &tree.order {
                @let s = &spans[i];
                @let left = pct(s.ts - tree.start);
                @let width = pct(s.duration as i64);
                details.wf-row.crit[tree.critical[i]].err[s.status == "Error"]
                    id={"span-" (s.span_id)} data-span-id=(s.span_id) data-parent-id=(s.parent_id)
                    data-depth=(tree.depth[i]) data-start-ns=(s.ts - tree.start) data-duration-ns=(s.duration) {
                    summary {
                        div.wf-name style={"padding-left:" (4 + 14 * tree.depth[i].min(30)) "px"} {
                            (layout::kind_badge(&s.kind)) " " (s.name)
                            span.svc { (s.service) }
                        }
                        div.wf-track {
                            span.wf-bar style={"left:" (format!("{left:.3}")) "%;width:" (format!("{width:.3}")) "%;background:" (color_of(&s.service))} {}
                            @if left + width < 85.0 {
                                span.wf-dur style={"left:" (format!("{:.3}", left + width)) "%"} { (params::duration(s.duration as f64)) }
                            } @else {
                                span.wf-dur style={"right:" (format!("{:.3}", (100.0 - left).max(0.0))) "%;padding-right:4px"} { (params::duration(s.duration as f64)) }
                            }
                        }
                    }
                    (detail(s, i, tree))
                }
            }
        }
    }
}

fn pairs_table(class: &str, keys: &[String], values: &[String]) -> Markup {
    html! {
        table class=(class) {
            @for (k, v) in keys.iter().zip(values) {
                tr { td.mono { (k) } td.mono { (v) } }
            }
        }
    }
}

fn detail(s: &SpanRow, i: usize, tree: &Tree) -> Markup {
    html! {
        div.wf-detail {
            p {
                span.mono { "span " (s.span_id) }
                @if !s.parent_id.is_empty() {
                    " · parent "
                    @if tree.span(&s.parent_id).is_some() {
                        a.mono href={"#span-" (s.parent_id)} { (s.parent_id) }
                    } @else { span.mono { (s.parent_id) } span.muted { " (not stored)" } }
                }
                " · " (s.kind) " · status " span.bad[s.status == "Error"] { (s.status) }
                @if !s.message.is_empty() { ": " (s.message) }
                " · starts at +" (params::duration((s.ts - tree.start) as f64))
                " · " (params::duration(s.duration as f64))
                @if !s.scope.is_empty() { " · scope " (s.scope) }
            }
            @if !s.attr_keys.is_empty() { b { "Attributes" } (pairs_table("attrs", &s.attr_keys, &s.attr_values)) }
            @if !s.event_names.is_empty() {
                b { "Events" }
                @for (k, name) in s.event_names.iter().enumerate() {
                    @let attrs = s.event_attrs.get(k).map(Vec::as_slice).unwrap_or(&[]);
                    @let at = s.event_ts.get(k).map(|t| t - s.ts).unwrap_or(0);
                    @if name == "exception" {
                        div.exception {
                            b { "Exception " }
                            (attr(attrs, "exception.type")) ": " (attr(attrs, "exception.message"))
                            span.muted { " at +" (params::duration(at as f64)) }
                            @let stack = attr(attrs, "exception.stacktrace");
                            @if !stack.is_empty() { pre { (stack) } }
                        }
                    } @else {
                        div { span.mono { "+" (params::duration(at as f64)) } " " b { (name) }
                            @for (k, v) in attrs { " " span.mono { (k) "=" (v) } } }
                    }
                }
            }
            @if !s.link_span_ids.is_empty() {
                b { "Links" }
                ul {
                    @for (t, sp) in s.link_trace_ids.iter().zip(&s.link_span_ids) {
                        li { a.mono href={"/trace/" (enc(t)) "#span-" (enc(sp))} { (t) " / " (sp) } }
                    }
                }
            }
            b { "Resource " } a href={"#resource-" (tree.resource[i])} { (s.service) }
        }
    }
}

/// Each distinct resource once (a trace of thousands of spans has a few).
fn resources(spans: &[SpanRow], tree: &Tree, rq: &str) -> Markup {
    html! {
        h2 { "Resources" }
        div.grid2 {
            @for (i, s) in spans.iter().enumerate().filter(|(i, _)| tree.resource[*i] == *i) {
                div id={"resource-" (i)} {
                    b { (layout::service_link(&s.service, rq)) }
                    (pairs_table("resource", &s.res_keys, &s.res_values))
                }
            }
        }
    }
}

fn attr<'a>(attrs: &'a [(String, String)], key: &str) -> &'a str {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn log_table(logs: &[LogRow], tree: &Tree, spans: &[SpanRow]) -> Markup {
    html! {
        @if logs.is_empty() {
            p.muted { "No log lines carry this trace id." }
        } @else {
            table #trace-logs {
                thead { tr { th { "time" } th { "service" } th { "severity" } th { "span" } th { "message" } } }
                tbody {
                    @for l in logs {
                        tr {
                            td.mono { "+" (params::duration((l.ts - tree.start) as f64)) }
                            td { (l.service) }
                            td { span class={"sev " (l.severity.to_ascii_lowercase())} { (l.severity) } }
                            td {
                                @match tree.span(&l.span_id) {
                                    Some(i) => a.mono href={"#span-" (l.span_id)} { (spans[i].name) },
                                    None => span.mono.muted { (layout::short_id(&l.span_id)) },
                                }
                            }
                            td.body { (l.body) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start: i64, duration: u64) -> SpanRow {
        SpanRow {
            ts: start,
            span_id: id.into(),
            parent_id: parent.into(),
            name: id.into(),
            kind: "Internal".into(),
            service: "s".into(),
            duration,
            status: "Unset".into(),
            message: String::new(),
            scope: String::new(),
            attr_keys: vec![],
            attr_values: vec![],
            res_keys: vec![],
            res_values: vec![],
            event_ts: vec![],
            event_names: vec![],
            event_attrs: vec![],
            link_trace_ids: vec![],
            link_span_ids: vec![],
        }
    }

    #[test]
    fn orders_depth_first_and_finds_the_critical_path() {
        // root [0,100]: a [10,40] (a1 [12,30]), b [20,90] (b1 [25,85]), c [50,60]
        let spans = vec![
            span("b1", "b", 25, 60),
            span("root", "", 0, 100),
            span("c", "root", 50, 10),
            span("a", "root", 10, 30),
            span("b", "root", 20, 70),
            span("a1", "a", 12, 18),
            span("orphan", "missing", 5, 1),
        ];
        let tree = Tree::build(&spans);
        let names: Vec<&str> = tree.order.iter().map(|&i| spans[i].name.as_str()).collect();
        assert_eq!(names, ["root", "a", "a1", "b", "b1", "c", "orphan"]);
        let depth: Vec<usize> = tree.order.iter().map(|&i| tree.depth[i]).collect();
        assert_eq!(depth, [0, 1, 2, 1, 2, 1, 0]);
        let critical: Vec<&str> = tree
            .order
            .iter()
            .filter(|&&i| tree.critical[i])
            .map(|&i| spans[i].name.as_str())
            .collect();
        // b ends last (90); before b started (20), a ran from 10; a1 ends before a.
        assert_eq!(critical, ["root", "a", "a1", "b", "b1"]);
        assert_eq!((tree.start, tree.end), (0, 100));
    }

    #[test]
    fn parent_cycles_do_not_hang() {
        let spans = vec![span("x", "y", 0, 5), span("y", "x", 1, 5)];
        let tree = Tree::build(&spans);
        assert_eq!(tree.order.len(), 2);
    }
}

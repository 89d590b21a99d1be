//! `/map`: services as nodes, calls between them as edges (parent/child spans
//! across services, messaging producer → consumer), with rate, error % and p99,
//! drawn as SVG in layers from callers to callees.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Query, State};
use maud::{html, Markup};

use super::charts::{color_of, Unit};
use super::layout::{self, Nav, Page};
use super::params::{self, enc, Params, TimeRange};
use super::queries::{self, EdgeRow, EdgesOf, RedBy, RedRow};
use super::{PageResult, Ui};

pub async fn page(State(ui): State<Ui>, Query(p): Query<Params>) -> PageResult {
    let range = TimeRange::parse(&p)?;
    let (edges, red, spans) = tokio::try_join!(
        queries::edges(&ui.client, &range, EdgesOf::All),
        queries::red(&ui.client, &range, RedBy::Service, ""),
        queries::services_with_spans(&ui.client, &range),
    )?;
    let rq = range.query();
    let mut nodes: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for e in &edges {
        nodes.insert(&e.parent);
        nodes.insert(&e.child);
    }
    let nodes: Vec<&str> = nodes.into_iter().collect();
    let body = html! {
        @if nodes.is_empty() {
            (layout::no_data(&ui.endpoints, "spans"))
        } @else {
            (draw(&nodes, &edges, &red, &range))
            h2 { "Calls between services" }
            @if edges.is_empty() {
                p.muted { "No span in this range has a parent in another service: the services' trace context is not propagated, or they do not call each other." }
            } @else {
                table #edges {
                    thead { tr { th { "caller" } th { "callee" } th { "via" } th.num { "rate" } th.num { "calls" } th.num { "error %" } th.num { "p99 (callee)" } } }
                    tbody {
                        @for e in &edges {
                            tr.edge data-parent=(e.parent) data-child=(e.child) {
                                td { (layout::service_link(&e.parent, &rq)) }
                                td { (layout::service_link(&e.child, &rq)) }
                                td { (e.via) }
                                td.num { (Unit::PerSecond.format(rate(e, &range))) }
                                td.num { (e.calls) }
                                td.num.bad[error_pct(e) >= 1.0] { (format!("{:.2}", error_pct(e))) }
                                td.num { (params::duration(e.p99)) }
                            }
                        }
                    }
                }
            }
            p.muted { "An edge is a SERVER or CONSUMER span whose parent is a CLIENT or PRODUCER span of another service (or a CONSUMER span linked to a PRODUCER span); its figures are the callee's spans'." }
        }
    };
    Ok(layout::render(
        Page {
            title: "Service map".into(),
            nav: Nav::Map,
            range: &range,
            keep: vec![],
        },
        body,
    ))
}

fn rate(e: &EdgeRow, range: &TimeRange) -> f64 {
    e.calls as f64 / f64::from(range.seconds())
}

fn error_pct(e: &EdgeRow) -> f64 {
    100.0 * e.errors as f64 / e.calls.max(1) as f64
}

/// Each node's layer: the longest chain of callers above it (cycles cut off).
fn layers(nodes: &[&str], edges: &[EdgeRow]) -> BTreeMap<String, usize> {
    let mut layer: BTreeMap<String, usize> = nodes.iter().map(|n| (n.to_string(), 0)).collect();
    for _ in 0..nodes.len() {
        let mut changed = false;
        for e in edges.iter().filter(|e| e.parent != e.child) {
            let want = layer[&e.parent] + 1;
            if want > layer[&e.child] && want < nodes.len() {
                layer.insert(e.child.clone(), want);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    layer
}

const COL: f64 = 400.0;
const ROW: f64 = 92.0;
const NODE_W: f64 = 190.0;
const NODE_H: f64 = 56.0;

fn draw(nodes: &[&str], edges: &[EdgeRow], red: &[RedRow], range: &TimeRange) -> Markup {
    let layer = layers(nodes, edges);
    let mut rows: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        rows.entry(layer[*n]).or_default().push(n);
    }
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (l, ns) in &rows {
        for (k, n) in ns.iter().enumerate() {
            pos.insert(n, (20.0 + *l as f64 * COL, 20.0 + k as f64 * ROW));
        }
    }
    let width = 40.0 + rows.len() as f64 * COL - (COL - NODE_W);
    let height =
        40.0 + rows.values().map(Vec::len).max().unwrap_or(1) as f64 * ROW - (ROW - NODE_H);
    html! {
        svg.map #service-map viewBox={"0 0 " (width) " " (height)} style={"max-width:" (width) "px"} {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M0,0 L10,5 L0,10 z" fill="#6b7280" {}
                }
            }
            @for e in edges {
                @let (px, py) = pos[e.parent.as_str()];
                @let (cx, cy) = pos[e.child.as_str()];
                @let (x1, y1) = (px + NODE_W, py + NODE_H / 2.0);
                @let (x2, y2) = (cx, cy + NODE_H / 2.0);
                @let bend = ((x2 - x1).abs() / 2.0).max(60.0);
                @let bad = error_pct(e) >= 1.0;
                g.edge data-parent=(e.parent) data-child=(e.child) {
                    path d={"M" (x1) "," (y1) " C" (x1 + bend) "," (y1) " " (x2 - bend) "," (y2) " " (x2) "," (y2)}
                        fill="none" stroke=(if bad { "#dc2626" } else { "#9ca3af" }) stroke-width="1.6"
                        stroke-dasharray=(if e.via == "messaging" { "5 3" } else { "none" }) marker-end="url(#arrow)" {}
                    text.edge-label x=((x1 + x2) / 2.0) y=((y1 + y2) / 2.0 - 5.0) text-anchor="middle" {
                        (Unit::PerSecond.format(rate(e, range))) " · " (format!("{:.1}", error_pct(e))) "% · p99 " (params::duration(e.p99))
                    }
                }
            }
            @for n in nodes {
                @let (x, y) = pos[*n];
                @let r = red.iter().find(|r| r.key == *n);
                a href={"/service/" (enc(n)) "?" (range.query())} {
                    g.node data-service=(n) {
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" fill="#fff" stroke=(color_of(n)) stroke-width="2" {}
                        text x=(x + 10.0) y=(y + 22.0) font-weight="600" fill="#111827" { (n) }
                        text x=(x + 10.0) y=(y + 42.0) fill="#4b5563" font-size="11" {
                            @match r {
                                Some(r) => { (Unit::PerSecond.format(r.requests as f64 / f64::from(range.seconds()))) " · " (format!("{:.1}", r.error_pct())) "% · p99 " (params::duration(r.quantile(2))) },
                                None => "no SERVER spans",
                            }
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

    fn edge(parent: &str, child: &str) -> EdgeRow {
        EdgeRow {
            parent: parent.into(),
            child: child.into(),
            via: "call".into(),
            calls: 1,
            errors: 0,
            p99: 0.0,
        }
    }

    #[test]
    fn callers_come_before_callees_and_cycles_end() {
        let nodes = ["db", "front", "shop", "worker"];
        let edges = [
            edge("front", "shop"),
            edge("shop", "worker"),
            edge("front", "worker"),
        ];
        let l = layers(&nodes, &edges);
        assert_eq!((l["front"], l["shop"], l["worker"], l["db"]), (0, 1, 2, 0));
        let cyc = layers(&["a", "b"], &[edge("a", "b"), edge("b", "a")]);
        assert!(cyc["a"] < 2 && cyc["b"] < 2);
    }
}

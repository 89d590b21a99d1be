//! Limits on what one decoded request may contain, applied before mapping.
//!
//! Too many items refuses the whole request (the client must split it); everything
//! else is repaired and reported: attributes past the count are dropped, long strings
//! and bytes are cut, values nested too deep are replaced by a marker. The walk over
//! `KeyValue`/`AnyValue` is written once ([`Pass`]); each request type only says
//! where its attribute lists are ([`Limitable`]).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Exemplar};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_items: u64,
    /// Per attribute list (an item's, its resource's, scope's, events', …) and per
    /// kvlist or array inside a value.
    pub max_attributes: usize,
    /// Strings (keys and values) and bytes values, in bytes.
    pub max_value_bytes: usize,
    /// Levels of values: a scalar attribute is at depth 1, what a kvlist or array at
    /// depth d holds is at d + 1. A kvlist or array at `max_depth` is replaced.
    pub max_depth: usize,
    /// Applied while mapping, where the items' times are read.
    pub timestamps: crate::mapping::TimestampWindow,
}

impl Limits {
    /// No limit at all (the collector's own metrics, whose few series never bind).
    pub const NONE: Limits = Limits {
        max_items: u64::MAX,
        max_attributes: usize::MAX,
        max_value_bytes: usize::MAX,
        max_depth: usize::MAX,
        timestamps: crate::mapping::TimestampWindow::OFF,
    };

    /// From the receivers' settings, where 0 means "no limit".
    pub fn new(
        max_items: u64,
        max_attributes: usize,
        max_value_bytes: usize,
        max_depth: usize,
        timestamps: crate::mapping::TimestampWindow,
    ) -> Limits {
        let or_max = |n: usize| if n == 0 { usize::MAX } else { n };
        Limits {
            max_items: if max_items == 0 { u64::MAX } else { max_items },
            max_attributes: or_max(max_attributes),
            max_value_bytes: or_max(max_value_bytes),
            max_depth: or_max(max_depth),
            timestamps,
        }
    }
}

/// What [`apply`] changed in one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub attributes_dropped: u64,
    pub values_truncated: u64,
    pub values_too_deep: u64,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        *self == Report::default()
    }

    /// For the client, in `partial_success.error_message`.
    pub fn note(&self, limits: &Limits) -> String {
        let mut parts = Vec::new();
        if self.attributes_dropped > 0 {
            parts.push(format!(
                "{} dropped (limit {} per list, receivers.max_attributes_per_item)",
                plural(self.attributes_dropped, "attribute"),
                limits.max_attributes
            ));
        }
        if self.values_truncated > 0 {
            parts.push(format!(
                "{} truncated (limit {} bytes, receivers.max_attribute_value_bytes)",
                plural(self.values_truncated, "value"),
                limits.max_value_bytes
            ));
        }
        if self.values_too_deep > 0 {
            parts.push(format!(
                "{} nested too deep replaced by a marker (limit depth {}, receivers.max_attribute_depth)",
                plural(self.values_too_deep, "value"),
                limits.max_depth
            ));
        }
        parts.join("; ")
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A decoded OTLP request the limits apply to.
pub trait Limitable {
    /// Spans, log records or data points.
    fn items(&self) -> u64;
    /// Runs `pass` over every attribute list and free-standing value.
    fn walk(&mut self, pass: &mut Pass<'_>);
}

/// Applies the attribute limits in place. The item limit is checked by the caller
/// (it refuses the request instead of repairing it).
pub fn apply<R: Limitable>(request: &mut R, limits: &Limits) -> Report {
    let mut pass = Pass::new(limits);
    request.walk(&mut pass);
    pass.report
}

/// One walk over attributes; recursion is bounded by `max_depth`.
pub struct Pass<'a> {
    limits: &'a Limits,
    report: Report,
}

impl<'a> Pass<'a> {
    pub fn new(limits: &'a Limits) -> Pass<'a> {
        Pass {
            limits,
            report: Report::default(),
        }
    }

    pub fn report(&self) -> Report {
        self.report
    }

    /// Whether the entry at `index` of an attribute list is kept; the ones past the
    /// limit are counted as dropped. For mappers that read lists in place.
    pub fn admit(&mut self, index: usize) -> bool {
        let keep = index < self.limits.max_attributes;
        if !keep {
            self.report.attributes_dropped += 1;
        }
        keep
    }

    /// `s` cut to the value limit at a UTF-8 boundary (counted when cut).
    pub fn cut<'s>(&mut self, s: &'s str) -> &'s str {
        if s.len() <= self.limits.max_value_bytes {
            return s;
        }
        let mut end = self.limits.max_value_bytes;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.report.values_truncated += 1;
        &s[..end]
    }

    /// `b` cut to the value limit (counted when cut).
    pub fn cut_bytes<'s>(&mut self, b: &'s [u8]) -> &'s [u8] {
        if b.len() <= self.limits.max_value_bytes {
            return b;
        }
        self.report.values_truncated += 1;
        &b[..self.limits.max_value_bytes]
    }

    pub fn attributes(&mut self, list: &mut Vec<KeyValue>) {
        self.list(list, 1);
    }

    pub fn value(&mut self, value: &mut AnyValue) {
        self.any(value, 1);
    }

    fn list(&mut self, list: &mut Vec<KeyValue>, depth: usize) {
        self.count(list);
        for kv in list {
            self.string(&mut kv.key);
            if let Some(v) = kv.value.as_mut() {
                self.any(v, depth);
            }
        }
    }

    fn count<T>(&mut self, list: &mut Vec<T>) {
        if list.len() > self.limits.max_attributes {
            self.report.attributes_dropped += (list.len() - self.limits.max_attributes) as u64;
            list.truncate(self.limits.max_attributes);
        }
    }

    fn any(&mut self, value: &mut AnyValue, depth: usize) {
        let nested = matches!(
            value.value,
            Some(Value::ArrayValue(_) | Value::KvlistValue(_))
        );
        if nested && depth >= self.limits.max_depth {
            self.report.values_too_deep += 1;
            value.value = Some(Value::StringValue(format!(
                "[nested deeper than {} levels: removed by the collector]",
                self.limits.max_depth
            )));
            return;
        }
        match value.value.as_mut() {
            Some(Value::StringValue(s)) => self.string(s),
            Some(Value::BytesValue(b)) => {
                let end = self.cut_bytes(b).len();
                b.truncate(end);
            }
            Some(Value::ArrayValue(a)) => {
                self.count(&mut a.values);
                for v in &mut a.values {
                    self.any(v, depth + 1);
                }
            }
            Some(Value::KvlistValue(kv)) => self.list(&mut kv.values, depth + 1),
            _ => {}
        }
    }

    fn string(&mut self, s: &mut String) {
        let end = self.cut(s).len();
        s.truncate(end);
    }
}

impl Limitable for ExportTraceServiceRequest {
    fn items(&self) -> u64 {
        self.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len() as u64)
            .sum()
    }

    fn walk(&mut self, pass: &mut Pass<'_>) {
        for rs in &mut self.resource_spans {
            if let Some(r) = rs.resource.as_mut() {
                pass.attributes(&mut r.attributes);
            }
            for ss in &mut rs.scope_spans {
                if let Some(s) = ss.scope.as_mut() {
                    pass.attributes(&mut s.attributes);
                }
                for span in &mut ss.spans {
                    pass.attributes(&mut span.attributes);
                    for e in &mut span.events {
                        pass.attributes(&mut e.attributes);
                    }
                    for l in &mut span.links {
                        pass.attributes(&mut l.attributes);
                    }
                }
            }
        }
    }
}

impl Limitable for ExportLogsServiceRequest {
    fn items(&self) -> u64 {
        self.resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len() as u64)
            .sum()
    }

    fn walk(&mut self, pass: &mut Pass<'_>) {
        for rl in &mut self.resource_logs {
            if let Some(r) = rl.resource.as_mut() {
                pass.attributes(&mut r.attributes);
            }
            for sl in &mut rl.scope_logs {
                if let Some(s) = sl.scope.as_mut() {
                    pass.attributes(&mut s.attributes);
                }
                for record in &mut sl.log_records {
                    pass.attributes(&mut record.attributes);
                    if let Some(body) = record.body.as_mut() {
                        pass.value(body);
                    }
                }
            }
        }
    }
}

impl Limitable for ExportMetricsServiceRequest {
    fn items(&self) -> u64 {
        self.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            } as u64)
            .sum()
    }

    fn walk(&mut self, pass: &mut Pass<'_>) {
        fn exemplars(pass: &mut Pass<'_>, list: &mut [Exemplar]) {
            for e in list {
                pass.attributes(&mut e.filtered_attributes);
            }
        }
        for rm in &mut self.resource_metrics {
            if let Some(r) = rm.resource.as_mut() {
                pass.attributes(&mut r.attributes);
            }
            for sm in &mut rm.scope_metrics {
                if let Some(s) = sm.scope.as_mut() {
                    pass.attributes(&mut s.attributes);
                }
                for m in &mut sm.metrics {
                    pass.attributes(&mut m.metadata);
                    match m.data.as_mut() {
                        Some(Data::Gauge(g)) => g.data_points.iter_mut().for_each(|p| {
                            pass.attributes(&mut p.attributes);
                            exemplars(pass, &mut p.exemplars);
                        }),
                        Some(Data::Sum(s)) => s.data_points.iter_mut().for_each(|p| {
                            pass.attributes(&mut p.attributes);
                            exemplars(pass, &mut p.exemplars);
                        }),
                        Some(Data::Histogram(h)) => h.data_points.iter_mut().for_each(|p| {
                            pass.attributes(&mut p.attributes);
                            exemplars(pass, &mut p.exemplars);
                        }),
                        Some(Data::ExponentialHistogram(h)) => {
                            h.data_points.iter_mut().for_each(|p| {
                                pass.attributes(&mut p.attributes);
                                exemplars(pass, &mut p.exemplars);
                            })
                        }
                        Some(Data::Summary(s)) => s
                            .data_points
                            .iter_mut()
                            .for_each(|p| pass.attributes(&mut p.attributes)),
                        None => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    const LIMITS: Limits = Limits {
        max_items: 10,
        max_attributes: 3,
        max_value_bytes: 5,
        max_depth: 3,
        timestamps: crate::mapping::TimestampWindow::OFF,
    };

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    fn traces(attributes: Vec<KeyValue>, spans: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..spans)
                        .map(|_| Span {
                            attributes: attributes.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// `levels` kvlists around a string.
    fn nested(levels: usize) -> Value {
        (0..levels).fold(s("leaf"), |inner, _| {
            Value::KvlistValue(KeyValueList {
                values: vec![kv("k", inner)],
            })
        })
    }

    fn depth(v: &Value) -> usize {
        match v {
            Value::KvlistValue(l) => {
                1 + l
                    .values
                    .iter()
                    .filter_map(|kv| kv.value.as_ref()?.value.as_ref())
                    .map(depth)
                    .max()
                    .unwrap_or(0)
            }
            Value::ArrayValue(a) => {
                1 + a
                    .values
                    .iter()
                    .filter_map(|v| v.value.as_ref())
                    .map(depth)
                    .max()
                    .unwrap_or(0)
            }
            _ => 1,
        }
    }

    #[test]
    fn counts_items_of_every_signal() {
        assert_eq!(traces(vec![], 7).items(), 7);
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); 4],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(logs.items(), 4);
        assert_eq!(ExportMetricsServiceRequest::default().items(), 0);
    }

    #[test]
    fn drops_attributes_past_the_limit_keeping_the_first() {
        let attrs = (0..5).map(|i| kv(&format!("a{i}"), s("v"))).collect();
        let mut req = traces(attrs, 2);
        let report = apply(&mut req, &LIMITS);
        assert_eq!(report.attributes_dropped, 4);
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        let keys: Vec<_> = span.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["a0", "a1", "a2"]);
        assert!(report
            .note(&LIMITS)
            .starts_with("4 attributes dropped (limit 3"));
    }

    #[test]
    fn truncates_strings_at_a_char_boundary_and_bytes() {
        // 'é' is two bytes: cutting at 5 would split the third one.
        let mut req = traces(
            vec![
                kv("k", s("ééé")),
                kv("b", Value::BytesValue(vec![1; 9])),
                kv("long-key", s("ok")),
            ],
            1,
        );
        let report = apply(&mut req, &LIMITS);
        assert_eq!(report.values_truncated, 3);
        let a = &req.resource_spans[0].scope_spans[0].spans[0].attributes;
        assert_eq!(a[0].value.as_ref().unwrap().value, Some(s("éé")));
        assert_eq!(
            a[1].value.as_ref().unwrap().value,
            Some(Value::BytesValue(vec![1; 5]))
        );
        assert_eq!(a[2].key, "long-");
    }

    #[test]
    fn replaces_values_nested_too_deep() {
        let mut req = traces(vec![kv("deep", nested(10)), kv("ok", nested(2))], 1);
        let report = apply(&mut req, &LIMITS);
        assert_eq!(report.values_too_deep, 1);
        let a = &req.resource_spans[0].scope_spans[0].spans[0].attributes;
        let deep = a[0].value.as_ref().unwrap().value.as_ref().unwrap();
        assert_eq!(depth(deep), LIMITS.max_depth);
        let ok = a[1].value.as_ref().unwrap().value.as_ref().unwrap();
        assert_eq!(ok, &nested(2));
        assert!(report.note(&LIMITS).contains("1 value nested too deep"));
    }

    #[test]
    fn arrays_count_and_nest_like_kvlists() {
        let array = |values: Vec<Value>| {
            Value::ArrayValue(ArrayValue {
                values: values
                    .into_iter()
                    .map(|v| AnyValue { value: Some(v) })
                    .collect(),
            })
        };
        let deep = array(vec![array(vec![array(vec![s("x")])])]);
        let wide = array((0..5).map(Value::IntValue).collect());
        let mut req = traces(vec![kv("deep", deep), kv("wide", wide)], 1);
        let report = apply(&mut req, &LIMITS);
        assert_eq!(report.values_too_deep, 1);
        assert_eq!(report.attributes_dropped, 2);
    }

    #[test]
    fn log_bodies_are_limited_too() {
        let mut req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        body: Some(AnyValue {
                            value: Some(s("a long body")),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let report = apply(&mut req, &LIMITS);
        assert_eq!(report.values_truncated, 1);
    }

    #[test]
    fn within_limits_nothing_changes() {
        let mut req = traces(vec![kv("k", s("v")), kv("n", nested(2))], 3);
        let before = req.clone();
        let report = apply(&mut req, &LIMITS);
        assert!(report.is_empty());
        assert_eq!(report.note(&LIMITS), "");
        assert_eq!(req, before);
    }

    #[test]
    fn zero_is_no_limit() {
        let l = Limits::new(0, 0, 100, 8, crate::mapping::TimestampWindow::OFF);
        assert_eq!(l.max_items, u64::MAX);
        assert_eq!(l.max_attributes, usize::MAX);
        assert_eq!((l.max_value_bytes, l.max_depth), (100, 8));
    }
}

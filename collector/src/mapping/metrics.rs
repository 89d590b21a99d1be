use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, metric::Data, number_data_point, Exemplar, Metric, NumberDataPoint,
};

use super::attributes::{service_name, to_map};
use super::ids::{hex, optional_span_id, optional_trace_id, seconds};
use bytes::Bytes;

use super::limits::{Limitable, Limits, Report};
use super::{decode_message, limit_then_map, Mapped, Output, Signal};
use crate::otlp::{Encoding, IngestError};
use crate::schema::rowbinary::Map;
use crate::schema::{ExponentialHistogramRow, GaugeRow, HistogramRow, SumRow, SummaryRow, TableId};

pub struct Metrics;

impl Signal for Metrics {
    const NAME: &'static str = "metrics";
    const ITEMS: &'static str = "data points";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;

    fn decode(body: Bytes, encoding: Encoding) -> Result<Self::Request, IngestError> {
        decode_message(&body, encoding)
    }

    fn items(request: &Self::Request) -> u64 {
        request.items()
    }

    fn map(mut request: Self::Request, limits: &Limits) -> Result<(Mapped, Report), IngestError> {
        let outside = super::time_window::metrics(&mut request, &limits.timestamps.bounds_now());
        let (mut mapped, report) = limit_then_map(request, limits, rows);
        outside.fold_into(&mut mapped, Self::ITEMS);
        Ok((mapped, report))
    }

    fn response(mapped: &Mapped) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (mapped.rejected > 0 || !mapped.error_message.is_empty()).then(|| {
                ExportMetricsPartialSuccess {
                    rejected_data_points: mapped.rejected as i64,
                    error_message: mapped.error_message.clone(),
                }
            }),
        }
    }

    fn add_note(response: &mut Self::Response, note: &str) {
        let partial = response
            .partial_success
            .get_or_insert_with(ExportMetricsPartialSuccess::default);
        super::with_note(&mut partial.error_message, note);
    }
}

/// What every data point of one scope shares.
struct Scope<'a> {
    service_name: String,
    resource_attributes: &'a Map,
    resource_schema_url: &'a str,
    scope_name: &'a str,
    scope_version: &'a str,
    scope_attributes: Map,
    scope_dropped_attr_count: u32,
    scope_schema_url: &'a str,
}

/// Builds a metric row: the common columns from the scope, metric and point, then the
/// kind's own columns; the rest (exemplars) start empty.
macro_rules! metric_row {
    ($row:ident, $ctx:expr, $metric:expr, $point:expr, { $($field:ident : $value:expr),* $(,)? }) => {
        $row {
            resource_attributes: $ctx.resource_attributes.clone(),
            resource_schema_url: $ctx.resource_schema_url.into(),
            scope_name: $ctx.scope_name.into(),
            scope_version: $ctx.scope_version.into(),
            scope_attributes: $ctx.scope_attributes.clone(),
            scope_dropped_attr_count: $ctx.scope_dropped_attr_count,
            scope_schema_url: $ctx.scope_schema_url.into(),
            service_name: $ctx.service_name.clone(),
            metric_name: $metric.name.clone(),
            metric_description: $metric.description.clone(),
            metric_unit: $metric.unit.clone(),
            attributes: to_map(&$point.attributes),
            start_time_unix: seconds($point.start_time_unix_nano),
            time_unix: seconds($point.time_unix_nano),
            $($field: $value,)*
            ..Default::default()
        }
    };
}

/// Moves a point's exemplars into the five `Exemplars.*` columns of a row.
macro_rules! set_exemplars {
    ($row:expr, $ex:expr) => {{
        let ex: Exemplars = $ex;
        $row.exemplars_filtered_attributes = ex.filtered_attributes;
        $row.exemplars_time_unix = ex.time_unix;
        $row.exemplars_value = ex.value;
        $row.exemplars_span_id = ex.span_id;
        $row.exemplars_trace_id = ex.trace_id;
    }};
}

#[derive(Default)]
struct Exemplars {
    filtered_attributes: Vec<Map>,
    time_unix: Vec<u32>,
    value: Vec<f64>,
    span_id: Vec<String>,
    trace_id: Vec<String>,
}

impl Exemplars {
    fn of(exemplars: &[Exemplar]) -> Result<Exemplars, &'static str> {
        let mut e = Exemplars::default();
        for x in exemplars {
            if !optional_trace_id(&x.trace_id) || !optional_span_id(&x.span_id) {
                return Err("an exemplar has an invalid trace_id or span_id length");
            }
            e.filtered_attributes.push(to_map(&x.filtered_attributes));
            e.time_unix.push(seconds(x.time_unix_nano));
            e.value.push(match x.value {
                Some(exemplar::Value::AsDouble(d)) => d,
                Some(exemplar::Value::AsInt(i)) => i as f64,
                None => 0.0,
            });
            e.span_id.push(hex(&x.span_id));
            e.trace_id.push(hex(&x.trace_id));
        }
        Ok(e)
    }
}

fn number(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

/// The point's exemplars, or `None` after rejecting the point for invalid ones.
fn exemplars_or_reject(
    out: &mut Output,
    metric: &Metric,
    exemplars: &[Exemplar],
) -> Option<Exemplars> {
    match Exemplars::of(exemplars) {
        Ok(e) => Some(e),
        Err(why) => {
            out.reject(|| format!("metric {:?}: {why}", metric.name));
            None
        }
    }
}

fn map_metric(ctx: &Scope, metric: &Metric, out: &mut Output) {
    match &metric.data {
        None => {}
        Some(Data::Gauge(g)) => {
            for p in &g.data_points {
                let Some(ex) = exemplars_or_reject(out, metric, &p.exemplars) else {
                    continue;
                };
                let mut row =
                    metric_row!(GaugeRow, ctx, metric, p, { value: number(p), flags: p.flags });
                set_exemplars!(row, ex);
                out.push(TableId::Gauge, &row);
            }
        }
        Some(Data::Sum(s)) => {
            for p in &s.data_points {
                let Some(ex) = exemplars_or_reject(out, metric, &p.exemplars) else {
                    continue;
                };
                let mut row = metric_row!(SumRow, ctx, metric, p, {
                    value: number(p),
                    flags: p.flags,
                    aggregation_temporality: s.aggregation_temporality,
                    is_monotonic: s.is_monotonic,
                });
                set_exemplars!(row, ex);
                out.push(TableId::Sum, &row);
            }
        }
        Some(Data::Histogram(h)) => {
            for p in &h.data_points {
                let Some(ex) = exemplars_or_reject(out, metric, &p.exemplars) else {
                    continue;
                };
                let mut row = metric_row!(HistogramRow, ctx, metric, p, {
                    count: p.count,
                    sum: p.sum.unwrap_or(0.0),
                    bucket_counts: p.bucket_counts.clone(),
                    explicit_bounds: p.explicit_bounds.clone(),
                    flags: p.flags,
                    min: p.min.unwrap_or(0.0),
                    max: p.max.unwrap_or(0.0),
                    aggregation_temporality: h.aggregation_temporality,
                });
                set_exemplars!(row, ex);
                out.push(TableId::Histogram, &row);
            }
        }
        Some(Data::ExponentialHistogram(h)) => {
            for p in &h.data_points {
                let Some(ex) = exemplars_or_reject(out, metric, &p.exemplars) else {
                    continue;
                };
                let positive = p.positive.clone().unwrap_or_default();
                let negative = p.negative.clone().unwrap_or_default();
                let mut row = metric_row!(ExponentialHistogramRow, ctx, metric, p, {
                    count: p.count,
                    sum: p.sum.unwrap_or(0.0),
                    scale: p.scale,
                    zero_count: p.zero_count,
                    positive_offset: positive.offset,
                    positive_bucket_counts: positive.bucket_counts,
                    negative_offset: negative.offset,
                    negative_bucket_counts: negative.bucket_counts,
                    flags: p.flags,
                    min: p.min.unwrap_or(0.0),
                    max: p.max.unwrap_or(0.0),
                    aggregation_temporality: h.aggregation_temporality,
                });
                set_exemplars!(row, ex);
                out.push(TableId::ExponentialHistogram, &row);
            }
        }
        Some(Data::Summary(s)) => {
            for p in &s.data_points {
                // Summary rows have no exemplars: the macro's `..Default` fills nothing.
                #[allow(clippy::needless_update)]
                let row = metric_row!(SummaryRow, ctx, metric, p, {
                    count: p.count,
                    sum: p.sum,
                    quantiles: p.quantile_values.iter().map(|q| q.quantile).collect(),
                    quantile_values: p.quantile_values.iter().map(|q| q.value).collect(),
                    flags: p.flags,
                });
                out.push(TableId::Summary, &row);
            }
        }
    }
}

/// The rows of a request whose limits were applied.
fn rows(request: &ExportMetricsServiceRequest) -> Mapped {
    let mut out = Output::new();
    for rm in &request.resource_metrics {
        let resource_attributes = to_map(rm.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        for sm in &rm.scope_metrics {
            let scope = sm.scope.clone().unwrap_or_default();
            let ctx = Scope {
                service_name: service_name(&resource_attributes),
                resource_attributes: &resource_attributes,
                resource_schema_url: &rm.schema_url,
                scope_name: &scope.name,
                scope_version: &scope.version,
                scope_attributes: to_map(&scope.attributes),
                scope_dropped_attr_count: scope.dropped_attributes_count,
                scope_schema_url: &sm.schema_url,
            };
            for metric in &sm.metrics {
                map_metric(&ctx, metric, &mut out);
            }
        }
    }
    out.finish(<Metrics as Signal>::ITEMS)
}

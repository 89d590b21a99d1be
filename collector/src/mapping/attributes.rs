//! OTLP values → the strings the layout stores.

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use serde_json::Value as Json;

use crate::schema::rowbinary::Map;

/// Scalars as their text; arrays and kvlists as JSON; bytes as base64 — the
/// OpenTelemetry exporter's `AsString()` conventions.
pub fn value_to_string(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => format_double(*d),
        Some(Value::BytesValue(b)) => base64::engine::general_purpose::STANDARD.encode(b),
        Some(v @ (Value::ArrayValue(_) | Value::KvlistValue(_))) => to_json(v).to_string(),
        // A profiling-only reference; other signals treat it as absent.
        Some(Value::StringValueStrindex(_)) => String::new(),
    }
}

fn format_double(d: f64) -> String {
    if d.is_nan() {
        "NaN".into()
    } else if d.is_infinite() {
        if d > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        d.to_string()
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::StringValue(s) => Json::String(s.clone()),
        Value::BoolValue(b) => Json::Bool(*b),
        Value::IntValue(i) => Json::from(*i),
        Value::DoubleValue(d) => serde_json::Number::from_f64(*d)
            .map_or_else(|| Json::String(format_double(*d)), Json::Number),
        Value::BytesValue(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::ArrayValue(a) => Json::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map_or(Json::Null, to_json))
                .collect(),
        ),
        Value::KvlistValue(kv) => Json::Object(
            kv.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), v.map_or(Json::Null, to_json))
                })
                .collect(),
        ),
        Value::StringValueStrindex(_) => Json::Null,
    }
}

/// Attributes as a map sorted by key; of repeated keys the last one wins.
pub fn to_map(attrs: &[KeyValue]) -> Map {
    let mut map: Map = attrs
        .iter()
        .map(|kv| (kv.key.clone(), value_to_string(kv.value.as_ref())))
        .collect();
    sort_dedup(&mut map);
    map
}

fn sort_dedup(map: &mut Map) {
    // Stable sort keeps input order among equal keys, so the last duplicate is the
    // last of its run; keep that one.
    map.sort_by(|a, b| a.0.cmp(&b.0));
    let mut i = 0;
    while i + 1 < map.len() {
        if map[i].0 == map[i + 1].0 {
            map.remove(i);
        } else {
            i += 1;
        }
    }
}

/// `service.name` of a resource, as the layout's ServiceName column.
pub fn service_name(resource_attrs: &Map) -> String {
    resource_attrs
        .binary_search_by(|(k, _)| k.as_str().cmp("service.name"))
        .map(|i| resource_attrs[i].1.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn scalars_and_composites_render_like_the_exporter() {
        let arr = Value::ArrayValue(ArrayValue {
            values: vec![
                AnyValue {
                    value: Some(Value::IntValue(1)),
                },
                AnyValue {
                    value: Some(Value::StringValue("a".into())),
                },
            ],
        });
        let kvl = Value::KvlistValue(KeyValueList {
            values: vec![
                kv("x", Value::BoolValue(true)),
                kv("y", Value::DoubleValue(1.5)),
            ],
        });
        let map = to_map(&[
            kv("z", Value::IntValue(-7)),
            kv("arr", arr),
            kv("kv", kvl),
            kv("b", Value::BytesValue(vec![1, 2, 3])),
            kv("d", Value::DoubleValue(0.25)),
            kv("z", Value::StringValue("last".into())),
        ]);
        let expected: Map = [
            ("arr", r#"[1,"a"]"#),
            ("b", "AQID"),
            ("d", "0.25"),
            ("kv", r#"{"x":true,"y":1.5}"#),
            ("z", "last"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(map, expected);
        assert_eq!(service_name(&map), "");
        assert_eq!(
            service_name(&to_map(&[kv(
                "service.name",
                Value::StringValue("api".into())
            )])),
            "api"
        );
    }
}

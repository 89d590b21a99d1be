//! Settings read from the standard `OTEL_*` environment, each overridable in code
//! through [`AgentBuilder`](crate::AgentBuilder).

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::propagation::Propagators;
use crate::sampler::Sampler;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{var}: {reason}")]
    Invalid { var: String, reason: String },
}

fn invalid(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var.to_string(),
        reason: reason.into(),
    }
}

/// OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::HttpProtobuf | Protocol::HttpJson)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    fn env_name(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Logs => "LOGS",
            Signal::Metrics => "METRICS",
        }
    }

    /// Path appended to a base endpoint for OTLP/HTTP.
    pub(crate) fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// Where and how one signal is exported.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConfig {
    /// A per-signal endpoint (used as is) or `None` to derive it from the base one.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    /// The whole export of one batch, retries included.
    pub timeout: Duration,
    pub compression: Compression,
    /// `OTEL_<SIGNAL>_EXPORTER`: false for `none` (nothing is exported).
    pub enabled: bool,
    pub tls: TlsConfig,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            endpoint: None,
            protocol: Protocol::Grpc,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            compression: Compression::None,
            enabled: true,
            tls: TlsConfig::default(),
        }
    }
}

/// Transport security of one signal's export (`OTEL_EXPORTER_OTLP[_<SIGNAL>]_*`).
/// The files are read when the agent starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsConfig {
    /// PEM CA certificate(s) trusted for the collector instead of the system and
    /// webpki roots (`_CERTIFICATE`).
    pub certificate: Option<PathBuf>,
    /// PEM client certificate chain and key for mutual TLS
    /// (`_CLIENT_CERTIFICATE`, `_CLIENT_KEY`).
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `_INSECURE=true`: a gRPC endpoint given without a scheme is reached in
    /// cleartext instead of over TLS.
    pub insecure: bool,
}

/// Everything the agent needs; [`Config::from_env`] fills it from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub service_name: String,
    pub resource_attributes: Vec<(String, String)>,
    /// The base `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    pub traces: ExportConfig,
    pub logs: ExportConfig,
    pub metrics: ExportConfig,
    pub sampler: Sampler,
    pub propagators: Propagators,
    /// `OTEL_SDK_DISABLED=true`: nothing is recorded as spans or exported; JSON
    /// lines and local metrics keep working.
    pub disabled: bool,
    /// An `EnvFilter` directive string (`RUST_LOG`, else `OTEL_LOG_LEVEL`).
    pub log_filter: String,
    /// `EnvFilter` directives choosing the `tracing` spans that become OTLP
    /// spans (`AGENT_SPAN_FILTER`); `None` uses [`Config::log_filter`].
    pub span_filter: Option<String>,
    /// Directives for the JSON lines (`AGENT_JSON_LOG_FILTER`); `None` uses
    /// [`Config::log_filter`].
    pub json_log_filter: Option<String>,
    /// Directives for the OTLP log records (`AGENT_OTLP_LOG_FILTER`); `None`
    /// uses [`Config::log_filter`].
    pub otlp_log_filter: Option<String>,
    /// `tracing` events inside a span also become events of that span
    /// (`AGENT_SPAN_EVENTS=true`).
    pub span_events: bool,
    pub json_logs: bool,
    pub span_export_interval: Duration,
    pub log_export_interval: Duration,
    pub metric_export_interval: Duration,
    pub span_queue_capacity: usize,
    pub log_queue_capacity: usize,
    pub max_export_batch: usize,
    /// Distinct RED series kept before new ones fold into one overflow series.
    pub max_metric_series: usize,
    pub shutdown_deadline: Duration,
    /// Settings that were ignored (unknown propagators, …), reported at start.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            service_name: "unknown_service".into(),
            resource_attributes: Vec::new(),
            endpoint: None,
            traces: ExportConfig::default(),
            logs: ExportConfig::default(),
            metrics: ExportConfig::default(),
            sampler: Sampler::default(),
            propagators: Propagators::default(),
            disabled: false,
            log_filter: "info".into(),
            span_filter: None,
            json_log_filter: None,
            otlp_log_filter: None,
            span_events: false,
            json_logs: true,
            span_export_interval: Duration::from_millis(5000),
            log_export_interval: Duration::from_millis(1000),
            metric_export_interval: Duration::from_millis(60_000),
            span_queue_capacity: 2048,
            log_queue_capacity: 2048,
            max_export_batch: 512,
            max_metric_series: 256,
            shutdown_deadline: Duration::from_secs(5),
            warnings: Vec::new(),
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads from any variable source (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut config = Config::default();

        if let Some(attrs) = get("OTEL_RESOURCE_ATTRIBUTES") {
            config.resource_attributes = parse_pairs(&attrs, "OTEL_RESOURCE_ATTRIBUTES")?;
        }
        // OTEL_SERVICE_NAME wins over a service.name in the resource attributes.
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            config.service_name = name;
        } else if let Some((_, v)) = config
            .resource_attributes
            .iter()
            .find(|(k, _)| k == "service.name")
        {
            config.service_name = v.clone();
        }
        config
            .resource_attributes
            .retain(|(k, _)| k != "service.name");

        config.endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(e) = &config.endpoint {
            validate_endpoint(e, "OTEL_EXPORTER_OTLP_ENDPOINT")?;
        }
        let base = read_export(&get, "OTEL_EXPORTER_OTLP", ExportConfig::default())?;
        for signal in Signal::ALL {
            let prefix = format!("OTEL_EXPORTER_OTLP_{}", signal.env_name());
            let mut export = read_export(&get, &prefix, base.clone())?;
            export.endpoint = get(&format!("{prefix}_ENDPOINT"));
            if let Some(e) = &export.endpoint {
                validate_endpoint(e, &format!("{prefix}_ENDPOINT"))?;
            }
            let var = format!("OTEL_{}_EXPORTER", signal.env_name());
            if let Some(names) = get(&var) {
                let (enabled, warnings) = parse_exporters(&names, &var, signal);
                export.enabled = enabled;
                config.warnings.extend(warnings);
            }
            *config.export_mut(signal) = export;
            if config.export(signal).protocol.is_http() {
                let url = config.resolved_endpoint(signal);
                if !split_endpoints(&url).all(has_scheme) {
                    return Err(invalid(
                        &prefix,
                        format!("{url:?}: OTLP/HTTP needs an http:// or https:// endpoint"),
                    ));
                }
            }
        }

        if let Some(name) = get("OTEL_TRACES_SAMPLER") {
            let arg = get("OTEL_TRACES_SAMPLER_ARG");
            config.sampler = Sampler::from_env(&name, arg.as_deref())
                .map_err(|e| invalid("OTEL_TRACES_SAMPLER", e))?;
        }
        if let Some(v) = get("OTEL_SDK_DISABLED") {
            config.disabled = v.eq_ignore_ascii_case("true");
        }
        if let Some(v) = get("OTEL_PROPAGATORS") {
            let (propagators, warnings) = parse_propagators(&v);
            config.propagators = propagators;
            config.warnings.extend(warnings);
        }
        if let Some(filter) = get("RUST_LOG").or_else(|| get("OTEL_LOG_LEVEL")) {
            config.log_filter = filter;
        }
        config.span_filter = get("AGENT_SPAN_FILTER");
        config.json_log_filter = get("AGENT_JSON_LOG_FILTER");
        config.otlp_log_filter = get("AGENT_OTLP_LOG_FILTER");
        if let Some(v) = get("AGENT_SPAN_EVENTS") {
            config.span_events = parse_bool(&v).ok_or_else(|| {
                invalid("AGENT_SPAN_EVENTS", format!("{v:?} is not true or false"))
            })?;
        }
        let millis = |var: &str, default: Duration| -> Result<Duration, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| invalid(var, format!("{v:?} is not a number of milliseconds"))),
            }
        };
        let count = |var: &str, default: usize| -> Result<usize, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(var, format!("{v:?} is not a positive count"))),
            }
        };
        config.span_export_interval =
            millis("OTEL_BSP_SCHEDULE_DELAY", config.span_export_interval)?;
        config.log_export_interval =
            millis("OTEL_BLRP_SCHEDULE_DELAY", config.log_export_interval)?;
        config.metric_export_interval =
            millis("OTEL_METRIC_EXPORT_INTERVAL", config.metric_export_interval)?;
        config.span_queue_capacity = count("OTEL_BSP_MAX_QUEUE_SIZE", config.span_queue_capacity)?;
        config.log_queue_capacity = count("OTEL_BLRP_MAX_QUEUE_SIZE", config.log_queue_capacity)?;
        config.max_export_batch = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", config.max_export_batch)?;
        Ok(config)
    }

    /// The directives for `tracing` spans: their own, else the logs'.
    pub fn span_filter(&self) -> &str {
        self.span_filter.as_deref().unwrap_or(&self.log_filter)
    }

    /// The directives for the JSON lines: their own, else the logs'.
    pub fn json_log_filter(&self) -> &str {
        self.json_log_filter.as_deref().unwrap_or(&self.log_filter)
    }

    /// The directives for the OTLP log records: their own, else the logs'.
    pub fn otlp_log_filter(&self) -> &str {
        self.otlp_log_filter.as_deref().unwrap_or(&self.log_filter)
    }

    pub fn export(&self, signal: Signal) -> &ExportConfig {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Logs => &self.logs,
            Signal::Metrics => &self.metrics,
        }
    }

    pub fn export_mut(&mut self, signal: Signal) -> &mut ExportConfig {
        match signal {
            Signal::Traces => &mut self.traces,
            Signal::Logs => &mut self.logs,
            Signal::Metrics => &mut self.metrics,
        }
    }

    /// The URL one signal is sent to, following the OTLP exporter spec: a
    /// per-signal endpoint as is; a base endpoint as is for gRPC and with
    /// `/v1/<signal>` appended for HTTP.
    ///
    /// Several collectors may be given, comma-separated (each resolved alike;
    /// the result is comma-separated too): batches are balanced over them with
    /// failover (see the README's "Several collectors").
    pub fn resolved_endpoint(&self, signal: Signal) -> String {
        let export = self.export(signal);
        if let Some(e) = &export.endpoint {
            return e.clone();
        }
        match (export.protocol.is_http(), &self.endpoint) {
            (false, Some(base)) => base.clone(),
            (false, None) => "http://localhost:4317".into(),
            (true, Some(base)) => split_endpoints(base)
                .map(|b| format!("{}{}", b.trim_end_matches('/'), signal.http_path()))
                .collect::<Vec<_>>()
                .join(","),
            (true, None) => format!("http://localhost:4318{}", signal.http_path()),
        }
    }

    /// [`Config::resolved_endpoint`] with the scheme a gRPC endpoint without one
    /// gets: `https`, or `http` with `_INSECURE=true` (as the OTLP exporter spec says).
    pub fn connect_url(&self, signal: Signal) -> String {
        let scheme = if self.export(signal).tls.insecure {
            "http"
        } else {
            "https"
        };
        split_endpoints(&self.resolved_endpoint(signal))
            .map(|url| {
                if has_scheme(url) {
                    url.to_string()
                } else {
                    format!("{scheme}://{url}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn read_export(
    get: &impl Fn(&str) -> Option<String>,
    prefix: &str,
    mut export: ExportConfig,
) -> Result<ExportConfig, ConfigError> {
    if let Some(p) = get(&format!("{prefix}_PROTOCOL")) {
        export.protocol = match p.as_str() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            "http/json" => Protocol::HttpJson,
            other => {
                return Err(invalid(
                    &format!("{prefix}_PROTOCOL"),
                    format!("{other:?} is not supported (grpc, http/protobuf, http/json)"),
                ))
            }
        };
    }
    let path = |suffix: &str| get(&format!("{prefix}_{suffix}")).map(PathBuf::from);
    if let Some(p) = path("CERTIFICATE") {
        export.tls.certificate = Some(p);
    }
    if let Some(p) = path("CLIENT_CERTIFICATE") {
        export.tls.client_certificate = Some(p);
    }
    if let Some(p) = path("CLIENT_KEY") {
        export.tls.client_key = Some(p);
    }
    if export.tls.client_certificate.is_some() != export.tls.client_key.is_some() {
        return Err(invalid(
            &format!("{prefix}_CLIENT_CERTIFICATE"),
            "the client certificate and the client key must be given together",
        ));
    }
    if let Some(v) = get(&format!("{prefix}_INSECURE")) {
        export.tls.insecure = match v.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(invalid(
                    &format!("{prefix}_INSECURE"),
                    format!("{other:?} is not true or false"),
                ))
            }
        };
    }
    if let Some(h) = get(&format!("{prefix}_HEADERS")) {
        export.headers = parse_pairs(&h, &format!("{prefix}_HEADERS"))?;
    }
    if let Some(t) = get(&format!("{prefix}_TIMEOUT")) {
        let ms = t.parse::<u64>().map_err(|_| {
            invalid(
                &format!("{prefix}_TIMEOUT"),
                format!("{t:?} is not milliseconds"),
            )
        })?;
        export.timeout = Duration::from_millis(ms);
    }
    if let Some(c) = get(&format!("{prefix}_COMPRESSION")) {
        export.compression = match c.as_str() {
            "gzip" => Compression::Gzip,
            "none" => Compression::None,
            other => {
                return Err(invalid(
                    &format!("{prefix}_COMPRESSION"),
                    format!("{other:?} is not supported (gzip, none)"),
                ))
            }
        };
    }
    Ok(export)
}

/// The endpoints of a comma-separated list (several collectors), trimmed.
pub(crate) fn split_endpoints(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn has_scheme(endpoint: &str) -> bool {
    endpoint.contains("://")
}

/// One or several (comma-separated) endpoints, each checked.
fn validate_endpoint(list: &str, var: &str) -> Result<(), ConfigError> {
    if split_endpoints(list).next().is_none() {
        return Err(invalid(var, format!("{list:?} names no endpoint")));
    }
    split_endpoints(list).try_for_each(|e| validate_one_endpoint(e, var))
}

/// `http://…`, `https://…`, or `host:port` (gRPC only: TLS unless `_INSECURE`).
fn validate_one_endpoint(endpoint: &str, var: &str) -> Result<(), ConfigError> {
    let with_scheme = if has_scheme(endpoint) {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| invalid(var, format!("{endpoint:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(()),
        _ => Err(invalid(
            var,
            format!("{endpoint:?} needs an http:// or https:// scheme and a host"),
        )),
    }
}

/// `OTEL_<SIGNAL>_EXPORTER`: whether `otlp` is among the names. `none` and an
/// empty list export nothing; names this agent does not implement are reported.
fn parse_exporters(names: &str, var: &str, signal: Signal) -> (bool, Vec<String>) {
    let mut otlp = false;
    let mut warnings = Vec::new();
    for name in names.split(',').map(str::trim) {
        match name {
            "otlp" => otlp = true,
            "none" | "" => {}
            // The local `/metrics` route serves Prometheus text whatever this says.
            "prometheus" if signal == Signal::Metrics => {}
            other => warnings.push(format!(
                "{var}: {other:?} is not supported (otlp, none); ignored"
            )),
        }
    }
    (otlp, warnings)
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C baggage style).
fn parse_pairs(s: &str, var: &str) -> Result<Vec<(String, String)>, ConfigError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid(var, format!("{pair:?} is not key=value")))?;
            Ok((
                k.trim().to_string(),
                crate::baggage::decode_component(v.trim()),
            ))
        })
        .collect()
}

fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn parse_propagators(s: &str) -> (Propagators, Vec<String>) {
    let mut propagators = Propagators::NONE;
    let mut warnings = Vec::new();
    for name in s.split(',').map(str::trim) {
        match name {
            "tracecontext" => propagators.trace_context = true,
            "baggage" => propagators.baggage = true,
            "none" | "" => {}
            other => warnings.push(format!(
                "OTEL_PROPAGATORS: {other:?} is not supported; ignored"
            )),
        }
    }
    (propagators, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn per_signal_settings_override_the_base_ones() {
        let config = from(&[
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,team=a%20b",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
        ])
        .expect("valid");
        assert_eq!(config.service_name, "checkout");
        assert_eq!(config.resource_attributes[1], ("team".into(), "a b".into()));
        assert_eq!(
            config.resolved_endpoint(Signal::Traces),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            config.resolved_endpoint(Signal::Metrics),
            "http://metrics:4317"
        );
        assert_eq!(config.metrics.protocol, Protocol::Grpc);
        assert_eq!(config.logs.compression, Compression::Gzip);
        assert_eq!(config.traces.compression, Compression::None);
        assert_eq!(config.traces.timeout, Duration::from_millis(2500));
        assert_eq!(
            config.logs.headers,
            vec![("api-key".into(), "secret".into())]
        );
    }

    #[test]
    fn service_name_falls_back_to_the_resource_attribute() {
        let config = from(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing")]).expect("valid");
        assert_eq!(config.service_name, "billing");
        assert!(config.resource_attributes.is_empty());
    }

    #[test]
    fn sampler_disabled_propagators_and_filter() {
        let config = from(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_PROPAGATORS", "tracecontext,b3"),
            ("OTEL_LOG_LEVEL", "debug"),
        ])
        .expect("valid");
        assert_eq!(
            config.sampler,
            Sampler::ParentBased(crate::sampler::RootSampler::TraceIdRatio(0.5))
        );
        assert!(config.disabled);
        assert!(config.propagators.trace_context && !config.propagators.baggage);
        assert_eq!(config.warnings.len(), 1);
        assert_eq!(config.log_filter, "debug");
        // Spans follow the logs' directives unless given their own.
        assert_eq!(config.span_filter(), "debug");
        assert_eq!(config.json_log_filter(), "debug");
        assert_eq!(config.otlp_log_filter(), "debug");
        assert!(!config.span_events);
    }

    #[test]
    fn json_lines_and_records_can_have_their_own_filters() {
        let config = from(&[
            ("RUST_LOG", "info"),
            ("AGENT_JSON_LOG_FILTER", "debug"),
            ("AGENT_OTLP_LOG_FILTER", "warn"),
        ])
        .expect("valid");
        assert_eq!(config.json_log_filter(), "debug");
        assert_eq!(config.otlp_log_filter(), "warn");
        assert_eq!(config.span_filter(), "info");
    }

    #[test]
    fn spans_can_have_their_own_filter_and_events() {
        let config = from(&[
            ("RUST_LOG", "info"),
            ("AGENT_SPAN_FILTER", "warn,shop=debug"),
            ("AGENT_SPAN_EVENTS", "true"),
        ])
        .expect("valid");
        assert_eq!(config.span_filter(), "warn,shop=debug");
        assert!(config.span_events);
        let err = from(&[("AGENT_SPAN_EVENTS", "yes")]).unwrap_err();
        assert!(err.to_string().starts_with("AGENT_SPAN_EVENTS"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let err = from(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
            "{err}"
        );
        let err = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317")]).unwrap_err();
        assert!(err.to_string().contains("scheme"), "{err}");
        let err = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("OTLP/HTTP"), "{err}");
        let err = from(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")]).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
        let err = from(&[("OTEL_EXPORTER_OTLP_LOGS_INSECURE", "maybe")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_LOGS_INSECURE"),
            "{err}"
        );
    }

    #[test]
    fn several_collectors_are_comma_separated() {
        let config = from(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://c1:4318/, http://c2:4318",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "c1:4317,c2:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true"),
        ])
        .expect("valid");
        assert_eq!(
            config.connect_url(Signal::Traces),
            "http://c1:4318/v1/traces,http://c2:4318/v1/traces"
        );
        assert_eq!(
            config.connect_url(Signal::Metrics),
            "http://c1:4317,http://c2:4317"
        );
        let err = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c1:4317,ftp://c2")]).unwrap_err();
        assert!(err.to_string().contains("ftp://c2"), "{err}");
        let err = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " , ")]).unwrap_err();
        assert!(err.to_string().contains("no endpoint"), "{err}");
    }

    #[test]
    fn a_grpc_endpoint_without_scheme_is_tls_unless_insecure() {
        let config = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/etc/traces-ca.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/client.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/client.key"),
        ])
        .expect("valid");
        assert_eq!(config.connect_url(Signal::Traces), "https://collector:4317");
        assert_eq!(config.connect_url(Signal::Metrics), "http://collector:4317");
        assert_eq!(
            config.traces.tls.certificate.as_deref(),
            Some(std::path::Path::new("/etc/traces-ca.pem"))
        );
        assert_eq!(
            config.logs.tls.certificate.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(config.logs.tls.client_key.is_some());
    }

    #[test]
    fn signal_exporters_otlp_or_none() {
        let config = from(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_LOGS_EXPORTER", "otlp,console"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .expect("valid");
        assert!(!config.traces.enabled);
        assert!(!config.metrics.enabled);
        assert!(config.logs.enabled);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert_eq!(config.logs.protocol, Protocol::HttpJson);
        assert_eq!(
            config.resolved_endpoint(Signal::Logs),
            "http://localhost:4318/v1/logs"
        );
    }
}

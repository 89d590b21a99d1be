//! The global `tracing` subscriber [`crate::init`] installs: the span layer
//! behind the span filter, the JSON-lines layer behind the JSON log filter and
//! the OTLP log layer behind the OTLP log filter.
//!
//! Filters whose directives are the same are one filter: when all three are
//! (the default) it is a global filter, decided once per callsite for every
//! layer, and one capture of an event feeds both the line and the record;
//! per-layer filters cost a check per layer and per event. Directives without
//! span or field matches (`target[span{field=value}]=level`) are applied by a
//! `Targets` filter: the same static directives `EnvFilter` parses and
//! matches, without the locks `EnvFilter` takes for every span's creation,
//! entry, exit and close.

use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use super::InitError;
use crate::agent::Agent;
use crate::config::Config;

fn env_filter(directives: &str) -> Result<EnvFilter, InitError> {
    EnvFilter::try_new(directives).map_err(|e| InitError::LogFilter {
        filter: directives.to_string(),
        reason: e.to_string(),
    })
}

/// One set of directives, parsed (boxed: the filters are large and only
/// moved once, into the subscriber).
pub(crate) enum Directives {
    Static(Box<Targets>),
    Dynamic(Box<EnvFilter>),
}

impl Directives {
    fn parse(directives: &str) -> Result<Directives, InitError> {
        // `EnvFilter` validates (and names what is wrong) in every case.
        let env = env_filter(directives)?;
        let plain = !directives.is_empty()
            && !directives
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '[' | ']' | '{' | '}' | '"'));
        match directives.parse::<Targets>() {
            Ok(targets) if plain => Ok(Directives::Static(Box::new(targets))),
            _ => Ok(Directives::Dynamic(Box::new(env))),
        }
    }

    fn layer<S>(self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        match self {
            Directives::Static(t) => t,
            Directives::Dynamic(e) => e,
        }
    }

    fn filter<S>(self) -> Box<dyn Filter<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        match self {
            Directives::Static(t) => t,
            Directives::Dynamic(e) => e,
        }
    }
}

/// The filters, parsed (so bad directives fail before the agent starts).
pub(crate) enum Filters {
    /// Spans, lines and records share one set of directives.
    One(Directives),
    /// Lines and records share theirs, spans have their own.
    SpansApart { spans: Directives, logs: Directives },
    /// Each has its own.
    Three {
        spans: Directives,
        json: Directives,
        otlp: Directives,
    },
}

impl Filters {
    pub(crate) fn new(config: &Config) -> Result<Filters, InitError> {
        let (spans, json, otlp) = (
            config.span_filter(),
            config.json_log_filter(),
            config.otlp_log_filter(),
        );
        Ok(if json != otlp {
            Filters::Three {
                spans: Directives::parse(spans)?,
                json: Directives::parse(json)?,
                otlp: Directives::parse(otlp)?,
            }
        } else if spans != json {
            Filters::SpansApart {
                spans: Directives::parse(spans)?,
                logs: Directives::parse(json)?,
            }
        } else {
            Filters::One(Directives::parse(spans)?)
        })
    }

    pub(crate) fn install(self, agent: &Agent) -> Result<(), InitError> {
        let registry = tracing_subscriber::registry();
        let installed = match self {
            Filters::One(filter) => registry
                .with(filter.layer())
                .with(agent.tracing_layer())
                .with(agent.log_layer())
                .try_init(),
            Filters::SpansApart { spans, logs } => registry
                .with(agent.tracing_layer().with_filter(spans.filter()))
                .with(agent.log_layer().with_filter(logs.filter()))
                .try_init(),
            Filters::Three { spans, json, otlp } => registry
                .with(agent.tracing_layer().with_filter(spans.filter()))
                .with(agent.json_log_layer().with_filter(json.filter()))
                .with(agent.otlp_log_layer().with_filter(otlp.filter()))
                .try_init(),
        };
        installed.map_err(|e| InitError::SubscriberInstalled(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_directives_use_targets_and_span_directives_keep_env_filter() {
        assert!(matches!(
            Directives::parse("info,h2=off,shop::cart=debug"),
            Ok(Directives::Static(_))
        ));
        assert!(matches!(
            Directives::parse("info,shop[checkout]=debug"),
            Ok(Directives::Dynamic(_))
        ));
        assert!(matches!(
            Directives::parse("info=="),
            Err(InitError::LogFilter { .. })
        ));
    }
}

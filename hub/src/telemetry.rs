//! Logs and, with the `otlp` cargo feature, OpenTelemetry traces of the edit path.
//!
//! Logs: `RUST_LOG` (default `info`, with automerge, ractor and sqlx at `warn`), plain
//! text (colour only on a terminal) or JSON lines with `FLOWHUB_LOG_FORMAT=json`.
//!
//! Traces: built with `--features otlp` **and** run with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set (e.g. `http://otel-collector:4318`), spans of the edit path are exported over
//! OTLP/HTTP (protobuf) in batches from a background thread: `edit.frame` (a session
//! hands a sync or change frame to its flow actor, until the actor handled it: apply,
//! store append, ack, fan-out, publish), `store.append` (one flow's append, waiting
//! for its group commit), `store.commit` (one group-commit transaction) and
//! `bus.publish` (one pipelined batch of PUBLISHes). The standard `OTEL_*` variables
//! apply (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, …). Those spans are at TRACE level
//! under the target [`flowhub::EDIT_PATH_TARGET`] and reach only the exporter, so
//! without it they cost one disabled-callsite check each and never appear in the logs.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Keeps the exporter alive; dropping it flushes the spans still queued. Drop it
/// outside the async runtime (the OTLP HTTP client is a blocking one).
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flowhub: flushing OpenTelemetry spans failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Call before the async runtime starts: the OTLP
/// HTTP client is a blocking one, which must not be created inside the runtime.
pub fn init() -> anyhow::Result<Telemetry> {
    // automerge's INFO spans are per operation (see vendor/README.md); ractor's add an
    // `Actor{id}` span per actor: both cost per edit or per session and say nothing
    // our own spans do not.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,automerge=warn,ractor=warn")
    });
    // Colour only for a person at a terminal: a log file or a shipper gets plain text
    // (or JSON lines with FLOWHUB_LOG_FORMAT=json), never escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = match std::env::var("FLOWHUB_LOG_FORMAT").as_deref() {
        Ok("json") => tracing_subscriber::fmt::layer()
            .json()
            .with_ansi(ansi)
            .boxed(),
        _ => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
    };
    // The filter is the log layer's own, not global: the exporter's spans are at
    // TRACE and must not need RUST_LOG=trace (nor fill the log).
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));

    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = match otlp_endpoint() {
            Some(_) => {
                let (layer, provider) = otlp::layer()?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        registry.with(layer).try_init()?;
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.try_init()?;
        if otlp_endpoint().is_some() {
            tracing::warn!(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but this flowhub was built without the `otlp` feature: no traces are exported"
            );
        }
        Ok(Telemetry {})
    }
}

/// The configured OTLP endpoint (the generic or the traces-only variable), if any.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok())
    .find(|v| !v.trim().is_empty())
}

#[cfg(feature = "otlp")]
mod otlp {
    use anyhow::Context;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::Layer;

    /// The exporting layer (only the edit path's spans) and its provider.
    pub fn layer<S>() -> anyhow::Result<(impl Layer<S>, SdkTracerProvider)>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        // Endpoint, headers, timeout and protocol from the standard OTEL_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("OTLP span exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("flowhub");
        }
        if let Ok(node) = std::env::var("FLOWHUB_NODE_ID") {
            resource = resource.with_attribute(KeyValue::new("service.instance.id", node));
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("flowhub"))
            .with_filter(Targets::new().with_target(flowhub::EDIT_PATH_TARGET, Level::TRACE));
        Ok((layer, provider))
    }
}

//! Logs (text or JSON lines) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, OpenTelemetry traces over OTLP/HTTP.
//!
//! Only spans with the target `grandstand::trace` are exported: one per HTTP request, per
//! match log publish, per match log read in a gateway's hub and per aggregator batch; never
//! one per viewer message. No other layer is interested in that target, so without an
//! exporter those spans are disabled where they are created and cost a branch.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::cli::LogFormat;

/// The target of the spans exported as traces.
pub const TRACE_TARGET: &str = "grandstand::trace";

/// Flushes the exporter when dropped (at the end of `main`), so the last spans are sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// What the OTLP exporter is configured with, read from the standard variables.
#[derive(Debug, PartialEq)]
pub struct OtlpSettings {
    pub protocol: Protocol,
    pub service_name: String,
}

/// Reads the OpenTelemetry variables: `None` when no endpoint is set (no traces), an error
/// naming the variable when the protocol is one this build does not speak.
pub fn otlp_settings(
    var: impl Fn(&str) -> Option<String>,
    role: &str,
) -> Result<Option<OtlpSettings>, String> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let protocol = match protocol.as_str() {
        "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other}: this build exports over OTLP/HTTP \
                 (http/protobuf or http/json; a collector listens for it on port 4318)"
            ))
        }
    };
    let service_name = set("OTEL_SERVICE_NAME").unwrap_or_else(|| format!("grandstand-{role}"));
    Ok(Some(OtlpSettings {
        protocol,
        service_name,
    }))
}

/// Installs the process's subscriber: logs as `format` filtered by `RUST_LOG`, and traces when
/// the OpenTelemetry variables ask for them.
pub fn init(format: LogFormat, role: &str) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn".into())
        .add_directive(format!("{TRACE_TARGET}=off").parse()?);
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    let settings = otlp_settings(|k| std::env::var(k).ok(), role).map_err(anyhow::Error::msg)?;
    let Some(settings) = settings else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(settings.protocol)
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP trace exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("grandstand"))
        .with_filter(Targets::new().with_target(TRACE_TARGET, LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    tracing::info!(service = %settings.service_name, "exporting traces over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn traces_only_when_an_endpoint_is_set() {
        assert_eq!(otlp_settings(vars(&[]), "gateway"), Ok(None));
        let s = otlp_settings(
            vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
            "gateway",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpBinary);
        assert_eq!(s.service_name, "grandstand-gateway");
        let s = otlp_settings(
            vars(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_SERVICE_NAME", "edge-eu"),
            ]),
            "all",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.protocol, s.service_name.as_str()),
            (Protocol::HttpJson, "edge-eu")
        );
        assert_eq!(
            otlp_settings(
                vars(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_SDK_DISABLED", "true")
                ]),
                "all"
            ),
            Ok(None)
        );
    }

    #[test]
    fn grpc_is_refused_naming_the_variable() {
        let e = otlp_settings(
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
            "all",
        )
        .unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{e}");
    }
}

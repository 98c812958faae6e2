//! OTLP span export (the `otel` feature): the batch and part spans go to a collector over OTLP/gRPC, and the
//! W3C ids the gateway sends upstream are the exported spans' own, so the upstreams' spans join the trace.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::observe::trace::TraceContext;

/// The exporter and the tracing layer that feeds it; keep the provider to flush it at exit.
pub fn layer<S>(
    endpoint: &str,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        SdkTracerProvider,
    ),
    String,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("tracing.otlp_endpoint {endpoint:?}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("batchgate")
                .build(),
        )
        .build();
    let tracer = provider.tracer("batchgate");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}

/// Makes `span` (a batch's) a child of the caller's span when the batch came with a `traceparent`, then
/// takes the exported span's ids as the batch's trace context.
pub(crate) fn adopt(trace: &mut TraceContext, span: &tracing::Span) {
    if let Some(parent) = trace.parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let exported = span.context().span().span_context().clone();
    if exported.is_valid() {
        trace.trace_id = exported.trace_id().to_bytes();
        trace.span_id = exported.span_id().to_bytes();
    }
}

/// The id of the exported span `span` is, if it is exported.
pub(crate) fn span_id(span: &tracing::Span) -> Option<[u8; 8]> {
    let context = span.context().span().span_context().clone();
    context.is_valid().then(|| context.span_id().to_bytes())
}

//! The text log format for people (`log_format = "pretty"`): tracing_subscriber's full format, byte for byte,
//! written with fewer detours. Fields (of events and spans) are written without going through `Debug` for numbers
//! and booleans, and the access lines (target `batchgate::access`, one per batch, and per part with
//! `access_log = "parts"`), the gateway's most frequent, are written straight into the line. The stock format
//! writes every field through `Debug` and styling wrappers: the access line alone was 7.6% of the CPU of 1-part
//! batches (docs/performance.md).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The access log's target.
const ACCESS: &str = "batchgate::access";

/// The fields of events and spans, as [`DefaultFields`] writes them.
#[derive(Default)]
pub(crate) struct PrettyFields {
    stock: DefaultFields,
}

impl<'writer> FormatFields<'writer> for PrettyFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        // Colour codes style names and separators: the stock visitor writes those (a terminal is not the hot path).
        if writer.has_ansi_escapes() {
            return self.stock.format_fields(writer, fields);
        }
        let mut visitor = Fields {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// The full format; an access line without colour is written by [`PrettyLines::access`], the same text.
#[derive(Default)]
pub(crate) struct PrettyLines {
    full: Format<Full, SystemTime>,
}

impl<S> FormatEvent<S, PrettyFields> for PrettyLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, PrettyFields>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() != ACCESS || writer.has_ansi_escapes() {
            return self.full.format_event(ctx, writer, event);
        }
        Self::access(ctx, writer, event)
    }
}

impl PrettyLines {
    /// `TIME LEVEL span{fields}:span{fields}: target: message field=value ...`, as the full format writes it.
    fn access<S>(
        ctx: &FmtContext<'_, S, PrettyFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<PrettyFields>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// Writes an event's fields as tracing_subscriber's `DefaultVisitor` does (`message name=value ...`, values
/// as `Debug` writes them), numbers and booleans without going through `Debug`.
struct Fields<'a> {
    writer: Writer<'a>,
    /// No field written yet: no separating space.
    empty: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// The separator and `name=`; `false` for a field the default visitor writes in its own way (the message, an
    /// error), or skips (`log.` metadata, with its `tracing-log` feature, on in this build).
    fn name(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("log.") || self.result.is_err() {
            return false;
        }
        if !self.empty {
            self.result = self.writer.write_char(' ');
        }
        self.empty = false;
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = self
            .result
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='));
        true
    }

    /// A field the default visitor writes: the message, an error, metadata.
    fn default_visitor(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // Skipped metadata writes nothing, not even a separator.
        if !field.name().starts_with("log.") {
            self.empty = false;
        }
    }

    fn write(&mut self, text: &str) {
        self.result = self.result.and_then(|()| self.writer.write_str(text));
    }
}

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.name(field) {
            self.write(itoa::Buffer::new().format(value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.name(field) {
            self.write(itoa::Buffer::new().format(value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.name(field) {
            self.write(if value { "true" } else { "false" });
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.name(field) {
            self.result = self.result.and_then(|()| write!(self.writer, "{value:?}"));
        } else {
            self.default_visitor(field, |visitor| visitor.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default_visitor(field, |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.name(field) {
            self.result = self.result.and_then(|()| write!(self.writer, "{value:?}"));
        } else {
            self.default_visitor(field, |visitor| visitor.record_debug(field, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::{PrettyFields, PrettyLines};

    /// What a fmt layer wrote, line by line.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        /// The lines without their timestamps (`2026-12-07T19:50:24.967924Z`).
        fn untimed(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| {
                    let (time, rest) = line.split_once(' ').unwrap();
                    assert!(time.contains('Z'), "{line}");
                    rest.to_owned()
                })
                .collect()
        }
    }

    /// The access lines the gateway writes (src/batch/respond.rs, src/batch/run.rs) and a few other shapes, inside
    /// a batch span as the gateway's.
    fn log_some() {
        let peer: IpAddr = "::1".parse().unwrap();
        let span = tracing::info_span!(
            "batch",
            id = 7u64,
            %peer,
            trace_id = tracing::field::Empty,
            parts = tracing::field::Empty,
        );
        span.record("trace_id", "428830e9a8fe1d1073e1f9e381601509");
        span.record("parts", 2usize);
        let _entered = span.enter();
        for (duration_ms, complete) in [
            (1.302, true),
            (0.0, false),
            (1e-7, true),
            (12345678.5, true),
        ] {
            tracing::info!(
                target: "batchgate::access",
                id = 7u64,
                peer = %peer,
                format = "multipart",
                reply_format = "json",
                parts = 2usize,
                statuses = %"2xx=1 5xx=1",
                bytes_in = 109u64,
                bytes_out = 857u64,
                duration_ms,
                complete,
                "batch"
            );
        }
        tracing::info!(
            target: "batchgate::access",
            index = 0usize,
            method = "GET",
            path = "/mail/v1/\"quoted\"\x1b[31m",
            route = "/mail/",
            upstream = "127.0.0.1:18931".to_owned(),
            status = 200u16,
            duration_ms = 0.25,
            "part"
        );
        let part = tracing::info_span!(
            "part",
            index = 0usize,
            retried = false,
            delta = -2i64,
            upstream = tracing::field::Empty
        );
        part.record("upstream", tracing::field::display("127.0.0.1:18931"));
        part.in_scope(|| tracing::info!(target: "batchgate::access", share = 0.5, "inside a part"));
        let error = std::io::Error::other("the upstream went away");
        tracing::warn!(target: "batchgate::access", r#type = -3i64, error = &error as &dyn std::error::Error, "odd \x1b[1m");
        tracing::info!(target: "batchgate::access", "");
        tracing::info!(target: "batchgate::server", parts = 3u64, "not an access line");
        drop(_entered);
        tracing::info!(target: "batchgate::access", outside = true, "no span");
    }

    fn written(ours: bool, ansi: bool) -> Vec<String> {
        let lines = Lines::default();
        let writer = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(ansi);
        if ours {
            let layer = layer
                .fmt_fields(PrettyFields::default())
                .event_format(PrettyLines::default());
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, log_some);
        } else {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log_some);
        }
        lines.untimed()
    }

    #[test]
    fn access_lines_are_the_stock_format_byte_for_byte() {
        for ansi in [false, true] {
            let ours = written(true, ansi);
            assert_eq!(ours, written(false, ansi), "ansi {ansi}");
            assert_eq!(ours.len(), 10);
        }
    }

    #[test]
    fn the_batch_line_reads_as_documented() {
        let lines = written(true, false);
        assert_eq!(
            lines[0],
            " INFO batch{id=7 peer=::1 trace_id=\"428830e9a8fe1d1073e1f9e381601509\" parts=2}: batchgate::access: \
             batch id=7 peer=::1 format=\"multipart\" reply_format=\"json\" parts=2 statuses=2xx=1 5xx=1 \
             bytes_in=109 bytes_out=857 duration_ms=1.302 complete=true"
        );
        assert_eq!(
            lines[4],
            " INFO batch{id=7 peer=::1 trace_id=\"428830e9a8fe1d1073e1f9e381601509\" parts=2}: batchgate::access: \
             part index=0 method=\"GET\" path=\"/mail/v1/\\\"quoted\\\"\\u{1b}[31m\" route=\"/mail/\" \
             upstream=\"127.0.0.1:18931\" status=200 duration_ms=0.25"
        );
        assert!(
            lines[5].ends_with(
                "parts=2}:part{index=0 retried=false delta=-2 upstream=127.0.0.1:18931}: batchgate::access: \
                 inside a part share=0.5"
            ),
            "{}",
            lines[5]
        );
        assert_eq!(lines[9], " INFO batchgate::access: no span outside=true");
    }
}

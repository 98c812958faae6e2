//! The text log format for people (`log_format = "pretty"`): tracing_subscriber's full format, byte for byte,
//! written with fewer detours. Fields (of events and spans) are written without going through `Debug` for numbers
//! and booleans, and the access lines (target `batchgate::access`, one per batch, and per part with
//! `access_log = "parts"`), the gateway's most frequent, are written straight into the line. The stock format
//! writes every field through `Debug` and styling wrappers: the access line alone was 7.6% of the CPU of 1-part
//! batches (docs/performance.md).

use std::cell::Cell;
use std::fmt;
use std::time::UNIX_EPOCH;

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
        write_time(&mut writer)?;
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

/// The time as the full format writes it (tracing_subscriber's `SystemTime`: `2026-12-07T19:50:24.967924Z`,
/// UTC), its date and time to the second made once a second per thread rather than for every line: the
/// calendar arithmetic and the eight integers through `fmt` were about 2% of a 1-part batch's instructions.
fn write_time(writer: &mut Writer<'_>) -> fmt::Result {
    thread_local! {
        static SECOND: Cell<Option<(u64, [u8; 20])>> = const { Cell::new(None) };
    }
    let since = std::time::SystemTime::now().duration_since(UNIX_EPOCH);
    let Some((secs, micros)) = since.ok().map(|d| (d.as_secs(), d.subsec_micros())) else {
        return stock_time(writer);
    };
    let prefix = match SECOND.get() {
        Some((second, prefix)) if second == secs => prefix,
        _ => match second_text(secs) {
            Some(prefix) => {
                SECOND.set(Some((secs, prefix)));
                prefix
            }
            None => return stock_time(writer),
        },
    };
    let mut fraction = *b"000000Z";
    let mut rest = micros;
    for digit in fraction[..6].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&prefix).map_err(|_| fmt::Error)?)?;
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// The time, through tracing_subscriber (before 1970 and after 9999, which [`second_text`] leaves to it).
fn stock_time(writer: &mut Writer<'_>) -> fmt::Result {
    if SystemTime.format_time(writer).is_err() {
        writer.write_str("<unknown time>")?;
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since 1970 (UTC, proleptic Gregorian); `None` past year 9999.
fn second_text(secs: u64) -> Option<[u8; 20]> {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Days to a civil date, counted in 400-year eras from 0000-03-01 (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    if year > 9999 {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3_600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    Some(text)
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
            // `Debug` escapes nothing in printable ASCII but `"` and `\`: such a string (a format's name, a hex
            // trace id) is written as it is, without `Debug`'s walk over its characters.
            let plain = value
                .bytes()
                .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\');
            self.result = self.result.and_then(|()| {
                if plain {
                    self.writer.write_char('"')?;
                    self.writer.write_str(value)?;
                    self.writer.write_char('"')
                } else {
                    write!(self.writer, "{value:?}")
                }
            });
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

    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

    use super::{PrettyFields, PrettyLines, second_text, write_time};

    #[test]
    fn the_time_is_written_as_tracing_subscriber_writes_it() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (1_709_164_799, "2024-02-28T23:59:59."),
            (1_796_678_422, "2026-12-07T21:20:22."),
            (4_107_542_400, "2100-03-01T00:00:00."),
            (253_402_300_799, "9999-12-31T23:59:59."),
        ] {
            assert_eq!(
                std::str::from_utf8(&second_text(secs).unwrap()).unwrap(),
                text
            );
        }
        assert_eq!(second_text(253_402_300_800), None);
        // Now, against the stock timer: the two read the clock apart, so a second may turn between them.
        let (ours, stock) = (0..10)
            .map(|_| {
                let (mut ours, mut stock) = (String::new(), String::new());
                write_time(&mut Writer::new(&mut ours)).unwrap();
                SystemTime
                    .format_time(&mut Writer::new(&mut stock))
                    .unwrap();
                (ours, stock)
            })
            .find(|(ours, stock)| ours[..20] == stock[..20])
            .unwrap();
        assert_eq!((ours.len(), &ours[26..]), (stock.len(), "Z"));
    }

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

//! Logging: tracing-subscriber's formats, written to stderr by a thread of its own.
//!
//! Text lines are tracing-subscriber's `Full` format, byte for byte. graphvcr's own
//! per-exchange line (target [`EXCHANGE_TARGET`], one per request) takes a shorter
//! road to the same bytes: the default formatter styles every field name and `=` for
//! ANSI even when colours are off and goes through `write!` for each, which made the
//! line ~6% of replay's CPU (BENCHMARKS.md). A unit test holds the two outputs equal.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// The target of the line logged for every exchange.
pub const EXCHANGE_TARGET: &str = "graphvcr::exchange";

/// Lines queued for the log writer at most: about 4 MiB of text.
const LOG_QUEUE_LINES: usize = 16 * 1024;

/// How long the log writer thread waits after writing a run of lines before it looks for
/// more. The first line after a quiet spell is written at once; under load, the lines of
/// the next few milliseconds share one `write`, and the proxy's threads queue them
/// without waking the writer for each (a wake-up per line cost more CPU than the line's
/// formatting: BENCHMARKS.md).
const LOG_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Starts logging to stderr through a writer thread: formatting stays on the request
/// path, the `write` does not, and lines are buffered rather than written one syscall
/// each. The writer is not lossy: when its queue is full, logging waits. The guard
/// writes out what is queued when dropped.
///
/// The queue holds `LOG_QUEUE_LINES` lines, not tracing-appender's default 128,000:
/// a slow stderr (a terminal, a pipe nobody reads fast enough) then costs a few MiB
/// while requests wait for the writer, not ~40 MiB of queued lines.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("graphvcr-log")
        // Buffered: the writer thread flushes after each run of queued lines, so lines that
        // queue up together share a syscall; after each flush it lingers (see
        // `LingeringWriter`) so that under load a run is more than a line or two.
        .finish(LingeringWriter {
            inner: std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()),
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.event_format(TextFormat::default()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// stderr, buffered, with a pause after each flush (the writer thread flushes once per
/// run of queued lines).
struct LingeringWriter {
    inner: std::io::BufWriter<std::io::Stderr>,
}

impl std::io::Write for LingeringWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()?;
        std::thread::sleep(LOG_LINGER);
        Ok(())
    }
}

/// tracing-subscriber's default text format, with the exchange line written directly
/// when nothing calls for the general formatter (no colours, no enclosing span).
#[derive(Default)]
pub struct TextFormat {
    full: Format<Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != EXCHANGE_TARGET
            || writer.has_ansi_escapes()
            || ctx.event_scope().is_some()
        {
            return self.full.format_event(ctx, writer, event);
        }
        #[cfg(test)]
        tests::SHORT_ROAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = PlainFields {
            sanitize: writer.sanitizes_ansi_escapes(),
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// Fields as tracing-subscriber's `DefaultFields` writes them without colours: the
/// message first as it stands, then ` name=value` with the value's `Debug` form.
struct PlainFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    sanitize: bool,
    first: bool,
    result: fmt::Result,
}

impl PlainFields<'_, '_> {
    fn start(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let name = field.name();
        self.result = if name == "message" {
            self.writer.write_str(separator)
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.writer
                .write_str(separator)
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='))
        };
        self.result.is_ok()
    }
}

impl Visit for PlainFields<'_, '_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "message" {
            return self.record_debug(field, &value);
        }
        if self.start(field) {
            self.result = self.writer.write_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Rare on this line, and shaped with source lists: written as the default does.
        let mut text = String::new();
        let mut visitor = tracing_subscriber::fmt::format::DefaultVisitor::new(
            Writer::new(&mut text),
            self.first,
        );
        visitor.record_error(field, value);
        if self.result.is_ok() {
            self.first = false;
            self.result = self.writer.write_str(&text);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" && self.sanitize {
            write!(Escaping(self.writer), "{value:?}")
        } else {
            write!(self.writer, "{value:?}")
        };
    }
}

/// Escapes terminal control characters in the message, as tracing-subscriber does.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for ch in text.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Lines [`TextFormat`] wrote itself rather than through the default formatter.
    pub(super) static SHORT_ROAD: AtomicUsize = AtomicUsize::new(0);

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn events() {
        let peer: SocketAddr = "127.0.0.1:50123".parse().expect("address");
        let method = http::Method::PATCH;
        let path = "/v1.0/deviceManagement/deviceConfigurations/c1/deviceStatuses/d1".to_owned();
        let cassette = "suite-a".to_owned();
        let (some_ms, no_ms): (Option<f64>, Option<f64>) = (Some(12.5), None);
        tracing::info!(target: "graphvcr::exchange", %peer, %method, %path, status = 200u16,
            outcome = "replayed", %cassette, latency_ms = 0.017, upstream_ms = no_ms,
            interaction = Some(686u64), "exchange");
        tracing::info!(target: "graphvcr::exchange", %peer, %method, %path, status = 201u16,
            outcome = "recorded", %cassette, latency_ms = 3.25, upstream_ms = some_ms,
            interaction = None::<u64>, "exchange");
        let detail = "upstream said \"no\"\tand \u{1b}[31mred\u{1b}[0m \u{85}".to_owned();
        tracing::warn!(target: "graphvcr::exchange", %peer, %method, %path, status = 502u16,
            outcome = "upstream_error", error = %detail, latency_ms = 1e-7, "exchange");
        tracing::error!(target: "graphvcr::exchange", r#type = "x", negative = -3i64,
            flag = true, big = u64::MAX, text = "tab\there", "message \u{1b} \u{9b} with escapes");
        tracing::info!(target: "graphvcr::exchange", status = 7u64);
        let error = std::io::Error::other("disk gone");
        tracing::warn!(target: "graphvcr::exchange", error = &error as &(dyn std::error::Error + 'static), "failed");
        tracing::info!(target: "graphvcr::app", mode = "replay", "proxy started");
        let span = tracing::info_span!("connection", id = 3);
        let _entered = span.enter();
        tracing::info!(target: "graphvcr::exchange", status = 200u16, "exchange");
    }

    /// Each line without its timestamp, which differs between the two runs.
    fn lines_of(format: Option<TextFormat>) -> Vec<String> {
        let capture = Capture::default();
        let writer = capture.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone());
        match format {
            Some(format) => {
                tracing::subscriber::with_default(builder.event_format(format).finish(), events)
            }
            None => tracing::subscriber::with_default(builder.finish(), events),
        }
        let bytes = capture.0.lock().expect("capture lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(|line| match line.split_once(' ') {
                Some((time, rest)) => {
                    assert!(
                        time.ends_with('Z') && time.len() == 27,
                        "timestamp {time:?}"
                    );
                    rest.to_owned()
                }
                None => panic!("line without a timestamp: {line:?}"),
            })
            .collect()
    }

    #[test]
    fn the_exchange_line_is_byte_for_byte_the_default_format() {
        let expected = lines_of(None);
        let before = SHORT_ROAD.load(Ordering::Relaxed);
        let written = lines_of(Some(TextFormat::default()));
        // All exchange lines but the one inside a span; the app line goes the long way.
        assert_eq!(SHORT_ROAD.load(Ordering::Relaxed) - before, 6);
        assert_eq!(expected.len(), 8, "{expected:#?}");
        assert_eq!(written, expected);
        assert_eq!(
            written[0],
            " INFO graphvcr::exchange: exchange peer=127.0.0.1:50123 method=PATCH \
             path=/v1.0/deviceManagement/deviceConfigurations/c1/deviceStatuses/d1 status=200 \
             outcome=\"replayed\" cassette=suite-a latency_ms=0.017 interaction=686"
        );
        assert!(written[3].contains("\\x1b"), "{}", written[3]);
    }
}

//! Records the log writes past its general formatter: the audit trail's, when it goes to
//! the log. Every proxied request writes one, and the formatter walks each message
//! character by character to escape terminal control sequences, several percent of the
//! proxy's CPU (`docs/benchmarks.md`). Here a record is made terminal-safe once, when it
//! is serialised ([`safe_json`]), and its line is laid out as the formatter lays out its
//! own ([`Style::line`], held to that by the tests below), so the log reads the same.

use std::fmt::Write as _;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How the log's lines look, as [`super::init_logging`] set it up.
#[derive(Clone, Copy, Debug)]
pub(super) struct Style {
    pub json: bool,
    pub ansi: bool,
}

impl Style {
    /// One INFO line at `now` whose message is `{label} {record}`, newline included.
    pub(super) fn line(self, now: SystemTime, label: &str, record: &str) -> Vec<u8> {
        let time = rfc3339(now, Precision::Micros);
        let mut out = Vec::with_capacity(record.len() + label.len() + 64);
        if self.json {
            #[derive(Serialize)]
            struct Json<'a> {
                timestamp: &'a str,
                level: &'static str,
                message: &'a str,
            }
            let message = format!("{label} {record}");
            // Serialising three strings into a Vec cannot fail.
            let _ = serde_json::to_writer(
                &mut out,
                &Json {
                    timestamp: &time,
                    level: "INFO",
                    message: &message,
                },
            );
        } else if self.ansi {
            // Dimmed time, green level: the formatter's colours.
            out.extend_from_slice(b"\x1b[2m");
            out.extend_from_slice(time.as_bytes());
            out.extend_from_slice(b"\x1b[0m \x1b[32m INFO\x1b[0m ");
        } else {
            out.extend_from_slice(time.as_bytes());
            out.extend_from_slice(b"  INFO ");
        }
        if !self.json {
            out.extend_from_slice(label.as_bytes());
            out.push(b' ');
            out.extend_from_slice(record.as_bytes());
        }
        out.push(b'\n');
        out
    }
}

/// `value` as JSON holding no character a terminal acts on. serde_json already escapes
/// the C0 controls (ESC among them); DEL and the C1 controls (U+0080 to U+009F, which
/// some terminals take as escape sequences too) are escaped here, so a record can be
/// written to the log or a file as it is and still be valid JSON.
pub fn safe_json(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Safe);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// serde_json's compact layout, with DEL and C1 controls escaped in strings.
struct Safe;

impl serde_json::ser::Formatter for Safe {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if matches!(c, '\u{7f}'..='\u{9f}') {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// How finely [`rfc3339`] writes the fraction of a second.
#[derive(Clone, Copy, Debug)]
pub enum Precision {
    /// The audit trail's.
    Millis,
    /// The log formatter's.
    Micros,
}

/// `t` in UTC, RFC 3339 (`2026-12-04T23:40:00.123Z`).
pub fn rfc3339(t: SystemTime, precision: Precision) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let mut out = String::with_capacity(27);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    );
    let _ = match precision {
        Precision::Millis => write!(out, "{:03}Z", d.subsec_millis()),
        Precision::Micros => write!(out, "{:06}Z", d.subsec_micros()),
    };
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// What the general formatter writes, kept.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Kept {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("kept").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Kept {
        type Writer = Kept;
        fn make_writer(&'a self) -> Kept {
            self.clone()
        }
    }

    /// `line` with its timestamp (27 characters from its year) blanked.
    fn blank_time(line: &str) -> String {
        let b = line.as_bytes();
        let at = (0..b.len().saturating_sub(5))
            .find(|&i| b[i..i + 4].iter().all(u8::is_ascii_digit) && b[i + 4] == b'-')
            .expect("a timestamp");
        format!("{}<time>{}", &line[..at], &line[at + 27..])
    }

    #[test]
    fn a_record_line_reads_as_the_log_formatter_writes_it() {
        let record = String::from_utf8(
            safe_json(&serde_json::json!({"event": "call", "target": "GET /a\u{1b}[31m\u{85}é"}))
                .expect("json"),
        )
        .expect("utf-8");
        for style in [
            Style {
                json: false,
                ansi: false,
            },
            Style {
                json: false,
                ansi: true,
            },
            Style {
                json: true,
                ansi: false,
            },
        ] {
            let kept = Kept::default();
            let subscriber =
                tracing_subscriber::registry().with(super::super::log_format(kept.clone(), style));
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(target: "audit", "audit {record}");
            });
            let theirs = String::from_utf8(kept.0.lock().expect("kept").clone()).expect("utf-8");
            let ours =
                String::from_utf8(style.line(SystemTime::now(), "audit", &record)).expect("utf-8");
            assert_eq!(blank_time(&ours), blank_time(&theirs), "{style:?}");
            assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1);
        }
    }

    #[test]
    fn records_carry_no_character_a_terminal_acts_on_and_stay_json() {
        let value = serde_json::json!({"a": "x\u{1b}y\u{7f}z\u{85}\u{9f}\u{a0}é\"q\n"});
        let text = String::from_utf8(safe_json(&value).expect("json")).expect("utf-8");
        assert_eq!(
            text,
            "{\"a\":\"x\\u001by\\u007fz\\u0085\\u009f\u{a0}é\\\"q\\n\"}"
        );
        assert!(!text.chars().any(|c| c.is_control()));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("parses"),
            value
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_796_223_845_123_456);
        assert_eq!(rfc3339(t, Precision::Millis), "2026-12-02T15:04:05.123Z");
        assert_eq!(rfc3339(t, Precision::Micros), "2026-12-02T15:04:05.123456Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH, Precision::Millis),
            "1970-01-01T00:00:00.000Z"
        );
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t, Precision::Millis), "2000-02-29T00:00:00.000Z");
    }
}

//! Records the log writes past its general formatter: the audit trail's, when it goes to
//! the log. Every proxied request writes one, and the formatter walks each message
//! character by character to escape terminal control sequences, several percent of the
//! proxy's CPU (`docs/performance-log.md`). Here a record is made terminal-safe once,
//! when it is serialised ([`safe_json`]), and its line is laid out as the formatter lays
//! out its own ([`Style::line`], held to that by the tests below), so the log reads the
//! same.

use std::cell::Cell;
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
        // DEL is 0x7F and every C1 control is 0xC2 0x80..=0x9F in UTF-8: a fragment
        // without either byte (nearly all of them) is written as it is.
        if !fragment.bytes().any(|b| b == 0x7f || b == 0xc2) {
            return writer.write_all(fragment.as_bytes());
        }
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
///
/// Every proxied request writes one or two (its audit record, the log line around it),
/// so each thread keeps the text of the last second it wrote and only the fraction is
/// written each time, digit by digit rather than through `core::fmt`.
pub fn rfc3339(t: SystemTime, precision: Precision) -> String {
    thread_local! {
        /// The last second written on this thread, and its text up to the fraction.
        static SECOND: Cell<(u64, [u8; SECOND_TEXT])> =
            const { Cell::new((u64::MAX, [0; SECOND_TEXT])) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let text = match SECOND.with(Cell::get) {
        (cached, text) if cached == secs => text,
        _ => {
            let text = second_text(secs);
            SECOND.with(|c| c.set((secs, text)));
            text
        }
    };
    let (fraction, digits) = match precision {
        Precision::Millis => (d.subsec_millis(), 3),
        Precision::Micros => (d.subsec_micros(), 6),
    };
    let mut out = String::with_capacity(SECOND_TEXT + digits + 1);
    out.extend(text.iter().map(|&b| char::from(b)));
    let mut fraction_text = [b'0'; 6];
    put_digits(&mut fraction_text[..digits], fraction.into());
    out.extend(fraction_text[..digits].iter().map(|&b| char::from(b)));
    out.push('Z');
    out
}

/// Length of `YYYY-MM-DDTHH:MM:SS.`.
const SECOND_TEXT: usize = 20;

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch. Years past 9999 (a clock gone far
/// wrong) are written as 9999, keeping the text's length.
fn second_text(secs: u64) -> [u8; SECOND_TEXT] {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let mut text = *b"0000-00-00T00:00:00.";
    put_digits(&mut text[0..4], y.min(9999));
    put_digits(&mut text[5..7], m);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], rem / 3600);
    put_digits(&mut text[14..16], rem % 3600 / 60);
    put_digits(&mut text[17..19], rem % 60);
    text
}

/// The last `slots.len()` decimal digits of `value` into `slots`, zero-padded.
fn put_digits(slots: &mut [u8], mut value: u64) {
    for slot in slots.iter_mut().rev() {
        // A digit: always below 10.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
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

    /// The thread's cached second is used only for that second: times within it differ
    /// in their fraction alone, and the next second (or one long before) is written anew.
    #[test]
    fn times_within_a_second_and_across_seconds_are_each_right() {
        let second = 1_796_223_845_000_000;
        // In order: each case's second follows the thread's cached one or differs from it.
        let cases = [
            (second + 7, Precision::Micros, "2026-12-02T15:04:05.000007Z"),
            (
                second + 999_999,
                Precision::Micros,
                "2026-12-02T15:04:05.999999Z",
            ),
            (
                second + 50_000,
                Precision::Millis,
                "2026-12-02T15:04:05.050Z",
            ),
            (
                second + 1_000_000,
                Precision::Millis,
                "2026-12-02T15:04:06.000Z",
            ),
            // The last second of a year, then the first of the next.
            (
                1_798_761_599_000_001,
                Precision::Micros,
                "2026-12-31T23:59:59.000001Z",
            ),
            (
                1_798_761_600_000_000,
                Precision::Millis,
                "2027-01-01T00:00:00.000Z",
            ),
            // Back to a second long before.
            (second, Precision::Millis, "2026-12-02T15:04:05.000Z"),
        ];
        for (micros, precision, want) in cases {
            let t = UNIX_EPOCH + Duration::from_micros(micros);
            assert_eq!(rfc3339(t, precision), want, "{micros}");
        }
    }

    /// Each thread keeps its own second: two threads writing in rounds, at once, each
    /// switching between two seconds of its own every round, never get the other's text.
    /// (The threads only write; the checks run after both ended, so a wrong text fails
    /// the test instead of leaving the other thread waiting at the barrier.)
    #[test]
    fn two_threads_writing_different_seconds_at_once_each_get_their_own() {
        use std::sync::{Arc, Barrier};
        let rounds = Arc::new(Barrier::new(2));
        let writer = |base: u64| {
            let rounds = rounds.clone();
            std::thread::spawn(move || {
                (0..4u64)
                    .map(|round| {
                        rounds.wait();
                        let micros = base + (round % 2) * 1_000_000 + round;
                        rfc3339(
                            UNIX_EPOCH + Duration::from_micros(micros),
                            Precision::Micros,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        };
        let one = writer(1_796_223_845_000_000);
        let other = writer(1_798_761_599_000_000);
        let (one, other) = (
            one.join().expect("first thread"),
            other.join().expect("second thread"),
        );
        assert_eq!(
            one,
            [
                "2026-12-02T15:04:05.000000Z",
                "2026-12-02T15:04:06.000001Z",
                "2026-12-02T15:04:05.000002Z",
                "2026-12-02T15:04:06.000003Z",
            ]
        );
        assert_eq!(
            other,
            [
                "2026-12-31T23:59:59.000000Z",
                "2027-01-01T00:00:00.000001Z",
                "2026-12-31T23:59:59.000002Z",
                "2027-01-01T00:00:00.000003Z",
            ]
        );
    }

    #[test]
    fn only_del_and_c1_controls_are_escaped_beyond_json() {
        let json = |s: &str| String::from_utf8(safe_json(&s).expect("json")).expect("utf-8");
        assert_eq!(json("plain /repos/a"), r#""plain /repos/a""#);
        // Other non-ASCII text, 0xC2 lead bytes past C1 among it, stays as it is.
        assert_eq!(json("café ¡ü"), "\"café ¡ü\"");
        assert_eq!(json("a\u{7f}b\u{85}c\u{9f}"), r#""a\u007fb\u0085c\u009f""#);
        assert_eq!(json("\u{1b}[31m"), r#""\u001b[31m""#);
    }
}

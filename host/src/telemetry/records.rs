//! Records the log writes past its general formatter: the audit trail's, when it goes to
//! the log. Every proxied request writes one, and the formatter walks each message
//! character by character to escape terminal control sequences, several percent of the
//! proxy's CPU (`docs/performance-log.md`). Here a record is made terminal-safe once,
//! when it is written ([`Record`]), and its line is laid out as the formatter lays out its
//! own ([`Style::line`], held to that by the tests below), so the log reads the same.

use std::cell::Cell;
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
                    timestamp: &rfc3339(now, Precision::Micros),
                    level: "INFO",
                    message: &message,
                },
            );
        } else if self.ansi {
            // Dimmed time, green level: the formatter's colours.
            out.extend_from_slice(b"\x1b[2m");
            write_rfc3339(&mut out, now, Precision::Micros);
            out.extend_from_slice(b"\x1b[0m \x1b[32m INFO\x1b[0m ");
        } else {
            write_rfc3339(&mut out, now, Precision::Micros);
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

/// A record: one JSON object, written field by field, holding no character a terminal
/// acts on, so it can go to the log or a file as it is. The audit trail writes one for
/// every proxied request; written by serde (a flattened struct, each string scanned byte
/// by byte twice, for JSON's escapes and then the terminal's), a record and its line cost
/// about an eighth of the gateway's instructions a request, written this way under half
/// of that (docs/performance-log.md).
#[derive(Debug)]
pub struct Record(Vec<u8>);

impl Default for Record {
    fn default() -> Self {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        Self(out)
    }
}

impl Record {
    /// A field's key: a name in the code, plain ASCII, so written as it is.
    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(plain(key.as_bytes()), "{key:?} needs no escaping");
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
        &mut self.0
    }

    /// `"key":"value"`.
    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        let out = self.key(key);
        out.push(b'"');
        escape_into(out, value);
        out.push(b'"');
        self
    }

    /// `"key":"value"`, or `"key":null` without one.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// `"key":null`.
    pub fn null(&mut self, key: &'static str) -> &mut Self {
        self.key(key).extend_from_slice(b"null");
        self
    }

    /// `"key":["…",…]`.
    pub fn strs(&mut self, key: &'static str, values: &[String]) -> &mut Self {
        let out = self.key(key);
        out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            escape_into(out, v);
            out.push(b'"');
        }
        out.push(b']');
        self
    }

    /// `"key":"2026-12-04T23:40:00.123Z"`: `t` as [`rfc3339`] writes it.
    pub fn time(&mut self, key: &'static str, t: SystemTime, precision: Precision) -> &mut Self {
        let out = self.key(key);
        out.push(b'"');
        write_rfc3339(out, t, precision);
        out.push(b'"');
        self
    }

    /// The object's text, closed.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.push(b'}');
        self.0
    }
}

/// `text` as the inside of a JSON string holding no character a terminal acts on: JSON's
/// own escapes (`"`, `\`, every C0 control, ESC among them, as serde_json writes them),
/// and DEL and the C1 controls (U+0080 to U+009F, which some terminals take as escape
/// sequences too) as `\u00XX`. The one place records are made safe for a terminal.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    // Nearly every string in a record is printable ASCII, copied as it is.
    if plain(text.as_bytes()) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let short: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            '\u{8}' => Some(b"\\b"),
            '\u{c}' => Some(b"\\f"),
            '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' => None,
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[start..i]);
        start = i + c.len_utf8();
        match short {
            Some(short) => out.extend_from_slice(short),
            None => {
                // Below U+00A0: two hex digits.
                let n = u32::from(c) as usize;
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[n >> 4], HEX[n & 0xf]]);
            }
        }
    }
    out.extend_from_slice(&text.as_bytes()[start..]);
}

/// Whether `bytes` are all printable ASCII other than `"` and `\\`: nothing in them is
/// escaped. Eight bytes at a time (a byte below 0x20, one of the two, or one from DEL up,
/// which any non-ASCII character has, found in a word by carry-free arithmetic), as
/// [`escape_into`] asks it of every string in every record.
fn plain(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    /// Whether any byte of `v` is zero.
    fn any_zero(v: u64) -> bool {
        v.wrapping_sub(ONES) & !v & HIGH != 0
    }
    let needs_escape = |v: u64| {
        // A byte below 0x20 (exact for a word whose bytes are all below 0x80, which the
        // last test covers otherwise).
        v.wrapping_sub(ONES * 0x20) & !v & HIGH != 0
            || any_zero(v ^ (ONES * u64::from(b'"')))
            || any_zero(v ^ (ONES * u64::from(b'\\')))
            // A byte of 0x7F or above: adding one sets its top bit, or it had it.
            || (v.wrapping_add(ONES) | v) & HIGH != 0
    };
    let (words, rest) = bytes.as_chunks::<8>();
    !words.iter().any(|w| needs_escape(u64::from_ne_bytes(*w)))
        && rest
            .iter()
            .all(|&b| (b' '..0x7f).contains(&b) && b != b'"' && b != b'\\')
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
    let mut out = Vec::with_capacity(SECOND_TEXT + 7);
    write_rfc3339(&mut out, t, precision);
    // Digits, dashes, colons, `T`, `.` and `Z`: ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// [`rfc3339`], written onto `out`.
///
/// Every proxied request writes one or two (its audit record, the log line around it),
/// so each thread keeps the text of the last second it wrote and only the fraction is
/// written each time, digit by digit rather than through `core::fmt`.
pub fn write_rfc3339(out: &mut Vec<u8>, t: SystemTime, precision: Precision) {
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
    let mut fraction_text = [b'0'; 7];
    put_digits(&mut fraction_text[..digits], fraction.into());
    fraction_text[digits] = b'Z';
    out.extend_from_slice(&text);
    out.extend_from_slice(&fraction_text[..=digits]);
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

/// `n` in decimal, written into `digits` (a status, in a record written for every
/// request, without `core::fmt`).
pub fn decimal(n: u16, digits: &mut [u8; 5]) -> &str {
    put_digits(digits, n.into());
    let first = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len() - 1);
    // Digits only: ASCII.
    std::str::from_utf8(&digits[first..]).unwrap_or_default()
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
    use std::io;
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
        let mut record = Record::default();
        record
            .str("event", "call")
            .str("target", "GET /a\u{1b}[31m\u{85}é");
        let record = String::from_utf8(record.finish()).expect("utf-8");
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
        let value = "x\u{1b}y\u{7f}z\u{85}\u{9f}\u{a0}é\"q\n";
        let mut record = Record::default();
        record.str("a", value);
        let text = String::from_utf8(record.finish()).expect("utf-8");
        assert_eq!(
            text,
            "{\"a\":\"x\\u001by\\u007fz\\u0085\\u009f\u{a0}é\\\"q\\n\"}"
        );
        assert!(!text.chars().any(|c| c.is_control()));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("parses"),
            serde_json::json!({ "a": value })
        );
    }

    /// Every character up to U+02FF, alone and among others, and text beyond: escaped
    /// exactly as serde_json escapes JSON (plus DEL and the C1 controls), read back
    /// unchanged, with no control character left in the text.
    #[test]
    fn every_string_is_escaped_as_json_and_terminal_safe() {
        let mut samples: Vec<String> = (0..=0x2ff_u32)
            .filter_map(char::from_u32)
            .flat_map(|c| [c.to_string(), format!("a{c}b{c}{c}")])
            .collect();
        samples.extend(
            [
                "",
                "plain/ascii-path_1",
                "GET /repos/a/b",
                "\u{1b}[2J\u{9b}31m",
                "émoji 🦀 \u{2028}\u{2029} \u{feff}",
                "quote \" and \\ backslash",
            ]
            .map(str::to_owned),
        );
        for sample in &samples {
            let mut record = Record::default();
            record
                .str("s", sample)
                .strs("l", std::slice::from_ref(sample));
            let text = String::from_utf8(record.finish()).expect("utf-8");
            assert!(!text.chars().any(char::is_control), "{sample:?}: {text}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&text).expect("parses"),
                serde_json::json!({ "s": sample, "l": [sample] }),
                "{sample:?}"
            );
            // serde_json's own text, but for the controls it leaves as they are.
            let mut theirs = serde_json::to_string(sample).expect("json");
            for c in ('\u{7f}'..='\u{9f}').rev() {
                theirs = theirs.replace(c, &format!("\\u{:04x}", u32::from(c)));
            }
            let mut ours = Record::default();
            ours.str("s", sample);
            assert_eq!(
                String::from_utf8(ours.finish()).expect("utf-8"),
                format!("{{\"s\":{theirs}}}")
            );
        }
    }

    /// The word-at-a-time test says what a byte-by-byte one says, for every byte at
    /// every place of words and of the bytes after them.
    #[test]
    fn plain_text_is_found_a_word_at_a_time_as_byte_by_byte() {
        let by_byte = |bytes: &[u8]| {
            bytes
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        for len in [1, 7, 8, 9, 16, 21] {
            for at in 0..len {
                for b in 0..=u8::MAX {
                    // Around the odd byte, bytes next to each edge of the plain range.
                    for fill in [b'a', 0x20, 0x7e, b'!', b'#', b'[', b']'] {
                        let mut bytes = vec![fill; len];
                        bytes[at] = b;
                        assert_eq!(plain(&bytes), by_byte(&bytes), "{bytes:?}");
                    }
                }
            }
        }
        assert!(plain(b""));
        // Bytes that borrow or carry between neighbours in the word arithmetic.
        for word in [
            [0x00, 0x01, 0x20, 0x21, 0x7f, 0x80, 0xff, 0x1f],
            [0xff; 8],
            [0x7f; 8],
        ] {
            assert_eq!(plain(&word), by_byte(&word), "{word:?}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 200, 404, 999, 1000, 65_535] {
            assert_eq!(decimal(n, &mut [0; 5]), n.to_string());
        }
    }

    #[test]
    fn a_record_holds_its_fields_in_order() {
        let mut record = Record::default();
        record
            .time("time", UNIX_EPOCH, Precision::Millis)
            .str("event", "admin")
            .opt_str("node", None)
            .opt_str("caller", Some("ada"))
            .null("grant")
            .str("outcome", "200")
            .strs("changed", &["a.b".to_owned(), "c".to_owned()])
            .strs("none", &[]);
        assert_eq!(
            String::from_utf8(record.finish()).expect("utf-8"),
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"event\":\"admin\",\"node\":null,\
             \"caller\":\"ada\",\"grant\":null,\"outcome\":\"200\",\"changed\":[\"a.b\",\"c\"],\
             \"none\":[]}"
        );
        assert_eq!(
            String::from_utf8(Record::default().finish()).expect("utf-8"),
            "{}"
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
        let json = |s: &str| {
            let mut out = Vec::new();
            escape_into(&mut out, s);
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(json("plain /repos/a"), "plain /repos/a");
        // Other non-ASCII text, 0xC2 lead bytes past C1 among it, stays as it is.
        assert_eq!(json("café ¡ü"), "café ¡ü");
        assert_eq!(json("a\u{7f}b\u{85}c\u{9f}"), r#"a\u007fb\u0085c\u009f"#);
        assert_eq!(json("\u{1b}[31m"), r#"\u001b[31m"#);
    }
}

//! Ok markers (WIT 0.1.5 `classify-markers`): answers a plugin says are fine whenever the
//! body opens with a given member, so the host calls them `ok` itself instead of paying a
//! `classify-response` call for each. Slack answers every request with HTTP 200 and says
//! whether it failed in the body (`"ok": false`), so before markers every Slack answer
//! cost a call; its successful answers open with `"ok":true`.
//!
//! Only the first member is read: Slack puts `ok` first, and reading no further means a
//! long answer cut off at `classify-body-bytes` matches as well as a short one, at the
//! cost of a few bytes' scan. Nothing else counts (the headers, a later member of the
//! same name, whether the rest is well-formed): the plugin promises that such answers
//! are `ok` whatever follows, and the fixture harness holds it to that for every
//! recorded answer. Anything the scan does not recognise is not a match, and the plugin
//! is called as before. The markers are checked once, at load (`output::ok_markers`),
//! into [`OkMarker`].

use std::borrow::Cow;

/// A checked marker: `statuses` within 100-599, `member` and `value` as the output check
/// allows them (a plain name, a JSON scalar's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkMarker {
    pub(super) statuses: Vec<(u16, u16)>,
    pub(super) member: Box<str>,
    pub(super) value: Box<[u8]>,
}

impl OkMarker {
    /// Whether the answer (`status`, the first bytes of its body that the plugin would
    /// be given) is one the marker calls `ok`.
    pub fn matches(&self, status: u16, body: &[u8]) -> bool {
        in_ranges(&self.statuses, status)
            && first_member(body)
                .is_some_and(|(name, value)| *name == *self.member && value_is(value, &self.value))
    }
}

/// Whether `status` is in one of the inclusive `ranges`.
pub(super) fn in_ranges(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
}

/// The longest escaped member name worth decoding: six bytes (`\u0041`) for each byte of
/// the longest name a marker may have. A longer one cannot match, and decoding it
/// would cost an allocation on every answer.
const MAX_ESCAPED_NAME: usize = 6 * super::output::MAX_MARKER_TEXT;

/// The first member of the JSON object `body` opens: its name as JSON decodes it, and
/// the bytes from its value's first character to the end of `body`. `None` when `body`
/// does not open an object with a well-formed name and a `:`.
fn first_member(body: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let quoted = skip_space(skip_space(body).strip_prefix(b"{")?);
    let end = string_end(quoted.strip_prefix(b"\"")?)? + 2;
    let (quoted, rest) = quoted.split_at(end);
    let raw = &quoted[1..end - 1];
    let name = if raw.len() > MAX_ESCAPED_NAME {
        return None;
    } else if raw.contains(&b'\\') {
        // Escapes and surrogate pairs, decoded as JSON decodes them.
        Cow::Owned(serde_json::from_slice::<String>(quoted).ok()?)
    } else {
        Cow::Borrowed(std::str::from_utf8(raw).ok()?)
    };
    let rest = skip_space(rest).strip_prefix(b":")?;
    Some((name, skip_space(rest)))
}

/// Where the string that `s` continues (after its opening quote) ends: the index of its
/// closing quote. `None` for a control character (not allowed in JSON strings) or no
/// closing quote within `s`.
fn string_end(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i),
            b'\\' => i += 2,
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
    None
}

/// Whether `rest` starts with the value `value` followed by what may follow a member's
/// value: whitespace, `,` or `}`. A number is not a prefix of a longer one this way.
fn value_is(rest: &[u8], value: &[u8]) -> bool {
    rest.strip_prefix(value)
        .and_then(|after| skip_space(after).first())
        .is_some_and(|c| matches!(c, b',' | b'}'))
}

/// `s` without its leading JSON whitespace.
fn skip_space(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(s.len());
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slack() -> OkMarker {
        OkMarker {
            statuses: vec![(200, 299)],
            member: "ok".into(),
            value: (*b"true").into(),
        }
    }

    #[test]
    fn an_answer_opening_with_the_member_matches() {
        let m = slack();
        for body in [
            &br#"{"ok":true,"channels":[]}"#[..],
            br#"{"ok":true}"#,
            b" \r\n\t{ \"ok\" :\n true , \"x\": 1}",
            br#"{"\u006fk":true,"x":1}"#,
            // Cut off at the plugin's byte limit: only the first member is read.
            br#"{"ok":true,"messages":[{"text":"a long his"#,
        ] {
            assert!(m.matches(200, body), "{}", String::from_utf8_lossy(body));
        }
        assert!(m.matches(299, br#"{"ok":true}"#));
    }

    #[test]
    fn anything_else_is_left_to_the_plugin() {
        let m = slack();
        for body in [
            &br#"{"ok":false,"error":"invalid_auth"}"#[..],
            br#"{"channels":[],"ok":true}"#,
            br#"{"ok":"true"}"#,
            br#"{"ok":truest}"#,
            br#"{"ok":true"#,
            br#"{"ok":true]"#,
            br#"{"okay":true}"#,
            br#"{"o\"k":true}"#,
            br#"{"ok\u0000":true}"#,
            b"{\"o\nk\":true}",
            br#"{"ok" true}"#,
            br#"["ok",true]"#,
            br#"{"ok":tr"#,
            br#"{"ok"#,
            br#"{""#,
            b"{",
            b"",
            b"ok",
            b"\xef\xbb\xbf{\"ok\":true}",
            b"{\"\xff\":true}",
            br#"{"\ud800":true}"#,
        ] {
            assert!(!m.matches(200, body), "{}", String::from_utf8_lossy(body));
        }
        for status in [199, 300, 401, 429, 500] {
            assert!(!m.matches(status, br#"{"ok":true}"#), "{status}");
        }
    }

    #[test]
    fn numbers_and_strings_match_as_written() {
        let number = OkMarker {
            statuses: vec![(200, 200), (202, 202)],
            member: "code".into(),
            value: (*b"0").into(),
        };
        assert!(number.matches(202, br#"{"code":0,"data":{}}"#));
        assert!(!number.matches(201, br#"{"code":0}"#));
        for body in [
            &br#"{"code":0.0}"#[..],
            br#"{"code":00}"#,
            br#"{"code":01}"#,
        ] {
            assert!(
                !number.matches(200, body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let text = OkMarker {
            statuses: vec![(200, 200)],
            member: "status".into(),
            value: (*br#""success""#).into(),
        };
        assert!(text.matches(200, br#"{"status":"success"}"#));
        assert!(!text.matches(200, br#"{"status":"successful"}"#));
        assert!(!text.matches(200, br#"{"status":"success"x}"#));
    }
}

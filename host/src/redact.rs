//! Credentials out of text the host reports but did not write: an OAuth server's
//! `error_description`, a transport error's detail. Such text can echo the request it
//! answers (`Authorization: Basic <client id:secret>`, `client_secret=...`), and it
//! ends up in error bodies and logs. Everything from elsewhere passes through [`text`]
//! before the host repeats it; where the host knows the secret it sent, [`known`]
//! removes that too, in whatever encoding it came back.

use std::sync::LazyLock;

use regex::Regex;

/// What stands where a credential was.
pub const REDACTED: &str = "[redacted]";

/// Longest piece of foreign text repeated.
const MAX_CHARS: usize = 300;

static SCHEMES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i-u)\b(basic|bearer|digest|token)[ \t]+[A-Za-z0-9+/=._~\-]{6,}").expect("regex")
});

static PAIRS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i-u)\b(client_secret|password|passwd|secret|access_token|refresh_token|id_token|code_verifier|assertion|api_key|apikey)(["']?[ \t]*[=:][ \t]*["']?)[!#$%()*+\-./0-9:<=>?@A-Z\[\]^_`a-z|~]+"#,
    )
    .expect("regex")
});

static JWT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*").expect("regex")
});

/// `s` without anything that looks like a credential, and at most [`MAX_CHARS`] long.
pub fn text(s: &str) -> String {
    let s: String = s.chars().take(MAX_CHARS).collect();
    let s = SCHEMES.replace_all(&s, format!("$1 {REDACTED}"));
    let s = PAIRS.replace_all(&s, format!("$1$2{REDACTED}"));
    JWT.replace_all(&s, REDACTED).into_owned()
}

/// [`text`], and every spelling of `secrets` removed: as is, percent- or form-encoded,
/// and base64 (alone, or as `id:secret` in a Basic credential when `id` is given).
pub fn known(s: &str, id: Option<&str>, secrets: &[&str]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let form = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut out = s.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        let mut spellings = vec![
            (*secret).to_owned(),
            form(secret),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
            b64.encode(secret),
        ];
        if let Some(id) = id {
            // RFC 6749 §2.3.1 form-encodes both halves before base64 (and so does the
            // host): `~`, `@`, `/` or a space in either changes the credential sent.
            spellings.push(b64.encode(format!("{id}:{secret}")));
            spellings.push(b64.encode(format!("{}:{}", form(id), form(secret))));
        }
        for spelling in spellings {
            // Percent-encoding's hex may come back in either case.
            out = replace_ignoring_case(&out, &spelling);
        }
    }
    text(&out)
}

/// Replaces every ASCII-case-insensitive occurrence of `needle` (lower-casing ASCII
/// keeps byte offsets, so positions found in the lower-cased text hold in the original).
fn replace_ignoring_case(haystack: &str, needle: &str) -> String {
    if needle.is_empty() {
        return haystack.to_owned();
    }
    let lower = haystack.to_ascii_lowercase();
    let want = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(haystack.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(&want) {
        let start = at + found;
        out.push_str(&haystack[at..start]);
        out.push_str(REDACTED);
        at = start + want.len();
    }
    out.push_str(&haystack[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_foreign_text_are_removed() {
        let echoed = "invalid_client: got Authorization: Basic Y2xpZW50OnMzY3JldA== and client_secret=s3cret&grant_type=x, token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc";
        let out = text(echoed);
        for gone in ["Y2xpZW50OnMzY3JldA", "s3cret", "eyJhbGci"] {
            assert!(!out.contains(gone), "{out}");
        }
        assert!(out.contains("invalid_client"), "{out}");
        assert!(out.contains("grant_type=x"), "{out}");
        let json = r#"{"password": "hunter22", "user": "bob"}"#;
        assert!(!text(json).contains("hunter22"), "{}", text(json));
        assert!(text(&"x".repeat(1000)).len() <= MAX_CHARS);
    }

    #[test]
    fn a_known_secret_is_removed_in_every_spelling() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let secret = "p@ss/word 1";
        for echoed in [
            format!("bad secret {secret}"),
            "bad secret p%40ss%2fword%201".to_owned(),
            "bad secret p%40ss%2Fword+1".to_owned(),
            format!("creds {}", b64.encode(format!("my.client@corp:{secret}"))),
            // What the host sends: both halves form-encoded, then base64, echoed bare.
            format!(
                "Authorization=Basic%20{}",
                b64.encode("my.client%40corp:p%40ss%2Fword+1")
            ),
        ] {
            let out = known(&echoed, Some("my.client@corp"), &[secret]);
            assert!(out.contains(REDACTED), "{echoed} -> {out}");
            assert!(!out.contains("word"), "{echoed} -> {out}");
        }
    }
}

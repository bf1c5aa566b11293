//! Does a URI come from an MCP resource template (RFC 6570)? `resources/read` of a URI
//! no listed resource has is allowed by a grant on a template that produces it, so the
//! match must be as strict as the template: a simple `{id}` is one non-empty value with
//! no `/`, `{/path}` one segment, `{?q}` only the parameter `q`, `{id:3}` at most three
//! characters; only an exploded variable (`{/path*}`, `{?params*}`) may repeat or bring
//! names of its own; the literal text around the expressions must all be there.
//!
//! A regex finds the expressions' text (linear time, the template's literals escaped),
//! then each expression's text is checked against its variables.

use regex::Regex;

/// Unreserved characters (RFC 3986 §2.3) or a percent-encoded octet: what a simple,
/// label, path or query expansion puts in a value.
const UNRESERVED: &str = r"[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2}";
/// Unreserved and reserved characters: what `{+var}` and `{#var}` may put in a value.
const RESERVED: &str = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2}";

/// Longest URI matched against templates; longer ones are refused outright.
const MAX_URI: usize = 8 * 1024;

/// A compiled URI template.
pub struct UriTemplate {
    re: Regex,
    exprs: Vec<Expr>,
}

/// One `{...}` expression.
struct Expr {
    op: Option<char>,
    vars: Vec<Var>,
}

struct Var {
    name: String,
    explode: bool,
    /// `{var:N}`: at most N characters.
    prefix: Option<usize>,
}

impl Expr {
    fn explodes(&self) -> bool {
        self.vars.iter().any(|v| v.explode)
    }

    /// The regex for this expression's whole expansion, in capture group `i`. Every
    /// variable may be undefined, so each may expand to nothing.
    fn pattern(&self, i: usize) -> String {
        let u = UNRESERVED;
        let body = match self.op {
            None => format!("(?:{u}|[,=])*"),
            Some('+') => format!("(?:{RESERVED})*"),
            Some('#') => format!("(?:#(?:{RESERVED})*)?"),
            Some('.') => format!(r"(?:\.(?:{u}|[,=])*)*"),
            Some('/') => format!("(?:/(?:{u}|[,=])*)*"),
            Some(';') => format!("(?:;(?:{u}|[,=])*)*"),
            Some('?') => format!(r"(?:\?(?:{u}|[,=&])*)?"),
            // `&`: the only other operator `parse` passes.
            _ => format!("(?:&(?:{u}|[,=&])*)?"),
        };
        format!("(?P<e{i}>{body})")
    }

    /// Could this expression have expanded to `text`?
    fn accepts(&self, text: &str) -> bool {
        if text.is_empty() {
            // Undefined variables. Refused for `{id}` and `{+path}`, which would leave
            // a hole in the URI (`users:///profile`); the others leave nothing out.
            return !matches!(self.op, None | Some('+'));
        }
        match self.op {
            None | Some('+') => self.values(text.split(',')),
            Some('#') => self.values(text[1..].split(',')),
            Some(op @ ('.' | '/')) => {
                let items: Vec<&str> = text[1..].split(op).collect();
                if self.explodes() {
                    items.iter().all(|v| !v.is_empty())
                } else {
                    // One item per defined variable, each a (comma-separated) value.
                    items.len() <= self.vars.len()
                        && items.iter().all(|item| self.values(item.split(',')))
                }
            }
            Some(';') => self.named(text[1..].split(';'), true),
            // `?` and `&`.
            _ => self.named(text[1..].split('&'), false),
        }
    }

    /// Comma-separated values of the variables in order: non-empty, within a prefix
    /// length, no more of them than variables unless one explodes.
    fn values<'a>(&self, values: impl Iterator<Item = &'a str>) -> bool {
        let values: Vec<&str> = values.collect();
        if !self.explodes() && values.len() > self.vars.len() {
            return false;
        }
        values.iter().enumerate().all(|(i, v)| {
            !v.is_empty()
                && self
                    .vars
                    .get(i)
                    .and_then(|var| var.prefix)
                    .is_none_or(|n| chars(v) <= n)
        })
    }

    /// `name=value` items (`;` also allows a bare `name`): each name one of the
    /// variables, in their order, at most once; an exploded variable brings names of
    /// its own, so then anything goes.
    fn named<'a>(&self, items: impl Iterator<Item = &'a str>, bare: bool) -> bool {
        if self.explodes() {
            return true;
        }
        let mut next = 0;
        for item in items {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None if bare => (item, None),
                None => return false,
            };
            let Some(at) = self.vars[next..].iter().position(|v| v.name == name) else {
                return false;
            };
            let var = &self.vars[next + at];
            if value.is_some_and(|v| var.prefix.is_some_and(|n| chars(v) > n)) {
                return false;
            }
            next += at + 1;
        }
        true
    }
}

/// Characters of a value, a percent-encoded octet counting as one.
fn chars(v: &str) -> usize {
    v.len() - 2 * v.matches('%').count()
}

impl UriTemplate {
    /// Compiles `template`; `None` when it is not a well-formed template (an unclosed
    /// or empty expression, a bad variable), which then matches nothing.
    pub fn parse(template: &str) -> Option<Self> {
        let mut pattern = String::from("^");
        let mut exprs = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            pattern.push_str(&regex::escape(&rest[..open]));
            let after = &rest[open + 1..];
            let close = after.find('}')?;
            let expr = &after[..close];
            let (op, list) = match expr.chars().next()? {
                c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&') => (Some(c), &expr[1..]),
                _ => (None, expr),
            };
            let vars = list.split(',').map(var).collect::<Option<Vec<_>>>()?;
            let e = Expr { op, vars };
            pattern.push_str(&e.pattern(exprs.len()));
            exprs.push(e);
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return None;
        }
        pattern.push_str(&regex::escape(rest));
        pattern.push('$');
        Regex::new(&pattern).ok().map(|re| Self { re, exprs })
    }

    /// Could expanding the template give `uri`? URIs with `.` or `..` path segments
    /// (plain or percent-encoded) never match: a template grant must not reach beyond
    /// what the template names through the upstream's path normalization. Match a URI
    /// after [`normalize`], so that `%61` and `a` are the same to grants.
    pub fn matches(&self, uri: &str) -> bool {
        if uri.len() > MAX_URI || has_dot_segment(uri) {
            return false;
        }
        let Some(caps) = self.re.captures(uri) else {
            return false;
        };
        self.exprs.iter().enumerate().all(|(i, e)| {
            let text = caps.name(&format!("e{i}")).map_or("", |m| m.as_str());
            e.accepts(text)
        })
    }
}

/// `name`, `name*` or `name:N` (RFC 6570 §2.3, §2.4).
fn var(spec: &str) -> Option<Var> {
    let (name, explode, prefix) = if let Some(n) = spec.strip_suffix('*') {
        (n, true, None)
    } else if let Some((n, len)) = spec.split_once(':') {
        let len: usize = len.parse().ok().filter(|l| (1..10_000).contains(l))?;
        (n, false, Some(len))
    } else {
        (spec, false, None)
    };
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'%'));
    ok.then(|| Var {
        name: name.to_owned(),
        explode,
        prefix,
    })
}

/// RFC 3986 §6.2.2 normalization of percent-encoding: octets of unreserved characters
/// decoded, the others' hex digits upper-cased. Two spellings of one resource compare
/// equal afterwards, so a listed resource cannot be read around its own grant.
pub fn normalize(uri: &str) -> String {
    let b = uri.as_bytes();
    let mut out = String::with_capacity(uri.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            let octet = (h * 16 + l) as u8;
            if octet.is_ascii_alphanumeric() || matches!(octet, b'-' | b'.' | b'_' | b'~') {
                out.push(octet as char);
            } else {
                out.push('%');
                out.push_str(&uri[i + 1..i + 3].to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        let ch = uri[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

fn has_dot_segment(uri: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(uri).decode_utf8_lossy();
    decoded
        .split(['/', '\\', '?', '#'])
        .any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, uri: &str) -> bool {
        UriTemplate::parse(t).is_some_and(|t| t.matches(&normalize(uri)))
    }

    #[test]
    fn simple_variables_are_one_non_empty_value() {
        assert!(m("users://{id}/profile", "users://42/profile"));
        assert!(m("users://{id}/profile", "users://a%2Fb/profile"));
        assert!(!m("users://{id}/profile", "users://42/profile/extra"));
        assert!(!m("users://{id}/profile", "users://x/admin/profile"));
        assert!(!m("users://{id}/profile", "users://42/settings"));
        assert!(
            !m("users://{id}/profile", "users:///profile"),
            "empty value"
        );
        assert!(!m("mem://notes/{id}", "mem://notes/a/b"));
        assert!(!m("mem://notes/{id}", "other://notes/a"));
        assert!(
            !m("mem://notes/{id}", "mem://notes/a,b"),
            "one variable, one value"
        );
        assert!(m("x://{a,b}", "x://1,2"));
        assert!(m("test://static/resource/{id}", "test://static/resource/7"));
        assert!(m("x://{id:3}", "x://abc"));
        assert!(!m("x://{id:3}", "x://abcd"));
    }

    #[test]
    fn dot_segments_never_match() {
        assert!(!m("users://{id}/profile", "users://../profile"));
        assert!(!m("mem://notes/{id}", "mem://notes/.."));
        assert!(!m("mem://notes/{id}", "mem://notes/%2e%2E"));
        assert!(!m("file:///{+path}", "file:///srv/../etc/passwd"));
        assert!(m("mem://notes/{id}", "mem://notes/a..b"));
    }

    #[test]
    fn operators_follow_rfc_6570() {
        assert!(m("file:///{+path}", "file:///srv/data/a.txt"));
        assert!(m("docs://{/path*}", "docs:///a/b/c"));
        assert!(m("files://root{/id}", "files://root/x"));
        assert!(
            !m("files://root{/id}", "files://root/secret/dir/x"),
            "one variable, one segment"
        );
        assert!(m("files://root{/a,b}", "files://root/x/y"));
        assert!(m("search://q{?term,limit}", "search://q?term=x&limit=5"));
        assert!(m("search://q{?term,limit}", "search://q?limit=5"));
        assert!(m("search://q{?term,limit}", "search://q"));
        assert!(
            !m("search://q{?term}", "search://q?scope=private&term=x"),
            "a parameter the template does not name"
        );
        assert!(!m("search://q{?term,limit}", "search://q?limit=5&term=x"));
        assert!(!m("search://q{?term}", "search://q?term=x&term=y"));
        assert!(m("search://q{?params*}", "search://q?a=1&b=2"));
        assert!(!m("search://q{?term}", "search://q/x"));
        assert!(m("search://q?fixed=1{&term}", "search://q?fixed=1&term=z"));
        assert!(m("x://a{#frag}", "x://a#top"));
        assert!(m("x://host{.ext}", "x://host.json"));
        assert!(!m("x://host{.ext}", "x://host.tar.gz"));
        assert!(m("x://m{;a,b}", "x://m;a=1;b"));
        assert!(!m("x://m{;a}", "x://m;z=1"));
        assert!(m("x://{a}-{b}", "x://1-2"));
    }

    #[test]
    fn normalization_decodes_unreserved_octets_only() {
        assert_eq!(normalize("mem://notes/secre%74"), "mem://notes/secret");
        assert_eq!(normalize("a%2fb%7e"), "a%2Fb~");
        assert_eq!(normalize("100%"), "100%");
        assert_eq!(normalize("%zz/ü"), "%zz/ü");
    }

    #[test]
    fn malformed_templates_match_nothing() {
        assert!(UriTemplate::parse("x://{unclosed").is_none());
        assert!(UriTemplate::parse("x://{}").is_none());
        assert!(UriTemplate::parse("x://a}b").is_none());
        assert!(UriTemplate::parse("x://{a b}").is_none());
        assert!(UriTemplate::parse("x://{a:0}").is_none());
        assert!(UriTemplate::parse("x://plain").is_some());
        assert!(!m("x://{id}", &format!("x://{}", "a".repeat(MAX_URI))));
    }
}

//! Routes (WIT 0.1.3, widened in 0.1.4): the shaping of a plugin that depends only on
//! the path, the agent's headers and fixed query parameters, asked once per connection
//! context and applied here, so the requests they cover cost no plugin call.
//!
//! A plugin's answer for a context is checked ([`super::output::routes`]) and kept in
//! the plugin's [`Cache`], which a registry rescan replaces with the plugin. A request a
//! route covers becomes what the plugin's `shape-request` would have returned
//! ([`Routed`]), and goes through the same output rules as one
//! ([`super::output::routed`]); a request no route covers is shaped by a call as before.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::types;

/// Contexts whose routes a plugin keeps; per-user connections each have their own
/// (their variables differ), so the map is bounded and starts over when full.
const MAX_CONTEXTS: usize = 4096;

/// A checked route: the prefix it replaces, the URL it puts there (parsed once, when
/// the route was checked), the headers sent unless the agent chose its own, the query
/// parameters it sets and the header that picks the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub(super) prefix: String,
    /// No query or fragment. A trailing `/` of its path is dropped at the join: the
    /// rest of the request's path brings its own.
    pub(super) target: url::Url,
    pub(super) default_headers: Vec<DefaultHeader>,
    /// Checked to need no encoding in a query.
    pub(super) query: Vec<QueryParam>,
    pub(super) grant_header: Option<GrantHeader>,
}

/// A header sent unless the agent's request has one of that name whose (trimmed) value
/// is not in `unless`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DefaultHeader {
    /// Parsed when the route is checked, so the agent's header is found without parsing
    /// the name again on every request.
    pub(super) name: http::HeaderName,
    pub(super) value: String,
    pub(super) unless: Vec<String>,
}

/// A query parameter a route sets: `name=value` as written into the query, and the
/// name as a form decodes it, which the agent's names are compared with (both worked
/// out once, when the route is checked, not for every request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QueryParam {
    pair: String,
    name: String,
}

impl QueryParam {
    pub(super) fn new(name: &str, value: &str) -> Self {
        Self {
            pair: format!("{name}={value}"),
            name: decoded(name).into_owned(),
        }
    }
}

/// The header an agent picks the grant with, and the grant of each value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GrantHeader {
    pub(super) name: http::HeaderName,
    pub(super) values: Vec<(String, Option<String>)>,
}

/// A request a route covers, shaped: what `shape-request` would have returned, its URL
/// already parsed. [`super::output::routed`] checks it.
#[derive(Debug, PartialEq)]
pub struct Routed {
    pub url: url::Url,
    pub set_headers: Vec<types::Header>,
    /// The grant header, when the route has one.
    pub remove_headers: Vec<http::HeaderName>,
    pub grant: Option<String>,
}

/// A context's routes, longest prefix first (the first match is the longest).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// From checked routes, in any order.
    pub(super) fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self(routes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What `shape-request` would return for a request, when a route covers it: the matched
    /// prefix replaced by the route's target, the query kept (with the route's own
    /// parameters in place of the agent's of those names), the route's default headers
    /// the agent did not choose its own value for, the grant its header picks. A request
    /// whose grant header has a value the route does not list is not covered.
    ///
    /// The target's parsed URL is copied and given the path and query, rather than the
    /// whole URL written out and parsed again: parsing a host (IDNA) is most of what a
    /// covered request costs beyond a plain one. For what reaches it from an agent (a
    /// cleaned path, a query without `#`) the result is the same as parsing the URL
    /// written out (a test below holds it to that). A `#` or a control character in a
    /// plugin tool call's query is sent percent-encoded, as the join without a plugin
    /// sends it ([`crate::outbound::path::join`]), rather than cut off as a fragment or
    /// trimmed.
    ///
    /// `path` is the request's path below the connector as it goes upstream, without
    /// the leading `/` the plugin interface gives it (the pipeline's cleaned path: a
    /// routed request copies it once, into its URL).
    pub fn shape<H: Headers + ?Sized>(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &H,
    ) -> Option<Routed> {
        let (route, slash, rest) = self
            .0
            .iter()
            .find_map(|r| covers(&r.prefix, path).map(|(slash, rest)| (r, slash, rest)))?;
        let (grant, remove_headers) = match &route.grant_header {
            None => (None, Vec::new()),
            Some(g) => (g.grant(headers)?, vec![g.name.clone()]),
        };
        let base = route.target.path().trim_end_matches('/');
        let mut path = String::with_capacity(base.len() + slash.len() + rest.len());
        path.push_str(base);
        path.push_str(slash);
        path.push_str(rest);
        let mut url = route.target.clone();
        url.set_path(&path);
        if route.query.is_empty() {
            url.set_query(query.filter(|q| !q.is_empty()));
        } else {
            url.set_query(Some(&with_params(query.unwrap_or_default(), &route.query)));
        }
        let set_headers = route
            .default_headers
            .iter()
            .filter(|d| match headers.first(&d.name) {
                None => true,
                Some(theirs) => d.unless.iter().any(|u| u == theirs.trim()),
            })
            .map(|d| (d.name.as_str().to_owned(), d.value.clone()))
            .collect();
        Some(Routed {
            url,
            set_headers,
            remove_headers,
            grant,
        })
    }
}

impl GrantHeader {
    /// The grant the request's header picks (none without the header), or `None` when
    /// its value is not one the route lists.
    fn grant<H: Headers + ?Sized>(&self, headers: &H) -> Option<Option<String>> {
        let Some(value) = headers.first(&self.name) else {
            return Some(None);
        };
        let value = value.trim();
        self.values
            .iter()
            .find(|(v, _)| v == value)
            .map(|(_, grant)| grant.clone())
    }
}

/// The agent's headers as a route reads them: the value of the first header named
/// `name` (compared case-insensitively), as the SDK's `header` reads it, with bytes that
/// are not UTF-8 replaced as a plugin is given them ([`super::wit_headers`]). The proxy
/// reads the request's own map, so a request a route covers converts none of its
/// headers; the harness reads the plugin interface's list.
pub trait Headers {
    fn first(&self, name: &http::HeaderName) -> Option<Cow<'_, str>>;
}

impl Headers for [types::Header] {
    fn first(&self, name: &http::HeaderName) -> Option<Cow<'_, str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
    }
}

impl Headers for http::HeaderMap {
    fn first(&self, name: &http::HeaderName) -> Option<Cow<'_, str>> {
        self.get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
    }
}

/// The agent's query without empty parameters and those the route sets, then the
/// route's as `name=value`. Names are compared as a form decodes them (`%` escapes, `+`
/// as a space), the way the credential step reads the query when it adds a query
/// credential: `k%65y=x` is the agent's `key`, which the route replaces.
fn with_params(query: &str, params: &[QueryParam]) -> String {
    let mut out = String::with_capacity(query.len() + 32);
    let theirs = query.split('&').filter(|p| {
        let name = p.split_once('=').map_or(*p, |(n, _)| n);
        !p.is_empty() && {
            let name = decoded(name);
            !params.iter().any(|set| set.name == name)
        }
    });
    for p in theirs {
        out.push_str(p);
        out.push('&');
    }
    for set in params {
        out.push_str(&set.pair);
        out.push('&');
    }
    out.pop();
    out
}

/// A query name as a form decodes it.
fn decoded(raw: &str) -> std::borrow::Cow<'_, str> {
    url::form_urlencoded::parse(raw.as_bytes())
        .next()
        .map_or(std::borrow::Cow::Borrowed(""), |(name, _)| name)
}

/// Whether a route's `prefix` covers `path` (no leading `/`): every path for the empty
/// prefix, else the path itself or anything below it (`/gmail` covers `gmail` and
/// `gmail/v1`, not `gmailx`). What follows the prefix, with the `/` that joins it to the
/// route's target: the whole path after a `/` for the empty prefix, else the rest (empty
/// or starting with its own `/`).
fn covers<'p>(prefix: &str, path: &'p str) -> Option<(&'static str, &'p str)> {
    if prefix.is_empty() {
        return Some(("/", path));
    }
    let rest = path.strip_prefix(prefix.strip_prefix('/')?)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(("", rest))
}

/// One plugin's routes per context. A context is the connector, its base URL and its
/// variables: what a plugin's routes may depend on. The first request of a context asks;
/// requests that arrive meanwhile wait for that answer instead of asking again.
#[derive(Debug, Default)]
pub struct Cache {
    /// Hashed with foldhash (seeded per process, only minimally resistant to chosen
    /// collisions): SipHash cost a routed request more than the rest of the lookup, and
    /// the map is bounded ([`MAX_CONTEXTS`]), its keys set by config and providers.
    by_context: Mutex<HashMap<types::Context, Asked, foldhash::fast::RandomState>>,
}

/// A context's routes, once asked for.
type Asked = Arc<OnceCell<Arc<Routes>>>;

impl Cache {
    /// The routes for `ctx`, from `ask` the first time. An `ask` that fails is not kept:
    /// the next request asks again. The context is looked up as it is and copied only
    /// when it is new: this runs for every request a plugin's routes shape.
    pub async fn get_or_ask<F, Fut, E>(
        &self,
        ctx: &types::Context,
        ask: F,
    ) -> Result<Arc<Routes>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Routes, E>>,
    {
        let cell = {
            let mut map = self.by_context.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(ctx) {
                Some(cell) => cell.clone(),
                None => {
                    if map.len() >= MAX_CONTEXTS {
                        map.clear();
                    }
                    map.entry(ctx.clone()).or_default().clone()
                }
            }
        };
        cell.get_or_try_init(|| async { ask().await.map(Arc::new) })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, target: &str) -> Route {
        Route {
            prefix: prefix.into(),
            target: url::Url::parse(target).expect("url"),
            default_headers: Vec::new(),
            query: Vec::new(),
            grant_header: None,
        }
    }

    /// `routes` shaping a request with `headers`, given as the proxy gives them (the
    /// request's map) and as the harness does (the plugin interface's list): both must
    /// shape it the same.
    fn shape(
        routes: &Routes,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &[u8])],
    ) -> Option<Routed> {
        let map: http::HeaderMap = headers
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::try_from(*n).expect("name"),
                    http::HeaderValue::from_bytes(v).expect("value"),
                )
            })
            .collect();
        let list = crate::plugins::wit_headers(&map);
        // Written as the plugin interface gives a path; shaped as the pipeline has it.
        let path = path.strip_prefix('/').expect("a path starting with /");
        let shaped = routes.shape(path, query, &map);
        assert_eq!(
            shaped,
            routes.shape(path, query, list.as_slice()),
            "{headers:?}"
        );
        shaped
    }

    /// [`shape`] with text values.
    fn shape_text(
        routes: &Routes,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Option<Routed> {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        shape(routes, path, query, &headers)
    }

    fn url(routes: &Routes, path: &str, query: Option<&str>) -> Option<String> {
        shape_text(routes, path, query, &[]).map(|s| s.url.to_string())
    }

    #[test]
    fn the_longest_prefix_on_a_segment_boundary_wins() {
        let routes = Routes::new(vec![
            route("", "https://www.googleapis.com"),
            route("/gmail", "https://gmail.googleapis.com"),
            route("/drive", "https://www.googleapis.com/drive"),
        ]);
        assert_eq!(
            url(&routes, "/gmail/v1/users/me", Some("a=1")).as_deref(),
            Some("https://gmail.googleapis.com/v1/users/me?a=1")
        );
        assert_eq!(
            url(&routes, "/drive/v3/files", None).as_deref(),
            Some("https://www.googleapis.com/drive/v3/files")
        );
        // A longer first segment is not the prefix's.
        assert_eq!(
            url(&routes, "/gmailx/v1", None).as_deref(),
            Some("https://www.googleapis.com/gmailx/v1")
        );
        // The prefix itself, and an empty query, add nothing.
        assert_eq!(
            url(&routes, "/gmail", Some("")).as_deref(),
            Some("https://gmail.googleapis.com/")
        );
    }

    /// A covered request's URL is what writing it out and parsing it gives, for paths and
    /// queries as agents' requests bring them: encoded separators, a port, an IPv6 host,
    /// a target path with and without its trailing `/`, the bare prefix.
    #[test]
    fn a_covered_url_is_the_url_written_out_and_parsed() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                "/gmail",
                "https://gmail.googleapis.com",
                "/gmail/v1/a%2Fb/c%3Fd",
                Some("q=a%20b&x=%23"),
            ),
            ("/gmail", "https://gmail.googleapis.com/", "/gmail", None),
            (
                "/gmail",
                "https://gmail.googleapis.com/",
                "/gmail/",
                Some("a"),
            ),
            (
                "",
                "https://api.example:8443/base/",
                "/v1/%C3%A9t%C3%A9/",
                Some("k=v;w"),
            ),
            (
                "/x",
                "https://[2001:db8::1]:444/p",
                "/x/y",
                Some("a=1&b=%2B"),
            ),
            (
                "/ex/jira",
                "https://api.atlassian.com/ex/jira/c1",
                "/ex/jira/rest/api/3/search",
                Some("jql=project%3DX"),
            ),
            (
                "",
                "http://127.0.0.1:9/api",
                "/items/42",
                Some("fields=id,name"),
            ),
            // The connector's root, below the empty prefix.
            ("", "https://api.example/base/", "/", None),
        ];
        for &(prefix, target, path, query) in cases {
            let routes = Routes::new(vec![route(prefix, target)]);
            let mut written = target.trim_end_matches('/').to_owned();
            written.push_str(&path[prefix.len()..]);
            if let Some(q) = query {
                written.push('?');
                written.push_str(q);
            }
            let parsed = url::Url::parse(&written).expect("written out");
            assert_eq!(
                url(&routes, path, query).as_deref(),
                Some(parsed.as_str()),
                "{target} {path} {query:?}"
            );
        }
    }

    #[test]
    fn paths_no_route_covers_are_left_to_the_plugin() {
        let routes = Routes::new(vec![route("/jira", "https://api.atlassian.com/ex/jira/c1")]);
        assert_eq!(url(&routes, "/me", None), None);
        assert_eq!(url(&routes, "/jiras", None), None);
        assert!(Routes::default().is_empty());
        assert_eq!(url(&Routes::default(), "/x", None), None);
    }

    #[test]
    fn default_headers_yield_to_the_agents_own() {
        let routes = Routes::new(vec![Route {
            default_headers: vec![default("notion-version", "2022-06-28", &[])],
            ..route("", "https://api.notion.com")
        }]);
        let shaped = shape_text(&routes, "/v1/users", None, &[]).map(|s| s.set_headers);
        assert_eq!(
            shaped,
            Some(vec![("notion-version".into(), "2022-06-28".into())])
        );
        let theirs = shape_text(
            &routes,
            "/v1/users",
            None,
            &[("Notion-Version", "2025-09-03")],
        )
        .map(|s| s.set_headers);
        assert_eq!(theirs, Some(Vec::new()));
        // The same from the plugin interface's list, its name as a fixture may write it.
        let list: Vec<types::Header> = vec![("Notion-Version".into(), "2025-09-03".into())];
        assert_eq!(
            routes
                .shape("v1/users", None, list.as_slice())
                .map(|s| s.set_headers),
            Some(Vec::new())
        );
    }

    fn default(name: &str, value: &str, unless: &[&str]) -> DefaultHeader {
        DefaultHeader {
            name: http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value: value.into(),
            unless: unless.iter().map(|u| (*u).into()).collect(),
        }
    }

    /// GitHub's media type: sent without an `accept`, or in place of one that asks for
    /// nothing in particular (its first, trimmed); an agent's own is kept.
    #[test]
    fn a_default_header_replaces_the_values_it_names() {
        let routes = Routes::new(vec![Route {
            default_headers: vec![
                default("accept", "application/vnd.github+json", &["", "*/*"]),
                default("user-agent", "portcullis", &[]),
            ],
            ..route("", "https://api.github.com")
        }]);
        let set = |headers: &[(&str, &str)]| {
            shape_text(&routes, "/user", None, headers)
                .map(|s| s.set_headers)
                .expect("covered")
        };
        let ours = (
            "accept".to_owned(),
            "application/vnd.github+json".to_owned(),
        );
        let ua = ("user-agent".to_owned(), "portcullis".to_owned());
        assert_eq!(set(&[]), vec![ours.clone(), ua.clone()]);
        assert_eq!(set(&[("Accept", " */* ")]), vec![ours.clone(), ua.clone()]);
        assert_eq!(set(&[("accept", "")]), vec![ours.clone(), ua.clone()]);
        assert_eq!(
            set(&[
                ("accept", "application/vnd.github.raw"),
                ("User-Agent", "me")
            ]),
            Vec::new()
        );
        // The first of the agent's headers decides, as the SDK's `header` reads it.
        assert_eq!(
            set(&[("accept", "text/plain"), ("accept", "*/*")]),
            vec![ua.clone()]
        );
        assert_eq!(
            set(&[("accept", "*/*"), ("accept", "text/plain")]),
            vec![ours, ua]
        );
    }

    /// Trello's key: the agent's parameters of that name dropped (decoded as a form
    /// decodes them, and empty ones), the route's appended after the rest, with or
    /// without a query.
    #[test]
    fn query_parameters_replace_the_agents_of_the_same_name() {
        let routes = Routes::new(vec![Route {
            query: vec![
                QueryParam::new("key", "abc123"),
                QueryParam::new("%76", "2"),
            ],
            ..route("", "https://api.trello.com/1")
        }]);
        let cases: &[(Option<&str>, &str)] = &[
            (None, "key=abc123&%76=2"),
            (Some(""), "key=abc123&%76=2"),
            (Some("fields=name"), "fields=name&key=abc123&%76=2"),
            (
                Some("key=theirs&fields=name&&key&v=9&keys=1&token=t"),
                "fields=name&keys=1&token=t&key=abc123&%76=2",
            ),
            // Compared as a form decodes them, on both sides: an escaped name is the
            // route's too (`%76` is `v`).
            (Some("k%65y=x&%6B%65%79&v%3D=1"), "v%3D=1&key=abc123&%76=2"),
            (Some("ke+y=1&key%20=2"), "ke+y=1&key%20=2&key=abc123&%76=2"),
        ];
        for &(query, expected) in cases {
            let shaped = shape_text(&routes, "/members/me", query, &[]).expect("covered");
            assert_eq!(shaped.url.query(), Some(expected), "{query:?}");
            assert_eq!(shaped.url.path(), "/1/members/me");
        }
    }

    /// Slack's token header: removed, its value picks the grant (none without it), and a
    /// value the route does not list leaves the request to `shape-request`.
    #[test]
    fn a_grant_header_picks_the_grant_or_leaves_the_request_to_the_plugin() {
        let routes = Routes::new(vec![Route {
            grant_header: Some(GrantHeader {
                name: http::HeaderName::from_static("x-slack-token"),
                values: vec![("bot".into(), None), ("user".into(), Some("user".into()))],
            }),
            ..route("", "https://slack.com/api")
        }]);
        let grant = |headers: &[(&str, &str)]| {
            shape_text(&routes, "/auth.test", None, headers).map(|s| (s.grant, s.remove_headers))
        };
        let removed = vec![http::HeaderName::from_static("x-slack-token")];
        assert_eq!(grant(&[]), Some((None, removed.clone())));
        assert_eq!(
            grant(&[("x-slack-token", "bot")]),
            Some((None, removed.clone()))
        );
        assert_eq!(
            grant(&[("X-Slack-Token", " user ")]),
            Some((Some("user".into()), removed))
        );
        assert_eq!(grant(&[("x-slack-token", "admin")]), None);
        assert_eq!(grant(&[("x-slack-token", "USER")]), None);
        // The plugin interface's list as a fixture writes it: names in any case.
        let list: Vec<types::Header> = vec![
            ("Accept".into(), "*/*".into()),
            ("X-Slack-Token".into(), " user ".into()),
        ];
        assert_eq!(
            routes
                .shape("auth.test", None, list.as_slice())
                .map(|s| s.grant),
            Some(Some("user".into()))
        );
        // The first of several decides, read the same from the map and the list.
        assert_eq!(
            grant(&[("x-slack-token", "admin"), ("x-slack-token", "bot")]),
            None
        );
        assert_eq!(
            grant(&[("x-slack-token", "bot"), ("x-slack-token", "admin")]),
            Some((None, vec![http::HeaderName::from_static("x-slack-token")]))
        );
        // A value that is not UTF-8 is read with its bytes replaced, as a plugin is
        // given it: no listed value, so not covered.
        assert_eq!(
            shape(
                &routes,
                "/auth.test",
                None,
                &[("x-slack-token", b"us\xe9r")]
            ),
            None
        );
    }

    #[tokio::test]
    async fn contexts_are_asked_once_and_differ_by_connector_base_and_variables() {
        let ctx = |connector: &str, vars: &[(&str, &str)]| types::Context {
            connector: connector.into(),
            base_url: "https://api.example".into(),
            variables: vars
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        };
        let cache = Cache::default();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let ask = || async {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(Routes::new(vec![route("", "https://api.example")]))
        };
        let one = ctx("a", &[("cloud_id", "1")]);
        let (first, second) =
            tokio::join!(cache.get_or_ask(&one, ask), cache.get_or_ask(&one, ask));
        assert_eq!(first, second);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        for other in [
            ctx("a", &[("cloud_id", "2")]),
            ctx("b", &[("cloud_id", "1")]),
            ctx("a", &[]),
        ] {
            let _ = cache.get_or_ask(&other, ask).await;
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 4);
        // A failed ask is not kept.
        let failed = ctx("c", &[]);
        assert_eq!(
            cache.get_or_ask(&failed, || async { Err(()) }).await,
            Err(())
        );
        assert!(cache.get_or_ask(&failed, ask).await.is_ok());
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 5);
    }
}

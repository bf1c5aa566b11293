//! Routes (WIT 0.1.3): the shaping of a plugin that depends only on the path, asked
//! once per connection context and applied here, so the requests they cover cost no
//! plugin call.
//!
//! A plugin's answer for a context is checked ([`super::output::routes`]) and kept in
//! the plugin's [`Cache`], which a registry rescan replaces with the plugin. A request a
//! route covers becomes what the plugin's `shape-request` would have returned
//! ([`Routed`]), and goes through the same output rules as one
//! ([`super::output::routed`]); a path no route covers is shaped by a call as before.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::types;

/// Contexts whose routes a plugin keeps; per-user connections each have their own
/// (their variables differ), so the map is bounded and starts over when full.
const MAX_CONTEXTS: usize = 4096;

/// A checked route: the prefix it replaces, the URL it puts there (parsed once, when
/// the route was checked), and the headers sent when the agent sent none of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub(super) prefix: String,
    /// No query or fragment. A trailing `/` of its path is dropped at the join: the
    /// rest of the request's path brings its own.
    pub(super) target: url::Url,
    pub(super) default_headers: Vec<types::Header>,
}

/// A request a route covers, shaped: what `shape-request` would have returned, its URL
/// already parsed. [`super::output::routed`] checks it.
#[derive(Debug)]
pub struct Routed {
    pub url: url::Url,
    pub set_headers: Vec<types::Header>,
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

    /// What `shape-request` would return for `req`, when a route covers its path: the
    /// matched prefix replaced by the route's target, the query kept, the route's default
    /// headers the agent did not send.
    ///
    /// The target's parsed URL is copied and given the path and query, rather than the
    /// whole URL written out and parsed again: parsing a host (IDNA) is most of what a
    /// covered request costs beyond a plain one. For what reaches it from an agent (a
    /// cleaned path, a query without `#`) the result is the same as parsing the URL
    /// written out (a test below holds it to that). A `#` or a control character in a
    /// plugin tool call's query is sent percent-encoded, as the join without a plugin
    /// sends it ([`crate::outbound::path::join`]), rather than cut off as a fragment or
    /// trimmed.
    pub fn shape(&self, req: &types::OutgoingRequest) -> Option<Routed> {
        let route = self.0.iter().find(|r| covers(&r.prefix, &req.path))?;
        let rest = &req.path[route.prefix.len()..];
        let query = req.query.as_deref().filter(|q| !q.is_empty());
        let base = route.target.path().trim_end_matches('/');
        let mut path = String::with_capacity(base.len() + rest.len());
        path.push_str(base);
        path.push_str(rest);
        let mut url = route.target.clone();
        url.set_path(&path);
        url.set_query(query);
        let set_headers = route
            .default_headers
            .iter()
            .filter(|(name, _)| {
                !req.headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect();
        Some(Routed { url, set_headers })
    }
}

/// Whether `prefix` covers `path`: every path for the empty prefix, else the path
/// itself or anything below it (`/gmail` covers `/gmail/v1`, not `/gmailx`).
fn covers(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One plugin's routes per context. A context is the connector, its base URL and its
/// variables: what a plugin's routes may depend on. The first request of a context asks;
/// requests that arrive meanwhile wait for that answer instead of asking again.
#[derive(Debug, Default)]
pub struct Cache {
    by_context: Mutex<HashMap<Key, Arc<OnceCell<Arc<Routes>>>>>,
}

impl Cache {
    /// The routes for `ctx`, from `ask` the first time. An `ask` that fails is not kept:
    /// the next request asks again.
    pub async fn get_or_ask<F, Fut, E>(
        &self,
        ctx: &types::Context,
        ask: F,
    ) -> Result<Arc<Routes>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Routes, E>>,
    {
        let key = key(ctx);
        let cell = {
            let mut map = self.by_context.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= MAX_CONTEXTS && !map.contains_key(&key) {
                map.clear();
            }
            map.entry(key).or_default().clone()
        };
        cell.get_or_try_init(|| async { ask().await.map(Arc::new) })
            .await
            .cloned()
    }
}

/// A context as a map key: exactly the parts a plugin's routes may depend on.
type Key = (String, String, Vec<types::Variable>);

fn key(ctx: &types::Context) -> Key {
    (
        ctx.connector.clone(),
        ctx.base_url.clone(),
        ctx.variables.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, target: &str) -> Route {
        Route {
            prefix: prefix.into(),
            target: url::Url::parse(target).expect("url"),
            default_headers: Vec::new(),
        }
    }

    fn req(path: &str, query: Option<&str>, headers: &[(&str, &str)]) -> types::OutgoingRequest {
        types::OutgoingRequest {
            method: types::Method::Get,
            path: path.into(),
            query: query.map(Into::into),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        }
    }

    fn url(routes: &Routes, path: &str, query: Option<&str>) -> Option<String> {
        routes
            .shape(&req(path, query, &[]))
            .map(|s| s.url.to_string())
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
            default_headers: vec![("notion-version".into(), "2022-06-28".into())],
            ..route("", "https://api.notion.com")
        }]);
        let shaped = routes
            .shape(&req("/v1/users", None, &[]))
            .map(|s| s.set_headers);
        assert_eq!(
            shaped,
            Some(vec![("notion-version".into(), "2022-06-28".into())])
        );
        let theirs = routes
            .shape(&req("/v1/users", None, &[("Notion-Version", "2025-09-03")]))
            .map(|s| s.set_headers);
        assert_eq!(theirs, Some(Vec::new()));
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

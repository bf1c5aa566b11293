//! Authorization: grants compiled once per config snapshot; deny by default.
//!
//! A caller's access is the union of every config grant whose `src` matches them and the
//! capabilities tailscaled delivered for them (policy-file grants). [`Access::allows`] is
//! the one decision function: listing and use both ask it, so nothing can be listed that
//! cannot be used, or used that would not be listed.
//!
//! Patterns are `connectorID/category/resource` globs (`*` one segment, `**` any number),
//! or `label:<name>` for every connector carrying that label. A pattern of just
//! `connectorID/category` grants the whole category (`github/proxy`).
//!
//! Every pattern is compiled once: config grants when a config is loaded, a caller's
//! own capabilities when its identity is established (they travel with the [`Caller`],
//! which the identity cache keeps). The [`Caller`] is defined here, as the subject of
//! every decision; `identity` builds it.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::config::{APERTURE_CAP, Capability, Config, Diagnostics, Grant, JsonPath, Role};

/// An identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Login name, the sorted comma-joined tags of a tagged node, or `(loopback)`.
    pub login: String,
    pub kind: CallerKind,
    /// Stable node ID, when tailscaled told us.
    pub node: Option<String>,
    pub tags: Vec<String>,
    /// Groups the user belongs to (only with visible groups enabled for this host).
    pub groups: Vec<String>,
    /// `tailscale.com/cap/aperture` values granted by the tailnet policy file, compiled.
    pub caps: Capabilities,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    User,
    Tagged,
    Loopback,
}

/// A caller's own capabilities (policy-file grants delivered by whois or `tailscale
/// serve`), compiled once when the identity is established. Malformed ones are skipped.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    raw: Arc<[serde_json::Value]>,
    role: Option<Role>,
    read_metrics: bool,
    rules: Arc<[Rule]>,
}

impl PartialEq for Capabilities {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Capabilities {}

impl Capabilities {
    pub fn compile(raw: Vec<serde_json::Value>) -> Self {
        let mut role = None;
        let mut read_metrics = false;
        let mut rules = Vec::new();
        for value in &raw {
            match serde_json::from_value::<Capability>(value.clone()) {
                Ok(cap) => {
                    role = role.max(cap.role);
                    read_metrics |= cap.read_metrics;
                    for p in patterns_of(&cap) {
                        match compile_pattern(&p, GrantSource::TailnetPolicy) {
                            Ok(rule) => rules.push(rule),
                            Err(PatternError(why)) => {
                                tracing::warn!(
                                    "a capability from the tailnet policy file is ignored: {why}"
                                )
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("a capability from the tailnet policy file is ignored: {e}")
                }
            }
        }
        Self {
            raw: raw.into(),
            role,
            read_metrics,
            rules: rules.into(),
        }
    }

    /// How many capability values were delivered (malformed ones included).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// Categories a pattern may name.
pub const CATEGORIES: &[&str] = &["tools", "prompts", "resources", "templates", "proxy"];

/// Connectors that exist without being configured, with their labels.
pub const BUILTIN_CONNECTORS: &[(&str, &[&str])] = &[("aperture", &["system"])];

/// One compiled grant rule.
#[derive(Debug, Clone)]
enum Rule {
    Glob(Box<GlobRule>),
    Label { name: String, grant: GrantRef },
}

impl Rule {
    /// What the audit log names as the grant when this rule allows something.
    fn grant(&self) -> &GrantRef {
        match self {
            Self::Glob(g) => &g.grant,
            Self::Label { grant, .. } => grant,
        }
    }
}

/// A `connectorID/category/resource` pattern, compiled whole and by its first two
/// segments (for "anything in this category" and "anything on this connector").
#[derive(Debug, Clone)]
struct GlobRule {
    /// Where the pattern came from and the pattern as written, for the audit log's
    /// "under which grant".
    grant: GrantRef,
    whole: GlobMatcher,
    /// For a pattern ending in `/**`, its prefix: `**` matches zero segments too
    /// (`github/proxy/**` covers `github/proxy` itself).
    prefix: Option<GlobMatcher>,
    connector: Segment,
    category: Option<Segment>,
}

/// One `/`-free segment of a pattern.
#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Glob(GlobMatcher),
}

impl Segment {
    fn compile(s: &str) -> Self {
        if !s.contains(['*', '?', '[', '{']) {
            return Self::Literal(s.to_owned());
        }
        match Glob::new(s) {
            Ok(g) => Self::Glob(g.compile_matcher()),
            // Cannot happen for a pattern whose whole compiled; match nothing then.
            Err(_) => Self::Literal(String::new()),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Literal(l) => l == value,
            Self::Glob(g) => g.is_match(value),
        }
    }

    fn literal(&self) -> Option<&str> {
        match self {
            Self::Literal(l) => Some(l),
            Self::Glob(_) => None,
        }
    }
}

/// A parsed, checked pattern.
#[derive(Debug)]
pub struct PatternError(pub String);

fn compile_pattern(p: &str, source: GrantSource) -> Result<Rule, PatternError> {
    if let Some(label) = p.strip_prefix("label:") {
        if label.is_empty() {
            return Err(PatternError("\"label:\" needs a label name".into()));
        }
        return Ok(Rule::Label {
            name: label.to_owned(),
            grant: GrantRef::new(source, p),
        });
    }
    let segs: Vec<&str> = p.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(PatternError(format!("\"{p}\" has an empty segment")));
    }
    if segs.len() >= 2 {
        let cat = segs[1];
        let is_glob =
            cat.contains('*') || cat.contains('?') || cat.contains('[') || cat.contains('{');
        if !is_glob && !CATEGORIES.contains(&cat) {
            return Err(PatternError(format!(
                "\"{p}\" names unknown category \"{cat}\"; use one of {}",
                CATEGORIES.join(", ")
            )));
        }
        // Only proxy paths have more structure; tools, resources and templates are one name.
        let deep_ok = cat == "proxy" || segs.contains(&"**");
        if segs.len() > 3 && !deep_ok {
            return Err(PatternError(format!(
                "\"{p}\" has too many segments; patterns are connectorID/category/resource"
            )));
        }
    }
    let compile = |p: &str| -> Result<GlobMatcher, PatternError> {
        let glob: Glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| PatternError(format!("\"{p}\" is not a valid pattern: {e}")))?;
        Ok(glob.compile_matcher())
    };
    let prefix = match p.strip_suffix("/**") {
        Some(prefix) if !prefix.is_empty() => Some(compile(prefix)?),
        _ => None,
    };
    Ok(Rule::Glob(Box::new(GlobRule {
        grant: GrantRef::new(source, p),
        whole: compile(p)?,
        prefix,
        connector: Segment::compile(segs[0]),
        category: segs.get(1).map(|c| Segment::compile(c)),
    })))
}

/// The connector segment of a pattern, when it names one exactly.
fn named_connector(p: &str) -> Option<&str> {
    let first = p.split('/').next()?;
    let literal = !first.is_empty() && !first.contains(['*', '?', '[', '{']);
    (literal && !p.starts_with("label:")).then_some(first)
}

#[derive(Debug)]
struct CompiledGrant {
    src: Vec<String>,
    role: Option<Role>,
    read_metrics: bool,
    rules: Vec<Rule>,
}

/// Grants compiled against one config snapshot.
#[derive(Debug)]
pub struct Policy {
    grants: Vec<CompiledGrant>,
    labels: HashMap<String, Vec<String>>,
}

impl Policy {
    /// Compiles the config's grants, reporting malformed patterns and patterns naming no
    /// connector as warnings.
    pub fn compile(config: &Config, diags: &mut Diagnostics) -> Self {
        let mut labels: HashMap<String, Vec<String>> = config
            .connectors
            .values()
            .map(|c| (c.id.clone(), c.labels.clone()))
            .collect();
        for (id, ls) in BUILTIN_CONNECTORS {
            labels.insert(
                (*id).to_owned(),
                ls.iter().map(|s| (*s).to_owned()).collect(),
            );
        }
        let mut grants = Vec::with_capacity(config.grants.len());
        for (i, g) in config.grants.iter().enumerate() {
            let at = JsonPath::root()
                .key("grants")
                .index(i)
                .key("app")
                .key(APERTURE_CAP);
            grants.push(compile_grant(i, g, &at, &labels, diags));
        }
        Self { grants, labels }
    }

    /// Does any config grant give role `admin`? (Admins may also come from the tailnet
    /// policy file, which only a caller's identity shows.)
    pub fn has_admin_grant(&self) -> bool {
        self.grants.iter().any(|g| g.role == Some(Role::Admin))
    }

    /// Everything `caller` may do.
    pub fn access<'a>(&'a self, caller: &'a Caller) -> Access<'a> {
        // Borrows the compiled rules: this runs on every request.
        let mut access = Access {
            role: None,
            read_metrics: false,
            granted: Vec::new(),
            labels: &self.labels,
        };
        for g in self
            .grants
            .iter()
            .filter(|g| g.src.iter().any(|s| src_matches(s, caller)))
        {
            access.role = access.role.max(g.role);
            access.read_metrics |= g.read_metrics;
            access.granted.push(&g.rules);
        }
        // Policy-file grants, delivered by whois and compiled with the identity.
        access.role = access.role.max(caller.caps.role);
        access.read_metrics |= caller.caps.read_metrics;
        access.granted.push(&caller.caps.rules);
        access
    }
}

fn compile_grant(
    index: usize,
    g: &Grant,
    at: &JsonPath,
    labels: &HashMap<String, Vec<String>>,
    diags: &mut Diagnostics,
) -> CompiledGrant {
    let mut out = CompiledGrant {
        src: g.src.clone(),
        role: None,
        read_metrics: false,
        rules: Vec::new(),
    };
    for (j, cap) in g.caps.iter().enumerate() {
        out.role = out.role.max(cap.role);
        out.read_metrics |= cap.read_metrics;
        for p in patterns_of(cap) {
            let here = at.index(j).key("connectors");
            match compile_pattern(&p, GrantSource::Config(index)) {
                Ok(rule) => {
                    if let Rule::Label { name: l, .. } = &rule {
                        if !labels.values().any(|ls| ls.contains(l)) {
                            diags.warn(
                                &here,
                                format!("pattern \"{p}\": no connector carries label \"{l}\""),
                            );
                        }
                    } else if let Some(id) = named_connector(&p)
                        && !labels.contains_key(id)
                    {
                        diags.warn(&here, format!("pattern \"{p}\" references connector \"{id}\", which is not declared"));
                    }
                    out.rules.push(rule);
                }
                Err(PatternError(msg)) => {
                    diags.warn(&here, format!("malformed pattern, ignored: {msg}"));
                }
            }
        }
    }
    out
}

/// A capability's patterns, with the deprecated `mcp_*` fields translated
/// (`local/search` → `local/tools/search`).
fn patterns_of(cap: &Capability) -> Vec<String> {
    let mut out = cap.connectors.clone();
    for (legacy, cat) in [
        (&cap.mcp_tools, "tools"),
        (&cap.mcp_resources, "resources"),
        (&cap.mcp_templates, "templates"),
    ] {
        if let Some(p) = legacy {
            out.push(match p.split_once('/') {
                Some((server, item)) => format!("{server}/{cat}/{item}"),
                None => format!("{p}/{cat}/**"),
            });
        }
    }
    out
}

/// Does a grant's `src` entry match this caller?
fn src_matches(src: &str, caller: &Caller) -> bool {
    match src {
        "*" => true,
        "(loopback)" => caller.kind == CallerKind::Loopback,
        s if s.starts_with("tag:") => {
            // A single tag, or the exact sorted, comma-joined tag string.
            caller.kind == CallerKind::Tagged
                && (caller.tags.iter().any(|t| t == s) || caller.login == s)
        }
        s if s.starts_with("group:") => caller.groups.iter().any(|g| g == s),
        // A login name, or a SCIM group named by email.
        s => {
            caller.kind == CallerKind::User
                && (caller.login == s || caller.groups.iter().any(|g| g == s))
        }
    }
}

/// Where a grant comes from: the config's `grants` (by position) or the tailnet policy
/// file (delivered with the caller's identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantSource {
    Config(usize),
    TailnetPolicy,
}

/// The grant and pattern that allowed something, as the audit log names it:
/// `grants[0] github/**`, `tailnet policy github/**`. Written once, when the rule is
/// compiled, and shared by every request the rule allows (each granted request's
/// record carries one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRef(Arc<str>);

impl GrantRef {
    fn new(source: GrantSource, pattern: &str) -> Self {
        Self(
            match source {
                GrantSource::Config(i) => format!("grants[{i}] {pattern}"),
                GrantSource::TailnetPolicy => format!("tailnet policy {pattern}"),
            }
            .into(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One caller's effective access.
#[derive(Debug, Clone)]
pub struct Access<'p> {
    role: Option<Role>,
    read_metrics: bool,
    /// Rules of the config grants that matched, borrowed from the policy, and the
    /// caller's own, borrowed from the caller (each rule names its grant).
    granted: Vec<&'p [Rule]>,
    labels: &'p HashMap<String, Vec<String>>,
}

impl Access<'_> {
    fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.granted.iter().flat_map(|r| r.iter())
    }

    pub fn is_admin(&self) -> bool {
        self.role == Some(Role::Admin)
    }

    pub fn role(&self) -> Option<Role> {
        self.role
    }

    pub fn may_read_metrics(&self) -> bool {
        self.read_metrics || self.is_admin()
    }

    /// May the caller use `resource` of `category` on `connector`? `resource` may be
    /// empty (the category as a whole); for `proxy` it is the request path without its
    /// leading slash. Other categories name one thing (a tool, a resource URI, a URI
    /// template): a `/` in it is matched as `%2F`, so that `*` covers the whole name.
    pub fn allows(&self, connector: &str, category: &str, resource: &str) -> bool {
        self.matching(connector, category, resource).is_some()
    }

    /// The grant that lets the caller use `resource` ([`Self::allows`]), for the audit
    /// log; `None` when nothing does.
    pub fn grant_for(&self, connector: &str, category: &str, resource: &str) -> Option<GrantRef> {
        self.matching(connector, category, resource)
            .map(|rule| rule.grant().clone())
    }

    /// The first rule that allows `resource`. (No allocation beyond the name being
    /// matched: [`Self::allows`] runs on every request.)
    fn matching(&self, connector: &str, category: &str, resource: &str) -> Option<&Rule> {
        let mut full = String::with_capacity(connector.len() + category.len() + resource.len() + 2);
        full.push_str(connector);
        full.push('/');
        full.push_str(category);
        let whole_len = full.len();
        if !resource.is_empty() {
            full.push('/');
            if category == "proxy" {
                full.push_str(resource);
            } else {
                // Tools, resources and templates are one name each, even a URI with
                // slashes: `local/resources/*` must cover `file:///a/b`.
                full.push_str(&resource.replace('/', "%2F"));
            }
        }
        let whole = &full[..whole_len];
        self.rules().find(|r| match r {
            Rule::Glob(g) => {
                g.whole.is_match(&full)
                    || g.whole.is_match(whole)
                    || g.prefix.as_ref().is_some_and(|p| p.is_match(&full))
            }
            Rule::Label { name, .. } => self
                .labels
                .get(connector)
                .is_some_and(|ls| ls.contains(name)),
        })
    }

    /// May the caller use anything of `category` on `connector`, the whole category or
    /// part of it (`github/proxy/repos/**`)?
    pub fn any_in(&self, connector: &str, category: &str) -> bool {
        self.allows(connector, category, "")
            || self.rules().any(|r| match r {
                // `github/proxy/repos/**`, `*/proxy/public/**`: the first two segments
                // decide.
                Rule::Glob(g) => {
                    g.connector.matches(connector)
                        && g.category.as_ref().is_some_and(|c| c.matches(category))
                }
                Rule::Label { .. } => false,
            })
    }

    /// May the caller use anything at all on `connector`?
    pub fn any_on(&self, connector: &str) -> bool {
        CATEGORIES.iter().any(|c| self.allows(connector, c, ""))
            || self.rules().any(|r| match r {
                // e.g. "github/proxy/repos/**" grants something on github.
                Rule::Glob(g) => g.connector.literal() == Some(connector),
                Rule::Label { .. } => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_permissive as load;

    fn policy(text: &str) -> (Policy, Diagnostics) {
        let (c, mut d) = load(text);
        let c = c.unwrap_or_else(|| panic!("config: {d}"));
        let p = Policy::compile(&c, &mut d);
        (p, d)
    }

    fn user(login: &str, groups: &[&str]) -> Caller {
        Caller {
            login: login.into(),
            kind: CallerKind::User,
            node: None,
            tags: vec![],
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            caps: Capabilities::default(),
        }
    }

    fn tagged(tags: &[&str]) -> Caller {
        let mut t: Vec<String> = tags.iter().map(|s| (*s).to_owned()).collect();
        t.sort();
        Caller {
            login: t.join(","),
            kind: CallerKind::Tagged,
            node: None,
            tags: t,
            groups: vec![],
            caps: Capabilities::default(),
        }
    }

    const CONNECTORS: &str = r#""connectors": {"servers": {
        "github": {"protocol": "http", "url": "https://api.github.com", "labels": ["dev"]},
        "local": {"protocol": "mcp", "url": "https://mcp.example"},
        "jira": {"protocol": "http", "url": "https://x.atlassian.net"}}}"#;

    #[test]
    fn seed_grant_gives_everyone_github_and_aperture() {
        let text = format!(
            "{{{CONNECTORS}, {}",
            &include_str!("../../tests/fixtures/seeds/002-grants-github-aperture.json").trim()[1..]
        );
        let (p, _) = policy(&text);
        let bob = user("bob@example.com", &[]);
        let a = p.access(&bob);
        assert!(a.allows("github", "proxy", "user"));
        assert!(a.allows("github", "proxy", "repos/tailscale/tailscale/pulls"));
        assert!(a.allows("aperture", "tools", "list_connectors"));
        assert!(!a.allows("jira", "proxy", "issue"));
        assert!(!a.is_admin());
    }

    #[test]
    fn deny_by_default() {
        let (p, d) = policy(&format!("{{{CONNECTORS}}}"));
        assert!(!p.has_admin_grant(), "{d}");
        let someone = user("a@example.com", &[]);
        let a = p.access(&someone);
        assert!(!a.allows("github", "proxy", "user"));
        assert!(!a.any_on("github"));
    }

    #[test]
    fn pattern_shapes() {
        let grant = |pats: &str| {
            format!(
                r#"{{{CONNECTORS}, "grants": [{{"src": ["*"], "app": {{"tailscale.com/cap/aperture": [{{"connectors": {pats}}}]}}}}]}}"#
            )
        };
        let u = user("a@example.com", &[]);
        let (p, _) = policy(&grant(r#"["github/proxy"]"#));
        let a = p.access(&u);
        assert!(a.allows("github", "proxy", "a/b/c"));
        assert!(!a.allows("github", "tools", "x"));

        let (p, _) = policy(&grant(r#"["local/tools/*"]"#));
        let a = p.access(&u);
        assert!(a.allows("local", "tools", "search"));
        assert!(!a.allows("local", "resources", "file"));
        assert!(!a.allows("local", "tools", ""));
        assert!(a.any_in("local", "tools"));
        assert!(
            !a.any_in("local", "proxy"),
            "a tool grant is no proxy grant"
        );

        let (p, _) = policy(&grant(r#"["github/proxy/repos/**"]"#));
        let a = p.access(&u);
        assert!(a.allows("github", "proxy", "repos"));
        assert!(a.allows("github", "proxy", "repos/a/b"));
        assert!(!a.allows("github", "proxy", "reposx"));
        assert!(!a.allows("github", "proxy", "user"));
        assert!(a.any_on("github"));
        assert!(a.any_in("github", "proxy"));
        assert!(!a.any_in("github", "tools"));
        assert!(!a.any_in("jira", "proxy"));

        let (p, _) = policy(&grant(r#"["*/proxy/public/**"]"#));
        let a = p.access(&u);
        assert!(a.any_in("github", "proxy"));
        assert!(!a.any_in("github", "tools"));

        let (p, _) = policy(&grant(r#"["github/proxy/**"]"#));
        assert!(p.access(&u).allows("github", "proxy", ""));

        let (p, _) = policy(&grant(r#"["label:dev"]"#));
        let a = p.access(&u);
        assert!(a.allows("github", "proxy", "x"));
        assert!(a.allows("github", "tools", "x"));
        assert!(!a.allows("jira", "proxy", "x"));

        let (p, _) = policy(&grant(r#"["*/tools/search"]"#));
        assert!(p.access(&u).allows("local", "tools", "search"));
    }

    #[test]
    fn malformed_patterns_warn_and_are_ignored() {
        let text = format!(
            r#"{{{CONNECTORS}, "grants": [{{"src": ["*"], "app": {{"tailscale.com/cap/aperture": [
                {{"connectors": ["github/tool/x", "local/tools/a/b", "nope/**", "label:", "label:missing", "github//x", "github/proxy"]}}]}}}}]}}"#
        );
        let (p, d) = policy(&text);
        let w: Vec<String> = d.warnings().map(ToString::to_string).collect();
        for needle in [
            "unknown category \"tool\"",
            "too many segments",
            "connector \"nope\"",
            "needs a label",
            "label \"missing\"",
            "empty segment",
        ] {
            assert!(w.iter().any(|x| x.contains(needle)), "{needle}: {w:?}");
        }
        assert!(
            w.iter()
                .all(|x| x.contains("grants[0].app") || x.contains("role")),
            "{w:?}"
        );
        assert!(p.access(&user("a@x", &[])).allows("github", "proxy", "y"));
    }

    #[test]
    fn src_matching() {
        let text = format!(
            r#"{{{CONNECTORS}, "grants": [
                {{"src": ["alice@example.com"], "app": {{"tailscale.com/cap/aperture": [{{"role": "admin"}}]}}}},
                {{"src": ["group:eng"], "app": {{"tailscale.com/cap/aperture": [{{"connectors": ["jira/**"]}}]}}}},
                {{"src": ["tag:ci"], "app": {{"tailscale.com/cap/aperture": [{{"connectors": ["github/proxy"]}}]}}}},
                {{"src": ["tag:api,tag:prod"], "app": {{"tailscale.com/cap/aperture": [{{"connectors": ["local/**"]}}]}}}},
                {{"src": ["(loopback)"], "app": {{"tailscale.com/cap/aperture": [{{"read_metrics": true}}]}}}}
            ]}}"#
        );
        let (p, _) = policy(&text);
        assert!(p.access(&user("alice@example.com", &[])).is_admin());
        assert!(!p.access(&user("mallory@example.com", &[])).is_admin());
        assert!(
            p.access(&user("bob@example.com", &["group:eng"]))
                .allows("jira", "proxy", "x")
        );
        assert!(
            p.access(&tagged(&["tag:ci", "tag:x"]))
                .allows("github", "proxy", "x")
        );
        let api = tagged(&["tag:prod", "tag:api"]);
        let ap = p.access(&api);
        assert!(ap.allows("local", "tools", "t"));
        assert!(
            !p.access(&tagged(&["tag:api"]))
                .allows("local", "tools", "t")
        );
        // A user whose login looks like a tag string is not that tag.
        assert!(
            !p.access(&user("tag:ci", &[]))
                .allows("github", "proxy", "x")
        );
        let loopback = Caller::loopback();
        let lb = p.access(&loopback);
        assert!(lb.may_read_metrics() && !lb.is_admin());
    }

    #[test]
    fn whois_caps_add_to_config_grants() {
        let (p, _) = policy(&format!("{{{CONNECTORS}}}"));
        let mut c = user("a@example.com", &[]);
        c.caps = Capabilities::compile(vec![
            serde_json::json!({"connectors": ["jira/proxy"]}),
            serde_json::json!({"role": "admin"}),
            serde_json::json!("garbage"),
        ]);
        let a = p.access(&c);
        assert!(a.allows("jira", "proxy", "x"));
        assert!(a.is_admin());
        assert!(!a.allows("github", "proxy", "x"));
    }

    #[test]
    fn the_grant_that_allows_is_named_for_the_audit_trail() {
        let text = format!(
            r#"{{{CONNECTORS}, "grants": [
                {{"src": ["b@x"], "app": {{"tailscale.com/cap/aperture": [{{"connectors": "jira/**"}}]}}}},
                {{"src": ["*"], "app": {{"tailscale.com/cap/aperture": [{{"connectors": ["github/proxy/repos/**", "label:dev"]}}]}}}}]}}"#
        );
        let (p, _) = policy(&text);
        let mut c = user("a@x", &[]);
        c.caps = Capabilities::compile(vec![serde_json::json!({"connectors": ["local/**"]})]);
        let a = p.access(&c);
        let named = |conn: &str, cat: &str, res: &str| {
            a.grant_for(conn, cat, res).map(|g| g.as_str().to_owned())
        };
        assert_eq!(
            named("github", "proxy", "repos/a"),
            Some("grants[1] github/proxy/repos/**".into())
        );
        assert_eq!(
            named("github", "proxy", "user"),
            Some("grants[1] label:dev".into()),
            "a label grants the whole connector"
        );
        assert_eq!(
            named("local", "tools", "search"),
            Some("tailnet policy local/**".into())
        );
        assert_eq!(
            named("jira", "proxy", "x"),
            None,
            "grants[0] is someone else's"
        );
        assert_eq!(
            a.allows("jira", "proxy", "x"),
            named("jira", "proxy", "x").is_some()
        );
    }

    #[test]
    fn legacy_fields_translate() {
        let text = format!(
            r#"{{{CONNECTORS}, "grants": [{{"src": ["*"], "app": {{"tailscale.com/cap/aperture": [{{"mcp_tools": "local/search"}}]}}}}]}}"#
        );
        let (p, _) = policy(&text);
        let ax = user("a@x", &[]);
        let a = p.access(&ax);
        assert!(a.allows("local", "tools", "search"));
        assert!(!a.allows("local", "tools", "other"));
    }
}

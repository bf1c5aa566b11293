//! Changing a config through the admin API: secrets masked on the way out and moved into
//! the vault on the way in, and the new values written into the operator's HuJSON so that
//! comments and layout outside the changed values stay as they were.
//!
//! Everything here works on JSON values and text; the I/O (vault, file) is the caller's.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use jsonc_parser::cst::{CstInputValue, CstNode, CstObject, CstRootNode};

use super::HUJSON;
use super::types::secret_fields;

/// What a secret reads as when the config is read back. Sent back unchanged, it means
/// "keep the secret this field has now".
pub const MASK: &str = "********";

/// Is `name` usable as a vault secret name (`{"vault": NAME}`)?
pub fn valid_secret_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One secret-holding field of one connector's `auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSlot {
    pub connector: String,
    pub field: &'static str,
}

impl SecretSlot {
    /// The vault name an inline secret of this field is moved to.
    pub fn vault_name(&self) -> String {
        format!("{}_{}", self.connector, self.field)
    }

    /// Where it sits, as diagnostics write paths.
    pub fn path(&self) -> String {
        super::JsonPath::root()
            .key("connectors")
            .key("servers")
            .key(&self.connector)
            .key("auth")
            .key(self.field)
            .into()
    }

    fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        root.get("connectors")?
            .get("servers")?
            .get(&self.connector)?
            .get("auth")?
            .get(self.field)
    }

    fn get_mut<'a>(&self, root: &'a mut Value) -> Option<&'a mut Value> {
        root.get_mut("connectors")?
            .get_mut("servers")?
            .get_mut(&self.connector)?
            .get_mut("auth")?
            .get_mut(self.field)
    }
}

/// Every secret field present in a config, whatever its form (inline or reference).
pub fn secret_slots(root: &Value) -> Vec<SecretSlot> {
    let Some(servers) = root
        .get("connectors")
        .and_then(|c| c.get("servers"))
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (id, server) in servers {
        let Some(auth) = server.get("auth").and_then(Value::as_object) else {
            continue;
        };
        let ty = auth.get("type").and_then(Value::as_str).unwrap_or_default();
        for field in secret_fields(ty) {
            if auth.contains_key(*field) {
                out.push(SecretSlot {
                    connector: id.clone(),
                    field,
                });
            }
        }
    }
    out
}

/// The vault secret names a config refers to, with where.
pub fn vault_references(root: &Value) -> Vec<(String, String)> {
    secret_slots(root)
        .into_iter()
        .filter_map(|slot| {
            let name = slot.get(root)?.get("vault")?.as_str()?.to_owned();
            Some((name, slot.path()))
        })
        .collect()
}

/// The config with every inline secret replaced by [`MASK`]. References
/// (`{"env": ...}`, `{"vault": ...}`) name no secret and stay.
pub fn mask(root: &Value) -> Value {
    let mut out = root.clone();
    for slot in secret_slots(root) {
        if let Some(v) = slot.get_mut(&mut out)
            && v.is_string()
        {
            *v = Value::String(MASK.to_owned());
        }
    }
    out
}

/// Puts back, for every field of `new` that still reads [`MASK`], what that field holds
/// in `current`. A mask with nothing behind it is refused: the caller must send the
/// secret itself.
pub fn unmask(new: &mut Value, current: &Value) -> Result<(), String> {
    for slot in secret_slots(new) {
        if slot.get(new).and_then(Value::as_str) != Some(MASK) {
            continue;
        }
        let Some(kept) = slot.get(current).cloned() else {
            return Err(format!(
                "{} is \"{MASK}\", but there is no current secret to keep; send the secret itself",
                slot.path()
            ));
        };
        if let Some(v) = slot.get_mut(new) {
            *v = kept;
        }
    }
    Ok(())
}

/// Replaces every inline secret of `new` with a vault reference and returns what goes
/// into the vault under which name: `<connector>_<field>`, with a `_2`, `_3`... suffix
/// when that name is `taken` (referenced elsewhere, so overwriting it would change
/// another field's secret). Chosen names join `taken`.
pub fn take_inline(
    new: &mut Value,
    taken: &mut std::collections::BTreeSet<String>,
) -> Vec<(String, Zeroizing<String>)> {
    let mut moved = Vec::new();
    for slot in secret_slots(new) {
        let Some(v) = slot.get_mut(new) else { continue };
        if let Value::String(s) = v {
            let secret = Zeroizing::new(std::mem::take(s));
            let base = slot.vault_name();
            let mut name = base.clone();
            let mut n = 1;
            while taken.contains(&name) {
                n += 1;
                name = format!("{base}_{n}");
            }
            taken.insert(name.clone());
            *v = serde_json::json!({ "vault": name });
            moved.push((name, secret));
        }
    }
    moved
}

/// Points `before`'s inline secrets at the vault names `after` moved the same secret of
/// the same field to, so that keeping the previous version stores nothing twice.
pub fn share_moved(before: &mut Value, after: &Value, moved: &[(String, Zeroizing<String>)]) {
    for slot in secret_slots(before) {
        let Some(name) = slot
            .get(after)
            .and_then(|v| v.get("vault"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let same = moved.iter().any(|(n, value)| {
            n == name && slot.get(before).and_then(Value::as_str) == Some(value.as_str())
        });
        if same && let Some(v) = slot.get_mut(before) {
            *v = serde_json::json!({ "vault": name });
        }
    }
}

/// `text` with its values changed to `new`: only what differs is rewritten, so comments
/// and layout elsewhere survive. Text that does not parse is replaced by `new`, pretty-printed.
pub fn apply(text: &str, new: &Value) -> String {
    let (Ok(root), Ok(old)) = (CstRootNode::parse(text, &HUJSON), super::parse_hujson(text)) else {
        return pretty(new);
    };
    match root.object_value() {
        Some(obj) if new.is_object() => merge_object(&obj, &old, new),
        _ => root.set_value(input(new)),
    }
    root.to_string()
}

/// A config as the host writes it from scratch (keys in [`KEY_ORDER`]).
pub fn pretty(v: &Value) -> String {
    match CstRootNode::parse("", &HUJSON) {
        Ok(root) => {
            root.set_value(input(v));
            let mut s = root.to_string();
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        Err(_) => serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".to_owned()),
    }
}

fn merge_object(obj: &CstObject, old: &Value, new: &Value) {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return;
    };
    for prop in obj.properties() {
        let gone = prop
            .name()
            .and_then(|n| n.decoded_value().ok())
            .is_some_and(|name| !new.contains_key(&name));
        if gone {
            prop.remove();
        }
    }
    for (key, value) in new {
        match (obj.get(key), old.get(key)) {
            (Some(prop), Some(was)) if was != value => match prop.value() {
                Some(node) => merge_value(node, was, value, &|v| prop.set_value(v)),
                None => prop.set_value(input(value)),
            },
            (Some(_), Some(_)) => {}
            (Some(prop), None) => prop.set_value(input(value)),
            (None, _) => {
                obj.append(key, input(value));
            }
        }
    }
}

/// Changes `node` (holding `was`) to `value`: objects key by key, lists of the same
/// length element by element, anything else replaced whole through `set`.
fn merge_value(node: CstNode, was: &Value, value: &Value, set: &dyn Fn(CstInputValue)) {
    match (&node, was, value) {
        (n, Value::Object(_), Value::Object(_)) if n.as_object().is_some() => {
            if let Some(obj) = n.as_object() {
                merge_object(&obj, was, value);
            }
        }
        (n, Value::Array(a), Value::Array(b)) if a.len() == b.len() && n.as_array().is_some() => {
            let Some(list) = n.as_array() else { return };
            for ((el, x), y) in list.elements().into_iter().zip(a).zip(b) {
                if x != y {
                    let target = el.clone();
                    merge_value(el, x, y, &|v| replace(target.clone(), v));
                }
            }
        }
        _ => set(input(value)),
    }
}

fn replace(node: CstNode, v: CstInputValue) {
    use CstNode::Container as C;
    use CstNode::Leaf as L;
    use jsonc_parser::cst::{CstContainerNode as K, CstLeafNode as F};
    match node {
        C(K::Object(o)) => {
            o.replace_with(v);
        }
        C(K::Array(a)) => {
            a.replace_with(v);
        }
        L(F::StringLit(s)) => {
            s.replace_with(v);
        }
        L(F::NumberLit(n)) => {
            n.replace_with(v);
        }
        L(F::BooleanLit(b)) => {
            b.replace_with(v);
        }
        L(F::NullKeyword(n)) => {
            n.replace_with(v);
        }
        L(F::WordLit(w)) => {
            w.replace_with(v);
        }
        _ => {}
    }
}

fn input(v: &Value) -> CstInputValue {
    match v {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(items) => CstInputValue::Array(items.iter().map(input).collect()),
        Value::Object(map) => CstInputValue::Object(object_input(map)),
    }
}

/// Keys in the order people write them (what a connector is before how it signs in);
/// others follow alphabetically.
const KEY_ORDER: &[&str] = &[
    "listen",
    "public_url",
    "identity",
    "vault",
    "registry",
    "egress",
    "mcp",
    "connectors",
    "grants",
    "src",
    "app",
    "protocol",
    "url",
    "provider",
    "description",
    "context",
    "labels",
    "provider_vars",
    "auth",
    "type",
    "client_id",
    "client_secret",
    "authorization_url",
    "token_url",
    "scopes",
    "auth_params",
    "username",
    "password",
    "name",
    "in",
    "scheme",
    "secret",
];

fn object_input(map: &Map<String, Value>) -> Vec<(String, CstInputValue)> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by_key(|(k, _)| {
        (
            KEY_ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX),
            k.as_str(),
        )
    });
    entries
        .into_iter()
        .map(|(k, v)| (k.clone(), input(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TEXT: &str = r#"// Operator's notes stay.
{
  "listen": "127.0.0.1:8080", // the port
  "connectors": {"servers": {
    /* GitHub for the eng team */
    "github": {"protocol": "http", "url": "https://api.github.com",
               "auth": {"type": "bearer_token", "secret": "ghp_inline"}},
    "jira": {"protocol": "http", "url": "https://jira.example.com",
             "auth": {"type": "basic", "username": "bot", "password": {"vault": "jira_pw"}}},
  }},
  "grants": [
    {"src": ["group:eng"], "app": {"tailscale.com/cap/aperture": [{"connectors": ["github/**"]}]}}, // eng
  ],
}
"#;

    fn parsed(text: &str) -> Value {
        super::super::parse_hujson(text).expect("parses")
    }

    #[test]
    fn an_edit_keeps_comments_and_changes_only_what_differs() {
        let mut new = parsed(TEXT);
        new["connectors"]["servers"]["github"]["url"] = json!("https://ghe.example.com/api/v3");
        new["connectors"]["servers"]
            .as_object_mut()
            .expect("servers")
            .remove("jira");
        new["connectors"]["servers"]["weather"] =
            json!({"protocol": "http", "url": "https://w.example.com"});
        new["grants"][0]["src"] = json!(["group:eng", "alice@example.com"]);
        let out = apply(TEXT, &new);
        assert_eq!(parsed(&out), new, "{out}");
        for kept in [
            "// Operator's notes stay.",
            "// the port",
            "/* GitHub for the eng team */",
            "// eng",
        ] {
            assert!(out.contains(kept), "lost {kept:?}:\n{out}");
        }
        assert!(!out.contains("jira"), "{out}");
    }

    #[test]
    fn an_unchanged_config_is_written_back_byte_for_byte() {
        assert_eq!(apply(TEXT, &parsed(TEXT)), TEXT);
    }

    #[test]
    fn unparsable_text_is_replaced_by_the_new_config_in_the_usual_key_order() {
        let new = json!({"grants": [], "connectors": {"servers": {"x": {
            "auth": {"type": "none"}, "url": "https://x.example.com", "protocol": "http"}}}});
        let out = apply("{ broken", &new);
        assert_eq!(parsed(&out), new);
        let at = |k: &str| out.find(k).unwrap_or(usize::MAX);
        assert!(at("connectors") < at("grants"), "{out}");
        assert!(
            at("protocol") < at("\"url\"") && at("\"url\"") < at("auth"),
            "{out}"
        );
    }

    #[test]
    fn secrets_are_masked_kept_when_masked_and_moved_to_the_vault() {
        let current = parsed(TEXT);
        let masked = mask(&current);
        assert_eq!(
            masked["connectors"]["servers"]["github"]["auth"]["secret"],
            MASK
        );
        // References are not secrets.
        assert_eq!(
            masked["connectors"]["servers"]["jira"]["auth"]["password"],
            json!({"vault": "jira_pw"})
        );
        assert!(!masked.to_string().contains("ghp_inline"));

        let mut back = masked.clone();
        unmask(&mut back, &current).expect("unmask");
        assert_eq!(back, current);

        let mut taken = vault_references(&back)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let moved = take_inline(&mut back, &mut taken);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0, "github_secret");
        assert_eq!(moved[0].1.as_str(), "ghp_inline");
        assert_eq!(
            back["connectors"]["servers"]["github"]["auth"]["secret"],
            json!({"vault": "github_secret"})
        );
        assert_eq!(
            vault_references(&back),
            vec![
                (
                    "github_secret".to_owned(),
                    "connectors.servers.github.auth.secret".to_owned()
                ),
                (
                    "jira_pw".to_owned(),
                    "connectors.servers.jira.auth.password".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_moved_secret_never_takes_a_name_another_field_refers_to() {
        let mut new = json!({"connectors": {"servers": {
            "github": {"protocol": "http", "auth": {"type": "bearer_token", "secret": "new-value"}},
            "mirror": {"protocol": "http", "auth": {"type": "bearer_token", "secret": {"vault": "github_secret"}}},
        }}});
        let mut taken = ["github_secret".to_owned()].into();
        let moved = take_inline(&mut new, &mut taken);
        assert_eq!(moved[0].0, "github_secret_2");
        assert_eq!(
            new["connectors"]["servers"]["github"]["auth"]["secret"],
            json!({"vault": "github_secret_2"})
        );
    }

    #[test]
    fn a_mask_with_no_secret_behind_it_is_refused() {
        let mut new = json!({"connectors": {"servers": {"x": {"protocol": "http",
            "auth": {"type": "bearer_token", "secret": MASK}}}}});
        let e = unmask(&mut new, &json!({})).expect_err("nothing to keep");
        assert!(e.contains("connectors.servers.x.auth.secret"), "{e}");
    }

    #[test]
    fn secret_names() {
        assert!(valid_secret_name("github_pat"));
        assert!(valid_secret_name("Slack_client_secret.v2"));
        for bad in ["", "_x", "a b", "a/b", &"x".repeat(129)] {
            assert!(!valid_secret_name(bad), "{bad}");
        }
    }
}

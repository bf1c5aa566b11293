//! The config's JSON Schema, generated from the types the loader decodes, so editors
//! complete and check a config as the host will read it.
//!
//! The loader decodes each section on its own and reports unknown keys as warnings; the
//! schema describes the same document with the owned sections closed
//! (`additionalProperties: false`), so an editor underlines the unknown keys `validate`
//! warns about (capability objects, shared with the tailnet policy file, stay open). What a schema cannot say (secret references that resolve, providers that are
//! loaded, grant patterns that match a connector) stays with `portcullis validate`.
//! The number bounds come from [`super::BOUNDS`], the one table the loader checks too.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use super::types::{
    ApiKey, AuthorizationCode, Basic, BearerToken, Capability, ClientCredentials, Dcr,
    EgressConfig, Flag, HttpConfig, IdentityConfig, McpConfig, Protocol, RegistryConfig, SecretRef,
    VaultConfig,
};
use super::{APERTURE_ONLY_SECTIONS, BOUNDS, MAX_ID_LEN, RESERVED_IDS};

/// The JSON Schema (draft 2020-12) of a Portcullis config file.
pub fn config_schema() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Document>();
    let mut value = schema.to_value();
    apply_bounds(&mut value);
    value
}

/// Writes each [`BOUNDS`] entry into its section's definition as `minimum`/`maximum`.
fn apply_bounds(root: &mut Value) {
    for (section, key, min, max) in BOUNDS {
        let Some(def) = section_definition(root, section) else {
            continue;
        };
        if let Some(field) = root
            .pointer_mut(&format!("/$defs/{def}/properties/{key}"))
            .and_then(Value::as_object_mut)
        {
            field.insert("minimum".into(), (*min).into());
            field.insert("maximum".into(), (*max).into());
        }
    }
}

/// The `$defs` name a top-level section refers to.
fn section_definition(root: &Value, section: &str) -> Option<String> {
    let reference = root
        .pointer(&format!("/properties/{section}/$ref"))?
        .as_str()?;
    reference.strip_prefix("#/$defs/").map(str::to_owned)
}

/// A Portcullis config file (HuJSON: JSON with comments and trailing commas).
/// Also reads an Aperture config: its LLM-gateway sections are accepted and ignored.
#[derive(JsonSchema)]
#[schemars(title = "Portcullis configuration", deny_unknown_fields)]
#[allow(dead_code)] // Describes the document; the loader decodes it section by section.
struct Document {
    /// This schema's URL, for editors; ignored by the host.
    #[serde(rename = "$schema")]
    #[schemars(transform = not_null)]
    schema: Option<String>,
    /// Address and port to listen on (`127.0.0.1:8080` by default); `--listen` and
    /// `PORTCULLIS_LISTEN` win.
    #[schemars(
        example = "127.0.0.1:8080",
        regex(pattern = r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5}$"),
        transform = not_null
    )]
    listen: Option<String>,
    /// How callers are identified.
    #[serde(default)]
    identity: IdentityConfig,
    #[serde(default)]
    vault: VaultConfig,
    #[serde(default)]
    registry: RegistryConfig,
    /// Outbound connections to upstreams.
    #[serde(default)]
    egress: EgressConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    mcp: McpConfig,
    /// The URL agents and browsers reach this host at (`https://ai.example.ts.net`);
    /// OAuth redirect URIs are built from it.
    #[schemars(url, regex(pattern = "^https?://"), transform = not_null)]
    public_url: Option<String>,
    #[serde(default)]
    connectors: Connectors,
    /// Who may use what: deny by default.
    #[serde(default)]
    grants: Vec<GrantDocument>,
    /// Feature flags, accepted for compatibility with Aperture; no effect.
    #[serde(default)]
    flags: BTreeMap<String, Flag>,
    #[serde(flatten)]
    aperture: ApertureSections,
}

/// For the top-level fields the loader refuses `null` for: a string when present.
fn not_null(schema: &mut Schema) {
    schema.insert("type".into(), "string".into());
    schema.remove("default");
}

/// For an optional object the loader refuses `null` for: the object alone.
fn no_null_branch(schema: &mut Schema) {
    let Some(Value::Array(branches)) = schema.remove("anyOf") else {
        return;
    };
    let mut kept: Vec<Value> = branches
        .into_iter()
        .filter(|b| b.get("type") != Some(&Value::from("null")))
        .collect();
    match kept.len() {
        1 => {
            if let Some(Value::Object(only)) = kept.pop() {
                for (k, v) in only {
                    schema.insert(k, v);
                }
            }
        }
        _ => {
            schema.insert("anyOf".into(), Value::Array(kept));
        }
    }
}

/// Aperture's LLM-gateway sections, accepted so a shared file loads; Portcullis ignores
/// them (with a warning).
#[derive(Default)]
struct ApertureSections;

impl JsonSchema for ApertureSections {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ApertureSections".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let ignored = serde_json::json!({
            "description": "Configures Aperture's LLM gateway; Portcullis ignores it.",
            "deprecated": true,
        });
        let properties: serde_json::Map<String, Value> = APERTURE_ONLY_SECTIONS
            .iter()
            .map(|s| ((*s).to_owned(), ignored.clone()))
            .collect();
        json_schema!({ "type": "object", "properties": properties })
    }
}

#[derive(Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct Connectors {
    /// Connectors by ID. An ID starts with a letter, has only letters and digits (it
    /// prefixes tool names) and is not reserved.
    #[serde(default)]
    #[schemars(extend("propertyNames" = connector_id_rule()))]
    servers: BTreeMap<String, Server>,
}

fn connector_id_rule() -> Value {
    serde_json::json!({
        "pattern": format!("^[A-Za-z][A-Za-z0-9]{{0,{}}}$", MAX_ID_LEN - 1),
        "not": { "enum": RESERVED_IDS },
    })
}

/// One connector: an HTTP API proxied at `/v1/connectors/<id>/…` or an MCP server
/// aggregated at `/v1/mcp`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct Server {
    protocol: Protocol,
    /// The upstream's base URL (https). A verified provider supplies a default.
    #[serde(default)]
    #[schemars(url)]
    url: Option<String>,
    /// The credential injected upstream; none when absent.
    #[serde(default)]
    auth: Option<AuthDocument>,
    #[serde(default)]
    description: String,
    /// Free-form context shown to agents with the connector.
    #[serde(default)]
    context: Option<Value>,
    /// A verified provider from the registry (`slack`, `salesforce`, …), or `custom`.
    #[serde(default)]
    provider: Option<String>,
    /// Variables the provider's plugin reads (Salesforce `api_version`, Atlassian `site`).
    #[serde(default)]
    provider_vars: BTreeMap<String, String>,
    #[serde(default)]
    labels: Vec<String>,
}

/// `auth`, by `type`. Each secret is a string, `{"env": NAME}` or `{"vault": NAME}`.
#[derive(JsonSchema)]
#[serde(tag = "type")]
#[allow(dead_code)]
enum AuthDocument {
    #[serde(rename = "none")]
    None(NoAuth),
    #[serde(rename = "bearer_token")]
    BearerToken(BearerToken),
    #[serde(rename = "api_key")]
    ApiKey(ApiKey),
    #[serde(rename = "basic")]
    Basic(Basic),
    #[serde(rename = "oauth2_client_credentials")]
    ClientCredentials(ClientCredentials),
    #[serde(rename = "oauth2_authorization_code")]
    AuthorizationCode(AuthorizationCode),
    #[serde(rename = "oauth2_dcr")]
    Dcr(Dcr),
}

#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
struct NoAuth {}

/// One grant: callers (`src`) and what they may use.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct GrantDocument {
    /// Tailnet users, groups, tags or `*`.
    src: Vec<String>,
    #[serde(default)]
    #[schemars(transform = no_null_branch)]
    app: Option<GrantApp>,
    /// Tailnet policy-file field; config grants always target this host, so ignored.
    #[serde(default)]
    #[schemars(extend("deprecated" = true))]
    dst: Option<Value>,
    /// Tailnet policy-file field; ignored here.
    #[serde(default)]
    #[schemars(extend("deprecated" = true))]
    ip: Option<Value>,
}

/// Capabilities by application; Portcullis reads `tailscale.com/cap/aperture` and leaves
/// the others to their applications.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct GrantApp {
    #[serde(rename = "tailscale.com/cap/aperture", default)]
    aperture: Vec<Capability>,
    #[serde(flatten)]
    others: BTreeMap<String, Value>,
}

impl JsonSchema for SecretRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A secret: the value itself (moved into the vault when saved through the admin API), or a reference to an environment variable or a vault entry.",
            "oneOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": { "env": { "type": "string", "minLength": 1 } },
                    "required": ["env"],
                    "additionalProperties": false,
                },
                {
                    "type": "object",
                    "properties": { "vault": { "type": "string", "minLength": 1 } },
                    "required": ["vault"],
                    "additionalProperties": false,
                },
            ],
        })
    }
}

/// `connectors` in a grant: one pattern or a list of them.
pub(super) struct OneOrMany;

impl JsonSchema for OneOrMany {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Patterns".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A connector pattern (`github/**`, `notion/tools/search`) or a list of them.",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } },
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_is_in_the_schema() {
        let schema = config_schema();
        for (section, key, min, max) in BOUNDS {
            let def = section_definition(&schema, section).expect("section is a $ref");
            let field = schema
                .pointer(&format!("/$defs/{def}/properties/{key}"))
                .unwrap_or_else(|| panic!("{section}.{key} is not in the schema"));
            assert_eq!(field["minimum"], *min, "{section}.{key}");
            assert_eq!(field["maximum"], *max, "{section}.{key}");
        }
    }

    #[test]
    fn every_auth_type_is_described_with_its_fields() {
        let schema = config_schema();
        let variants = schema
            .pointer("/$defs/AuthDocument/oneOf")
            .and_then(Value::as_array)
            .expect("auth variants");
        for name in super::super::AUTH_TYPES {
            let variant = variants
                .iter()
                .find(|v| v.pointer("/properties/type/const") == Some(&Value::from(*name)))
                .unwrap_or_else(|| panic!("auth type {name} missing"));
            let props: Vec<&str> = variant["properties"]
                .as_object()
                .expect("properties")
                .keys()
                .map(String::as_str)
                .collect();
            let mut want = super::super::auth_fields(name).expect("fields").to_vec();
            let mut have = props.clone();
            want.sort_unstable();
            have.sort_unstable();
            assert_eq!(have, want, "fields of {name}");
            assert_eq!(variant["additionalProperties"], false, "{name}");
            for required in super::super::required_auth_fields(name) {
                assert!(
                    variant["required"]
                        .as_array()
                        .is_some_and(|r| r.contains(&Value::from(*required))),
                    "{name}.{required} required"
                );
            }
        }
    }
}

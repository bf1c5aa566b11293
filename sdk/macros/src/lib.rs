//! `#[portcullis_sdk::provider]`, re-exported by `portcullis-sdk`; see its documentation.
//!
//! The attribute reads the `impl Provider for T` block it is put on and
//!
//! - derives the hooks the host calls from the hook methods the block defines (no list
//!   to keep in step: a hook is active because it is implemented);
//! - reads the plugin's `id`, `name` and `description` from the crate's `plugin.toml`
//!   (the registry manifest), so `defaults()` and the manifest cannot disagree;
//! - exports `T` as the component's `portcullis:provider/plugin` interface.

use std::path::Path;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::spanned::Spanned as _;
use syn::{ImplItem, ItemImpl, parse_quote};

/// The trait constant the attribute writes: the identity and the derived hook list.
/// Required by the trait, so an impl without the attribute does not compile.
const DERIVED_CONST: &str = "FROM_PROVIDER_ATTRIBUTE";
/// The list of tools whose answers `shape_tool_result` reshapes.
const SHAPED_CONST: &str = "SHAPED_TOOL_RESULTS";

/// Each hook method of `Provider`, and the WIT hook it makes active.
const HOOK_METHODS: &[(&str, &str)] = &[
    ("shape_request", "ShapeRequest"),
    ("read_token_response", "ReadTokenResponse"),
    ("discover", "Discover"),
    ("classify_response", "ClassifyResponse"),
    ("list_tools", "Tools"),
    ("build_tool_call", "Tools"),
];

/// In the order of the WIT `hook` enum, so the list does not depend on method order.
const HOOK_ORDER: &[&str] = &[
    "ShapeRequest",
    "ReadTokenResponse",
    "Discover",
    "ClassifyResponse",
    "Tools",
];

/// Exports a provider: put it on your `impl Provider for YourType` block.
#[proc_macro_attribute]
pub fn provider(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !args.is_empty() {
        return Err(syn::Error::new(
            args.span(),
            "#[portcullis_sdk::provider] takes no arguments: the plugin's id, name and description come from plugin.toml",
        ));
    }
    let mut block: ItemImpl = syn::parse2(item)?;
    check_shape(&block)?;
    let hooks = hooks(&block)?;
    let dir = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| {
        syn::Error::new(
            Span::call_site(),
            "CARGO_MANIFEST_DIR is not set: build the plugin with cargo",
        )
    })?;
    let manifest = Path::new(&dir).join("plugin.toml");
    let who = identity(&manifest).map_err(|why| syn::Error::new(Span::call_site(), why))?;

    let derived = syn::Ident::new(DERIVED_CONST, Span::call_site());
    let variants = hooks.iter().map(|h| syn::Ident::new(h, Span::call_site()));
    let (id, name, description) = (&who.id, &who.name, &who.description);
    block.items.push(parse_quote! {
        const #derived: ::portcullis_sdk::export::Derived = ::portcullis_sdk::export::Derived {
            id: #id,
            name: #name,
            description: #description,
            hooks: &[#(::portcullis_sdk::Hook::#variants),*],
        };
    });
    let ty = &block.self_ty;
    let manifest = manifest.display().to_string();
    Ok(quote! {
        #block
        const _: () = {
            // Rebuilds the plugin when its manifest changes.
            const _: &str = ::core::include_str!(#manifest);
            type Export = ::portcullis_sdk::export::Export<#ty>;
            ::portcullis_sdk::bindings::__export_world!(Export with_types_in ::portcullis_sdk::bindings);
        };
    })
}

/// Only a plain `impl Provider for Type` can be exported.
fn check_shape(block: &ItemImpl) -> syn::Result<()> {
    let is_provider = matches!(
        &block.trait_,
        Some((path, _)) if path.segments.last().is_some_and(|s| s.ident == "Provider")
    );
    if !is_provider {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "#[portcullis_sdk::provider] goes on an `impl Provider for YourType` block",
        ));
    }
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "a provider cannot be generic: the component exports one concrete type",
        ));
    }
    Ok(())
}

/// The hooks `block` implements, in WIT order.
fn hooks(block: &ItemImpl) -> syn::Result<Vec<&'static str>> {
    let mut defined = Vec::new();
    for item in &block.items {
        match item {
            ImplItem::Fn(f) => defined.push(f.sig.ident.to_string()),
            ImplItem::Const(c) if c.ident == SHAPED_CONST => defined.push(SHAPED_CONST.to_owned()),
            ImplItem::Const(c) if c.ident == DERIVED_CONST => {
                return Err(syn::Error::new(
                    c.ident.span(),
                    "#[portcullis_sdk::provider] writes this constant (identity from plugin.toml, hooks from the methods you implement); remove it",
                ));
            }
            ImplItem::Macro(m) => {
                return Err(syn::Error::new(
                    m.span(),
                    "#[portcullis_sdk::provider] cannot see hooks a macro would define; write the methods out",
                ));
            }
            _ => {}
        }
    }
    let has = |name: &str| defined.iter().any(|d| d == name);
    const TOOLS: &str = "tools need both (list them, and turn a call into a request)";
    const RESULTS: &str =
        "reshaped answers need both (which tools, and how their answers are reshaped)";
    const ROUTES: &str = "routes stand in for `shape_request` on the paths they cover, which must \
                          give them the same result";
    for (one, other, why) in [
        ("request_routes", "shape_request", ROUTES),
        ("list_tools", "build_tool_call", TOOLS),
        ("build_tool_call", "list_tools", TOOLS),
        ("shape_tool_result", SHAPED_CONST, RESULTS),
        (SHAPED_CONST, "shape_tool_result", RESULTS),
    ] {
        if has(one) && !has(other) {
            return Err(syn::Error::new(
                block.self_ty.span(),
                format!("this provider implements `{one}` but not `{other}`; {why}"),
            ));
        }
    }
    Ok(HOOK_ORDER
        .iter()
        .copied()
        .filter(|hook| {
            HOOK_METHODS
                .iter()
                .any(|(method, h)| h == hook && has(method))
        })
        .collect())
}

#[derive(Debug, PartialEq)]
struct Identity {
    id: String,
    name: String,
    description: String,
}

/// The identity in the manifest at `path`.
fn identity(path: &Path) -> Result<Identity, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e}. A provider crate keeps its registry manifest, plugin.toml (id, name, description, limits, allowed hosts), next to its Cargo.toml",
            path.display()
        )
    })?;
    parse_identity(&text).map_err(|why| format!("{}: {why}", path.display()))
}

fn parse_identity(text: &str) -> Result<Identity, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let string = |key: &str| match table.get(key) {
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
        None => Ok(None),
    };
    let id = string("id")?.ok_or("`id` is missing")?;
    let valid = id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(format!(
            "id \"{id}\" must be lower-case letters, digits and '-', starting with a letter (at most 64)"
        ));
    }
    let name = string("name")?
        .filter(|n| !n.trim().is_empty())
        .ok_or("`name` is missing or empty")?;
    let description = string("description")?.unwrap_or_default();
    Ok(Identity {
        id,
        name,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks_of(block: ItemImpl) -> Result<Vec<&'static str>, String> {
        hooks(&block).map_err(|e| e.to_string())
    }

    #[test]
    fn hooks_are_the_methods_the_impl_defines_in_wit_order() {
        let block: ItemImpl = parse_quote! {
            impl Provider for P {
                fn defaults() -> Defaults { todo!() }
                fn build_tool_call(c: &Context, n: &str, a: &Args) -> R { todo!() }
                fn classify_response(c: &Context, s: u16, h: &[Header], b: &[u8]) -> C { todo!() }
                fn list_tools(c: &Context) -> Vec<Tool> { todo!() }
                fn shape_request(c: &Context, r: OutgoingRequest) -> R { todo!() }
            }
        };
        assert_eq!(
            hooks_of(block),
            Ok(vec!["ShapeRequest", "ClassifyResponse", "Tools"])
        );
        let only_defaults: ItemImpl =
            parse_quote! { impl Provider for P { fn defaults() -> Defaults { todo!() } } };
        assert_eq!(hooks_of(only_defaults), Ok(vec![]));
    }

    #[test]
    fn half_a_tools_hook_a_hand_written_list_and_macros_are_refused() {
        let half: ItemImpl = parse_quote! { impl Provider for P { fn list_tools(c: &Context) -> Vec<Tool> { todo!() } } };
        assert!(hooks_of(half).is_err_and(|e| e.contains("not `build_tool_call`")));
        let listed: ItemImpl = parse_quote! {
            impl Provider for P { const FROM_PROVIDER_ATTRIBUTE: Derived = todo!(); }
        };
        assert!(hooks_of(listed).is_err_and(|e| e.contains("writes this constant")));
        let hidden: ItemImpl = parse_quote! { impl Provider for P { make_hooks!(); } };
        assert!(hooks_of(hidden).is_err_and(|e| e.contains("macro")));
        let unlisted: ItemImpl = parse_quote! {
            impl Provider for P { fn shape_tool_result(c: &Context, n: &str, s: u16, b: &[u8]) -> R { todo!() } }
        };
        assert!(hooks_of(unlisted).is_err_and(|e| e.contains("not `SHAPED_TOOL_RESULTS`")));
        let unshaped: ItemImpl = parse_quote! {
            impl Provider for P { const SHAPED_TOOL_RESULTS: &'static [&'static str] = &["get"]; }
        };
        assert!(hooks_of(unshaped).is_err_and(|e| e.contains("not `shape_tool_result`")));
        let both: ItemImpl = parse_quote! {
            impl Provider for P {
                const SHAPED_TOOL_RESULTS: &'static [&'static str] = &["get"];
                fn shape_tool_result(c: &Context, n: &str, s: u16, b: &[u8]) -> R { todo!() }
            }
        };
        assert_eq!(hooks_of(both), Ok(vec![]));
        let unrouted: ItemImpl = parse_quote! {
            impl Provider for P { fn request_routes(c: &Context) -> Vec<Route> { todo!() } }
        };
        assert!(hooks_of(unrouted).is_err_and(|e| e.contains("not `shape_request`")));
        let routed: ItemImpl = parse_quote! {
            impl Provider for P {
                fn shape_request(c: &Context, r: OutgoingRequest) -> R { todo!() }
                fn request_routes(c: &Context) -> Vec<Route> { todo!() }
            }
        };
        assert_eq!(hooks_of(routed), Ok(vec!["ShapeRequest"]));
    }

    #[test]
    fn only_a_plain_provider_impl_is_exported() {
        let other: ItemImpl = parse_quote! { impl Display for P {} };
        assert!(check_shape(&other).is_err());
        let generic: ItemImpl = parse_quote! { impl<T> Provider for P<T> {} };
        assert!(check_shape(&generic).is_err());
        let ok: ItemImpl = parse_quote! { impl portcullis_sdk::Provider for P {} };
        assert!(check_shape(&ok).is_ok());
    }

    #[test]
    fn identity_comes_from_the_manifest_and_is_checked() {
        let ok = parse_identity(
            "schema_version = 1\nid = \"acme\"\nname = \"Acme\"\ndescription = \"Acme's API.\"\n[limits]\ntimeout_ms = 50\n",
        );
        assert_eq!(
            ok,
            Ok(Identity {
                id: "acme".into(),
                name: "Acme".into(),
                description: "Acme's API.".into()
            })
        );
        let no_description = parse_identity("id = \"a-1\"\nname = \"A\"\n");
        assert_eq!(no_description.map(|i| i.description), Ok(String::new()));
        for (bad, why) in [
            ("name = \"A\"", "`id` is missing"),
            ("id = \"Acme\"\nname = \"A\"", "lower-case"),
            ("id = \"acme\"", "`name`"),
            ("id = 7\nname = \"A\"", "must be a string"),
            ("id = \"acme", "not valid TOML"),
        ] {
            let got = parse_identity(bad);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{bad}: {got:?}"
            );
        }
    }
}

//! Runs `fixtures/*.json` against the built component through the real host runtime.
//! Build the component first: `cargo build --target wasm32-wasip2 --release`.

#[test]
fn fixtures() {
    let root = env!("CARGO_MANIFEST_DIR");
    portcullis_sdk::testing::run_fixtures(
        format!("{root}/target/wasm32-wasip2/release/portcullis_provider_acme.wasm"),
        format!("{root}/plugin.toml"),
        format!("{root}/fixtures"),
    );
}

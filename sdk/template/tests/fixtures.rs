//! Builds the component (`cargo build --target wasm32-wasip2 --release`, so a stale one
//! cannot pass) and runs `fixtures/*.json` against it through the real host runtime.

#[test]
fn fixtures() {
    portcullis_sdk::testing::run_fixtures(env!("CARGO_MANIFEST_DIR"));
}

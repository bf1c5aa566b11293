//! The plugin template (`sdk/template`) as a plugin author meets it: it builds for
//! `wasm32-wasip2` with its own lock file (`--locked`), and its fixtures pass through the
//! host's plugin runtime, the harness its `cargo test` runs (`portcullis_sdk::testing`
//! is `portcullis::plugins::harness`). Run from here, the harness shares this
//! workspace's build of the host instead of compiling it a second time.

use std::process::Command;

use portcullis::plugins::harness::Harness;
use portcullis_e2e::workspace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_template_builds_and_passes_its_fixtures() {
    let dir = workspace().join("sdk/template");
    // The template's own test is this one call; keep its signature compiling here.
    let _: fn(&'static str) = portcullis::plugins::harness::run_fixtures;
    let test = std::fs::read_to_string(dir.join("tests/fixtures.rs")).expect("template test");
    assert!(
        test.contains("portcullis_sdk::testing::run_fixtures(env!(\"CARGO_MANIFEST_DIR\"))"),
        "the template's test no longer runs the harness this test runs:\n{test}"
    );

    // Its own target directory: the workspace's is busy with this test run.
    let target = workspace().join("target/template");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&dir)
        .args([
            "build",
            "--quiet",
            "--locked",
            "--release",
            "--target",
            "wasm32-wasip2",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo");
    assert!(
        out.status.success(),
        "the template does not build (add the target with `rustup target add wasm32-wasip2`; the README's test command does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/plugin.wasm");
    let harness = Harness::load(&wasm, &dir.join("plugin.toml"))
        .await
        .expect("the template's component loads");
    let results = harness
        .run_dir(&dir.join("fixtures"))
        .await
        .expect("fixtures run");
    assert!(results.len() >= 2, "{} fixture cases", results.len());
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
        .collect();
    assert!(
        failed.is_empty(),
        "template fixtures failed:\n{}",
        failed.join("\n")
    );
}

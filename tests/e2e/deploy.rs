//! The deployment files in the repository, checked as far as this machine allows: every
//! example config passes the strict validator against the real registry, the systemd
//! unit passes `systemd-analyze verify` with no warning and keeps its sandbox, and the
//! container recipe follows the rules its comments promise.

use std::path::Path;

use portcullis_e2e::{portcullis, workspace};

#[test]
fn every_example_config_is_valid_as_a_save_would_require() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples: Vec<_> = std::fs::read_dir(workspace().join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hujson"))
        .collect();
    assert!(examples.len() >= 4, "{examples:?}");
    for example in examples {
        let out = portcullis()
            .arg("validate")
            .arg("--strict")
            .arg("--registry")
            .arg(workspace().join("registry"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg(&example)
            // The secrets the examples take from the environment.
            .envs(
                [
                    "GITHUB_TOKEN",
                    "JIRA_PASSWORD",
                    "SLACK_CLIENT_SECRET",
                    "SALESFORCE_CLIENT_SECRET",
                    "DOCS_MCP_TOKEN",
                ]
                .map(|v| (v, "example-value")),
            )
            .output()
            .expect("validate");
        assert!(
            out.status.success(),
            "{} does not validate:\n{}{}",
            example.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_systemd_unit_verifies_and_stays_sandboxed() {
    let unit = std::fs::read_to_string(workspace().join("deploy/portcullis.service"))
        .expect("deploy/portcullis.service");
    assert!(
        Path::new("/usr/bin/systemd-analyze").exists(),
        "systemd-analyze is needed to check deploy/portcullis.service (Debian package systemd)"
    );
    // Verified as installed, with the binary where ExecStart expects it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.service");
    let binary = portcullis_e2e::binary();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/portcullis", &binary.display().to_string()),
    )
    .expect("unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&out.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for portcullis.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        level <= 2.0,
        "the sandbox loosened: exposure {level}\n{report}"
    );
    // wasmtime compiles plugins at run time: W^X enforcement would break them.
    assert!(!unit.contains("MemoryDenyWriteExecute=yes"));
}

#[test]
fn the_container_recipe_builds_from_pinned_images_and_runs_unprivileged() {
    let root = workspace();
    let recipe =
        std::fs::read_to_string(root.join("deploy/Containerfile")).expect("deploy/Containerfile");
    let lines: Vec<&str> = recipe
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert!(froms.len() >= 2, "a build stage and a runtime stage");
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap_or("");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "unpinned image: {from}"
        );
    }
    // Everything copied from the build context exists, and the build context leaves
    // the build outputs out.
    for copy in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = copy.split_whitespace().nth(1).unwrap_or("");
        assert!(
            root.join(src).exists(),
            "{copy}: {src} is not in the repository"
        );
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore keeps target/ out"
    );
    // The runtime stage runs as an unprivileged numeric user, with its state on a volume.
    let runtime = &lines[lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap_or(0)..];
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric USER");
    assert!(uid >= 1000, "USER {user}");
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("VOLUME") && l.contains("/data"))
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.contains("PORTCULLIS_DATA_DIR=/data"))
    );
    // The entrypoint is the binary the build stage made.
    let entry = runtime
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert!(
        entry.contains("/usr/local/bin/portcullis")
            && runtime
                .iter()
                .any(|l| l.starts_with("COPY --from=build")
                    && l.ends_with("/usr/local/bin/portcullis")),
        "{entry}"
    );
}

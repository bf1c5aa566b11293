//! The command line as an operator meets it: help that names every argument and the
//! environment, and shell completions.

use std::process::Command;

use portcullis_e2e::binary;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn help_describes_every_argument_and_the_environment() {
    let (ok, top) = run(&["--help"]);
    assert!(ok);
    for var in [
        "PORTCULLIS_MASTER_KEY",
        "PORTCULLIS_DATABASE_URL",
        "RUST_LOG",
        "PORTCULLIS_LOG_FORMAT",
        "NO_COLOR",
    ] {
        assert!(top.contains(var), "--help does not mention {var}:\n{top}");
    }
    assert!(
        !top.contains("Aperture"),
        "the product is Portcullis:\n{top}"
    );
    for sub in [
        vec!["serve", "--help"],
        vec!["validate", "--help"],
        vec!["rotate-key", "--help"],
        vec!["migrate-store", "--help"],
        vec!["secret", "set", "--help"],
        vec!["secret", "rm", "--help"],
        vec!["connector", "add", "--help"],
        vec!["completions", "--help"],
    ] {
        let (ok, text) = run(&sub);
        assert!(ok, "{sub:?}");
        // Every argument line has a description after its name.
        for line in text.lines().filter(|l| {
            let t = l.trim_start();
            t.starts_with('<') || t.starts_with("--") || t.starts_with("-h")
        }) {
            let t = line.trim();
            let described = t
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(described, "{sub:?}: undescribed argument: {line:?}\n{text}");
        }
    }
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (ok, script) = run(&["completions", shell]);
        assert!(ok, "{shell}");
        for word in [
            "serve",
            "validate",
            "rotate-key",
            "migrate-store",
            "secret",
            "connector",
        ] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = Command::new(binary())
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "an unknown shell is an error");
}

/// A database URL that cannot be used is refused with a reason, and never echoed: it
/// carries the database's password.
#[test]
fn a_bad_database_url_is_refused_without_printing_its_password() {
    for (args, env) in [
        (
            vec![
                "secret",
                "list",
                "--database-url",
                "mysql://portcullis:hunter2-secret@db/vault",
            ],
            None,
        ),
        (
            vec![
                "secret",
                "list",
                "--database-url",
                "host=db password=hunter2-secret",
            ],
            None,
        ),
        (
            vec!["secret", "list"],
            Some("mysql://portcullis:hunter2-secret@db/vault"),
        ),
    ] {
        let mut cmd = Command::new(binary());
        cmd.args(&args).env_remove("PORTCULLIS_DATABASE_URL");
        if let Some(url) = env {
            cmd.env("PORTCULLIS_DATABASE_URL", url);
        }
        let out = cmd.output().expect("run portcullis");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("--database-url"), "{args:?}: {said}");
        assert!(said.contains("postgres://"), "says what to give: {said}");
        assert!(
            !said.contains("hunter2"),
            "the password was printed: {said}"
        );
    }
}

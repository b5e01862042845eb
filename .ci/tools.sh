#!/usr/bin/env bash
# Best-effort installs of the system tools some tests use (a browser, database servers, Go
# peers). Every step may fail: the tests that need a missing tool skip with a clear reason,
# so the README's test command still passes on a machine with only Python.
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
    # apt_install PACKAGE... : only as root, only where apt-get exists, quietly.
    [ "$(id -u)" = 0 ] && have apt-get || return 0
    if [ ! -f /tmp/.tlog-apt-updated ]; then
        apt-get update -qq >/dev/null 2>&1 && touch /tmp/.tlog-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 \
        || echo "tools: could not install $* (tests that need it will skip)"
}

# --- tools added by each area below this line (keep each block self-contained) ---

# console (tests/console/test_browser.py): Debian's Chromium, driven by Playwright with
# executable_path=/usr/bin/chromium. Playwright's own browser download is never used.
have chromium || apt_install chromium

# witness interop (tests/interop): litewitness keeps its key in an ssh-agent. The Go
# witnesses themselves are built by the tests (go install at pinned versions, cached).
have ssh-agent || apt_install openssh-client

# PostgreSQL backend (harness/pg.py): Debian's server binaries (initdb, pg_ctl under
# /usr/lib/postgresql/<version>/bin). The tests start their own cluster on 127.0.0.1.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || have initdb || apt_install postgresql

# SCIM interop (tests/adapters/test_scimmy.py): a second SCIM server from another ecosystem,
# SCIMMY on Node.js; the test installs its npm packages (pinned) into ~/.cache/tlog-tests/npm.
{ have node && have npm; } || apt_install nodejs npm

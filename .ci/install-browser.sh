#!/usr/bin/env bash
# Installs the browser of the UI e2e test (tests/e2e/test_ui_browser.py): Debian's chromium and chromium-driver.
# Playwright's Python package comes from the project's dev extra (pinned there); `playwright install` is never run:
# it would download a browser build, which these machines cannot, and Debian's /usr/bin/chromium is what we drive.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
    echo "chromium already installed"
else
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
/usr/bin/chromium --headless --no-sandbox --disable-gpu --version 2>/dev/null || /usr/bin/chromium --version

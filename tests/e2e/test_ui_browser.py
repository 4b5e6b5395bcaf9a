"""The user's path through the UIs, in headless Chromium: start a round from the Prefect UI, find it in MLflow.

Debian's `chromium` (installed by .ci/install-browser.sh; never `playwright install`) driven by Playwright:

1. Prefect UI -> Deployments -> `evolution-round` -> Run -> Custom run: the typed form of `RoundParams`.
2. The form is opened pre-filled with the cheap test options (the UI's own `?parameters=` link), and the two
   required fields, Problems and Policy, are typed into their inputs; Submit creates the flow run.
3. The flow run page shows the run reach Completed (the stack's worker runs it; with the session's API-triggered
   round already finished, every cached stage is re-used, so this takes seconds of work).
4. MLflow UI -> the `rstar-evolve` experiment lists `round-1`; the run page of this flow run's round shows the
   Prefect flow run id among its tags.

Screenshots go to a temporary folder, or to docs/img/ when RSTAR_SAVE_SCREENSHOTS=1 (that is how the README's
pictures are made). Chromium is launched with the flags this closed network needs and a fresh profile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e import test_stack_shared as shared
from tests.e2e.test_stack_shared import ROOT, LiveStack

live_stack = shared.live_stack  # the session's stack (a fixture defined there, registered here)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = os.environ.get("RSTAR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("RSTAR_SAVE_SCREENSHOTS") == "1":
        folder = ROOT / "docs" / "img"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run .ci/install-browser.sh (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="rstar-chromium-")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        ctx.set_default_timeout(TIMEOUT_MS)
        try:
            yield ctx.new_page()
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_a_round_started_from_the_prefect_ui_form_completes_and_shows_up_in_mlflow(
    live_stack: LiveStack, page: Any, shots: Path
) -> None:
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    live_stack.deployed_round()  # the API-triggered round: this one then re-uses its cached stages
    params = live_stack.round_params()

    # 1. Find the deployment and open its custom-run form, as a user clicks through.
    page.goto(f"{live_stack.ui}/deployments", wait_until="networkidle")
    page.get_by_role("link", name="evolution-round").first.click()
    page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]+"))
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(re.compile(r"/run(\?|$)"))
    form_url = page.url.split("?", 1)[0]

    # 2. The form pre-filled with the cheap options (the UI's own ?parameters= link), the required fields typed.
    prefill = {k: v for k, v in params.items() if k not in ("problems", "policy")}
    page.goto(f"{form_url}?parameters={quote(quote(json.dumps({'params': prefill}), safe=''), safe='')}")
    shard_size = form_field(page, "Shard Size (Optional)")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while shard_size.input_value() != str(params["shard_size"]):  # the pre-filled values are rendered
        assert time.monotonic() < deadline, "the run form never showed the pre-filled parameters"
        time.sleep(0.2)
    form_field(page, "Problems").fill(params["problems"])
    form_field(page, "Policy").fill(params["policy"])
    page.screenshot(path=str(shots / "prefect-run-form.png"))
    dep_id = re.search(r"/deployments/deployment/([0-9a-f-]{36})", form_url).group(1)  # type: ignore[union-attr]
    before = {r["id"] for r in deployment_runs(live_stack, dep_id)}
    page.get_by_role("button", name="Submit", exact=True).click()

    # 3. The UI creates the flow run and returns to the deployment; the worker runs it to completion.
    new = wait_for_new_run(live_stack, dep_id, before)
    run_id = new["id"]
    assert new["auto_scheduled"] is False
    run = live_stack.wait_flow_run(run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{live_stack.logs()}"
    assert run["parameters"]["params"]["problems"] == params["problems"]
    sent = run["parameters"]["params"]
    assert {k: sent["search"][k] for k in params["search"]} == params["search"]  # the form adds the defaults
    assert sent["training"]["base_model"] == "tiny:0"
    assert run["name"] == "round-1"
    page.goto(f"{live_stack.ui}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.get_by_text("Completed").first.wait_for()
    page.screenshot(path=str(shots / "prefect-flow-run.png"))

    # 4. MLflow: the experiment lists the round, and this flow run's round run carries its Prefect id.
    client = MlflowClient(tracking_uri=live_stack.mlflow)
    exp = client.get_experiment_by_name("rstar-evolve")
    assert exp is not None
    mine = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{run_id}' and attributes.run_name = 'round-1'",
    )
    assert len(mine) == 1
    page.goto(f"{live_stack.mlflow}/#/experiments")  # the MLflow UI keeps polling: wait for elements, not the network
    page.get_by_text("Model training", exact=True).first.click()  # MLflow 3 opens in its GenAI view
    page.get_by_role("link", name="rstar-evolve").first.click()
    page.get_by_text("round-1").first.wait_for()
    page.screenshot(path=str(shots / "mlflow-experiment.png"))
    page.goto(f"{live_stack.mlflow}/#/experiments/{exp.experiment_id}/runs/{mine[0].info.run_id}")
    page.get_by_text(run_id).first.wait_for()
    assert "round-1" in page.content()
    page.screenshot(path=str(shots / "mlflow-round-run.png"))
    for name in ("prefect-run-form", "prefect-flow-run", "mlflow-experiment", "mlflow-round-run"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
    live_stack.timings["ui_test_s"] = time.monotonic() - t0


def form_field(page: Any, label: str) -> Any:
    """The input of a schema-form property by its label (the UI's labels are not linked to their inputs by id)."""
    prop = (
        f'xpath=//span[contains(@class, "schema-form-property__label") and normalize-space()="{label}"]'
        '/ancestor::*[contains(concat(" ", normalize-space(@class), " "), " p-label ")][1]'
    )
    return page.locator(prop).locator("textarea, input").first


def deployment_runs(live: LiveStack, deployment_id: str) -> list[dict[str, Any]]:
    return list(live.request("POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}))


def wait_for_new_run(live: LiveStack, deployment_id: str, before: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [r for r in deployment_runs(live, deployment_id) if r["id"] not in before]
        if new:
            assert len(new) == 1, new
            return new[0]
        time.sleep(0.5)
    raise AssertionError("submitting the form created no flow run")

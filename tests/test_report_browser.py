"""The trainer's report.html opened in a real browser: headless Chromium driven through
chromedriver (selenium). `make test` installs Debian's chromium and chromium-driver first
(`make browser`); without them this test fails, it does not skip, so a run that could not
look at the page never passes for one that did."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest
from conftest import fake_commands
from PIL import Image
from train_helpers import tiny_config

from scops_fast.train import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: What Chromium needs here: no sandbox (root in a container), no GPU, and nothing that
#: reaches out to the network (updates, sync, QUIC, first-run pages) from a test.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

IMAGES_JS = """
return Array.from(document.images).map(img => ({
    src: img.getAttribute("src"),
    complete: img.complete,
    width: img.naturalWidth,
    height: img.naturalHeight,
    shown: img.getBoundingClientRect().width,
}));
"""


#: The names Chromium and Chrome go by (Debian: chromium; Fedora: chromium-browser; Google's
#: packages: google-chrome); the Makefile's BROWSER_NAMES.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser_paths() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = shutil.which("chromedriver")
    missing = [n for n, path in (("Chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not on the PATH (looked for {', '.join(BROWSERS)}): "
            "`make browser` installs them (apt-get or dnf); `make test` runs it first"
        )
    return browser, driver


@pytest.fixture
def browser(tmp_path, monkeypatch):
    chromium, chromedriver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    # Both paths are given, so Selenium Manager has nothing to look up; offline in case.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of a two-step run on SyntheticParts, evaluated (so it has its tables)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny_config(
        steps=2,
        report=True,
        **{
            "data.dataset": "synthetic",
            "data.args": {"n": 4, "seed": 0},
            "evaluation.enabled": True,
            "evaluation.train_dataset": "synthetic",
            "evaluation.train_args": {"n": 6, "seed": 1},
            "evaluation.test_dataset": "synthetic",
            "evaluation.test_args": {"n": 4, "seed": 2},
        },
    )
    Trainer(cfg, out, progress=False, tensorboard=False).train()
    return out / "report.html"


def test_report_renders_with_every_picture(browser, report):
    browser.get(report.as_uri())
    assert browser.title == "SCOPS run: tiny"
    heading = browser.find_element("tag name", "h1")
    assert heading.text == "SCOPS run: tiny" and heading.is_displayed()
    sections = [h.text for h in browser.find_elements("tag name", "h2")]
    assert "Criteria against the k-means baseline" in sections
    assert any(s.startswith("Parts found") for s in sections), sections
    images = browser.execute_script(IMAGES_JS)
    assert sorted(img["src"] for img in images) == ["curves.png", "parts.png"]
    for img in images:
        assert img["complete"] and img["width"] > 0, img
        assert img["shown"] > 0, img
        # The browser decoded the very file the report names, at its size.
        with Image.open(report.parent / img["src"]) as picture:
            assert (img["width"], img["height"]) == picture.size


def test_a_missing_picture_is_seen(browser, report, tmp_path):
    # The same check on a copy of the report whose curves.png is gone: the browser
    # reports it unloaded, so the test above would catch a broken picture.
    copy = tmp_path / "copy"
    shutil.copytree(report.parent, copy)
    (copy / "curves.png").unlink()
    browser.get((copy / "report.html").as_uri())
    images = {img["src"]: img for img in browser.execute_script(IMAGES_JS)}
    assert images["parts.png"]["width"] > 0
    assert images["curves.png"]["width"] == 0


def make_browser(tmp_path, *tools: str):
    """`make browser` with a PATH of `sh`, `make` and fake executables named `tools`."""
    env = fake_commands(tmp_path / "bin", **dict.fromkeys(tools, "exit 0"))
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "browser"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )


def test_make_browser_leaves_a_browser_found_under_another_name_alone(tmp_path):
    done = make_browser(tmp_path, "google-chrome", "chromedriver", "apt-get")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_make_browser_without_a_package_manager_says_what_to_install(tmp_path):
    done = make_browser(tmp_path, "chromium-browser")  # no chromedriver, no apt-get or dnf
    assert done.returncode != 0
    assert "found no apt-get or dnf" in done.stderr and "chromedriver" in done.stderr

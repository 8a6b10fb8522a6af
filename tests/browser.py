"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by selenium through the
system ``chromedriver`` (``make test`` installs both; the tests skip, saying so, where they are absent).

Screenshots: every browser test saves one in its tmp folder; ``pytest --screenshots docs/images``
also writes the README's copies there (PNG, palette-compressed to stay small).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
README_SCREENSHOT_MAX_BYTES = 150_000

_missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
requires_chromium = pytest.mark.skipif(
    bool(_missing),
    reason=f"browser test: {', '.join(_missing)} not installed (apt-get install chromium chromium-driver; make test does it)",
)


def start_chromium(width: int = 1280, height: int = 900):
    """A headless Chromium with a fresh profile (removed when the driver quits)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    quit_driver = driver.quit

    def quit_and_clean() -> None:
        try:
            quit_driver()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


def save_screenshots(driver, tmp_path: Path, name: str, readme_dir: Path | None) -> Path:
    """Saves the window to ``tmp_path/<name>``, and a small copy to ``readme_dir/<name>`` when asked."""
    png = driver.get_screenshot_as_png()
    path = tmp_path / name
    path.write_bytes(png)
    if readme_dir is not None:
        from PIL import Image

        image = Image.open(io.BytesIO(png)).convert("RGB")
        for width in (image.width, 1100, 900, 700):
            small = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
            if buf.tell() < README_SCREENSHOT_MAX_BYTES:
                break
        assert buf.tell() < README_SCREENSHOT_MAX_BYTES, f"{name}: {buf.tell()} bytes even at {width} px wide"
        readme_dir.mkdir(parents=True, exist_ok=True)
        (readme_dir / name).write_bytes(buf.getvalue())
    return path


def non_background_pixels(driver, canvas_id: str, background: tuple[int, int, int]) -> int:
    """Pixels of a 2D canvas that differ from its background colour (read in the page)."""
    return driver.execute_script(
        """
        const c = document.getElementById(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i] !== arguments[1] || d[i + 1] !== arguments[2] || d[i + 2] !== arguments[3]) n++;
        }
        return n;
        """,
        canvas_id,
        *background,
    )

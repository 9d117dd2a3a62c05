"""Take the README's picture of the chat page: serve a run, ask it questions in headless
Chromium (Debian's chromium and chromium-driver, through Selenium), save a PNG.

Usage: python scripts/chat_page_screenshot.py RUN OUT.png [QUESTION ...]
           [--temperature T] [--size 1000x700]

docs/images/chat-page.png is the fine-tuned run of docs/finetune.md's demonstration
(`runs/plays`) answering its questions at temperature 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tinygpt.serve import create_app, start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("questions", nargs="*", default=["Who is Romeo?", "Who is Hamlet?"])
    p.add_argument("--temperature", default="0")
    p.add_argument("--size", default="1000x700")
    args = p.parse_args(argv)
    os.environ.setdefault("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    width, height = args.size.split("x")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--window-size={width},{height}",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        options.add_argument(flag)
    with start(create_app(args.run, max_batch=4)) as server:
        driver = webdriver.Chrome(
            service=Service(executable_path="/usr/bin/chromedriver"), options=options
        )
        try:
            wait = WebDriverWait(driver, 30, poll_frequency=0.05)
            driver.get(server.url + "/")
            wait.until(lambda d: "parameters" in d.find_element(By.ID, "model-meta").text)
            driver.find_element(By.ID, "settings-toggle").click()
            box = driver.find_element(By.ID, "temperature")
            box.clear()
            box.send_keys(args.temperature)
            driver.find_element(By.ID, "settings-toggle").click()
            for question in args.questions:
                driver.find_element(By.ID, "input").send_keys(question)
                driver.find_element(By.ID, "send").click()
                time.sleep(0.2)
                wait.until(lambda d: d.find_element(By.ID, "send").is_enabled())
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

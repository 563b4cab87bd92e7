"""The built book in a real browser: headless Chromium opens every page of ``_build/html`` from
disk, with the network cut off, and reports what a reader would see broken.

On every page it fails on:

- an image that does not load (``<img>`` with no pixels, or a failed image request);
- a link into the book whose file is missing, or whose ``#anchor`` names no element of its page;
- a JavaScript error (an uncaught exception, or an error in the console);
- raw LaTeX left visible after MathJax has run (``\\(``, ``$$``, ``\\lambda`` ... outside code);
- a code cell wider than the text column (at a 1280-pixel-wide window);
- a request that tries to leave the book (the book must work offline);
- on a chapter page (``NN-*.html``), a missing Colab launch link.

It keeps a screenshot of the top of each page (and, on chapter pages, of the first figure) in
``_build/screenshots``. Run it with ``python -m gdlab.book.browser [_build/html]`` (exit 1 on a
problem, 0 when every page is clean; where Chromium or Playwright is missing it says so and exits 0,
or 3 with ``--require``). The driver is Playwright
with Debian's Chromium (``/usr/bin/chromium``; no browser download).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["CHROMIUM_FLAGS", "RAW_LATEX", "REDIRECT", "CHAPTER_PAGE", "PageReport", "find_chromium", "html_pages", "check_site", "main"]

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
# TeX that MathJax should have replaced: delimiters, or a control word such as \lambda or \frac
RAW_LATEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:[a-zA-Z]{2,})\b|\$[^$\s][^$]*[\\^_{}][^$]*\$")
REDIRECT = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.IGNORECASE)
CHAPTER_PAGE = re.compile(r"^\d\d-.*\.html$")
SKIP_DIRS = ("_static", "_sources", "_images", "_sphinx_design_static", "_panels_static", "screenshots")

# Runs in the page: the visible text outside code and math, the links, the ids, broken images.
PAGE_SCRIPT = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) {}
  }
  if (document.fonts && document.fonts.ready) { await document.fonts.ready; }
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, noscript, mjx-container, mjx-assistive-mml, .sig, '
                        + '.highlight, .MathJax, .MathJax_Preview, [hidden], .visually-hidden, '
                        + 'template, .cell_output .output.text_plain, .output.stream')
      .forEach(e => e.remove());
  const text = body.textContent;
  const navTitles = Array.from(document.querySelectorAll('nav a, .prev-next-area a, .toc-entry a'))
      .filter(a => !a.querySelector('mjx-container')).map(a => a.textContent);
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id)
      .concat(Array.from(document.querySelectorAll('a[name]')).map(e => e.getAttribute('name')));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
  const images = Array.from(document.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  const colab = Array.from(document.querySelectorAll('a[href]'))
      .some(a => a.href.includes('colab.research.google.com'));
  const figure = !!document.querySelector('figure, div.figure');
  const wide = Array.from(document.querySelectorAll('div.cell_input pre'))
      .filter(p => p.scrollWidth > p.clientWidth + 2)
      .map(p => Math.max(...p.textContent.split('\\n').map(l => l.length)));
  return {text, navTitles, ids, links, images, colab, figure, wide, title: document.title};
}
"""


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM``, else Debian's ``chromium`` (or ``chromium-browser``,
    or a Google Chrome as on GitHub's runners) on the PATH."""
    for cand in (os.environ.get("CHROMIUM"), "chromium", "/usr/bin/chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if cand and (shutil.which(cand) or (os.path.isfile(cand) and os.access(cand, os.X_OK))):
            return shutil.which(cand) or cand
    return None


def html_pages(html: Path) -> list[Path]:
    """Every HTML page of the built book (not the copied sources and static files)."""
    return sorted(p for p in html.rglob("*.html")
                  if not any(part in SKIP_DIRS for part in p.relative_to(html).parts))


TEX_SPANS = re.compile(r"\\\((.{0,200}?)\\\)|\\\[(.{0,400}?)\\\]|\$\$(.{0,400}?)\$\$", re.DOTALL)


def _raw_latex(text: str, limit: int = 5) -> list[str]:
    """The distinct pieces of TeX left in ``text`` (whole ``\\(...\\)`` spans where there are
    delimiters, else a little context around a control word), at most ``limit`` and a count."""
    found = list(dict.fromkeys(" ".join(m.group(0).split()) for m in TEX_SPANS.finditer(text)))
    rest = TEX_SPANS.sub(" ", text)
    for m in RAW_LATEX.finditer(rest):
        found.append(" ".join(rest[max(0, m.start() - 25):m.end() + 25].split()))
    found = list(dict.fromkeys(found))
    return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


def _check_links(html: Path, reports: dict[str, PageReport]) -> None:
    """Every link into the book: its file exists, and its anchor is an id of the target page."""
    for name, rep in reports.items():
        page = html / name
        for href in rep.links:
            parts = urlsplit(href)
            if parts.scheme in ("http", "https", "mailto", "tel", "javascript", "data") or parts.netloc:
                continue
            if parts.scheme == "file":
                target = Path(unquote(parts.path))
            elif parts.path:
                target = (page.parent / unquote(parts.path)).resolve()
            else:
                target = page.resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                rep.problems.append(f"broken link: {href} (no file {target.relative_to(html.resolve()) if target.is_relative_to(html.resolve()) else target})")
                continue
            anchor = unquote(parts.fragment)
            if anchor and target.suffix == ".html":
                try:
                    key = str(target.relative_to(html.resolve()))
                except ValueError:
                    continue
                ids = reports[key].ids if key in reports else None
                if ids is not None and anchor not in ids:
                    rep.problems.append(f"broken anchor: {href} (no id {anchor!r} in {key})")


def check_site(html: Path, screenshots: Path | None = None, pages: list[Path] | None = None,
               executable: str | None = None, timeout_ms: int = 60000) -> dict[str, PageReport]:
    """Open every page in headless Chromium; return a report per page (``report.problems`` empty
    when the page is clean). Needs ``playwright`` and a Chromium executable."""
    from playwright.sync_api import sync_playwright

    html = html.resolve()
    executable = executable or find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium executable (install Debian's chromium, or set CHROMIUM)")
    pages = pages if pages is not None else html_pages(html)
    if screenshots is not None:
        shutil.rmtree(screenshots, ignore_errors=True)
        screenshots.mkdir(parents=True)
    reports: dict[str, PageReport] = {}
    with tempfile.TemporaryDirectory(prefix="gdlab-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, device_scale_factor=1, offline=True)
        root_prefix = html.as_uri()
        for path in pages:
            name = str(path.relative_to(html))
            rep = reports[name] = PageReport(name)
            refresh = REDIRECT.search(path.read_text(errors="replace"))
            if refresh:  # a redirect page (index.html -> the root page): check its target only
                rep.links = [refresh.group(1)]
                continue
            page = context.new_page()
            blocked: list[str] = []
            errors: list[str] = []

            def route(r, request=None, blocked=blocked):
                url = r.request.url
                if url.startswith(("file:", "data:", "blob:", "about:")):
                    return r.continue_()
                blocked.append(url)
                return r.abort()

            page.route("**/*", route)
            page.on("pageerror", lambda e, errors=errors: errors.append(f"uncaught: {e}"))
            page.on("console", lambda m, errors=errors: errors.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            failed: list[str] = []
            page.on("requestfailed", lambda r, failed=failed: failed.append(r.url)
                    if r.url.startswith("file:") else None)
            try:
                page.goto(path.as_uri(), wait_until="load", timeout=timeout_ms)
                info = page.evaluate(PAGE_SCRIPT)
            except Exception as e:  # a page that does not load at all
                rep.problems.append(f"page did not load: {type(e).__name__}: {str(e)[:300]}")
                page.close()
                continue
            rep.ids = set(info["ids"])
            rep.links = info["links"]
            for img in info["images"]:
                if not img["ok"]:
                    rep.problems.append(f"missing image: {img['src']}")
            for url in failed:  # a stylesheet, a script, a font (a missing <img> is reported above)
                short = url.removeprefix(root_prefix + "/")
                if not any(Path(unquote(short)).name in p for p in rep.problems):
                    rep.problems.append(f"failed to load: {short}")
            for url in dict.fromkeys(blocked):
                rep.problems.append(f"request to the network (the book must work offline): {url}")
            # a failed or blocked request also shows as a console error: reported once, above
            rep.problems += [e for e in dict.fromkeys(errors) if "Failed to load resource" not in e]
            nav = " ".join(t for t in info["navTitles"] if RAW_LATEX.search(t))
            for snippet in _raw_latex(info["text"] + " " + nav):
                rep.problems.append(f"raw LaTeX visible: {snippet}")
            for longest in info["wide"]:
                rep.problems.append(f"code cell wider than the page (its longest line has {longest} characters)")
            if CHAPTER_PAGE.match(path.name) and not info["colab"]:
                rep.problems.append("chapter page without a Colab launch link")
            if screenshots is not None:
                shot = screenshots / (name.replace("/", "__").removesuffix(".html") + ".png")
                page.screenshot(path=str(shot))
                rep.screenshots.append(str(shot))
                if CHAPTER_PAGE.match(path.name) and info["figure"]:
                    fig = page.locator("figure, div.figure").first
                    fig.scroll_into_view_if_needed()
                    shot2 = shot.with_name(shot.stem + "-figure.png")
                    page.screenshot(path=str(shot2))
                    rep.screenshots.append(str(shot2))
            page.close()
        context.close()
    _check_links(html, reports)
    return reports


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gdlab.book.browser", description=__doc__.split("\n\n")[0])
    parser.add_argument("html", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--screenshots", default=None, type=Path,
                        help="folder for the screenshots (default: _build/screenshots beside the html folder)")
    parser.add_argument("--require", action="store_true",
                        help="exit 3 instead of skipping when Chromium or Playwright is missing")
    args = parser.parse_args(argv)
    skip = 3 if args.require else 0
    if find_chromium() is None:
        print("browser check SKIPPED: no Chromium found (apt-get install chromium, or set CHROMIUM=/path)")
        return skip
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("browser check SKIPPED: playwright is not installed (pip install playwright; no browser download)")
        return skip
    if not (args.html / "index.html").exists():
        print(f"browser check: no book at {args.html} (build it first: gdlab book)")
        return 1
    shots = args.screenshots or args.html.parent / "screenshots"
    reports = check_site(args.html, shots)
    bad = {k: r for k, r in reports.items() if r.problems}
    for name, rep in bad.items():
        print(f"{name}:")
        for p in rep.problems:
            print(f"  {p}")
    print(f"browser check: {len(reports)} pages, {len(bad)} with problems; screenshots in {shots}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

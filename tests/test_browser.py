"""The real-browser check (gdlab.book.browser): headless Chromium on a hand-made site with one
problem of each kind, and on the built toy book, which must pass. Skipped, with the reason, where
Chromium or Playwright is absent (`make browser` installs Chromium with apt where it can)."""
import shutil
from pathlib import Path

import pytest

from gdlab.book import browser

TOY = Path(__file__).parent / "fixtures" / "toybook"

try:
    import playwright  # noqa: F401
    HAVE_PLAYWRIGHT = True
except ImportError:
    HAVE_PLAYWRIGHT = False

pytestmark = [
    pytest.mark.skipif(browser.find_chromium() is None,
                       reason="no Chromium: apt-get install chromium (or set CHROMIUM) to run the browser check"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright is not installed (pip install playwright)"),
]

CLEAN = """<!DOCTYPE html><html><head><title>{title}</title></head><body>
<h1 id="top">{title}</h1><p>Plain text, math already typeset, code: <code>\\(x\\)</code></p>
<a href="b.html#there">to b</a> <a href="#top">top</a> <a href="https://example.org/">web</a>
<a href="https://colab.research.google.com/github/x/y/blob/main/notebooks/01-ok.ipynb">Colab</a>
<img src="pixel.png" alt="a pixel"></body></html>"""

BAD = """<!DOCTYPE html><html><head><title>bad</title>
<script>window.addEventListener('load', () => {{ throw new Error('boom'); }});</script>
<script>console.error('something broke');</script>
<script>fetch('https://example.org/data.json').catch(() => {{}});</script>
</head><body><h1>A chapter</h1>
<p>Raw TeX: \\(\\eta\\lambda_{{\\max}} > 2\\)</p>
<img src="missing.png" alt="gone">
<a href="c.html">missing page</a> <a href="b.html#nowhere">missing anchor</a>
<div class="cell" style="width: 300px"><div class="cell_input"><div class="highlight"><pre>{long}</pre></div></div>
<div class="cell_output"><div class="highlight"><pre>{long} (an output may be wide)</pre></div></div></div>
</body></html>"""

PIXEL = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                      "1f15c4890000000d49444154789c6360f8cfc000000301010018dd8db00000000049454e44ae426082")


def make_site(root: Path) -> Path:
    root.mkdir()
    (root / "pixel.png").write_bytes(PIXEL)
    (root / "01-ok.html").write_text(CLEAN.format(title="ok"))
    (root / "b.html").write_text('<html><body><p id="there">b</p>'
                                 '<a href="01-ok.html#top">back</a></body></html>')
    (root / "02-bad.html").write_text(BAD.format(long="x = 1  # " + "y" * 120))
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=01-ok.html" />')
    return root


def test_each_kind_of_problem_is_caught_and_a_clean_page_passes(tmp_path):
    site = make_site(tmp_path / "html")
    reports = browser.check_site(site, tmp_path / "shots")
    assert reports["01-ok.html"].problems == []
    assert reports["b.html"].problems == [] and reports["index.html"].problems == []
    bad = "\n".join(reports["02-bad.html"].problems)
    for expected in ("missing image: missing.png", "broken link: c.html", "broken anchor: b.html#nowhere",
                     "uncaught: boom", "console error: something broke",
                     "request to the network (the book must work offline): https://example.org/data.json",
                     "raw LaTeX visible: \\(\\eta\\lambda_{\\max} > 2\\)",
                     "chapter page without a Colab launch link",
                     "code cell wider than the page (its longest line has 129 characters)"):
        assert expected in bad, (expected, bad)
    assert len(reports["02-bad.html"].problems) == 9, bad  # each reported once
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == ["01-ok.png", "02-bad.png", "b.png"]


def test_the_command_skips_with_a_message_without_chromium(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    assert browser.main([str(tmp_path)]) == 0
    assert "SKIPPED: no Chromium" in capsys.readouterr().out
    assert browser.main([str(tmp_path), "--require"]) == 3


@pytest.mark.slow
def test_the_built_toy_book_passes_the_browser_check(tmp_path):
    from gdlab import book

    root = tmp_path / "toybook"
    shutil.copytree(TOY, root)
    assert book.main(["book", "--root", str(root)]) == 0
    html = root / "_build" / "html"
    assert not (html / "output.txt").exists() and (root / "_build" / "linkcheck" / "output.txt").exists()
    reports = browser.check_site(html, root / "_build" / "screenshots")
    problems = {k: r.problems for k, r in reports.items() if r.problems}
    assert not problems, problems
    page = (html / "01-toy.html").read_text()
    assert 'id="fig-toy-hist"' in page and "Fig. 1" in page  # the captioned, numbered figure
    assert 'style="width: ' in page.split('id="fig-toy-hist"')[1][:2000]  # retina PNG shown at half size
    assert "_static/mathjax/tex-chtml.js" in page and (html / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert (root / "_build" / "screenshots" / "01-toy-figure.png").exists()
    assert "Belkin" in (html / "bibliography.html").read_text()
    import re
    text = " ".join(re.sub(r"<[^>]+>", "", page).split())
    assert "It cites Belkin et al. (2019)" in text  # author-year citations in round brackets

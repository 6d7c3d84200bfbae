"""Self-contained pages: escaping, embedded images, and the Markdown that catsdogs writes."""

from __future__ import annotations

from catsdogs.inference.webpage import POLICY, Raw, image, markdown_to_html, page, table


def test_text_is_escaped_and_the_page_may_fetch_nothing() -> None:
    html = page("a <b> & c", [table(["name"], [["<script>alert(1)</script>"]]), Raw("<p>kept</p>")])
    assert "<title>a &lt;b&gt; &amp; c</title>" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert f'content="{POLICY}"' in html and "default-src 'none'" in POLICY and "<p>kept</p>" in html


def test_images_are_embedded_as_data_uris() -> None:
    assert image(b"\x89PNG", "a plot", "its caption") == ('<figure><img src="data:image/png;base64,iVBORw==" '
                                                          'alt="a plot"><figcaption>its caption</figcaption></figure>')


def test_the_markdown_of_report_md_becomes_html() -> None:
    text = ("# Study\n\n**Ranking:** adam > sgd, with `--seeds 3`.\nSecond line.\n\n- one [run](runs/a)\n- two\n\n"
            "| optimizer | accuracy |\n|---|---:|\n| adam | 90.0% |\n\n![Curves](curves.png)\n\n![Other](gone.png)\n")
    html = "\n".join(markdown_to_html(text, {"curves.png": b"png"}))
    assert "<h1>Study</h1>" in html
    assert "<p><strong>Ranking:</strong> adam &gt; sgd, with <code>--seeds 3</code>. Second line.</p>" in html
    assert '<ul><li>one <a href="runs/a">run</a></li><li>two</li></ul>' in html
    assert ('<table><thead><tr><th>optimizer</th><th class="num">accuracy</th></tr></thead><tbody><tr><td>adam</td>'
            '<td class="num">90.0%</td></tr></tbody></table>') in html
    assert '<img src="data:image/png;base64,cG5n" alt="Curves">' in html
    assert "Other: gone.png is missing." in html and 'src="gone.png"' not in html

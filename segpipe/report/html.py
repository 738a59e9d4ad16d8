"""The HTML of the report: a static page that opens from disk (no server, no network), its images beside it.

Every string that comes from the user or the data (data set, case, channel and class names, notes, paths, the
planner's reasons) goes through :func:`esc`. The page carries two small inline scripts and nothing external:
one sorts a table by the column whose header is clicked (``<table class="sortable">``), the other records
script errors and images that failed to load into attributes of ``<body>`` (``data-errors``,
``data-images``, ``data-images-loaded``, ``data-error-list``), so a headless browser can check the page
(opened as ``index.html#check-sorting`` it also sorts every sortable table both ways by its first column and
counts the tables left out of order in ``data-sort-errors``).
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def esc(value: object) -> str:
    """``value`` as HTML text (``&``, ``<``, ``>``, and both quotes escaped)."""
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """A value for the page, as text (not yet escaped): floats with ``digits`` decimals (one at or above 100,
    none at or above 1000), missing values as an em dash, lists (spacings, shapes) as ``a × b × c`` with up to
    4 significant digits."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "\u2014"
        return f"{value:.{0 if abs(value) >= 1000 else 1 if abs(value) >= 100 else digits}f}"
    if isinstance(value, (list, tuple)):
        return " \u00d7 ".join(_compact(v) for v in value) if value else "\u2014"
    return str(value)


def _compact(value: object) -> str:
    """A list element: integers as they are, other numbers with 4 significant digits."""
    if isinstance(value, float) and math.isfinite(value):
        if value.is_integer() and abs(value) < 1e7:
            return str(int(value))
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return fmt(value)


@dataclass
class Cell:
    """A table cell: ``text`` (escaped when rendered) and the value it sorts by (numbers sort as numbers;
    None sorts last)."""

    text: str
    sort: float | str | None = None
    raw_html: bool = False  # ``text`` is already HTML (made by this module from escaped parts)


def cell(value: object, digits: int = 4) -> Cell:
    """A cell showing ``value`` formatted by :func:`fmt` that sorts by the value itself."""
    if isinstance(value, bool) or value is None:
        return Cell(fmt(value, digits), None if value is None else int(value))
    if isinstance(value, (int, float)):
        return Cell(fmt(value, digits), float(value) if math.isfinite(value) else None)
    return Cell(fmt(value, digits), str(value))


def table(header: Sequence[str], rows: Iterable[Sequence[object]], sortable: bool = False, cls: str = "",
          caption: str | None = None) -> str:
    """An HTML table; cells are :class:`Cell` or plain values (formatted by :func:`cell`). With ``sortable``,
    clicking a header sorts by that column (numbers numerically, missing values last)."""
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    out = [f'<table class="{classes}">' if classes else "<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(
        f'<th title="click to sort">{esc(h)}</th>' if sortable else f"<th>{esc(h)}</th>" for h in header)
        + "</tr></thead><tbody>")
    for row in rows:
        tds = []
        for v in row:
            c = v if isinstance(v, Cell) else cell(v)
            text = c.text if c.raw_html else esc(c.text)
            if sortable:
                key = "" if c.sort is None else c.sort
                tds.append(f'<td data-v="{esc(key)}">{text}</td>')
            else:
                tds.append(f"<td>{text}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def definition_list(items: Iterable[tuple[str, object]]) -> str:
    """``<dl>`` of (term, value) pairs; both escaped (values formatted by :func:`fmt`)."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(fmt(v))}</dd>" for k, v in items) + "</dl>"


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def warning(text: str) -> str:
    """A highlighted warning line."""
    return f'<p class="warning">\u26a0 {esc(text)}</p>'


def figure(src: str, alt: str, caption: str | None = None, width: int | None = None) -> str:
    """An image beside the page (``src`` relative to index.html, made by the report from safe characters)."""
    w = f' width="{int(width)}"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}"{w}>{cap}</figure>'


@dataclass
class Section:
    """One section of the page: an anchor ``key`` (letters, digits and ``-``), a title, and its HTML body
    (built from escaped parts)."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)

    def add(self, *parts: str) -> Section:
        self.body.extend(parts)
        return self

    def subsection(self, title: str) -> Section:
        self.body.append(f"<h3>{esc(title)}</h3>")
        return self

    def render(self) -> str:
        return f'<section id="{esc(self.key)}"><h2>{esc(self.title)}</h2>{"".join(self.body)}</section>'


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2433;
background:#f4f6f9;line-height:1.45}
header{background:#1d2f4f;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:26px}
header p{margin:2px 0;color:#cfd8e8;font-size:14px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #d5dbe5;padding:8px 32px;z-index:2}
nav a{margin-right:18px;color:#1d4f91;text-decoration:none;font-weight:600;font-size:14px}
main{padding:8px 32px 40px 32px;max-width:1400px}
section{background:#fff;border:1px solid #d5dbe5;border-radius:8px;padding:12px 22px 18px 22px;margin:18px 0}
h2{margin:6px 0 10px 0;font-size:21px;color:#1d2f4f}
h3{margin:18px 0 6px 0;font-size:16px;color:#2b3e63}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d5dbe5;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#eef2f8}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#8a96aa}
table.sortable th.asc:after{content:" \\2191";color:#1d2f4f}
table.sortable th.desc:after{content:" \\2193";color:#1d2f4f}
tr.chosen td{background:#e4f3e4;font-weight:600}
.scroll{max-height:420px;overflow:auto;display:inline-block;border:1px solid #d5dbe5}
.scroll table{margin:0}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:14px;margin:6px 0}
dt{font-weight:600;color:#2b3e63}
dd{margin:0}
figure{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #d5dbe5}
figcaption{font-size:13px;color:#4a5670;max-width:640px}
.cases figure{width:360px}
.cases figcaption{max-width:360px}
.warning{background:#fff4d6;border-left:4px solid #e0a100;padding:6px 10px}
.note{color:#4a5670;font-size:13px}
.why td:first-child{font-weight:600;white-space:nowrap}
.big{font-size:18px}
"""

# Records script errors, console errors and images that did not load into attributes of <body> (read by the
# browser test with --dump-dom); registered first, in the capture phase, so it also sees failed resources.
CHECK_SCRIPT = """
window.reportErrors=[];
window.addEventListener('error',function(e){var t=e.target;
 window.reportErrors.push(t&&t.tagName?'failed to load '+t.tagName.toLowerCase()+' '+(t.getAttribute('src')||''):
 String(e.message));},true);
window.addEventListener('unhandledrejection',function(e){window.reportErrors.push('rejection: '+e.reason);});
(function(){var ce=console.error;console.error=function(){
 window.reportErrors.push(Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};})();
function checkSorting(){var n=0,bad=0;
 Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(t){
  var th=t.tHead.rows[0].cells[0];
  [1,-1].forEach(function(dir){th.click();var keys=Array.prototype.map.call(t.tBodies[0].rows,function(r){
    return window.reportSortKey(r.cells[0]);}).filter(function(k){return k!==null;});
   for(var i=1;i<keys.length;i++){var a=keys[i-1],b=keys[i];
    var c=(typeof a==='number'&&typeof b==='number')?a-b:String(a).localeCompare(String(b));
    if(c*dir>0){bad++;window.reportErrors.push('table not sorted: '+th.textContent);break;}}});n++;});
 document.body.setAttribute('data-sorted-tables',String(n));document.body.setAttribute('data-sort-errors',String(bad));}
window.addEventListener('load',function(){if(location.hash==='#check-sorting'){checkSorting();}
 var imgs=document.images,ok=0;
 for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}
  else{window.reportErrors.push('image not loaded: '+imgs[i].getAttribute('src'));}}
 var b=document.body;b.setAttribute('data-images',String(imgs.length));
 b.setAttribute('data-images-loaded',String(ok));b.setAttribute('data-errors',String(window.reportErrors.length));
 b.setAttribute('data-error-list',window.reportErrors.join(' | '));b.setAttribute('data-checked','1');});
"""

SORT_SCRIPT = """
(function(){function key(td){var v=td.getAttribute('data-v');if(v===null){v=td.textContent;}
 if(v===''){return null;}var n=Number(v);return isNaN(n)?v.toLowerCase():n;}
function sortBy(th){var table=th.closest('table'),body=table.tBodies[0],
 col=Array.prototype.indexOf.call(th.parentNode.children,th),asc=!th.classList.contains('asc');
 var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
  if(x===null&&y===null){return 0;}if(x===null){return 1;}if(y===null){return -1;}
  var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));return asc?c:-c;});
 rows.forEach(function(r){body.appendChild(r);});
 Array.prototype.forEach.call(th.parentNode.children,function(h){h.classList.remove('asc','desc');});
 th.classList.add(asc?'asc':'desc');}
Array.prototype.forEach.call(document.querySelectorAll('table.sortable th'),function(th){
 th.addEventListener('click',function(){sortBy(th);});});window.reportSortKey=key;})();
"""


def page(title: str, subtitle_lines: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole page: header, a navigation bar with a link to each section, the sections, the scripts."""
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections)
    sub = "".join(f"<p>{esc(line)}</p>" for line in subtitle_lines)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><script>{CHECK_SCRIPT}</script><style>{STYLE}</style></head>"
            f"<body><header><h1>{esc(title)}</h1>{sub}</header><nav>{nav}</nav><main>"
            + "".join(s.render() for s in sections)
            + f"</main><script>{SORT_SCRIPT}</script></body></html>\n")

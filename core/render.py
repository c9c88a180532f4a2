"""Content bodies as they leave BizOSaaS: Markdown rendered (CommonMark, markdown-it-py), then any
HTML sanitised (nh3, the Rust ``ammonia`` sanitiser) to the tags and attributes a blog post needs.

Scripts, event handlers, ``javascript:`` links, iframes and styles never reach a tenant's site;
links get ``rel="noopener noreferrer"``.
"""

from __future__ import annotations

from functools import cache

import nh3
from markdown_it import MarkdownIt

from models.content import BodyFormat, ContentFields

_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div",
        "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
        "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "small", "span",
        "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
    }
)  # fmt: skip
_ATTRIBUTES = {
    "*": {"class", "id", "title", "lang"},
    "a": {"href", "name", "target"},
    "img": {"src", "alt", "width", "height", "loading"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start"},
}


@cache
def _markdown() -> MarkdownIt:
    # CommonMark with tables and strikethrough; raw HTML inside Markdown is allowed here and
    # sanitised below with everything else.
    return MarkdownIt("commonmark").enable(["table", "strikethrough"])


def sanitise(html: str) -> str:
    """HTML with only the allowed tags and attributes (http, https and mailto links)."""
    return nh3.clean(
        html,
        tags=set(_TAGS),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


def body_html(fields: ContentFields) -> str:
    """The item's body as the HTML published: rendered if Markdown, sanitised either way."""
    body = fields.body
    if fields.body_format is BodyFormat.MARKDOWN:
        body = _markdown().render(body)
    return sanitise(body)


def plain_text(text: str) -> str:
    """Text fields (title, excerpt) with any markup removed."""
    return nh3.clean(text, tags=set(), strip_comments=True).strip()

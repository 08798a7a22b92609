"""Showing outside text safely: bidi control characters made visible.

A U+202E (right-to-left override) in a title turns ``invoice-<RLO>gnp.exe`` into what reads as
``invoice-exe.png``. CSS isolation (sluice.css) keeps such a character from reordering the text
around the element; ``show_bidi`` goes further for titles a reviewer acts on and replaces each
explicit bidi control with a visible, labelled marker, so the text reads as it was sent.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

BIDI_CONTROLS = {
    "\u202a": ("LRE", "left-to-right embedding"),
    "\u202b": ("RLE", "right-to-left embedding"),
    "\u202c": ("PDF", "pop directional formatting"),
    "\u202d": ("LRO", "left-to-right override"),
    "\u202e": ("RLO", "right-to-left override"),
    "\u2066": ("LRI", "left-to-right isolate"),
    "\u2067": ("RLI", "right-to-left isolate"),
    "\u2068": ("FSI", "first strong isolate"),
    "\u2069": ("PDI", "pop directional isolate"),
}


@register.filter
def show_bidi(value: Any) -> SafeString | Any:
    """Escape ``value`` and show each bidi control character as a marker."""
    text = str(value)
    if not any(ch in BIDI_CONTROLS for ch in text):
        return value
    parts: list[str] = []
    for ch in text:
        if ch in BIDI_CONTROLS:
            short, name = BIDI_CONTROLS[ch]
            code = f"U+{ord(ch):04X}"
            parts.append(
                format_html('<span class="bidi-mark" title="{} {}">{}</span>', code, name, short)
            )
        else:
            parts.append(str(conditional_escape(ch)))
    return mark_safe("".join(parts))  # noqa: S308  (every piece is escaped above)

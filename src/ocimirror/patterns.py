"""Caller-supplied tag patterns, compiled with RE2: matching time linear in the tag.

Every include/exclude regex a user, a config file or an API caller gives goes through
`compile_pattern`. Python's `re` backtracks, so a pattern such as `(a+)+` takes time
doubling with each character of a tag it does not match (a 40-character tag freezes the
process); RE2 never backtracks. The price: no backreferences (`\\1`) and no lookaround
(`(?=…)`, `(?!…)`, `(?<=…)`); such a pattern is refused with a ConfigError naming it.
"""

from __future__ import annotations

import re

import re2

from .errors import ConfigError

__all__ = ["TagPattern", "compile_pattern"]

#: Longer patterns are refused (no tag filter needs them; RE2's memory stays small).
MAX_PATTERN_LENGTH = 1024

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print parse errors on stderr; ours say it


class TagPattern:
    """A compiled tag pattern that must match the whole tag."""

    def __init__(self, pattern: str, compiled: re2._Regexp[str]) -> None:
        self.pattern = pattern
        self._compiled = compiled

    def fullmatch(self, text: str) -> bool:
        """Tell whether the pattern matches all of `text`."""
        return self._compiled.fullmatch(text) is not None

    def __repr__(self) -> str:
        return f"TagPattern({self.pattern!r})"


def compile_pattern(pattern: str, kind: str = "tag") -> TagPattern:
    """Compile a caller's regex (`kind` names it in errors: include, exclude)."""
    if not isinstance(pattern, str):
        raise ConfigError(f"{kind} regex must be a string, got {pattern!r}")
    if not pattern:
        raise ConfigError(f"empty {kind} regex")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ConfigError(
            f"{kind} regex {pattern[:40]!r}… is too long"
            f" ({len(pattern)} characters, limit {MAX_PATTERN_LENGTH})"
        )
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = _reason(exc)
        try:
            re.compile(pattern)
        except re.error as bad:  # broken for Python too, whose message says where
            raise ConfigError(f"invalid {kind} regex {pattern!r}: {bad}") from None
        raise ConfigError(
            f"unsupported {kind} regex {pattern!r}: {reason} (tag patterns use RE2:"
            " no backreferences or lookaround)"
        ) from None
    return TagPattern(pattern, compiled)


def _reason(exc: Exception) -> str:
    """RE2's message, which it gives as bytes."""
    arg = exc.args[0] if exc.args else ""
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
    return text or type(exc).__name__

"""Checks on a decoded request body made before it is validated or decoded further, so that what one
request costs is bounded by the server's limits, not by what the client sends.

* :func:`check_json`: nesting depth (:data:`MAX_JSON_DEPTH`), the number of messages and of content
  parts (``--max-messages``, ``--max-parts``; counted before the request shape is validated, which
  costs time per item), and text that cannot be encoded (a lone UTF-16 surrogate such as ``"\\ud800"``,
  which JSON allows and no tokenizer takes);
* :func:`check_prompt`: the prompt's length in tokens against ``--max-prompt-tokens`` (default: the
  base's positions) and, with the answer's ``max_tokens``, against the base's positions.
"""
from __future__ import annotations

from typing import Any

from safe.serve.media import Limits
from safe.serve.schemas import RequestError

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted (a valid request nests 6 deep)."""
DRAIN_BYTES = 64 * 1024 * 1024
"""How much of a body over ``--max-body-mb`` is read and dropped so the client gets its 413."""


def _path(parts: list) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def check_json(data: Any, limits: Limits) -> None:
    """Refuse (:class:`RequestError`, 400) a body over the depth, message or part limits, or holding a
    string that is not valid Unicode text. One pass, no recursion (a deep body cannot overflow it)."""
    if isinstance(data, dict):
        messages = data.get("messages")
        if isinstance(messages, list):
            if len(messages) > limits.max_messages:
                raise RequestError(f"messages: {len(messages)} messages; this server takes at most "
                                   f"{limits.max_messages} (--max-messages)", param="messages", code="too_many_messages")
            for i, m in enumerate(messages):
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, list) and len(content) > limits.max_parts:
                    where = f"messages[{i}].content"
                    raise RequestError(f"{where}: {len(content)} content parts; this server takes at most "
                                       f"{limits.max_parts} (--max-parts)", param=where, code="too_many_parts")
    # Only containers go on the stack, each with a link to its parent, so the walk holds no copy of
    # the body and builds a path only for the error it reports.
    if not isinstance(data, (dict, list)):
        data = [data]  # a bare scalar: checked as a one-item list (parse_request refuses it anyway)
    stack: list[tuple[Any, int, tuple | None]] = [(data, 0, None)]
    while stack:
        value, depth, link = stack.pop()
        if depth > MAX_JSON_DEPTH:
            at = _path(_unlink(link)[:4])
            raise RequestError(f"{at}...: the body nests deeper than {MAX_JSON_DEPTH} levels", param=at,
                               code="too_deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(k, str):
                _text(k, (k, link))
            if isinstance(v, str):
                _text(v, (k, link))
            elif isinstance(v, (dict, list)):
                stack.append((v, depth + 1, (k, link)))


def _unlink(link: tuple | None) -> list:
    out = []
    while link is not None:
        out.append(link[0])
        link = link[1]
    return out[::-1]


def _text(s: str, link: tuple | None) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as err:
        at = _path([p.encode("utf-8", "backslashreplace").decode() if isinstance(p, str) else p
                    for p in _unlink(link)])
        raise RequestError(f"{at}: not valid Unicode text (a lone surrogate {s[err.start]!a} at character "
                           f"{err.start})", param=at, code="invalid_text") from None


def check_prompt(prompt_tokens: int, max_tokens: int, limits: Limits) -> None:
    """Refuse (400 ``prompt_too_long``) a prompt over ``--max-prompt-tokens`` or one whose answer would
    run past the base's positions."""
    most = limits.max_prompt_tokens if limits.max_prompt_tokens is not None else limits.positions
    if most is not None and prompt_tokens > most:
        raise RequestError(f"the prompt is {prompt_tokens} tokens; this server takes at most {most} "
                           "(--max-prompt-tokens)", param="messages", code="prompt_too_long")
    if limits.positions is not None and prompt_tokens + max_tokens > limits.positions:
        raise RequestError(f"the prompt ({prompt_tokens} tokens) and max_tokens ({max_tokens}) add up to more than "
                           f"the {limits.positions} positions this model takes; shorten the question or ask for "
                           "fewer tokens", param="max_tokens", code="prompt_too_long")


__all__ = ["DRAIN_BYTES", "MAX_JSON_DEPTH", "check_json", "check_prompt"]

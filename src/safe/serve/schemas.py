"""The OpenAI chat-completions request shape (pydantic), and the one error type every bad request becomes.

Only what SAFE can honour is accepted: ``messages`` (one user turn whose content is a string or a list
of ``text`` / ``image_url`` / ``input_audio`` / ``input_depth`` parts), ``max_tokens`` (or ``max_completion_tokens``),
``temperature`` (0 or absent: greedy; > 0: sampling), ``top_p`` (with sampling), ``n``, ``user``,
``stream: false`` and SAFE's own ``"safe": {"use_audio": true | false, "use_depth": true | false}``. Other OpenAI parameters
(``stop``, ``seed``, ``logprobs``, ``tools``, ...) are refused with a 400 naming the parameter rather
than silently ignored, and an unknown field is refused the same way.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status`` (4xx), a message naming the problem, the request
    field (``param``, dotted path) and a short ``code``. Rendered as OpenAI's error object."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, int(status), param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Shape(BaseModel):
    # Unknown keys are refused (a typo must not be silently ignored); NaN / inf numbers are refused.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Shape):
    """``{"type": "text", "text": ...}``: part of the question (text parts are joined with spaces)."""

    type: Literal["text"]
    text: StrictStr


class ImageURL(_Shape):
    """``{"url": ..., "detail": ...}``; ``detail`` is accepted and has no effect (one image size per model)."""

    url: StrictStr
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Shape):
    """``{"type": "image_url", "image_url": {...}}``: the image, a ``data:`` URL (:mod:`safe.serve.media`)."""

    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Shape):
    """``{"data": <base64 file bytes>, "format": "wav" | "flac" | "ogg" | "mp3"}``."""

    data: StrictStr
    format: StrictStr


class AudioPart(_Shape):
    """``{"type": "input_audio", "input_audio": {...}}``: the clip."""

    type: Literal["input_audio"]
    input_audio: InputAudio


class InputMap(_Shape):
    """``{"data": <base64 .npy or PNG file bytes>, "format": "npy" | "png"}``: one map of an image-like modality."""

    data: StrictStr
    format: StrictStr


class DepthPart(_Shape):
    """``{"type": "input_depth", "input_depth": {...}}``: the depth map (for a run carrying depth)."""

    type: Literal["input_depth"]
    input_depth: InputMap


#: The content part type of each image-like modality the server reads, by modality name.
MAP_PARTS = {"depth": DepthPart}

Part = Annotated[TextPart | ImagePart | AudioPart | DepthPart, Field(discriminator="type")]


class Message(_Shape):
    """One chat message; :func:`safe.serve.media.to_row` accepts exactly one, with role ``user``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[Part] | None = None
    name: StrictStr | None = None


class SafeOptions(_Shape):
    """SAFE's own request field ``"safe"``."""

    use_audio: StrictBool | None = None
    """True: use the clip (the request must carry one); False: never; absent: the policy decides."""
    use_depth: StrictBool | None = None
    """True: use the depth map (the request must carry an input_depth part); False: never; absent: used when sent."""


Number = StrictInt | StrictFloat

#: OpenAI parameters SAFE does not implement, with the one value that means "not used" (accepted).
UNSUPPORTED = {"stop": None, "seed": None, "logprobs": False, "top_logprobs": None, "presence_penalty": 0,
               "frequency_penalty": 0, "logit_bias": None, "tools": None, "tool_choice": None,
               "response_format": None, "stream_options": None, "parallel_tool_calls": None,
               "modalities": None, "audio": None, "prediction": None, "store": None, "metadata": None,
               "service_tier": None, "reasoning_effort": None}


class ChatRequest(_Shape):
    """``POST /v1/chat/completions`` body."""

    model: StrictStr | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    user: StrictStr | None = None
    safe: SafeOptions | None = None
    stop: Any = None
    seed: Any = None
    logprobs: Any = False
    top_logprobs: Any = None
    presence_penalty: Any = 0
    frequency_penalty: Any = 0
    logit_bias: Any = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None
    stream_options: Any = None
    parallel_tool_calls: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    reasoning_effort: Any = None


_TYPE_LABEL = re.compile(r"^(str|int|float|bool|none)$|\[")


def _where(loc: tuple) -> str:
    """A pydantic error location as a dotted path (``messages[0].content[1].input_audio.data``): union
    branch labels dropped, a discriminator tag followed by its own field name kept once."""
    out, last = "", None
    for part in loc:
        if isinstance(part, str) and (_TYPE_LABEL.search(part) or part == last):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        last = part
    return out


def parse_request(data: Any) -> ChatRequest:
    """A decoded JSON body -> :class:`ChatRequest`, or :class:`RequestError` naming the first bad field
    (shape errors) or the unsupported parameter."""
    if not isinstance(data, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_body")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        first = errors[0]
        for e in errors:  # the deepest location is the most specific (a union reports every branch)
            if len(e["loc"]) >= len(first["loc"]):
                first = e
        where = _where(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            raise RequestError(f"unknown field {where!r}", param=where, code="unknown_field") from None
        n = err.error_count()
        more = f" (and {n - 1} more problem{'s' if n > 2 else ''})" if n > 1 else ""
        raise RequestError(f"{where or 'body'}: {first['msg']}{more}", param=where or None, code="invalid_field") from None
    for name, unused in UNSUPPORTED.items():
        value = getattr(req, name)
        if value != unused and not (unused == 0 and value is None):
            raise RequestError(f"unsupported parameter {name!r}: this server does not implement it (send it unset)",
                               param=name, code="unsupported_parameter")
    if req.stream:
        raise RequestError("unsupported parameter 'stream': streaming is not implemented (send stream: false)",
                           param="stream", code="unsupported_parameter")
    return req


__all__ = ["MAP_PARTS", "ChatRequest", "DepthPart", "Message", "RequestError", "SafeOptions", "parse_request"]

"""Model ids: the load-id grammar, its exact errors, and the served id.

A load id is `org/name` (the neuron's default source), `scheme:org/name` (a configured source)
or an absolute path. The grammar and its messages are the original's, so operators see the same
errors they always did. Shared by cortex and neuron, hence in `helexa.wire`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from helexa.wire.errors import ApiError

DEFAULT_SOURCE = "huggingface"

_GGUF_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


@dataclass(frozen=True, slots=True)
class ModelId:
    """A parsed load id. `scheme` is None for a bare `org/name` until a default is applied;
    `path` is set (and org/name are empty) for the absolute-path form. `given` remembers the
    id as the client wrote it once a default scheme is filled in, for messages."""

    scheme: str | None
    org: str
    name: str
    path: str | None = None
    given: str | None = field(default=None, compare=False, repr=False)

    @property
    def is_path(self) -> bool:
        return self.path is not None

    @property
    def repo(self) -> str:
        """`org/name`: what a hub API expects, whatever the scheme."""
        return f"{self.org}/{self.name}"

    def qualified(self) -> str:
        """Prints back as given: `scheme:org/name`, a bare `org/name`, or the path."""
        if self.path is not None:
            return self.path
        if self.scheme is None:
            return self.repo
        return f"{self.scheme}:{self.repo}"

    def __str__(self) -> str:
        return self.qualified()

    def with_default_scheme(self, default: str) -> ModelId:
        """Fill in `default` for a bare id; an explicit scheme is never overridden."""
        if self.path is not None or self.scheme is not None:
            return self
        return replace(self, scheme=default, given=self.given or self.qualified())

    @property
    def label(self) -> str:
        """The id as written by the client (what error messages quote)."""
        return self.given or self.qualified()

    def served_id(self, served_model_id: str | None = None) -> str:
        """The name clients use: the explicit one, else `org/name`, else `local/<basename>`."""
        if served_model_id:
            return served_model_id
        if self.path is not None:
            base = posixpath.basename(self.path.rstrip("/")) or "root"
            if base.lower().endswith(".gguf"):  # a split model is named without `-00001-of-N`
                base = _GGUF_SHARD.sub("", base[: -len(".gguf")])
            return f"local/{base}"
        return self.repo


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_model_id", message)


def parse_model_id(
    s: str,
    sources: Mapping[str, str] | Iterable[str] | None = None,
    default_source: str = DEFAULT_SOURCE,
) -> ModelId:
    """Parse a load id; raise `400 invalid_model_id` with an exact message.

    With `sources` (the configured schemes; `huggingface` is always known), the effective scheme
    (explicit, else `default_source`) must be one of them, else `400 unknown_source`. The returned
    id keeps the scheme as written; call `with_default_scheme` for the resolved form.
    """
    if s.startswith("/"):
        return ModelId(scheme=None, org="", name="", path=s)
    if not s:
        raise _invalid("empty model id")
    scheme: str | None = None
    rest = s
    if ":" in s:
        scheme, rest = s.split(":", 1)
        if not scheme:
            raise _invalid(f"model id '{s}' has an empty scheme before ':'")
        if "/" in scheme:
            raise _invalid(
                f"model id '{s}' has a scheme containing '/' which is reserved for org/name"
            )
    if "/" not in rest:
        raise _invalid(f"model id '{s}' is missing the '/' between org and name")
    org, name = rest.split("/", 1)
    if not org:
        raise _invalid(f"model id '{s}' has an empty org")
    if not name:
        raise _invalid(f"model id '{s}' has an empty name")
    if ":" in name:
        raise _invalid(
            f"model id '{s}' has a name containing ':' which is reserved for the scheme prefix"
        )
    _check_segments(s, org, name)
    mid = ModelId(scheme=scheme, org=org, name=name)
    if sources is not None:
        check_source(mid.scheme or default_source, sources)
    return mid


_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")


def _check_segments(s: str, org: str, name: str) -> None:
    """A hub repo is exactly `org/name`, each a plain name: a second `/` or a `..` would
    reach outside the repo (and the cache) instead of failing as a missing model."""
    if "/" in name:
        raise _invalid(f"model id '{s}' has more than one '/' (expected org/name)")
    for part in (org, name):
        if ".." in part or not _SEGMENT.fullmatch(part):
            raise _invalid(
                f"model id '{s}': '{part}' must be 1-96 of [A-Za-z0-9_.-], start with a letter, "
                "digit or '_', and hold no '..'"
            )


def known_schemes(sources: Mapping[str, str] | Iterable[str]) -> list[str]:
    return sorted({DEFAULT_SOURCE, *sources})


def check_source(scheme: str, sources: Mapping[str, str] | Iterable[str]) -> None:
    """`400 unknown_source` unless `scheme` is configured (`huggingface` is built in)."""
    known = known_schemes(sources)
    if scheme not in known:
        raise ApiError(
            400,
            "unknown_source",
            f"model source scheme '{scheme}' is not configured (known: {', '.join(known)})",
        )

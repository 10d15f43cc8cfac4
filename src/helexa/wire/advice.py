"""How to put a hub model on a host that doesn't have it: one wording for every place that says
it (cortex's cold-load errors, the neuron's source errors, `helexa up`), so a user meets the
same instruction whichever one they read first."""

from __future__ import annotations


def get_model_advice(
    repo: str, *, cache_dir: str | None = None, endpoint: str | None = None
) -> str:
    """`repo` as the hub names it (org/name); `cache_dir` and `endpoint` when the speaker knows
    the host's hub cache and a non-default HF_ENDPOINT."""
    cmd = f"hf download {repo}"
    if cache_dir:
        cmd += f" --cache-dir {cache_dir}"
    if endpoint:
        cmd = f"HF_ENDPOINT={endpoint} {cmd}"
    return (
        f"download it with `{cmd}` on a machine with internet access and copy that cache to "
        "the model's host, or serve a local model directory instead (`path` in models.toml, "
        "or `helexa up --model DIR`)"
    )

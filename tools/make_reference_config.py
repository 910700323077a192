"""Write config/reference.yml: every configuration key, its default and its one-line comment.

The defaults and comments are read from seqtrain/config.py (the single place they are written);
tests/test_config.py checks that the committed file still matches. Run after editing config.py:

    python tools/make_reference_config.py
"""

import dataclasses
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from seqtrain import config as cfg  # noqa: E402

SECTIONS = {
    "data": cfg.DataConfig,
    "model": cfg.ModelConfig,
    "params": cfg.ParamsConfig,
    "train": cfg.TrainConfig,
    "eval": cfg.EvalConfig,
    "infer": cfg.InferConfig,
    "score": cfg.ScoreConfig,
}
NESTED = {
    "optimizer_params": cfg.OptimizerParams,
    "decay_params": cfg.DecayParams,
}


def comments() -> dict:
    """Map 'Class.field' -> its comment in config.py (trailing, plus comment-only lines below)."""
    out, current, last = {}, None, None
    for line in open(os.path.join(ROOT, "seqtrain", "config.py"), encoding="utf-8"):
        m = re.match(r"class (\w+)", line)
        if m:
            current, last = m.group(1), None
        m = re.match(r"    (\w+): .*?#\s*(.*)$", line)
        if m and current:
            last = f"{current}.{m.group(1)}"
            out[last] = m.group(2).strip()
            continue
        m = re.match(r"    #\s*(.*)$", line)
        if m and last:
            out[last] += " " + m.group(1).strip()
        else:
            last = None
    return out


def scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[: -len("\n...")] if text.endswith("\n...") else text.replace("\n...", "")


def emit(cls, indent: str, notes: dict, lines: list) -> None:
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        note = notes.get(f"{cls.__name__}.{f.name}", "")
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:  # {note}" if note else f"{indent}{f.name}:")
            emit(type(value), indent + "  ", notes, lines)
            continue
        if isinstance(value, tuple):
            value = list(value)
        text = f"{indent}{f.name}: {scalar(value)}"
        lines.append(f"{text:<44} # {note}" if note else text)


def main() -> None:
    notes = comments()
    lines = [
        "# Every seqtrain configuration key with its default (generated from seqtrain/config.py",
        "# by tools/make_reference_config.py; a test keeps them identical). Copy what you need.",
        "",
        "model_dir: run/my-model                     # " + notes["Config.model_dir"],
        "auto_config: false                          # " + notes["Config.auto_config"],
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"{section}:"]
        emit(cls, "  ", notes, lines)
        if cls is cfg.EvalConfig:
            lines.append(
                "  # early_stopping example: {metric: bleu, min_improvement: 0.2, steps: 4}"
            )
    path = os.path.join(ROOT, "config", "reference.yml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(path)


if __name__ == "__main__":
    main()

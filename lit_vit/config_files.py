"""The ``--config`` files of a command line, checked before jsonargparse reads them, so that
a file that is no mapping of options is refused with its name."""

from __future__ import annotations

from pathlib import Path

import yaml


def config_files(argv: list[str]) -> list[str]:
    """The files given to ``--config`` (as ``--config F`` or ``--config=F``)."""
    files = [arg.removeprefix("--config=") for arg in argv if arg.startswith("--config=")]
    files += [value for flag, value in zip(argv[:-1], argv[1:], strict=True) if flag == "--config"]
    return files


def check_config_file(path: str) -> None:
    """Refuse, naming the file, a ``--config`` that is not a YAML mapping of options.

    Raises:
        ValueError: An empty or binary file, invalid YAML, or YAML that is not a
            mapping (a list, a bare value).
    """
    file = Path(path)
    if not file.is_file():
        return  # jsonargparse's own message names it (and takes a YAML string too)
    fix = "Write options as YAML `key: value` lines, e.g. `trainer: {max_epochs: 2}`."
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"--config '{path}' is not a text file (not UTF-8). {fix}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"--config '{path}' is not valid YAML{line}. {fix}") from None
    if content is None:
        raise ValueError(f"--config '{path}' is empty. {fix}")
    if not isinstance(content, dict):
        kind = type(content).__name__
        raise ValueError(f"--config '{path}' holds a {kind}, not a mapping of options. {fix}")

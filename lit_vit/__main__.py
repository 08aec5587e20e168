"""``lit-vit`` and ``python -m lit_vit``: ``--version`` answers at once, everything else is
:func:`lit_vit.cli.main` (whose imports of Lightning and timm take seconds)."""

from __future__ import annotations

import sys

from lit_vit import __version__


def main() -> None:
    """Print the version, or run the CLI on ``sys.argv``."""
    if sys.argv[1:] == ["--version"]:
        print(f"lit-vit {__version__}")
        return
    from lit_vit.cli import main as run_cli

    run_cli()


if __name__ == "__main__":
    main()

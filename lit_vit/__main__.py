"""``python -m lit_vit`` is ``lit-vit``."""

from lit_vit.cli import main

if __name__ == "__main__":
    main()

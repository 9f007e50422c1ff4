"""``python -m manualgrad``: the same command as the ``manualgrad`` console script."""

from manualgrad.lightning.cli import main

if __name__ == "__main__":
    main()

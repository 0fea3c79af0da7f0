"""``python -m stream``: see ``stream.cli``."""

from stream.cli import main

if __name__ == "__main__":
    main()

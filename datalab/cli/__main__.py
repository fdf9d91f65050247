"""``python -m datalab.cli``: the same command as ``datalab``."""

from datalab.cli.commands import main

if __name__ == "__main__":
    main()

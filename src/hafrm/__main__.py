"""`python -m hafrm` runs the CLI."""

from hafrm.apps.cli import main

if __name__ == "__main__":
    main()

"""`python -m bootd` is the same as the `bootd` command."""

from bootd.cli import main

if __name__ == "__main__":
    main()

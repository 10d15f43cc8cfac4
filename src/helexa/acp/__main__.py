"""`python -m helexa.acp`: the same as the `helexa-acp` script."""

from helexa.acp.cli import main

if __name__ == "__main__":
    main()

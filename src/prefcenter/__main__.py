"""`python -m prefcenter …`: the same command as the `prefcenter` console script."""

from prefcenter.cli import main

main()

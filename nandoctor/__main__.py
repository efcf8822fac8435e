"""`python -m nandoctor` runs the CLI."""

from nandoctor.cli import main

main()

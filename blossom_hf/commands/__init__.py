"""The `blossom-hf` subcommands: each module defines `HELP` (one line) and `main(argv) -> int`."""

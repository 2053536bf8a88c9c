"""CLI subcommands, one module each. A module defines `register(subparsers)` which adds its parser and sets
`func(args) -> int` as the handler. `edgecpm.cli` discovers every module in this package."""

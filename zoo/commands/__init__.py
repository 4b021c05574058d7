"""CLI commands, one module per group; each has `configure(parser)` and `run(args)` (or `_<name>` variants)."""

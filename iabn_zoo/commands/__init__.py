"""Sub-commands of the `iabn-zoo` command line, one module per concern; each defines `register(subparsers)`."""

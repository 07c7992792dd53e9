"""The `smsbridge` command line: `main` parses and dispatches; one module per command group."""

"""The `dualvec` command: argument parsing and dispatch (main), one module per command."""

"""The ``testbed`` command's subcommands, one module each (``add_parser`` and its handler), and the options
they share; ``testbed.cli`` parses and dispatches."""

"""One module per `python -m captioning` command.

Each module defines HELP (one line), DESCRIPTION (the --help text),
`add_arguments(parser)` and `run(args) -> int`. The CLI finds them by itself,
so a new command is a new file here. Keep these thin: the work belongs in
importable functions elsewhere in `captioning`.
"""

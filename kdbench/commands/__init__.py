"""The sub-commands of ``kdbench`` beyond validate/list/show (`kdbench.cli`), one module each.

``run`` is the main job: `kdbench.cli` builds its parser and `kdbench.commands.run.cmd_run` handles it.
Every other module here has ``add_parser(subparsers)``, which adds its sub-command and sets ``handler``
(``args -> exit code``); `kdbench.cli.COMMAND_MODULES` names them, and one that fails to import breaks
only its own sub-command. The library they drive lives in the packages by job: evaluation/,
leaderboard/, analysis/, bench/.
"""

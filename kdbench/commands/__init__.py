"""The sub-commands of ``kdbench`` beyond validate/list/show (`kdbench.cli`), one module each (``run`` included).

Each module has ``add_parser(subparsers)``, which adds its sub-command and sets ``handler``
(``args -> exit code``); `kdbench.cli.COMMAND_MODULES` names them, and one that fails to import breaks
only its own sub-command. The library they drive lives in the packages by job: evaluation/,
leaderboard/, analysis/, bench/.
"""

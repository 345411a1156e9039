"""The `xmfast` command line: argument parsing and presentation only; the work is in `xmfast`.

This code lives in the repository's ``cli/`` directory and installs as the top-level package
``xmfast_cli``: maturin copies ``cli/purelib/`` into the wheel's purelib directory (see
``[tool.maturin] data`` in pyproject.toml), so no generic ``cli`` module is ever installed.
``cli/`` may hold only that ``purelib/`` folder.
"""

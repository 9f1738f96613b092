"""``r3rag`` and ``python -m r3rag``: choose the memory allocator first, then run the command line.

The allocator must be in place before the process allocates anything that matters (it is chosen by
re-executing the process, :mod:`r3rag.allocator`), so nothing heavy is imported before that.
"""

from __future__ import annotations

import sys


def main() -> None:
    from r3rag.allocator import reexecute

    reexecute(sys.argv[1:])
    from r3rag.cli import app

    app(prog_name="r3rag")


if __name__ == "__main__":
    main()

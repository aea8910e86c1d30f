"""The parsing process of ``scoreflow.offload``: code extraction for long replies.

Reads one JSON object per line on stdin (``{"id", "text", "entry_point"}``) and writes one
per line on stdout (``{"id", "result"}`` or ``{"id", "error"}``), in order. It ends at
the end of its input: when the stage's process exits or dies, its pipe closes.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from scoreflow.codeutil import sanitize

    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"id": request["id"], "result": sanitize(request["text"], request["entry_point"])}
        except Exception as exc:  # a parser bug must not end the process: the caller gets the error
            reply = {"id": request["id"], "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

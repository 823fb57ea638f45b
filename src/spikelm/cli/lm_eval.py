"""``spikelm-lm-eval``: lm-evaluation-harness's own ``lm_eval`` command with the ``spikelm`` model registered.

lm-eval 0.4 reads no plugin entry point for models, so a plain ``lm_eval`` process cannot know
spikelm; ``spikelm-lm-eval ARGS`` (or ``python -m spikelm.cli.lm_eval ARGS``) is ``lm_eval ARGS``
after :func:`spikelm.evaluate.harness.register`.
"""

from __future__ import annotations

import sys

from ..errors import SpikelmError
from ..evaluate.harness import register


def main(argv: list[str] | None = None) -> int:
    try:
        register()
        from lm_eval.__main__ import cli_evaluate  # optional heavy dependency, imported only here

        # The harness's CLI parses sys.argv itself.
        sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
        cli_evaluate()
    except SpikelmError as e:
        print(f"spikelm-lm-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

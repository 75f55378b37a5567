"""Running the command line in-process for tests that check its output and exit code."""
from __future__ import annotations

from click.testing import CliRunner

from scmgen.cli import cli


def run_cli(*args: object, code: int = 0) -> tuple[str, str]:
    """Invoke `scmgen ARGS`; assert the exit code, and that a failure is one line, no traceback."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    if code:
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    return result.stdout, result.stderr

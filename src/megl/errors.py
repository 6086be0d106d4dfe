"""Errors that the CLI turns into a one-line message and a non-zero exit code.

Exit codes of every `megl` command (documented in `megl --help`):
0 success; 2 usage or bad input (argparse, a bad config, dataset, name or file, a refused
operation); 1 a runtime failure (a missing tool, a failed download or build, or an unexpected
error, which prints its traceback).
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class MEGLError(Exception):
    """A user-facing error: bad input, bad config, or a refused operation (exit 2)."""

    exit_code = EXIT_USAGE


class RunFailure(MEGLError):
    """A user-facing runtime failure: the input is fine but the step could not be done (exit 1):
    a tool that is not installed, a download or a build that failed."""

    exit_code = EXIT_FAILURE


class DataError(MEGLError):
    """Invalid dataset. `problems` holds one line per problem (file, sample id, field, what)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

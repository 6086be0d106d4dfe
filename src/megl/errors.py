"""Errors that the CLI turns into a one-line message and a non-zero exit code."""


class MEGLError(Exception):
    """A user-facing error: bad input, bad config, or a refused operation."""


class DataError(MEGLError):
    """Invalid dataset. `problems` holds one line per problem (file, sample id, field, what)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

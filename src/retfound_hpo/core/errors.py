"""The user-facing error types: one home, so that the stage runner can end any of them in one line.

Each message names what is wrong where (the params key, the file and row, the checkpoint path)
and what is allowed. `cli.run_stage` prints `error: <message>` and exits with code 2.
"""


class UserError(ValueError):
    """A mistake in the user's input, stated in one line; never a bug of ours."""


class ConfigError(UserError):
    """A params value that is not allowed; the message names key, value and what is allowed."""


class DatasetError(UserError):
    """Bad dataset input; the message names the file, the row and what is wrong."""


class CheckpointError(UserError):
    """A checkpoint or model folder that cannot be used; the message names the file."""

"""User-facing errors: a mistake in input, reported as one line and exit code 2, never as a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad value, missing file, mismatched checkpoint). Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

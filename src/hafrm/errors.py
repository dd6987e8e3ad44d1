"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class HafError(Exception):
    """A problem with the user's input (config, data, model path), not a bug in hafrm."""


class ConfigError(HafError):
    """An invalid configuration value: the message names the field and what is accepted."""


class DataError(HafError):
    """Unreadable or invalid data: the message names the file, line and field."""


class DivergedError(HafError):
    """Training produced a NaN or infinite loss or gradient: the message names the step and the pairs."""

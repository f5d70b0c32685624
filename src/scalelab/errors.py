"""One error hierarchy. The CLI turns every ScalelabError into one line on stderr and exit code 2."""


class ScalelabError(Exception):
    """A problem the user can fix: bad input, a bad config value, a missing path."""


class ConfigError(ScalelabError):
    """A configuration value is missing, unknown or out of range."""


class DataError(ScalelabError):
    """Input data cannot be read or does not suffice for what was asked."""


class TrainingDiverged(ScalelabError):
    """A loss, gradient norm, evaluation or weight became NaN or infinite: the run failed."""


class OutputError(ScalelabError):
    """An output path cannot be written: it has the wrong type, its place is not writable, or the write failed."""

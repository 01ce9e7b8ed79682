"""The errors pare raises on purpose. Each message names the key, file or layer, quotes the value,
and says the fix; the CLI prints it without a traceback (unless --debug)."""


class PareError(Exception):
    """Base of every error pare raises for a user's input."""


class ConfigError(PareError, ValueError):
    """A recipe or technique config is wrong: unknown key, wrong type, value out of range."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            msg = f"invalid config{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            msg = f"{len(self.problems)} problems{where}:\n{lines}"
        super().__init__(msg)


class DataError(PareError):
    """A dataset cannot be used: missing file, bad values, one class, inconsistent images."""


class UnsupportedModelError(PareError):
    """A model, layer or factory that pare cannot build, load or handle."""

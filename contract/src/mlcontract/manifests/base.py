"""The manifest base class: written last and atomically by a step, read by whoever comes next."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from mlcontract import storage
from mlcontract.errors import ManifestError, MissingManifest
from mlcontract.names import MANIFEST_FILE


class Manifest(BaseModel):
    """A step's ``manifest.json``: its presence means the step finished.

    Each step has one subclass; the producer builds it with keyword arguments (so it cannot invent or
    misspell a key) and the consumer reads it with the same class (so it never guesses key names).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    step: str
    outputs: dict[str, str | None] = {}
    seconds: float | None = None

    @classmethod
    def uri(cls, directory: str) -> str:
        return storage.join_uri(directory, MANIFEST_FILE)

    def write(self, directory: str) -> str:
        """Write ``manifest.json`` into ``directory`` (last, atomically); returns its URI."""
        uri = self.uri(directory)
        storage.write_json(uri, self.model_dump(mode="json"))
        return uri

    @classmethod
    def read(cls, directory: str) -> Self:
        uri = cls.uri(directory)
        if not storage.exists(uri):
            raise MissingManifest(f"no manifest at {uri}: the step that writes it has not finished")
        return cls.parse(storage.read_json(uri), uri)

    @classmethod
    def exists(cls, directory: str) -> bool:
        return storage.exists(cls.uri(directory))

    @classmethod
    def parse(cls, payload: Any, where: str = "manifest") -> Self:
        try:
            return cls.model_validate(payload)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in error.errors()[:5]
            )
            raise ManifestError(f"{where} is not a valid {cls.__name__}: {problems}") from None

    def output(self, name: str) -> str:
        """The URI of a named output; a ManifestError naming the step when it has none."""
        uri = self.outputs.get(name)
        if not uri:
            raise ManifestError(f"the {self.step} step wrote no {name!r} output (it has {sorted(self.outputs)})")
        return uri

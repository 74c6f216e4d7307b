"""Named choices from params.yaml (model.name, loss.name, data.dataset, ...).

A registry owns its valid choices: config.py only checks types, and each stage
looks its names up here before any work, so an unknown name fails with the list
of valid ones (the way segmentation_models_pytorch's create_model does)."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from segpipe.errors import SegpipeError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, key: str, kind: str, entries: dict[str, T]):
        self.key, self.kind, self._entries = key, kind, dict(entries)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise SegpipeError(f"{self.key}: unknown {self.kind} {name!r}; valid choices: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def check(self, name: str) -> str:
        """The name, if it is a valid choice; else the error that lists them."""
        self[name]
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()

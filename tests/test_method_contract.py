"""The method contract guards every capability call with the capability's families and ``supports``."""

from __future__ import annotations

import pytest
import torch

from bench.capabilities import DebiasRequest, Intervention
from bench.errors import Incompatible
from bench.method import Method
from bench.model import Model


class _Picky(Method):
    name = "picky"
    capabilities = frozenset({"debias", "attribute"})
    families = frozenset({"contrastive", "generative"})
    capability_families = {"debias": frozenset({"contrastive"})}
    calls: list[str] = []

    def supports(self, model: Model) -> str | None:
        return super().supports(model) or ("no vision.proj site" if "vision.proj" not in model.site_specs else None)

    def debias(self, model: Model, request: DebiasRequest) -> Intervention:
        self.calls.append(model.name)
        return Intervention({}, components=0)

    def attribute(self, model: Model, request: object) -> torch.Tensor:
        return torch.zeros(1)


def _request() -> DebiasRequest:
    return DebiasRequest(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                         ["a"], ["b"])


def test_capability_families_and_supports_guard_the_call(zoo_clip, make_tiny_llava) -> None:  # type: ignore[no-untyped-def]
    m = _Picky()
    assert m.debias(zoo_clip, _request()).components == 0 and m.calls == [zoo_clip.name]
    llava = make_tiny_llava()
    with pytest.raises(Incompatible, match="can debias contrastive models, not"):
        m.debias(llava, _request())  # generative: in ``families`` but not the capability's
    assert m.calls == [zoo_clip.name], "the body must not run on an unsupported model"
    assert m.unsupported(zoo_clip, "attribute") is None
    # a model-free call (a score-only attribution) is not checked
    assert torch.equal(m.attribute(None, object()), torch.zeros(1))  # type: ignore[arg-type]


def test_supports_reason_is_raised(zoo_clip) -> None:  # type: ignore[no-untyped-def]
    class _NeedsSite(_Picky):
        name = "needs_site"

        def supports(self, model: Model) -> str | None:
            return "needs a site this model lacks"

    with pytest.raises(Incompatible, match="needs a site this model lacks"):
        _NeedsSite().debias(zoo_clip, _request())

"""What an eval's judge calls cost: counted as they are made, priced by the runtime's price
book like any answer (a self-hosted judge by the seconds it held the replica), and reported
beside the results; not part of the candidate's cost, which is what serving it would cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class JudgeSpend:
    calls: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # calls whose target has no price (or whose usage did not come back)

    def add(self, cost_usd: float | None) -> None:
        self.calls += 1
        if cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += cost_usd

    def line(self) -> str:
        if not self.calls:
            return "judge: no calls"
        priced = self.calls - self.unpriced
        tail = f" ({self.unpriced} unpriced)" if self.unpriced else ""
        return f"judge: {self.calls} call(s), ${self.cost_usd:.6f} over {priced} priced{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cost_usd": self.cost_usd, "unpriced": self.unpriced}

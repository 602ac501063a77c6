"""A fake self-hosted model server: ``FakeUpstream``'s OpenAI surface plus a Prometheus
``/metrics`` page whose load gauges the test sets while a gateway reads them.

    async with FakeVLLM(waiting=40) as fake:     # a long queue
        ... point a target with ``load: {...}`` at fake.base_url ...
        fake.waiting = 0                           # drained: the next scrape sees it

``flavour`` picks the names a real server uses: ``vllm`` (current), ``vllm_old``
(``gpu_cache_usage_perc``), ``sglang`` or ``llamacpp`` (no KV gauge). ``engines`` splits the
numbers over that many label sets, as vLLM does under data parallelism. ``metrics_status``
answers with that status instead, ``metrics_raw`` with that body, ``metrics_hang`` never.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tests.fakes.upstream import FakeUpstream

FLAVOURS = {
    "vllm": ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"),
    "vllm_old": ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:gpu_cache_usage_perc"),
    "sglang": ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage"),
    "llamacpp": ("llamacpp:requests_deferred", "llamacpp:requests_processing", ""),
}

# What else a vLLM page holds, so the parser skips real clutter: comments, counters, histograms.
_CLUTTER = """# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.84
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
python_gc_objects_collected_total{generation="0"} 1887.0
"""


@dataclass
class FakeVLLM(FakeUpstream):
    flavour: str = "vllm"
    waiting: float = 0.0
    running: float = 0.0
    kv_cache: float = 0.0
    engines: int = 1
    metrics_status: int = 200
    metrics_raw: bytes | None = None
    metrics_hang: bool = False
    scrapes: int = 0  # GET /metrics served (or begun)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/metrics", self._metrics)
        return app

    def page(self) -> str:
        waiting, running, kv = FLAVOURS[self.flavour]
        lines = [_CLUTTER]
        for name, value in ((waiting, self.waiting), (running, self.running)):
            lines.append(f"# TYPE {name} gauge")
            lines += [f'{name}{{engine="{e}",model_name="m"}} {value / self.engines!r}' for e in range(self.engines)]
        if kv:
            lines.append(f"# TYPE {kv} gauge")
            lines += [f'{kv}{{engine="{e}",model_name="m"}} {self.kv_cache!r}' for e in range(self.engines)]
        return "\n".join(lines) + "\n"

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.scrapes += 1
        if self.metrics_hang:
            await self._stopping.wait()
        if self.metrics_status != 200:
            return web.Response(status=self.metrics_status, text="metrics off")
        body = self.metrics_raw if self.metrics_raw is not None else self.page().encode()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

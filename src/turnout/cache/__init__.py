"""The exact-match response cache: opt-in per task × data class (``tasks.T.cache``).

stage    the pipeline's cache stage: which requests may be cached, lookup (hit, miss,
         bypass), single flight (one upstream call for concurrent identical misses, per
         replica), filling from the leader's answer
key      the key: scope, task, the version of what serves (release; route and models), and a keyed
         digest (BLAKE2b) of the canonical request
entry    a cached answer (a completion, or a stream's chunks) and its encoding
replay   a hit as the attempt loop's ``Result`` (priced free); a leader's answer recorded
store    the backend interface; ``memory`` (LRU bounded by bytes) and ``redis`` (shared,
         sealed with AES-GCM by ``seal``)
factory  the configured store, and the sweep that drops answers of releases (routes, models) no
         longer serving
purges   ``turnout cache purge`` for the in-process store: a log of shared state every gateway follows
"""

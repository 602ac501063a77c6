"""A Jinja sandbox whose renders are bounded in time and in size.

Jinja's own sandbox stops a template from reaching Python internals; it does not stop one from
building ``'a' * 300000000`` or looping 10¹⁰ times. Here, on top of the immutable sandbox:

* **no value past ``MAX_CHARS``** (characters, or items of a list, counted through nested
  containers, as ``str()`` would write them). Operations that can grow a value are checked
  *before* they run, from their operands: ``*``, ``+``, ``**`` (and ``*`` on integers),
  ``~``, ``%`` and ``format`` widths, the padding and replacing string methods and filters
  (``center``, ``ljust``, ``rjust``, ``zfill``, ``expandtabs``, ``replace``, ``join``,
  ``indent``, ``wordwrap``, ``batch``, ``slice``, ``sum``). Every other call and filter is
  checked on its result, and every ``{{ … }}`` value before it is written out.
* **no single step that runs long on a small value**: the filters whose work grows faster than
  their input are bounded by it: ``wordwrap`` and ``urlize`` re-copy the rest of a long word
  for each piece they cut off it (about length² ÷ width characters), refused past
  ``MAX_STEP_COPIES``; ``sum`` of lists or tuples extends one result instead of building a
  longer copy per item, as Python's ``sum`` does.
* **no more than ``MAX_WORK`` characters built in all** during one render, garbage included, so
  that many values just under the limit do not add up to gigabytes.
* **rendered output of at most ``MAX_CHARS``**.
* **a deadline**: ``TIMEOUT_S`` after the render starts, the next checkpoint raises. Checkpoints
  are every loop iteration (the code generator wraps each ``for`` loop's iterable), every call
  (functions, methods, macros, ``range``), every filter, every intercepted operator and every
  output value, so no loop or recursion runs long without passing one. A single step between
  checkpoints is bounded by the size limits.

Anything over a limit raises ``RenderLimitExceeded``. Budgets live in a context variable set
by ``render_bounded``; outside a render (constant folding at compile time) only the per-value
limits apply, and a folding that raises is simply left to run time.
"""

from __future__ import annotations

import functools
import math
import re
import string
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

MAX_CHARS = 4 * 1024 * 1024  # the rendered output, and any one value on the way
MAX_WORK = 16 * MAX_CHARS  # everything built during one render
MAX_INT_BITS = 16_384  # integers past this many bits (about 4,900 digits) are refused
TIMEOUT_S = 1.0
# Characters one filter may copy around while it works (a fraction of a second): checked before
# ``wordwrap`` and ``urlize``, whose copying grows with the square of a word's length.
MAX_STEP_COPIES = 4_000_000_000


class RenderLimitExceeded(Exception):
    """A render went past a size or time limit."""


@dataclass(slots=True)
class _Budget:
    deadline: float
    work: int = field(default=0)

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(f"rendering took longer than {TIMEOUT_S:g} s")

    def charge(self, size: int) -> None:
        self.work += size
        if self.work > MAX_WORK:
            raise RenderLimitExceeded(f"the template built more than {MAX_WORK} characters in all")


_BUDGET: ContextVar[_Budget | None] = ContextVar("turnout_render_budget", default=None)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def _refuse(size: int, what: str) -> RenderLimitExceeded:
    return RenderLimitExceeded(f"{what} would be {size} characters long; the limit is {MAX_CHARS}")


def _allow(size: int, what: str) -> None:
    if size > MAX_CHARS:
        raise _refuse(size, what)


def weight(value: Any, limit: int = MAX_CHARS) -> int:
    """About how many characters ``str(value)`` writes, counted through nested containers (a list
    holding the same long string twice counts it twice); stops counting once past ``limit``."""
    if isinstance(value, str):  # the common case, first
        return len(value)
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset | dict):
            total += len(item) + 1
            if total <= limit:  # push only what fits: the stack never outgrows the limit
                stack.extend(item.items() if isinstance(item, dict) else item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, jinja2.utils.Namespace):
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        else:
            total += 1
    return total


def _charge(value: Any, what: str) -> Any:
    size = weight(value)
    _allow(size, what)
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(size)
    return value


# --- what an operation would build, from its operands -----------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\d+|\*)?(?:\.(\d+|\*))?[hlL]?[diouxXeEfFgGcrsa%]")


def _percent_size(fmt: str, args: Any) -> int:
    """An upper bound of ``fmt % args`` beyond the arguments' own text: the widths."""
    size, starred = len(fmt), False
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                starred = True
            elif number:
                size += int(number)
    values = args if isinstance(args, tuple) else (args,)
    size += sum(weight(v) for v in (values if not isinstance(args, Mapping) else args.values()))
    if starred:
        size += sum(v for v in values if isinstance(v, int) and v > 0)
    return size


def _format_size(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """An upper bound of ``fmt.format(*args, **kwargs)``: its text, the arguments' text and every
    width in its fields (a width given by an argument counts that argument's value)."""
    size, nested = len(fmt), False
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return size  # format itself will refuse it
    for _literal, _name, spec, _conversion in fields:
        if spec:
            nested = nested or "{" in spec
            size += sum(int(n) for n in re.findall(r"\d+", spec))
    values = [*args, *kwargs.values()]
    size += sum(weight(v) for v in values)
    if nested:
        size += sum(v for v in values if isinstance(v, int) and v > 0)
    return size


def _replace_size(s: str, old: str, new: str, count: int | None) -> int:
    hits = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


def _join_size(sep: str, items: Any) -> int | None:
    if not isinstance(items, list | tuple):
        return None  # an iterator: checked on the result
    return weight(items) + len(sep) * len(items)


def _width(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str_method_size(s: str, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """What the str method ``name`` would build, for the methods that can grow a string."""
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(s), _width(args[0] if args else kwargs.get("width")))
    if name == "expandtabs":
        tabsize = _width(args[0] if args else kwargs.get("tabsize", 8))
        return len(s) + s.count("\t") * tabsize
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = args[2] if len(args) > 2 else kwargs.get("count")
        return _replace_size(s, args[0], args[1], count if isinstance(count, int) else None)
    if name == "join" and args:
        return _join_size(s, args[0])
    if name == "format":
        return _format_size(s, args, kwargs)
    if name == "format_map" and args and isinstance(args[0], Mapping):
        return _format_size(s, (), args[0])
    return None


def _binop_size(operator: str, left: Any, right: Any) -> int | None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int):
                return weight(seq) * max(n, 0)
        if isinstance(left, int) and isinstance(right, int):
            _allow_bits(left.bit_length() + right.bit_length())
    elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
        return weight(left) + weight(right)
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _allow_bits(math.ceil(right * math.log2(abs(left))))
    elif operator == "%" and isinstance(left, str):
        return _percent_size(left, right)
    return None


def _allow_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise RenderLimitExceeded(f"an integer of about {bits} bits; the limit is {MAX_INT_BITS}")


# Filters that can grow their input: (value, *args, **kwargs) → an upper bound, or None.
def _filter_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> int:
    return max(weight(value), _width(width))


def _filter_indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    lines = str(s).count("\n") + 1 if isinstance(s, str) else 1
    pad = len(width) if isinstance(width, str) else _width(width)
    return weight(s) + lines * pad


def _filter_format(value: Any, *args: Any, **kwargs: Any) -> int | None:
    return _percent_size(value, kwargs or args) if isinstance(value, str) else None


def _filter_replace(s: Any, old: Any = "", new: Any = "", count: Any = None, *_: Any, **__: Any) -> int | None:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return None
    return _replace_size(s, old, new, count if isinstance(count, int) else None)


def _filter_join(value: Any, d: Any = "", *_: Any, **__: Any) -> int | None:
    return _join_size(str(d) if isinstance(d, str) else "", value)


def _filter_wordwrap(s: Any, width: Any = 79, *args: Any, **kwargs: Any) -> int | None:
    if not isinstance(s, str):
        return None
    wrapstring = args[1] if len(args) > 1 else kwargs.get("wrapstring")
    lines = len(s) // max(_width(width), 1) + 1 + s.count("\n")
    return len(s) + lines * (len(wrapstring) if isinstance(wrapstring, str) else 2)


def _filter_count(value: Any, n: Any = 0, *_: Any, **__: Any) -> int:
    return weight(value) + _width(n)  # batch(linecount) pads to n; slice(slices) makes n lists


def _filter_sum(iterable: Any, *args: Any, **kwargs: Any) -> int | None:
    start = args[1] if len(args) > 1 else kwargs.get("start", 0)
    if isinstance(start, int | float) or not isinstance(iterable, list | tuple):
        return None
    return weight(start) + weight(iterable)


def _wordwrap_copies(s: Any, width: Any = 79, break_long_words: Any = True, *_: Any, **__: Any) -> int:
    """textwrap cuts a word longer than the width one line at a time, copying the rest of it
    each time: about length² ÷ width characters a word."""
    if not isinstance(s, str) or not break_long_words:
        return 0
    w = max(_width(width), 1)
    return sum(len(word) * len(word) // w for word in s.split() if len(word) > w)


def _urlize_copies(s: Any, *_: Any, **__: Any) -> int:
    """urlize balances a word's brackets by moving its tail one bracket at a time, copying the
    rest of the (escaped: up to 5 times longer) word each time."""
    if not isinstance(s, str):
        return 0
    return sum(5 * len(word) * (word.count("(") + word.count("<")) for word in s.split() if "(" in word or "<" in word)


# Filters whose work grows faster than their input: (value, *args, **kwargs) → characters copied.
_SLOW_FILTERS: dict[str, Callable[..., int]] = {"wordwrap": _wordwrap_copies, "urlize": _urlize_copies}


_GROWING_FILTERS: dict[str, Callable[..., int | None]] = {
    "center": _filter_center,
    "indent": _filter_indent,
    "format": _filter_format,
    "replace": _filter_replace,
    "join": _filter_join,
    "wordwrap": _filter_wordwrap,
    "batch": _filter_count,
    "slice": _filter_count,
    "sum": _filter_sum,
}


# Filters that write their input out as text (its nested contents included): the input must fit.
_WRITING_FILTERS = frozenset(
    {"string", "pprint", "tojson", "urlencode", "xmlattr", "e", "escape", "forceescape", "safe", "striptags",
     "urlize", "upper", "lower", "title", "capitalize", "trim", "truncate", "wordcount"}
)  # fmt: skip


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passes_arg = getattr(func, "jinja_pass_arg", None) is not None
    predict = _GROWING_FILTERS.get(name)
    slow = _SLOW_FILTERS.get(name)
    writes = name in _WRITING_FILTERS
    what = f"the result of the {name!r} filter"

    @functools.wraps(func)  # keeps jinja_pass_arg: Jinja still passes the context, if asked
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        operands = args[1:] if passes_arg else args
        if operands and slow is not None:
            copies = slow(*operands, **kwargs)
            if copies > MAX_STEP_COPIES:
                raise RenderLimitExceeded(
                    f"the {name!r} filter would copy about {copies} characters (its input's long words); "
                    f"the limit is {MAX_STEP_COPIES}"
                )
        if operands and predict is not None:
            size = predict(*operands, **kwargs)
            if size is not None:
                _allow(size, what)
        elif operands and writes:
            _allow(weight(operands[0]), f"the input of the {name!r} filter")
        return _charge(func(*args, **kwargs), what)

    return bounded


@jinja2.pass_environment
def _linear_sum(environment: jinja2.Environment, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's ``sum``, where lists and tuples extend one result: Python's ``sum`` builds a new,
    longer copy for each item (60,000 one-item lists took 10 s in one step)."""
    if attribute is not None:
        iterable = map(jinja2.filters.make_attrgetter(environment, attribute), iterable)
    if not isinstance(start, list | tuple):
        return sum(iterable, start)
    out = list(start)
    for item in iterable:
        _tick()
        if not isinstance(item, type(start)):  # what ``start + item`` raises
            kind = type(start).__name__
            raise TypeError(f'can only concatenate {kind} (not "{type(item).__name__}") to {kind}')
        out.extend(item)
        _allow(len(out), "the result of the 'sum' filter")
    return out if isinstance(start, list) else tuple(out)


def _bounded_range(*args: int) -> range:
    _tick()
    return safe_range(*args)


class _Ticking:
    """A loop's iterable, passing a checkpoint on every item; sized when the iterable is, so that
    ``loop.length`` costs no more than before."""

    __slots__ = ("_iterable",)

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable:
            _tick()
            yield item

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]  # TypeError when unsized, as LoopContext expects


_BOUNDED_ITER = "bounded_iter"


def _is_bounded(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Call)
        and isinstance(node.node, nodes.EnvironmentAttribute)
        and node.node.name == _BOUNDED_ITER
    )


class _CodeGenerator(CodeGenerator):
    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # ``for x in environment.bounded_iter(iterable)``, written as a call node (Jinja allows no
        # custom node types). A recursive loop iterates through loop(…) calls, checkpoints already.
        if not node.recursive and not _is_bounded(node.iter):
            lineno = node.iter.lineno
            wrapper = nodes.EnvironmentAttribute(_BOUNDED_ITER, lineno=lineno)
            node.iter = nodes.Call(wrapper, [node.iter], [], None, None, lineno=lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # ``a ~ b ~ …``: as Jinja writes it, but measured before the pieces are joined
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.bounded_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the checks above. ``lipsum`` is gone (a paragraph generator has
    no place in a prompt and is a cheap way to build megabytes)."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.globals["range"] = _bounded_range
        self.globals.pop("lipsum", None)
        self.filters["sum"] = _linear_sum
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}

    @staticmethod
    def _finalize(value: Any) -> Any:
        _tick()
        return _charge(value, "an output value")

    @staticmethod
    def bounded_iter(iterable: Iterable[Any]) -> _Ticking:
        return _Ticking(iterable)

    @staticmethod
    def bounded_concat(join: Callable[[Iterable[Any]], str], pieces: tuple[Any, ...]) -> str:
        _tick()
        _allow(sum(weight(p) for p in pieces), "a ~ concatenation")
        return _charge(join(pieces), "a ~ concatenation")  # type: ignore[no-any-return]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        size = _binop_size(operator, left, right)
        what = f"the result of {operator!r}"
        if size is not None:
            _allow(size, what)
        return _charge(super().call_binop(context, operator, left, right), what)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(target, types.BuiltinMethodType) and isinstance(owner, str):
            named = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
            size = _str_method_size(owner, target.__name__, args, named)
            if size is not None:
                _allow(size, f"the result of str.{target.__name__}")
        return _charge(super().call(__context, __obj, *args, **kwargs), "the result of a call")


def render_bounded(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """``template.render(variables)`` within the limits above (the template must come from a
    ``BoundedEnvironment``); ``RenderLimitExceeded`` past one."""
    budget = _Budget(time.monotonic() + TIMEOUT_S)
    token = _BUDGET.set(budget)
    chunks = template.generate(variables)
    try:
        parts: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_CHARS:
                raise RenderLimitExceeded(f"the rendered text is longer than {MAX_CHARS} characters")
            parts.append(chunk)
            budget.tick()
        return "".join(parts)
    finally:
        if isinstance(chunks, types.GeneratorType):
            chunks.close()
        _BUDGET.reset(token)

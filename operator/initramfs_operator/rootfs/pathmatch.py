"""`--exclude` globs, matched in time linear in the path, whatever the pattern and the path.

A backtracking regex can take exponential time on patterns like `**a**a**a**b` against a deep
path an image chooses. Here every pattern is a small NFA (Thompson's construction) and all of
them run together as one: each character maps the set of live states to the next set, and sets
already seen are cached as DFA states. Walking a tree, a directory's state is computed once and
carried to its children, so every entry costs only the characters of its own name.

Syntax (unchanged from the regex version): a leading '/' is optional; `*` and `?` stay within one
path component; `**` crosses directories, `**/` also matches no directory at all; `[...]` is a
class with ranges, negated by a leading `!` or `^` (a negated class never matches '/');
everything else, backslash included, is literal.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import UsageError

Predicate = Callable[[str], bool]
_CACHE_LIMIT = 1 << 20  # DFA transitions kept; a pathological mix of patterns and names just recomputes


def _any(c: str) -> bool:
    return True


def _not_slash(c: str) -> bool:
    return c != "/"


def _slash(c: str) -> bool:
    return c == "/"


@dataclass
class _State:
    moves: list[tuple[Predicate, int]] = field(default_factory=list)  # consume one character
    free: list[int] = field(default_factory=list)  # epsilon moves


def _literal(ch: str) -> Predicate:
    return lambda c: c == ch


def _class(body: str, pattern: str) -> Predicate:
    negated = body[:1] in ("!", "^")
    items = body[1:] if negated else body
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(items):
        if i + 2 < len(items) and items[i + 1] == "-":
            low, high = items[i], items[i + 2]
            if low > high:
                raise UsageError(f"--exclude {pattern!r}: invalid range {low}-{high} in [{body}]")
            ranges.append((low, high))
            i += 3
        else:
            ranges.append((items[i], items[i]))
            i += 1

    def matches(c: str) -> bool:
        inside = any(low <= c <= high for low, high in ranges)
        return c != "/" and not inside if negated else inside
    return matches


def _compile(pattern: str, states: list[_State]) -> None:
    """Appends the states of one pattern, starting at len(states); its accepting state is the next one."""
    p = pattern.strip("/")
    i = 0
    while i < len(p):
        n = len(states)
        if p.startswith("**/", i):
            # (.*/)? : skip it, or take any characters ending with a '/'
            states.append(_State([(_any, n + 1), (_slash, n + 2)], [n + 2]))
            states.append(_State([(_any, n + 1), (_slash, n + 2)]))
            i += 3
        elif p.startswith("**", i):
            states.append(_State([(_any, n)], [n + 1]))
            i += 2
        elif p[i] == "*":
            states.append(_State([(_not_slash, n)], [n + 1]))
            i += 1
        elif p[i] == "?":
            states.append(_State([(_not_slash, n + 1)]))
            i += 1
        elif p[i] == "[" and "]" in p[i + 2:]:
            end = p.index("]", i + 2)
            states.append(_State([(_class(p[i + 1:end], pattern), n + 1)]))
            i = end + 1
        else:
            states.append(_State([(_literal(p[i]), n + 1)]))
            i += 1


class Globs:
    """Several patterns as one matcher. An invalid pattern is a UsageError, raised here (before any download)."""

    def __init__(self, patterns: Sequence[str]):
        self._states: list[_State] = []
        starts, self._accepting = [], set()
        for pattern in patterns:
            if not pattern.strip("/"):
                continue  # matches nothing (it used to mean the root, which is never excluded)
            starts.append(len(self._states))
            _compile(pattern, self._states)
            self._accepting.add(len(self._states))
            self._states.append(_State())  # the accepting state
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._steps: dict[tuple[int, str], int] = {}
        self.start = self._id(self._closure(starts))
        self.dead = self._id(frozenset())

    def __bool__(self) -> bool:
        return bool(self._accepting)

    def _closure(self, states: list[int]) -> frozenset[int]:
        seen, pending = set(states), list(states)
        while pending:
            for nxt in self._states[pending.pop()].free:
                if nxt not in seen:
                    seen.add(nxt)
                    pending.append(nxt)
        return frozenset(seen)

    def _id(self, states: frozenset[int]) -> int:
        found = self._ids.get(states)
        if found is None:
            found = self._ids[states] = len(self._sets)
            self._sets.append(states)
        return found

    def step(self, state: int, text: str) -> int:
        """The state after reading `text` from `state`."""
        for c in text:
            if state == self.dead:
                return state
            nxt = self._steps.get((state, c))
            if nxt is None:
                targets = [to for s in self._sets[state] for accepts, to in self._states[s].moves if accepts(c)]
                nxt = self._id(self._closure(targets))
                if len(self._steps) >= _CACHE_LIMIT:
                    self._steps.clear()
                self._steps[(state, c)] = nxt
            state = nxt
        return state

    def accepts(self, state: int) -> bool:
        return not self._accepting.isdisjoint(self._sets[state])

    def match(self, path: str) -> bool:
        return self.accepts(self.step(self.start, path.strip("/")))

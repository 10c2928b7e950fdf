"""The bookkeeping types of the cost model (standard library only): ``Ledger`` adds up the
launches and bytes of ops by class, ``Poly`` is a minimal polynomial type.

Private helpers of ``model.costs``: ``model._opcount`` fills a Ledger once with ``Poly`` variables
instead of numbers, and the resulting polynomials (a few dozen monomials per op class) are then
evaluated on numbers or numpy arrays of configs.
"""

from __future__ import annotations


class Poly:
    """A polynomial in named variables: the ledger runs once on these, and the result is then
    evaluated on numbers or numpy arrays (a few dozen monomials instead of every op)."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict) -> None:
        self.terms = {m: c for m, c in terms.items() if c != 0}

    @staticmethod
    def var(name: str) -> Poly:
        return Poly({(name,): 1})

    @staticmethod
    def _lift(x) -> Poly:
        return x if isinstance(x, Poly) else Poly({(): x})

    def __add__(self, other) -> Poly:
        out = dict(self.terms)
        for m, c in Poly._lift(other).terms.items():
            out[m] = out.get(m, 0) + c
        return Poly(out)

    __radd__ = __add__

    def __mul__(self, other) -> Poly:
        out: dict = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in Poly._lift(other).terms.items():
                m = tuple(sorted(m1 + m2))
                out[m] = out.get(m, 0) + c1 * c2
        return Poly(out)

    __rmul__ = __mul__

    def __sub__(self, other) -> Poly:
        return self + Poly._lift(other) * -1

    def __rsub__(self, other) -> Poly:
        return Poly._lift(other) + self * -1

    def __call__(self, env: dict):
        """The value for variables `env` (numbers or numpy arrays)."""
        return Poly.evaluate({None: self}, env)[None]

    @staticmethod
    def evaluate(polys: dict, env: dict) -> dict:
        """{key: value} of several polynomials at `env`. Scalar variables are folded into the
        coefficients first and products of array variables are shared between monomials, so a
        grid of a million configs costs a few dozen array multiplications."""
        cache: dict = {(): 1}

        def product(mono: tuple):
            if mono not in cache:
                cache[mono] = product(mono[:-1]) * env[mono[-1]]
            return cache[mono]

        out = {}
        for key, poly in polys.items():
            folded: dict = {}
            for mono, coef in Poly._lift(poly).terms.items():
                arrays = []
                for v in mono:
                    if getattr(env[v], "ndim", 0):
                        arrays.append(v)
                    else:
                        coef = coef * env[v]
                folded[tuple(arrays)] = folded.get(tuple(arrays), 0) + coef
            total = 0
            for mono, coef in folded.items():
                if coef != 0:
                    total = total + coef * product(mono)
            out[key] = total
        return out


class Ledger:
    """Launches and bytes by class (and by op name when ``detail``); ``mult`` scales new ops."""

    def __init__(self, classes: tuple, detail: bool = False) -> None:
        self.launches = dict.fromkeys(classes, 0)
        self.bytes = dict.fromkeys(classes, 0)
        self.ops: dict | None = {} if detail else None
        self.mult = 1

    def add(self, cls: str, name: str, calls, nbytes) -> None:
        """`calls` launches of `name` moving `nbytes` in all."""
        calls, nbytes = calls * self.mult, nbytes * self.mult
        self.launches[cls] = self.launches[cls] + calls
        self.bytes[cls] = self.bytes[cls] + nbytes
        if self.ops is not None:
            c, b = self.ops.get(name, (0, 0))
            self.ops[name] = (c + calls, b + nbytes)

    def op(self, cls: str, name: str, calls, *sizes) -> None:
        """`calls` launches of `name`, each reading/writing tensors of the given byte sizes."""
        self.add(cls, name, calls, calls * sum(sizes))

"""24-bit packet sequence number (PSN) arithmetic with wrap-around, as InfiniBand transports use it.

PSNs count modulo 2**24.  Ordering only makes sense within half the space: like the IB responder's PSN
window, ``a`` is *before* ``b`` when going forward from ``a`` reaches ``b`` in fewer than
2**23 steps.  Two PSNs exactly 2**23 apart are ambiguous; ``diff`` resolves it as "before" (its range is
[-2**23, 2**23)).
"""

PSN_BITS = 24
PSN_MODULUS = 1 << PSN_BITS
PSN_MASK = PSN_MODULUS - 1
HALF = PSN_MODULUS >> 1


def add(psn: int, n: int) -> int:
    """The PSN ``n`` packets after ``psn`` (``n`` may be negative)."""
    if not 0 <= psn <= PSN_MASK:
        _checked(psn)  # raises
    return (psn + n) & PSN_MASK


def next_psn(psn: int) -> int:
    """The PSN right after ``psn``."""
    return add(psn, 1)


def diff(a: int, b: int) -> int:
    """Signed distance from ``b`` to ``a`` (``a - b`` across the wrap), in [-2**23, 2**23)."""
    if not (0 <= a <= PSN_MASK and 0 <= b <= PSN_MASK):  # checked inline: the calls cost more than the sum
        _checked(a)
        _checked(b)
    return ((a - b + HALF) & PSN_MASK) - HALF


def before(a: int, b: int) -> bool:
    """Whether ``a`` comes before ``b``."""
    return diff(a, b) < 0


def after(a: int, b: int) -> bool:
    """Whether ``a`` comes after ``b``."""
    return diff(a, b) > 0


def _checked(psn: int) -> int:
    if not 0 <= psn <= PSN_MASK:
        raise ValueError(f"a PSN must be in [0, 2**24), got {psn}")
    return psn

"""The distillation methods (`distill=NAME`), one file each: its typed parameters (the `distill` config
group's options) and its named terms. This registry is the one list of them; it imports no torch.

Adding a method: one file here with its `Params` and its `Method` subclass, its line below, and its test
(docs/extending.md).
"""

from __future__ import annotations

from kd_runner.methods import (
    ab,
    at,
    cc,
    crd,
    custom,
    dist,
    dkd,
    fitnet,
    fsp,
    ft,
    kd,
    kdsvd,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sp,
    vid,
)
from kd_runner.methods.base import Method, Params, combine

METHODS: dict[str, type[Method]] = {
    "kd": kd.KD,
    "dkd": dkd.DKD,
    "dist": dist.DIST,
    "fitnet": fitnet.FitNet,
    "at": at.AT,
    "rkd": rkd.RKD,
    "crd": crd.CRD,
    "vid": vid.VID,
    "ofd": ofd.OFD,
    "reviewkd": reviewkd.ReviewKD,
    "sp": sp.SP,
    "pkt": pkt.PKT,
    "nst": nst.NST,
    "cc": cc.CC,
    "kdsvd": kdsvd.KDSVD,
    "ab": ab.AB,
    "ft": ft.FT,
    "fsp": fsp.FSP,
    "custom": custom.Custom,
}
PART_COLUMNS = tuple(
    dict.fromkeys(("loss_ce", *(part for m in METHODS.values() for part in (*m.parts, *m.init_parts))))
)  # the student stage's and the init stage's parts, each once

__all__ = ["METHODS", "PART_COLUMNS", "Method", "Params", "combine", "params_type"]


def params_type(name: str) -> type[Params]:
    """The parameter dataclass of method `name` (KeyError for an unknown name)."""
    return METHODS[name].params_type


def make(params: Params, temperature: float, soft_loss: str) -> Method:
    """The method the parameters configure, for one run."""
    return METHODS[params.method](params, temperature, soft_loss)

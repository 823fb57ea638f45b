"""Energy tables: Horowitz (ISSCC 2014) figures, derived E_MAC / E_AC, user overrides."""

from __future__ import annotations

import pytest

from spikelm.energy.constants import TABLES, energy_table
from spikelm.errors import SpikelmError


def test_45nm_fp32_is_the_papers_4_6_and_0_9_pj():
    t = energy_table("45nm-fp32")
    assert t.e_mac == pytest.approx(4.6) and t.e_ac == pytest.approx(0.9)
    assert (t.e_mult, t.e_add) == (3.7, 0.9)
    assert "Horowitz" in t.source and "ISSCC 2014" in t.source


@pytest.mark.parametrize("name, mult, add", [("45nm-fp16", 1.1, 0.4), ("45nm-int8", 0.2, 0.03), ("45nm-int32", 3.1, 0.1)])
def test_other_rows_of_the_same_figure(name, mult, add):
    t = TABLES[name]
    assert (t.e_mult, t.e_add) == (mult, add)
    assert t.e_mac == pytest.approx(mult + add) and t.e_ac == add


def test_pricing_of_each_kind_and_the_flag_switch():
    t = energy_table("45nm-fp32")
    ops = {"mac": 2, "ac": 3, "flag_ac": 5, "mul": 7, "add": 11, "special": 13}
    base = 2 * 4.6 + 3 * 0.9 + 7 * 3.7 + 11 * 0.9 + 13 * 4.6
    assert t.energy(ops) == pytest.approx(base)
    assert t.energy(ops, flag_acs=True) == pytest.approx(base + 5 * 0.9)
    with pytest.raises(ValueError):
        t.price("flop")


def test_user_values_override_mac_and_ac_keeping_the_other():
    t = energy_table("45nm-fp32", e_mac=2.0)
    assert (t.e_mac, t.e_ac) == (pytest.approx(2.0), pytest.approx(0.9)) and "E_MAC=2" in t.name
    t = energy_table("45nm-fp32", e_ac=0.5)
    assert (t.e_mac, t.e_ac) == (pytest.approx(4.6), pytest.approx(0.5))
    t = energy_table("45nm-int8", e_mac=1.0, e_ac=0.25)
    assert (t.e_mult, t.e_add) == (pytest.approx(0.75), 0.25)
    with pytest.raises(SpikelmError, match="at least E_AC"):
        energy_table("45nm-fp32", e_mac=0.5, e_ac=0.9)
    with pytest.raises(SpikelmError, match="unknown energy table"):
        energy_table("7nm")

"""Tests for data/knowledge.py: the 44 parts, the class -> parts map V and Table II.

The Table II figures come from the paper (distinct parts 29/18/34/34 and overlap 6.89%,
50.00%, 23.53%, 29.41%); shared counts 2/9/8/10 are the numerators of those overlaps.
"""
import dataclasses

import pytest

from data import knowledge
from data.knowledge import (CLASS_PARTS, CLASS_SETS, CLASSES, PAPER_TABLE_II, PART_IDS, PARTS,
                            ClassSet, check_class_name, check_part_name, class_feature_map,
                            class_set_names, class_set_summary, describe_class_sets,
                            get_class_set)

# Table II of the paper: code name -> (paper name, distinct parts, shared parts).
TABLE_II = {
    "cs3-1": ("CS3a", 29, 2),
    "cs3-2": ("CS3b", 18, 9),
    "cs5-1": ("CS5a", 34, 8),
    "cs5-2": ("CS5b", 34, 10),
}


# ----------------------------------------------------------------------------- parts and classes

def test_44_unique_parts_with_consecutive_ids():
    assert len(PARTS) == 44
    assert len(set(PARTS)) == 44
    assert all(PARTS[i] == name for name, i in PART_IDS.items())
    assert sorted(PART_IDS.values()) == list(range(44))


def test_every_class_part_is_a_known_part_and_every_part_is_used():
    assert len(CLASS_PARTS) == 16
    assert tuple(sorted(CLASS_PARTS)) == CLASSES
    used = set()
    for cls, parts in CLASS_PARTS.items():
        assert parts, cls
        assert parts <= set(PARTS), (cls, parts - set(PARTS))
        used |= parts
    # the 44 categories are exactly the parts some class has
    assert used == set(PARTS)


def test_car_and_bus_share_all_parts_as_in_table_i():
    assert CLASS_PARTS["car"] == CLASS_PARTS["bus"]
    assert len(CLASS_PARTS["car"]) == 11


def test_check_class_and_part_names():
    for cls in CLASSES:
        assert check_class_name(cls) == cls
    for part in PARTS:
        assert check_part_name(part) == part
    with pytest.raises(ValueError) as e:
        check_class_name("unicorn")
    assert "unicorn" in str(e.value) and all(c in str(e.value) for c in CLASSES)
    with pytest.raises(ValueError) as e:
        check_part_name("tentacle")
    assert "tentacle" in str(e.value) and all(p in str(e.value) for p in PARTS)


def test_class_feature_map_restricts_v_in_order():
    cs = get_class_set("CS5b")
    v = class_feature_map(cs.classes)
    assert tuple(v) == cs.classes
    assert all(v[c] == CLASS_PARTS[c] for c in cs.classes)
    with pytest.raises(ValueError, match="unicorn"):
        class_feature_map(["dog", "unicorn"])


# ----------------------------------------------------------------------------- Table II

@pytest.mark.parametrize("code", sorted(TABLE_II))
def test_table_ii_distinct_and_shared_counts(code):
    paper_name, n_distinct, n_shared = TABLE_II[code]
    s = class_set_summary(code)
    assert s.class_set.paper_name == paper_name
    assert len(s.distinct_parts) == n_distinct
    assert len(s.shared_parts) == n_shared
    assert len(set(s.distinct_parts)) == len(s.distinct_parts)


@pytest.mark.parametrize("code", sorted(TABLE_II))
def test_table_ii_summary_is_consistent_with_the_class_parts(code):
    """Distinct = union of the classes' parts; shared = parts in >= 2 classes (recomputed)."""
    cs = get_class_set(code)
    s = class_set_summary(cs)
    union = set().union(*(CLASS_PARTS[c] for c in cs.classes))
    assert set(s.distinct_parts) == union
    shared = {p for p in union if sum(p in CLASS_PARTS[c] for c in cs.classes) >= 2}
    assert set(s.shared_parts) == shared
    assert set(s.shared_parts) <= set(s.distinct_parts)


@pytest.mark.parametrize("code", sorted(TABLE_II))
def test_table_ii_overlap_fraction_and_paper_values(code):
    _, n_distinct, n_shared = TABLE_II[code]
    s = class_set_summary(code)
    assert s.overlap == pytest.approx(n_shared / n_distinct, abs=1e-12)
    printed_parts, printed_overlap = PAPER_TABLE_II[code]
    assert printed_parts == n_distinct
    # The paper prints two decimals (sometimes truncated, sometimes rounded).
    assert abs(100 * s.overlap - printed_overlap) <= 0.01


def test_paper_table_covers_exactly_the_class_sets():
    assert set(PAPER_TABLE_II) == {cs.code_name for cs in CLASS_SETS} == set(TABLE_II)


def test_describe_class_sets_lists_every_set_with_its_figures():
    text = describe_class_sets()
    for cs in CLASS_SETS:
        s = class_set_summary(cs)
        row = [line for line in text.splitlines()
               if line.split()[:2] == [cs.paper_name, cs.code_name]]
        assert len(row) == 1, (cs, text)
        assert "%d/%d" % (len(s.shared_parts), len(s.distinct_parts)) in row[0]
        assert all(c in row[0] for c in cs.classes)


# ----------------------------------------------------------------------------- class-set names

@pytest.mark.parametrize("cs", CLASS_SETS, ids=lambda cs: cs.code_name)
def test_paper_and_code_names_resolve_case_insensitively(cs):
    variants = {cs.paper_name, cs.code_name, cs.paper_name.lower(), cs.paper_name.upper(),
                cs.code_name.upper(), " %s " % cs.code_name, cs.paper_name.swapcase()}
    resolved = {get_class_set(v) for v in variants}
    assert resolved == {cs}
    assert isinstance(get_class_set(cs.code_name), ClassSet)


def test_class_set_names_are_unique_and_map_to_distinct_sets():
    names = class_set_names()
    assert len(names) == 8 and len({n.lower() for n in names}) == 8
    assert len({get_class_set(n) for n in names}) == 4
    assert len({cs.classes for cs in CLASS_SETS}) == 4


@pytest.mark.parametrize("bad", ["nope", "CS7", "cs3-3", "", "CS3"])
def test_unknown_class_set_lists_valid_names(bad):
    with pytest.raises(ValueError) as e:
        get_class_set(bad)
    msg = str(e.value)
    assert repr(bad) in msg
    for name in class_set_names():
        assert name in msg


def test_class_sets_use_known_classes_only():
    for cs in CLASS_SETS:
        assert len(set(cs.classes)) == len(cs.classes)
        assert set(cs.classes) <= set(CLASSES)


def test_label_of_is_index_in_class_set_order():
    for cs in CLASS_SETS:
        assert [cs.label_of(c) for c in cs.classes] == list(range(len(cs.classes)))


def test_label_of_unknown_class_lists_the_valid_classes():
    cs = get_class_set("cs5-2")
    with pytest.raises(ValueError) as e:
        cs.label_of("cat")  # a PASCAL-Part class, but not one of CS5b
    msg = str(e.value)
    assert "'cat'" in msg and cs.paper_name in msg and cs.code_name in msg
    assert all(c in msg for c in cs.classes)


def test_class_sets_are_immutable():
    cs = get_class_set("CS3a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs.classes = ("dog",)
    assert knowledge.get_class_set("CS3a").classes == ("car", "person", "train")
